"""One base for every error that is the user's to fix (bad params, a bad input row, a missing model or index), and one
rule for contract slips that must not cost a user a finished run.

Stages and the `medssr` command print these as one line naming the file, line and field; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import warnings

STRICT_ENV = "MEDSSR_STRICT"


class MedssrError(Exception):
    """An error whose message alone tells the user what to fix."""


class ContractWarning(UserWarning):
    """A slip in medssr's own bookkeeping (an undeclared param read, an unregistered metric name): wrong, but not
    worth failing hours of a user's run over; ``MEDSSR_STRICT=1`` (the test suite, CI) makes it an error."""


def strict() -> bool:
    """Whether contract slips raise (``MEDSSR_STRICT=1``) instead of warning."""
    return os.environ.get(STRICT_ENV) == "1"


_warned: set[str] = set()


def contract_slip(error: Exception, *, once: str, strict_mode: bool | None = None, stacklevel: int = 3) -> None:
    """Raise ``error`` in strict mode; otherwise warn with its message once per process for the key ``once``."""
    if strict() if strict_mode is None else strict_mode:
        raise error
    if once not in _warned:
        _warned.add(once)
        warnings.warn(str(error), ContractWarning, stacklevel=stacklevel)
