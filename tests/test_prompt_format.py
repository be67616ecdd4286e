"""One prompt rule (issue 22.1): vote, TRL, the OpenRLHF JSONL and evaluation give a checkpoint the same prompt.

Two tiny models built here: "instruct" (SmolLM2's tokenizer with its chat template) and "base" (the same tokenizer
without a template and with a BOS it adds to a plain string, as Llama-style base tokenizers do). Each path's real
code renders one MedMCQA question; the text (and tokens) must be identical per model, and the base lineage must
survive stage I -> stage II on both trainer backends.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medssr.config import load_params
from medssr.prompt_format import prompt_format, question_message, sha256
from medssr.records import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_base_model(src: Path, out: Path) -> Path:
    """``src`` with its chat template removed and a BOS that its tokenizer adds to plain strings."""
    from tokenizers import Tokenizer, processors

    shutil.copytree(src, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    cfg["bos_token"] = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    tk = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos_id = tk.token_to_id("<|endoftext|>")
    tk.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                      special_tokens=[("<|endoftext|>", bos_id)])
    tk.save(str(out / "tokenizer.json"))
    (out / "medssr_source.json").write_text(json.dumps({"policy": "tiny-random-llama", "tokenizer": "smollm2 without template"}))
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fmt")
    return {"instruct": tiny_model_dir, "base": make_base_model(tiny_model_dir, d / "tiny-plain")}


@pytest.fixture(scope="module")
def question():
    from medssr.data.loaders import load_medmcqa
    from tests.conftest import RAW

    return load_medmcqa(RAW)[3]


def _template():
    from medssr.rl.data import load_train_prompt

    return load_train_prompt(ROOT / "prompts" / "eval_f4.txt")


def test_the_base_tokenizer_has_no_template_and_adds_a_bos(models):
    from medssr.models import load_tokenizer
    from medssr.prompt_format import bos_text

    tok = load_tokenizer(str(models["base"]))
    assert tok("x")["input_ids"][0] == tok.bos_token_id and bos_text(tok) == "<|endoftext|>"
    assert bos_text(load_tokenizer(str(models["instruct"]))) == ""


@pytest.mark.parametrize("kind,templated", [("instruct", True), ("base", False)])
def test_the_rule_reads_the_tokenizer_of_each_model(models, kind, templated):
    assert prompt_format(models[kind]).chat_template is templated


def _label(model_dir: Path, q, tmp: Path) -> dict:
    from medssr.label.run import run_label

    syn = dataclasses.replace(q, id="syn-0", source="synthetic", split="synthetic")
    write_jsonl(tmp / "syn.jsonl", [syn])
    p = load_params(ROOT / "params.yaml", {"label.reliability_n": 0, "label.sampling": {"n": 2, "max_new_tokens": 4, "engines": 1},
                                            "label.allow_empty": True})
    return run_label(p, model_dir, tmp / "syn.jsonl", tmp / "bench", tmp / "out.jsonl", tmp / "report.json", tmp / "plot.png",
                     progress=False, track=False)["prompt_format"]


def _evaluate(model_dir: Path, q, tmp: Path, capsys) -> str:
    """The first-prompt sha evaluate prints for the checkpoint (it hashes its sampler's own rendering)."""
    from eval.runner import run_evaluate
    from medssr.config import Params, SamplingCfg

    write_jsonl(tmp / "medqa.jsonl", [q])
    p = Params()
    p.eval.benchmarks = {"medqa": str(tmp / "medqa.jsonl")}
    p.eval.sampling = SamplingCfg(n=1, temperature=0.0, max_new_tokens=4, engines=1)
    p.eval.constrained_pass = False
    capsys.readouterr()
    run_evaluate(p, {"base": str(model_dir)}, tmp, tmp / "eval.json", tmp / "preds", log_mlflow=False, progress=False,
                 progress_dir=tmp / "prog")
    out = capsys.readouterr().out
    return re.search(r"\[evaluate base\] prompt: .*first prompt ([0-9a-f]{12})", out).group(1)


@pytest.mark.parametrize("kind", ["instruct", "base"])
def test_vote_trl_openrlhf_and_evaluation_give_the_same_prompt(models, question, kind, tmp_path, capsys):
    from medssr.models import load_tokenizer
    from medssr.rl import openrlhf_backend as orl
    from medssr.rl import trl_backend
    from medssr.rl.data import examples_from_questions, openrlhf_rows, to_trl_dataset
    from medssr.sampling import HFSampler

    model_dir = models[kind]
    fmt = prompt_format(model_dir)
    tok = load_tokenizer(str(model_dir))
    template = _template()
    text = fmt.text(tok, question_message(template, question.render()))
    ids = fmt.token_ids(tok, text)
    assert (text.startswith("<|im_start|>") if kind == "instruct" else text.startswith("You are a professional medical expert"))

    # the vote: the label stage's record hashes what its sampler renders; the sampler's tokens are these ids
    vote = _label(model_dir, question, tmp_path / "label")
    assert vote["first_prompt_sha256"] == sha256(text)
    sampler = HFSampler(str(model_dir), chat_template=fmt.chat_template)
    assert sampler._encode(sampler.render(question_message(template, question.render()))) == ids

    # TRL: its own _tokenize_prompts on the dataset cell medssr writes
    examples, _ = examples_from_questions([question], "real")
    ds = to_trl_dataset(examples, template.template, fmt)
    p = load_params(ROOT / "params.yaml", {"train.num_generations": 2, "train.per_device_batch_size": 2, "train.max_completion_length": 4,
                                            "train.stage1": {"max_steps": 1, "learning_rate": 1e-3, "beta": 0.0, "max_samples": 8}})
    trainer = trl_backend.build_trainer(model_dir, ds, "gold", p.train, p.train.stage1, run_dir=tmp_path / "run")
    trl_ids = trainer._tokenize_prompts([ds[0]["prompt"]])[0][0]
    assert list(trl_ids) == ids

    # OpenRLHF: the JSONL row as its PromptDataset renders it (chat template only with the flag), tokenised as its agent
    # does (no special tokens added); tests/test_openrlhf_engine.py runs OpenRLHF's own code on it
    (row,) = openrlhf_rows(examples, template.template, fmt, tok)
    flags = orl.train_flags(p.train, p.train.stage1, orl.RunPaths("m", "d.jsonl", "o", "c", "t"), n_prompts=128, run_name="x",
                            chat_template=fmt.chat_template)
    applied = "--data.apply_chat_template" in flags
    assert applied is fmt.chat_template
    orl_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) if applied else row["prompt"]
    assert tok(orl_text, add_special_tokens=False)["input_ids"] == ids

    # evaluation
    assert _evaluate(model_dir, question, tmp_path / "eval", capsys) == sha256(text)[:12]


