"""Typed params: the shipped files validate, and every kind of mistake names its key path."""

import dataclasses
import importlib.util
import typing
from pathlib import Path

import pytest
import yaml

from medssr.config import ConfigError, Params, load_params, set_dotted, to_flat_dict
from tests.conftest import params_without, write_params

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


@pytest.mark.parametrize("key", ["synth", "synth.generator", "synth.generator.max_tokens", "train.stage2.max_samples", "model.dtype"])
def test_a_missing_key_is_an_error_naming_file_and_key_path(tmp_path, key):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params_without(key)))
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert str(e.value).startswith(f"{f}: missing {key} (")


def test_an_empty_params_file_is_an_error(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"params.yaml: empty params file \(expected the sections project, data, model"):
        load_params(f)


def test_a_profile_is_not_awrite_params(tmp_path):
    with pytest.raises(ConfigError, match=r"micro.yaml: missing project, data, model.dir, model.dtype, "):
        load_params(ROOT / "params" / "micro.yaml")


def test_set_dotted_creates_levels():
    raw: dict = {}
    set_dotted(raw, "a.b.c", 1)
    assert raw == {"a": {"b": {"c": 1}}}


def test_overrides_replace_values_after_the_file_is_checked_whole(tmp_path):
    p = load_params(ROOT / "params.yaml", overrides={"synth.generator": {"backend": "openai", "model": "m"}})
    assert p.synth.generator.model == "m" and p.synth.generator.max_tokens == 384  # the rest: code defaults = shipped values
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(params_without("synth.generator")))
    with pytest.raises(ConfigError, match="missing synth.generator"):
        load_params(f, overrides={"synth.generator": {"backend": "openai", "model": "m"}})


# -- combinations a later stage would refuse fail at load time, naming the key (#14.3) -----------------------------
OPENRLHF_1GPU = {"train.backend": "openrlhf", "train.global_batch_size": 4, "train.rollout_batch_size": 4, "train.micro_batch_size": 1,
                 "train.openrlhf.gpus_per_node": 1, "train.openrlhf.vllm_num_engines": 1}




def _load_error_lines(f: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_params(f)
    lines = str(e.value).splitlines()
    assert all(line.startswith(f"{f}: ") for line in lines), lines
    return [line[len(f"{f}: ") :] for line in lines]


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        # TRL (trl 1.16 GRPOConfig): the generation batch, per_device_train_batch_size x gradient_accumulation_steps
        # completions on one process, must hold whole groups of num_generations
        ({"train.per_device_batch_size": 3}, "train.per_device_batch_size: 3 x train.gradient_accumulation_steps 1 = 3 completions per "
                                             "step must be a multiple of train.num_generations (4)"),
        ({"train.per_device_batch_size": 2, "train.num_generations": 8, "train.gradient_accumulation_steps": 2},
         "train.per_device_batch_size: 2 x train.gradient_accumulation_steps 2 = 4 completions per step must be a multiple of "
         "train.num_generations (8)"),
        ({"train.loss_type": "ppo"}, "train.loss_type: TRL supports grpo, dapo, dr_grpo, bnpo, cispo, sapo, luspo, vespo, got 'ppo'"),
        ({"train.kl_estimator": "k2"}, "train.kl_estimator: TRL's GRPO KL term is fixed to k3, got 'k2'"),
        # OpenRLHF 0.11.2 (train_ppo_ray / DeepSpeed asserts)
        ({**OPENRLHF_1GPU, "train.loss_type": "cispo"}, "train.loss_type: the openrlhf backend supports grpo, dapo, bnpo, dr_grpo, got 'cispo'"),
        ({**OPENRLHF_1GPU, "train.openrlhf.vllm_num_engines": 2},
         "train.openrlhf.vllm_num_engines: with colocate, num_nodes x gpus_per_node (1) must equal vllm_num_engines x "
         "vllm_tensor_parallel_size (2 x 1)"),
        ({**OPENRLHF_1GPU, "train.micro_batch_size": 3},
         "train.global_batch_size: 4 prompts x 4 rollouts = 16 samples must split into micro batches of train.micro_batch_size (3) on 1 GPUs"),
        ({**OPENRLHF_1GPU, "train.openrlhf.gpus_per_node": 8, "train.openrlhf.vllm_num_engines": 8, "train.micro_batch_size": 8},
         "train.rollout_batch_size: 4 prompts give fewer micro batches than the 8 actor GPUs"),
        ({**OPENRLHF_1GPU, "train.rollout_batch_size": 6},
         "train.rollout_batch_size: 6 prompts per rollout must be a multiple of train.global_batch_size (4)"),
        # strategy x backend (medssr.rl.strategies)
        ({**OPENRLHF_1GPU, "train.strategy": "online_vote"}, "train.strategy: 'online_vote' needs a reward that sees the whole group"),
        # the synthesis generator
        ({"synth.generator.backend": "openai_compatible", "synth.generator.base_url": None},
         "synth.generator.base_url: required for backend 'openai_compatible'"),
        ({"synth.generator.batch": True}, "synth.generator.batch: true needs backend openai or anthropic (their batch endpoints); "
                                          "backend 'local' has none"),
        # label / eval sampling
        ({"label.sampling.tensor_parallel_size": 2}, "label.sampling.tensor_parallel_size: 2 needs label.sampling.backend: vllm"),
        ({"eval.sampling.max_model_len": 256}, "eval.sampling.max_model_len: 256 tokens leave no room for a prompt beside "
                                               "eval.sampling.max_new_tokens (256)"),
        # corpus chunking, eval benchmark names
        ({"corpus.chunk_overlap": 200}, "corpus.chunk_overlap: 200 must be smaller than corpus.chunk_words (200)"),
        ({"eval.benchmarks": {"avg_x": "data/prepared/benchmarks/medqa.jsonl"}}, "eval.benchmarks.avg_x: a benchmark name must match"),
    ],
)
def test_a_combination_a_later_stage_would_refuse_fails_at_load_naming_the_key(tmp_path, changes, line):
    lines = _load_error_lines(write_params(tmp_path, changes))
    assert any(got.startswith(line) for got in lines), lines


