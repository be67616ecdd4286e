"""medssr.errors: contract slips raise under MEDSSR_STRICT=1 and otherwise warn once per key (one rule for both the
undeclared-param guard and the metric-name registry)."""

import warnings

import pytest

from medssr import errors
from medssr.errors import ContractWarning, MedssrError, contract_slip


def test_strict_mode_raises_the_error_itself(monkeypatch):
    monkeypatch.setenv("MEDSSR_STRICT", "1")
    with pytest.raises(MedssrError, match="slip one"):
        contract_slip(MedssrError("slip one"), once="k1")


def test_otherwise_a_slip_warns_once_per_key(monkeypatch):
    monkeypatch.delenv("MEDSSR_STRICT", raising=False)
    monkeypatch.setattr(errors, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        contract_slip(ValueError("first"), once="a")
        contract_slip(ValueError("first again"), once="a")
        contract_slip(ValueError("second"), once="b")
    assert [(w.category, str(w.message)) for w in caught] == [(ContractWarning, "first"), (ContractWarning, "second")]


def test_an_explicit_mode_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSSR_STRICT", "1")
    monkeypatch.setattr(errors, "_warned", set())
    with pytest.warns(ContractWarning, match="lenient"):
        contract_slip(MedssrError("lenient"), once="c", strict_mode=False)
    monkeypatch.delenv("MEDSSR_STRICT")
    with pytest.raises(MedssrError):
        contract_slip(MedssrError("strict"), once="d", strict_mode=True)