def _train_project(root: Path, policy: Path, question_rows) -> None:
    (root / "prompts").mkdir(parents=True)
    shutil.copy(ROOT / "prompts" / "eval_f4.txt", root / "prompts" / "eval_f4.txt")
    syn = [dataclasses.replace(q, id=f"syn-{i}", source="synthetic", split="synthetic", votes=["B", "B"], majority="B", agreement=1.0,
                               n_valid=2) for i, q in enumerate(question_rows[:4])]
    write_jsonl(root / "data/labeled/synthetic.jsonl", syn)
    write_jsonl(root / "data/prepared/train.jsonl", question_rows[4:8])
    write_jsonl(root / "data/prepared/benchmarks/medqa.jsonl", question_rows[:2])
    shutil.copytree(policy, root / "artifacts/models/policy")


@pytest.fixture(scope="module")
def rows():
    from medssr.data.loaders import load_medmcqa
    from tests.conftest import RAW

    return load_medmcqa(RAW)[:8]


def test_a_base_lineage_survives_stage1_to_stage2_on_trl(models, rows, tmp_path, monkeypatch, mlflow_store):
    from medssr.models import _has_own_chat_template
    from medssr.rl.run import run_train_stage
    from tests.test_trl_backend import TINY, _paths

    root = tmp_path / "proj"
    _train_project(root, models["base"], rows)
    monkeypatch.setenv("MEDSSR_ROOT", str(root))
    p = load_params(ROOT / "params.yaml", TINY)
    r1 = run_train_stage(p, "stage1", _paths("stage1"))
    r2 = run_train_stage(p, "stage2", _paths("stage2"))
    s2 = root / "checkpoints/stage2"
    assert _has_own_chat_template(s2), "the saved tokenizer carries a template (the fallback): its files alone would say instruct"
    assert prompt_format(s2).chat_template is False and prompt_format(root / "checkpoints/stage1").chat_template is False
    assert r1["prompt_format"]["probe_sha256"] == r2["prompt_format"]["probe_sha256"]
    assert r1["prompt_format"]["rule"] == r2["prompt_format"]["rule"] == prompt_format(root / "artifacts/models/policy").rule