def test_every_problem_is_its_own_line_naming_file_and_key(tmp_path):
    f = write_params(tmp_path, {"synth.rare_ratio": "high", "train.stage1.max_steps": 0, "synth.generator.colour": "red"})
    assert sorted(_load_error_lines(f)) == ["synth.generator.colour: unknown key",
                                           "synth.rare_ratio: expected float in [0, 1], got 'high'",
                                           "train.stage1.max_steps: expected int >= 1, got 0"]
    f = write_params(tmp_path, {"train.per_device_batch_size": 3, "train.loss_type": "ppo", "corpus.chunk_overlap": 500})
    assert [line.split(":")[0] for line in _load_error_lines(f)] == ["train.per_device_batch_size", "train.loss_type", "corpus.chunk_overlap"]


def test_a_layout_the_backends_accept_loads(tmp_path):
    p = load_params(write_params(tmp_path, {**OPENRLHF_1GPU, "train.loss_type": "dapo", "train.kl_estimator": "k1"}))
    assert p.train.backend == "openrlhf" and p.train.kl_estimator == "k1"
    p = load_params(write_params(tmp_path, {"train.per_device_batch_size": 2, "train.gradient_accumulation_steps": 2}))
    assert p.train.per_device_batch_size * p.train.gradient_accumulation_steps == p.train.num_generations


def test_the_union_of_a_key_is_one_line_with_its_choices():
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", overrides={"data.train": {"t": {"path": "t.csv", "format": "columns",
                                                                          "columns": {"options": 5}}}})
    assert str(e.value) == f"{ROOT / 'params.yaml'}: data.train.t.columns.options: expected list of str or str, got 5"


def test_sections_stay_plain_dataclasses_code_copies_freely():
    p = load_params(ROOT / "params.yaml")
    warm = dataclasses.replace(p.eval.sampling, temperature=0.6)
    assert warm.temperature == 0.6 and p.eval.sampling.temperature == 0.0
    assert dataclasses.asdict(p.train.stage1) == {"max_steps": 4, "learning_rate": 2e-6, "beta": 0.001, "max_samples": None}


def test_the_backends_accept_what_config_lets_through():
    from medssr.config import GENERATOR_BATCH_BACKENDS, OPENRLHF_LOSS_TYPES, TRL_LOSS_TYPES, CorpusCfg
    from medssr.knowledge.embedders import EMBEDDERS
    from medssr.llm.base import BATCH_BACKENDS
    from medssr.rl.openrlhf_backend import LOSS_MAP

    assert set(OPENRLHF_LOSS_TYPES) == set(LOSS_MAP)
    assert set(GENERATOR_BATCH_BACKENDS) == set(BATCH_BACKENDS)
    hint = typing.get_type_hints(CorpusCfg)["eval_embedders"]
    assert set(typing.get_args(typing.get_args(hint)[0])) == set(EMBEDDERS)
    # every TRL loss type is a branch of GRPOTrainer's loss (read from the installed trl 1.16, not imported)
    trainer = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "trainer" / "grpo_trainer.py"
    source = trainer.read_text(encoding="utf-8")
    assert [t for t in TRL_LOSS_TYPES if f'"{t}"' not in source] == []
