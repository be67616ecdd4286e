"""dvc.yaml is honest about params and files: each stage declares every param it reads, and no section wider than it
reads (#13.8); every data file it reads is a dep, every file it writes is under an out; its cmd names exactly the data
paths of its deps and outs, so dvc.yaml is the one place paths live (#14).

How the reads are found: each stage's own entry function (``body`` of ``stages/<name>.py``, with the arguments of its
dvc.yaml ``cmd``) runs on a throwaway project of a few rows (the tiny random Llama as every model, a loopback
OpenAI-compatible server as the generator), with the shipped params.yaml as a *recording* params object: a copy
whose every section records each dotted key path read from it. Where a stage branches on a param, it runs once
per branch that reads other keys (prepare: the LLM classifiers through synth.generator; train: the TRL and the
OpenRLHF backend). The two train stages run with ``--dry-run``: the trainer config (TRL ``grpo_config``, the
OpenRLHF command) is built from the same params as in a real run, and only the training itself, which reads
nothing more, is skipped. `report` is ``always_changed`` in dvc.yaml (it reruns every time), so it has no params to declare.

Not dependencies: reads made while logging to MLflow (inside medssr.tracking or ``config.to_flat_dict``, which
copy params into the run's params table) and ``project.experiment`` (the MLflow experiment a stage logs to): they
change where results are recorded, never what a stage writes. A param the cmd uses as ``${key}`` is a dependency
through the cmd (DVC reruns a stage whose cmd changed), so the stage need not list it under ``params:``.

Each stage runs in its own copy of the throwaway project, with exactly the arguments of its cmd (plus non-path
switches such as ``--no-progress-bar``), so what it writes lands where dvc.yaml says.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import shutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

from medssr.config import Params, load_params, to_flat_dict
from medssr.data.loaders import load_medmcqa
from medssr.param_slice import covers, is_tracking_frame, reader_of, watched
from medssr.records import write_jsonl
from tests.dvc_yaml import raw_stages, stages, template_keys

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
DVC = stages()  # as `dvc repro` runs them: ${...} resolved from params.yaml
TRACKING_ONLY = {"project.experiment"}
# Reads that are not dependencies and that dvc.yaml cannot express; each names the code that should stop making it.
KNOWN_READS: set[tuple[str, str, str]] = set()  # (stage, key prefix, "module:function") reads that are not dependencies


# -- the recording params object ---------------------------------------------------------------------------------
class Reads(dict):
    """dotted key path -> the set of 'module:function' that read it (the reader, as medssr.param_slice names it)."""

    def note_at(self, path: str, frame) -> None:
        if not is_tracking_frame(frame):  # copying params into MLflow's params table: not a dependency
            self.setdefault(path, set()).add(reader_of(frame, skip=(__name__,)))


def recording(obj, reads: Reads):
    """A watched copy of the params (medssr.param_slice, what a stage body gets at run time) that notes every leaf read."""
    return watched(obj, reads.note_at)


def test_the_recorder_records_leaves_by_path_and_skips_mlflow_copies():
    reads = Reads()
    p = recording(load_params(ROOT / "params.yaml"), reads)
    assert p.synth.generator.max_tokens == 384 and isinstance(p, Params)
    dataclasses.asdict(p.train.stage1)
    to_flat_dict(p)
    assert set(reads) == {"synth.generator.max_tokens", "train.stage1.max_steps", "train.stage1.learning_rate", "train.stage1.beta",
                          "train.stage1.max_samples"}


# -- running each stage's entry on a throwaway project -----------------------------------------------------------
def _stage_module(script: str):
    spec = importlib.util.spec_from_file_location(f"dvc_params_{Path(script).stem}", ROOT / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- the file audit -----------------------------------------------------------------------------------------------
class FileAudit:
    """Data files a stage opens, by project-relative path: ``reads`` (opened for reading, not created by the stage
    itself) and ``writes``. A CPython audit hook sees every ``open``/``os.open``/``os.listdir``/``os.scandir``.
    Paths under the checkout (``ROOT``, where ``data.raw_dir`` points) count relative to it, as dvc.yaml writes them.
    Code (``*.py``) and caches (``.cache/``, the MLflow store) are not data dependencies. ``writes`` keeps what is on
    disk when the stage ends (``written()``): a temporary renamed into place or deleted is not an output."""

    active: FileAudit | None = None
    _hooked = False

    def __init__(self, project: Path):
        self.project, self.reads, self.writes = project.resolve(), Reads(), {}
        if not FileAudit._hooked:
            sys.addaudithook(FileAudit._hook)  # hooks cannot be removed: one, switched by ``active``
            FileAudit._hooked = True

    def __enter__(self) -> FileAudit:
        FileAudit.active = self
        return self

    def __exit__(self, *exc) -> None:
        FileAudit.active = None

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        audit = FileAudit.active
        if audit is None or event not in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename") or not args \
                or not isinstance(args[0], (str, Path)):
            return
        FileAudit.active = None  # no recursion through the bookkeeping below
        try:
            audit._note(event, args)
        finally:
            FileAudit.active = audit

    def _relative(self, p: typing.Any) -> str | None:
        path = Path(os.path.abspath(p))
        for base in (self.project, ROOT):
            if path.is_relative_to(base):
                rel = path.relative_to(base).as_posix()
                code = rel.endswith((".py", ".pyc")) or ".egg-info/" in rel  # code and package metadata, not data
                return None if code or rel == ".cache" or rel.startswith((".cache/", ".venv", "mlflow.db", "mlruns")) else rel
        return None

    def _note(self, event: str, args: tuple) -> None:
        rel = self._relative(args[0])
        if event == "os.rename":  # what a stage moves into place (atomic writes) is its own output
            dst = self._relative(args[1]) if isinstance(args[1], (str, Path)) else None
            if dst is not None:
                self.writes[dst] = Path(os.path.abspath(args[1]))
            return
        if rel is None:
            return
        path = Path(os.path.abspath(args[0]))
        if event in ("os.listdir", "os.scandir") and (path / "__init__.py").exists():
            return  # the import system listing a package: code, not data
        writing = event == "os.mkdir" or event == "open" and (
            (isinstance(args[1], str) and any(c in args[1] for c in "wax+")) or
            (args[1] is None and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        if writing:
            self.writes[rel] = path
        elif rel not in self.writes and not any(rel.startswith(w + "/") for w in self.writes) and path.exists():
            self.reads.note_at(rel, sys._getframe(2))


    def written(self) -> set[str]:
        return {rel for rel, path in self.writes.items() if path.exists()}


def _run_body(stage: str, params: Params, extra: list[str] = ()) -> Reads:
    """``body(args, params)`` of the stage's script with its dvc.yaml cmd arguments (+ ``extra``: switches, never paths);
    returns the param reads. The data files it read are added to ``FILE_READS[stage]``, those it wrote to ``FILE_WRITES[stage]``."""
    _, script, *argv = shlex.split(DVC[stage]["cmd"])
    mod = _stage_module(script)
    ap = argparse.ArgumentParser()
    ap.add_argument("--params")
    if hasattr(mod, "add_args"):
        mod.add_args(ap)
    reads = Reads()
    with FileAudit(Path.cwd()) as files:
        mod.body(ap.parse_args([*argv, *extra]), recording(params, reads))
    FILE_READS.setdefault(stage, Reads()).update({k: FILE_READS.get(stage, {}).get(k, set()) | v for k, v in files.reads.items()})
    FILE_WRITES.setdefault(stage, set()).update(files.written())
    return reads


FILE_READS: dict[str, Reads] = {}
FILE_WRITES: dict[str, set[str]] = {}
TINY_POLICY: list[Path] = []  # the model stage's model.policy: a model dir outside the project


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A project root: prepared data of a few rows, the tiny model as policy and checkpoints, a labeled synthetic set,
    the prompts, the checkout's raw data (a link). Each stage runs in its own copy (``in_project``), so the order they
    run in does not matter."""
    root = tmp_path_factory.mktemp("dvcparams") / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "raw").symlink_to(RAW)
    TINY_POLICY[:] = [tiny_model_dir]
    rows = load_medmcqa(RAW)[:12]
    prepared = root / "data" / "prepared"
    write_jsonl(prepared / "seeds.jsonl", rows[:4])
    write_jsonl(prepared / "train.jsonl", rows[4:8])
    write_jsonl(prepared / "entities.jsonl", [{"name": "Fabry disease"}, {"name": "Gaucher disease"}])
    bench = [dataclasses.replace(q, id=f"medqa-{i}", source="medqa", split="test") for i, q in enumerate(rows[8:10])]
    write_jsonl(prepared / "benchmarks" / "medqa.jsonl", bench)
    write_jsonl(prepared / "raredis_sub.jsonl", [dataclasses.replace(q, id=f"rare-{q.id}", source="raredis_sub", rare_disease="Fabry disease",
                                                                     category="Diagnosis") for q in bench])
    write_jsonl(root / "data" / "synthetic" / "questions.jsonl",
                [dataclasses.replace(q, id=f"syn-{i}", source="synthetic", split="synthetic") for i, q in enumerate(rows[:2])])
    write_jsonl(root / "data" / "labeled" / "synthetic.jsonl",
                [dataclasses.replace(q, id=f"syn-{i}", source="synthetic", split="synthetic", votes=["B", "B"], majority="B", agreement=1.0,
                                     n_valid=2) for i, q in enumerate(rows[:4])])
    shutil.copytree(ROOT / "prompts", root / "prompts")
    for d in ("artifacts/models/policy", "checkpoints/stage1", "checkpoints/stage2"):
        shutil.copytree(tiny_model_dir, root / d)
    return root


