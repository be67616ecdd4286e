"""Typed params: the shipped files validate, and every kind of mistake names its key path."""

from pathlib import Path

import pytest
import yaml

from medssr.config import ConfigError, Params, load_params, set_dotted, to_flat_dict

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.synth.generator.backend == "local"
    assert 0 <= p.synth.rare_ratio <= 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("synth.rare_ratio", "high", "synth.rare_ratio: expected float in [0, 1], got 'high'"),
        ("synth.rare_ratio", 1.5, "synth.rare_ratio: expected float in [0, 1], got 1.5"),
        ("synth.n", 2.5, "synth.n: expected int >= 0, got 2.5"),
        ("synth.n", True, "synth.n: expected int >= 0, got True"),
        ("synth.generator.backend", "gemini", "synth.generator.backend: expected one of"),
        ("train.strategy", "three_stage", "train.strategy: expected one of 'two_stage'"),
        ("label.sampling.top_p", 2, "label.sampling.top_p: expected float in [0, 1], got 2"),
        ("data.train_sources", "medmcqa", "data.train_sources: expected list of str"),
        ("data.train_sources", ["medqa"], "data.train_sources[0]: 'medqa' is not declared in data.train"),
        ("data.train", {"m": {"path": "x.jsonl", "format": "medqa", "colour": 1}}, "data.train.m.colour: unknown key"),
        ("data.extra_raredis", [3], "data.extra_raredis[0]: expected a file path or a mapping {path, format}, got 3"),
        ("eval.benchmarks", ["medqa"], "eval.benchmarks: expected mapping of str"),
        ("synth.prices", {"gpt-4.1": {"input_per_mtok": -1}}, "synth.prices.gpt-4.1.input_per_mtok: expected float >= 0"),
    ],
)
def test_wrong_types_name_the_key_path(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", overrides={key: value})
    assert message in str(e.value)
    assert str(e.value).startswith(str(ROOT / "params.yaml"))


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"synth\.rare_rat: unknown key \(did you mean 'rare_ratio'\?\)"):
        load_params(ROOT / "params.yaml", overrides={"synth.rare_rat": 0.2})


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match="trainer: unknown key"):
        load_params(ROOT / "params.yaml", overrides={"trainer": {}})


def test_ints_are_accepted_for_floats_and_optional_nulls():
    p = load_params(ROOT / "params.yaml", overrides={"synth.rare_ratio": 0, "synth.max_usd": None})
    assert p.synth.rare_ratio == 0.0 and isinstance(p.synth.rare_ratio, float)
    assert p.synth.max_usd is None


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_flat_dict_has_dotted_keys_for_mlflow():
    flat = to_flat_dict(load_params(ROOT / "params.yaml"))
    assert flat["synth.rare_ratio"] == 0.25
    assert flat["synth.generator.backend"] == "local"
    assert "train.stage1.learning_rate" in flat


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


# -- one source of defaults, whole files everywhere (#13.8) ------------------------------------------------------
# declarations a user writes; the code's default is "none declared" (data.train: the bundled sets, checked in
# tests/test_data_loaders.py against the shipped entries)
USER_MAPPINGS = ("data.benchmarks", "data.train", "synth.prices")


def _flat_yaml(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in USER_MAPPINGS:
            out.update(_flat_yaml(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_code_defaults_equal_the_shipped_params_yaml_for_every_key():
    shipped = _flat_yaml(yaml.safe_load((ROOT / "params.yaml").read_text()))
    code = {k: v for k, v in to_flat_dict(Params()).items() if not k.startswith(tuple(f"{m}." for m in USER_MAPPINGS))
            and k not in USER_MAPPINGS}
    shipped = {k: v for k, v in shipped.items() if k not in USER_MAPPINGS}
    assert sorted(set(code) - set(shipped)) == [], "keys the code has but params.yaml lacks"
    assert sorted(set(shipped) - set(code)) == [], "keys params.yaml has but the code lacks"
    drift = {k: (shipped[k], code[k]) for k in code if shipped[k] != code[k]}
    assert drift == {}, "params.yaml value vs code default"


def _without(key: str) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    *parents, last = key.split(".")
    node = raw
    for p in parents:
        node = node[p]
    del node[last]
    return raw


@pytest.mark.parametrize("key", ["synth", "synth.generator", "synth.generator.max_tokens", "train.stage2.max_samples", "model.dtype"])
def test_a_missing_key_is_an_error_naming_file_and_key_path(tmp_path, key):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(_without(key)))
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert str(e.value).startswith(f"{f}: missing {key} (")


def test_an_empty_params_file_is_an_error(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"params.yaml: empty params file \(expected the sections project, data, model"):
        load_params(f)


def test_a_profile_is_not_a_params_file(tmp_path):
    with pytest.raises(ConfigError, match=r"micro.yaml: missing project, data, model.dir, model.dtype, "):
        load_params(ROOT / "params" / "micro.yaml")


def test_a_profile_applied_onto_an_incomplete_params_file_names_the_missing_key(tmp_path):
    from medssr.profiles import apply_profile

    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump(_without("label.sampling")))
    before = target.read_text()
    with pytest.raises(ConfigError, match=rf"smoke.yaml merged onto {target}: missing label.sampling.backend, "):
        apply_profile("smoke", params_path=target)  # smoke sets two label.sampling keys; the other eleven are missing
    assert target.read_text() == before


def test_set_dotted_creates_levels():
    raw: dict = {}
    set_dotted(raw, "a.b.c", 1)
    assert raw == {"a": {"b": {"c": 1}}}


def test_overrides_replace_values_after_the_file_is_checked_whole(tmp_path):
    p = load_params(ROOT / "params.yaml", overrides={"synth.generator": {"backend": "openai", "model": "m"}})
    assert p.synth.generator.model == "m" and p.synth.generator.max_tokens == 384  # the rest: code defaults = shipped values
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(_without("synth.generator")))
    with pytest.raises(ConfigError, match="missing synth.generator"):
        load_params(f, overrides={"synth.generator": {"backend": "openai", "model": "m"}})