# A stand-in for train_ppo_ray (OpenRLHF needs GPUs): it saves the actor as OpenRLHF does, with a tokenizer whose
# config now carries a chat template (Qwen3-8B-Base's does) and no medssr_source.json; it records how it was called.
FAKE_TRAIN_PPO_RAY = r'''
import json, os, shutil, sys
argv = sys.argv[1:]
a, i = {}, 0
while i < len(argv):
    k = argv[i][2:]
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        a[k] = argv[i + 1]; i += 2
    else:
        a[k] = True; i += 1
rows = [json.loads(l) for l in open(a["data.prompt_dataset"])]
out = a["ckpt.output_dir"]
shutil.copytree(a["actor.model_name_or_path"], out, dirs_exist_ok=True)
os.remove(os.path.join(out, "medssr_source.json"))
cfg = json.load(open(os.path.join(out, "tokenizer_config.json")))
cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
json.dump(cfg, open(os.path.join(out, "tokenizer_config.json"), "w"))
json.dump({"apply_chat_template": "data.apply_chat_template" in a, "prompt_is_text": isinstance(rows[0]["prompt"], str)},
          open(os.path.join(os.path.dirname(out.rstrip("/")), "fake_openrlhf_call.json"), "w"))
'''


def test_a_base_lineage_survives_stage1_to_stage2_on_openrlhf(models, rows, tmp_path, monkeypatch, mlflow_store):
    from medssr.rl.run import run_train_stage
    from tests.test_openrlhf_command import install_fake_openrlhf
    from tests.test_trl_backend import _paths

    root = tmp_path / "proj"
    _train_project(root, models["base"], rows)
    install_fake_openrlhf(tmp_path / "fake_openrlhf", FAKE_TRAIN_PPO_RAY, root, monkeypatch)
    p = load_params(ROOT / "params.yaml", {"train.backend": "openrlhf", "train.global_batch_size": 2, "train.rollout_batch_size": 2,
                                            "train.micro_batch_size": 1, "train.num_generations": 2,
                                            "train.stage1": {"max_steps": 1, "learning_rate": 1e-6, "beta": 0.0, "max_samples": None},
                                            "train.stage2": {"max_steps": 1, "learning_rate": 1e-6, "beta": 0.0, "max_samples": None},
                                            "train.openrlhf": {"ray_address": "", "gpus_per_node": 1, "vllm_num_engines": 1}})
    for stage in ("stage1", "stage2"):
        report = run_train_stage(p, stage, _paths(stage))
        call = json.loads((root / "checkpoints" / "fake_openrlhf_call.json").read_text())
        assert call == {"apply_chat_template": False, "prompt_is_text": True}, stage
        assert report["prompt_format"]["chat_template"] is False
        ckpt = root / "checkpoints" / stage
        assert json.loads((ckpt / "medssr_source.json").read_text())["prompt_format"]["chat_template"] is False
        assert prompt_format(ckpt).chat_template is False, f"{stage}: the saved template would make it 'instruct'"


def _run_stage(script: str, *args: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "MEDSSR_ROOT": str(cwd)})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("profile", ["paper-qwen3-8b", "paper-llama3.1-8b"])
def test_paper_profile_dry_runs_print_one_rule_and_sha_for_label_stage1_stage2_and_evaluate(models, rows, tmp_path, profile):
    """The dry runs of a paper profile with a tiny base model as its policy: the four stages ask the same way."""
    import yaml

    from medssr.profiles import apply_profile
    from tests.dvc_yaml import cmd_args

    root = tmp_path / "proj"
    _train_project(root, models["base"], rows)
    write_jsonl(root / "data/synthetic/questions.jsonl", [dataclasses.replace(q, id=f"s{i}", source="synthetic") for i, q in enumerate(rows[:2])])
    write_jsonl(root / "data/prepared/raredis_sub.jsonl", [])
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    apply_profile(profile, root / "params.yaml")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["eval"]["benchmarks"] = {"medqa": str(root / "data/prepared/benchmarks/medqa.jsonl")}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    lines = []
    for stage, script in (("label", "label.py"), ("stage1", "train.py"), ("stage2", "train.py"), ("evaluate", "evaluate.py")):
        out = _run_stage(script, *cmd_args(stage), "--dry-run", cwd=root)
        found = re.findall(r"^\[(?:label|train|stage\d|evaluate base)\] prompt: (.*)$", out, re.M)
        assert found, f"{stage} printed no prompt line:\n{out}"
        lines.append(found[0].split(", first prompt")[0])
    assert len(set(lines)) == 1, lines
    assert "chat template no" in lines[0]
