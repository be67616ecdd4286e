"""medssr.profiles: every shipped profile merges onto params.yaml and validates; a bad or incomplete merge writes nothing."""

from pathlib import Path

import pytest
import yaml

from medssr.config import ConfigError, load_params
from tests.conftest import params_without

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_every_profile_applies_and_validates(profile, tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    changed = apply_profile(profile, params_path=target)
    assert changed, f"profile {profile} changes nothing"
    load_params(target)
    assert "# medssr embedded default" in target.read_text()  # comments survive


def test_a_profile_with_a_bad_value_is_rejected_before_writing(tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    target.write_text(original)
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  rare_ratio: lots\n")
    with pytest.raises(ConfigError, match="synth.rare_ratio"):
        apply_profile(str(bad), params_path=target)
    assert target.read_text() == original


def test_a_profile_applied_onto_an_incomplete_params_file_names_the_missing_key(tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump(params_without("label.sampling")))
    before = target.read_text()
    with pytest.raises(ConfigError, match=rf"smoke.yaml merged onto {target}: missing label.sampling.backend, "):
        apply_profile("smoke", params_path=target)  # smoke sets two label.sampling keys; the other eleven are missing
    assert target.read_text() == before
