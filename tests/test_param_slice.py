"""A stage body sees only the params its dvc.yaml entry declares (medssr.param_slice)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest

from medssr.config import Params, load_params, to_flat_dict
from medssr.param_slice import UndeclaredParamError, covers, declared_params, params_slice, watched

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params() -> Params:
    return load_params(ROOT / "params.yaml")


def test_watched_copy_reports_leaf_reads_by_dotted_path_and_keeps_dataclass_behaviour(params):
    seen = []
    p = watched(params, lambda key, frame: seen.append(key))
    assert isinstance(p, Params) and isinstance(p.train.stage1, type(params.train.stage1))
    assert p.synth.generator.max_tokens == params.synth.generator.max_tokens
    assert dataclasses.replace(p.train.stage1, max_steps=9).max_steps == 9
    assert dataclasses.asdict(p.label.sampling) == dataclasses.asdict(params.label.sampling)
    assert seen[0] == "synth.generator.max_tokens"
    assert "train.stage1.learning_rate" in seen and "label.sampling.n" in seen
    assert not any(k in ("synth", "synth.generator", "train", "label.sampling") for k in seen)  # sections are not reads


def test_covers_matches_a_key_or_a_section_above_it():
    assert covers(["label", "model.dir"], "label.sampling.n")
    assert covers(["model.dir"], "model.dir")
    assert not covers(["model.dir"], "model.dtype")
    assert not covers(["train.stage1"], "train.stage10.x")  # a prefix of a name is not a section


def test_an_undeclared_read_fails_in_strict_mode_naming_key_stage_and_reader(params):
    p = params_slice(params, "label", ["label", "model.dir"], strict=True)
    assert p.label.sampling.n == params.label.sampling.n and p.model.dir == params.model.dir
    with pytest.raises(UndeclaredParamError, match=r"stage 'label' read param model\.dtype \(tests\.test_param_slice:.*add it to stages\.label\.params"):
        _ = p.model.dtype


def test_an_undeclared_read_warns_once_per_key_by_default(params, monkeypatch):
    monkeypatch.delenv("MEDSSR_STRICT", raising=False)
    p = params_slice(params, "prepare", ["data"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert p.project.seed == params.project.seed
        _ = p.project.seed
        _ = p.synth.cache_dir
    assert [str(w.message).split(" (")[0] for w in caught] == ["stage 'prepare' read param project.seed",
                                                               "stage 'prepare' read param synth.cache_dir"]


def test_strict_mode_follows_the_environment(params, monkeypatch):
    monkeypatch.setenv("MEDSSR_STRICT", "1")
    with pytest.raises(UndeclaredParamError):
        _ = params_slice(params, "model", ["model"]).label.seed


def test_copying_params_into_mlflow_is_not_a_read(params):
    p = params_slice(params, "model", ["model"], strict=True)
    flat = to_flat_dict(p)  # the tracking layer logs every param to the stage's run
    assert flat["train.stage1.max_steps"] == params.train.stage1.max_steps
    _ = p.project.experiment  # where results are recorded, not what the stage writes


def test_declared_params_reads_the_stage_entry_of_dvc_yaml(tmp_path):
    assert "model.dtype" in declared_params(ROOT / "dvc.yaml", "label")
    assert declared_params(ROOT / "dvc.yaml", "no_such_stage") is None
    assert declared_params(tmp_path / "dvc.yaml", "label") is None
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: x\n    params:\n      - a.b\n      - other.yaml: [k]\n", encoding="utf-8")
    assert declared_params(tmp_path / "dvc.yaml", "s") == ["a.b"]
