"""The model stage: policies materialise to plain transformers dirs that load fast and generate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medssr import models

ROOT = Path(__file__).resolve().parents[1]


def test_local_dir_materialises_to_a_loadable_copy(tiny_model_dir, tmp_path):
    out = models.materialize(str(tiny_model_dir), tmp_path / "policy")
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "medssr_source.json").read_text())["policy"] == str(tiny_model_dir)
    model, tok = models.load_causal_lm(str(out))
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_missing_local_dir_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve_model_dir(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve_model_dir(str(tmp_path / "empty"))


def test_tokenizer_without_chat_template_gets_the_documented_fallback(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "notemplate"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in d.glob("chat_template.*"):
        f.unlink()
    tok = models.load_tokenizer(str(d))
    assert tok.chat_template == models.FALLBACK_CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "Q?"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>\nQ?\n<|assistant|>\n"


def test_smollm2_gguf_is_found_in_the_wheel():
    p = models.smollm2_gguf_path()
    assert p.name == models.GGUF_NAME and p.stat().st_size > 50_000_000


def test_model_family_reads_the_config(tiny_model_dir):
    assert models.model_family(str(tiny_model_dir)) == "smollm"  # SmolLM2 tokenizer, Llama architecture
    assert models.model_family("Qwen/Qwen3-8B-Base") == "qwen"
    assert models.model_family("meta-llama/Llama-3.1-8B-Instruct") == "llama"


@pytest.mark.slow
def test_smollm2_converts_once_and_then_loads_fast(smol_model_dir):
    code = ("import time; t=time.time(); from medssr.models import load_causal_lm; m,t2=load_causal_lm('smollm2-135m'); "
            "print(sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 130_000_000 < int(out.stdout.split()[-1]) < 140_000_000


def _fake_dir(path: Path, source: dict | None = None, template: bool = True) -> Path:
    """A model directory as far as the chat-template rule reads it: config, tokenizer config, provenance."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"} if template else {}))
    if source is not None:
        (path / "medssr_source.json").write_text(json.dumps(source))
    return path


def test_base_model_by_name_gets_the_plain_prompt():
    use, why = models.chat_template_rule("Qwen/Qwen3-8B-Base")
    assert use is False and "Qwen3-8B-Base" in why


def test_instruct_model_gets_its_own_chat_template(tiny_model_dir):
    assert models.uses_chat_template("meta-llama/Llama-3.1-8B-Instruct") is True
    assert models.uses_chat_template(str(tiny_model_dir)) is True  # SmolLM2-Instruct's tokenizer ships a template


def test_base_is_read_as_a_word_not_a_substring(tmp_path):
    assert models.uses_chat_template(str(_fake_dir(tmp_path / "database-models" / "policy", {"policy": "my-database-llm"})))


def test_checkpoint_trained_from_a_base_model_is_prompted_like_it(tmp_path):
    policy = _fake_dir(tmp_path / "policy", {"policy": "Qwen/Qwen3-8B-Base"})  # Qwen3 base tokenizers ship a template
    stage1 = _fake_dir(tmp_path / "stage1", {"stage": "stage1", "init": str(policy)})
    stage2 = _fake_dir(tmp_path / "stage2", {"stage": "stage2", "init": str(stage1)})
    assert [models.uses_chat_template(str(d)) for d in (policy, stage1, stage2)] == [False, False, False]


def test_tokenizer_without_a_chat_template_means_a_base_model(tmp_path):
    use, why = models.chat_template_rule(str(_fake_dir(tmp_path / "plain", {"policy": "some-lm"}, template=False)))
    assert use is False and "no chat template" in why


def test_always_and_never_override_the_name(tmp_path):
    assert models.uses_chat_template("Qwen/Qwen3-8B-Base", "always") is True
    assert models.uses_chat_template("meta-llama/Llama-3.1-8B-Instruct", "never") is False
    with pytest.raises(models.ModelError, match="model.chat_template"):
        models.uses_chat_template("x", "sometimes")