@pytest.fixture
def in_project(project, tmp_path, monkeypatch, mlflow_store):
    """A fresh copy of ``project`` as the cwd and project root."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy, symlinks=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MEDSSR_ROOT", str(copy))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return copy


def _params(**overrides) -> Params:
    """The shipped params.yaml, pointed at the throwaway project and made cheap (overrides change values, never which keys exist)."""
    cheap = {"data.benchmarks": {"medqa": {"file": "benchmarks/test_short_medqa.json.gz"}},
             "synth.n": 2, "synth.max_attempts": 4, "synth.rare_ratio": 0.0,
             "label.reliability_n": 1, "label.sampling.n": 2, "label.sampling.max_new_tokens": 4, "label.allow_empty": True,
             "train.num_generations": 2, "train.max_completion_length": 8, "train.per_device_batch_size": 2,
             "eval.max_per_benchmark": 1, "eval.max_raredis": 1, "eval.sampling.max_new_tokens": 4, "eval.bootstrap": 10}
    return load_params(ROOT / "params.yaml", {**cheap, **overrides})


def _generator(base_url: str) -> dict:
    return {f"synth.generator.{k}": v for k, v in {"backend": "openai_compatible", "model": "fake", "base_url": base_url,
                                                    "max_retries": 0, "timeout_s": 10.0}.items()}


def _model(project: Path) -> Reads:
    shutil.rmtree(project / "artifacts/models/policy")  # what the stage writes
    return _run_body("model", _params(**{"model.policy": str(TINY_POLICY[0])}))


def _prepare(project: Path) -> Reads:
    over = {"data.train_sources": ["bioasq"], "data.allow_empty": True, "synth.cache_dir": str(project / ".cache/llm")}
    reads = _run_body("prepare", _params(**over))
    # the LLM branch (data.reasoning_filter / category_classifier: llm): the classifiers are built from synth.generator
    llm = Reads()
    _stage_module("stages/prepare.py").llm_classifiers(recording(_params(**over, **_generator("http://127.0.0.1:9/v1"), **{
        "data.reasoning_filter": "llm", "data.category_classifier": "llm"}), llm))
    return _merge(reads, llm)


def _corpus(project: Path) -> Reads:
    return _run_body("corpus", _params(**{"corpus.embedder": "bm25", "corpus.eval_embedders": ["bm25"], "corpus.max_passages": 200,
                                          "corpus.eval_sample": 10}))


def _synthesize(project: Path) -> Reads:
    from tests.llm_servers import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        return _run_body("synthesize", _params(**_generator(srv.base_url), **{"synth.cache_dir": str(project / ".cache/llm"),
                                                                             "synth.allow_empty": True}), ["--no-progress-bar"])


def _label(project: Path) -> Reads:
    return _run_body("label", _params(), ["--no-progress-bar"])


def _train(stage: str) -> Callable[[Path], Reads]:
    def run(project: Path) -> Reads:
        trl = _run_body(stage, _params(), ["--dry-run"])
        openrlhf = _run_body(stage, _params(**{"train.backend": "openrlhf", "train.global_batch_size": 4, "train.rollout_batch_size": 4,
                                               "train.micro_batch_size": 1, "train.openrlhf.gpus_per_node": 1,
                                               "train.openrlhf.vllm_num_engines": 1}), ["--dry-run"])
        return _merge(trl, openrlhf)
    return run


def _evaluate(project: Path) -> Reads:
    return _run_body("evaluate", _params(), ["--no-progress-bar"])


def _merge(*reads: Reads) -> Reads:
    out = Reads()
    for r in reads:
        for k, v in r.items():
            out.setdefault(k, set()).update(v)
    return out


RUNNERS = {"model": _model, "prepare": _prepare, "corpus": _corpus, "synthesize": _synthesize, "label": _label,
           "stage1": _train("stage1"), "stage2": _train("stage2"), "evaluate": _evaluate}


def test_every_dvc_stage_with_params_is_checked():
    assert set(RUNNERS) == {name for name, s in DVC.items() if not s.get("always_changed")}


# -- the checks -------------------------------------------------------------------------------------------------
def _declared(stage: str) -> list[str]:
    """Its ``params:``, and the params its cmd uses as ``${key}`` (a change to one changes the cmd: DVC reruns the stage)."""
    return list(DVC[stage].get("params", [])) + template_keys(raw_stages()[stage]["cmd"])


def _covered(key: str, declared: list[str]) -> bool:
    return covers(declared, key)


def _section_type(path: str):
    """The dataclass of the params section at ``path`` (None for a leaf or a user mapping)."""
    tp: typing.Any = Params
    for part in path.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp if dataclasses.is_dataclass(tp) else None


def dependencies(stage: str, reads: Reads) -> dict[str, set[str]]:
    """The reads that are dependencies: less the tracking-only keys and the KNOWN_READS of this stage."""
    out = {}
    for key, where in reads.items():
        where = {w for w in where if not any(stage == s and _covered(key, [p]) and w == fn for s, p, fn in KNOWN_READS)}
        if where and key not in TRACKING_ONLY:
            out[key] = where
    return out


def undeclared_reads(stage: str, reads: Reads) -> list[str]:
    declared = _declared(stage)
    return [f"{key} (read in {', '.join(sorted(where))})" for key, where in sorted(dependencies(stage, reads).items())
            if not _covered(key, declared)]


def too_wide_declarations(stage: str, reads: Reads) -> list[str]:
    """Declared sections with a sub-section the stage never reads: a change there would rerun it for nothing."""
    read = list(dependencies(stage, reads))
    out = []
    for d in _declared(stage):
        section = _section_type(d)
        if section is None:
            continue
        for f in dataclasses.fields(section):
            sub = f"{d}.{f.name}"
            if _section_type(sub) is not None and not any(_covered(k, [sub]) for k in read):
                out.append(f"{d} (never reads {sub}: declare the keys it reads instead)")
    return out


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("stage", list(RUNNERS))
def test_dvc_yaml_declares_exactly_the_params_each_stage_reads(stage, in_project):
    reads = RUNNERS[stage](in_project)
    assert reads, f"{stage}: no params read at all: the recorder is not wired"
    undeclared = undeclared_reads(stage, reads)
    assert not undeclared, f"dvc.yaml stage {stage!r} reads params its `params:` does not declare:\n  " + "\n  ".join(undeclared)
    wide = too_wide_declarations(stage, reads)
    assert not wide, f"dvc.yaml stage {stage!r} declares a section wider than it reads:\n  " + "\n  ".join(wide)


def _declared_files(stage: str) -> list[str]:
    entries = [e for kind in ("deps", "outs", "metrics", "plots") for e in DVC[stage].get(kind, [])]
    return [(next(iter(e)) if isinstance(e, dict) else e).rstrip("/") for e in entries]


# Data reads that are not dependencies: (stage, path prefix, why). Each would be a param-free input DVC cannot see.
NOT_DEPENDENCIES: set[tuple[str, str, str]] = set()


def _outs(stage: str) -> list[str]:
    entries = [e for kind in ("outs", "metrics", "plots") for e in DVC[stage].get(kind, [])]
    return [(next(iter(e)) if isinstance(e, dict) else e).rstrip("/") for e in entries]


# Files a stage writes that are not outs: (stage or "*", a path and what is under it, or "*" + name suffix, why). Caches (.cache/, the MLflow
# store) are never counted.
NOT_OUTPUTS = {("*", "*.progress.jsonl", "resumable progress beside an out: it must outlive DVC deleting the outs before a rerun"),
               ("*", "*.quarantine.jsonl", "damaged progress lines, set aside beside their progress file"),
               ("stage1", "data/rl", "OpenRLHF's prompt export (train.backend: openrlhf only: a TRL run writes none, so no out)"),
               ("stage2", "data/rl", "OpenRLHF's prompt export (train.backend: openrlhf only: a TRL run writes none, so no out)")}


def _not_output(stage: str, path: str) -> bool:
    return any(s in ("*", stage) and (path.endswith(p[1:]) if p.startswith("*") else path == p or path.startswith(p + "/"))
               for s, p, _ in NOT_OUTPUTS)


def undeclared_writes(stage: str) -> list[str]:
    outs = _outs(stage)
    return sorted(path for path in FILE_WRITES.get(stage, set())
                  if not any(path == o or path.startswith(o + "/") for o in outs)
                  and not any(o.startswith(path + "/") for o in outs)  # a folder above an out (mkdir -p)
                  and not _not_output(stage, path))


def undeclared_files(stage: str) -> list[str]:
    declared = _declared_files(stage)
    exempt = [p for s, p, _ in NOT_DEPENDENCIES if s == stage] + ["params.yaml"]
    return [f"{path}  (read by {', '.join(sorted(where))})" for path, where in sorted(FILE_READS.get(stage, {}).items())
            if not any(path == d or path.startswith(d + "/") for d in declared) and not any(path.startswith(p) for p in exempt)
            and not any(d.startswith(path + "/") or path == "." for d in declared)]  # listing a folder above a declared path


@pytest.mark.parametrize("stage", list(RUNNERS))
def test_dvc_yaml_declares_every_data_file_each_stage_reads(stage):
    """Runs after the params test of the same stage (which recorded the stage's file reads on the same run)."""
    if stage not in FILE_READS:
        pytest.skip(f"{stage}: its params test did not run in this session")
    # the model stage reads only model.policy (a param: a hub name or a dir outside the project)
    assert FILE_READS[stage] or stage == "model", f"{stage}: no data file read at all: the audit hook is not wired"
    missing = undeclared_files(stage)
    assert not missing, f"dvc.yaml stage {stage!r} reads files its `deps:` does not declare:\n  " + "\n  ".join(missing)



@pytest.mark.parametrize("stage", list(RUNNERS))
def test_every_file_each_stage_writes_is_under_its_outs(stage):
    """A file written outside the outs is one DVC neither caches nor clears before a rerun (runs after the params test)."""
    if stage not in FILE_WRITES:
        pytest.skip(f"{stage}: its params test did not run in this session")
    assert FILE_WRITES[stage] or stage in ("stage1", "stage2"), f"{stage}: no file written at all: the audit hook is not wired"
    stray = undeclared_writes(stage)
    assert not stray, f"dvc.yaml stage {stage!r} writes files outside its `outs:`/`metrics:`/`plots:`:\n  " + "\n  ".join(stray)


# -- the cmd names exactly the stage's data paths -----------------------------------------------------------------
CODE_DIRS = {"medssr", "eval", "stages", "prompts"}  # deps that are code or prompt text: the script finds them itself
# cmd paths that are neither deps nor outs: (stage, path, why)
SCRATCH_ARGS = {("stage1", "data/rl", "OpenRLHF's prompt export (see NOT_OUTPUTS)"), ("stage2", "data/rl", "OpenRLHF's prompt export")}


def cmd_paths(cmd: str) -> list[str]:
    """The paths a cmd passes: every option's value (``NAME=PATH`` values give their PATH). A cmd passes only paths:
    every other setting is a param."""
    tokens, out = shlex.split(cmd)[2:], []
    for prev, tok in zip(tokens, tokens[1:], strict=False):
        if prev.startswith("--") and not tok.startswith("--"):
            out.append((tok.split("=", 1)[1] if "=" in tok else tok).rstrip("/"))
    return out


def _data_files(stage: str) -> list[str]:
    return [d for d in _declared_files(stage) if Path(d).parts[0] not in CODE_DIRS]


def test_cmd_paths_are_read_as_dvc_repro_passes_them():
    assert cmd_paths("python stages/x.py stage1 --out a/b --dir base=c/d/ --flag --report r.json") == ["a/b", "c/d", "r.json"]


@pytest.mark.parametrize("stage", list(DVC))
def test_each_stage_cmd_names_exactly_the_data_paths_of_its_deps_and_outs(stage):
    """The script has no path defaults: what DVC tracks is what the cmd passes, and nothing else."""
    declared, passed = _data_files(stage), cmd_paths(DVC[stage]["cmd"])
    scratch = {p for s, p, _ in SCRATCH_ARGS if s == stage}
    unnamed = [d for d in declared if not any(d == p or d.startswith(p + "/") for p in passed)]
    assert not unnamed, f"dvc.yaml stage {stage!r} declares data its cmd does not pass: {unnamed}"
    stray = [p for p in passed if p not in scratch and not any(d == p or d.startswith(p + "/") for d in declared)]
    assert not stray, f"dvc.yaml stage {stage!r} passes paths that are neither its deps nor outs: {stray}"
