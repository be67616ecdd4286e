"""One training stage end to end: plan -> data -> trainer backend -> checkpoint, MLflow metrics, report.

``run_train_stage(params, "stage1" | "stage2", paths)`` is what ``stages/train.py`` calls, with ``StagePaths`` from
the stage's arguments: dvc.yaml's cmd names every file (relative paths are under the project root). There:

* ``paths.out``: the finished policy (``save_pretrained``), the stage's DVC out (``checkpoints/<stage>``). Stage II
  starts from ``paths.init`` (stage I's out); stage I from ``paths.policy`` (the ``model`` stage's out).
* ``.cache/train/<stage>``: the resumable run dir (TRL ``checkpoint-N`` dirs, or OpenRLHF's DeepSpeed
  checkpoints and TensorBoard logs). It lives outside the out because DVC deletes outs before rerunning a
  stage. A fingerprint of the stage's params, data and start model is kept there; a different fingerprint
  discards the old run instead of resuming it.
* ``paths.report`` (summary) and ``paths.steps`` (per-step rows, for ``dvc plots``). A run resumed from ``checkpoint-N`` restores rows 1..N from the checkpoint's trainer state, so
  both files equal an uninterrupted run's (wall-clock timings and peak memory aside). ``final`` is the trainer's
  own end-of-call summary (runtime, samples/s, ``train_loss``): after a resume it covers the resumed steps only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssr.config import Params, set_offline_env
from medssr.errors import MedssrError
from medssr.files import atomic_dir, write_text_atomic
from medssr.prompt_format import PromptFormat, mlflow_params, prompt_format
from medssr.prompt_format import summary as prompt_summary
from medssr.rl import strategies
from medssr.rl.data import DEFAULT_PROMPT, RLExample, load_examples, load_prompt_template

MODEL_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "architectures")
PASSTHROUGH_MARKER = "medssr_passthrough.json"


class TrainError(MedssrError, RuntimeError):
    """A training stage that cannot start or finish; the message names the file or param to fix."""


@dataclass
class StagePaths:
    """Inputs and outputs of a training stage: the arguments of its dvc.yaml cmd (``stages/train.py``), no defaults."""

    synthetic: str  # labeled synthetic questions (JSONL)
    real: str  # real training rows (JSONL)
    policy: str  # the model stage's out: stage I starts from it, stage II checks the checkpoint's architecture against it
    out: str  # the checkpoint dir this stage writes
    report: str  # the summary report (JSON)
    steps: str  # one row per step (JSON, dvc plots)
    rl_data: str  # OpenRLHF prompt JSONL dir, shipped to the Ray cluster with the working_dir (scratch, not a DVC out)
    init: str | None = None  # stage II's start: stage I's out (unused by stage I)
    heldout: str | None = None  # prepared benchmarks dir: the held-out questions of train.eval_every (medssr.rl.heldout)
    heldout_curve: str | None = None  # held-out accuracy per measured step (JSON, dvc plots); default beside ``steps``
    runs: str = ".cache/train"  # resumable run dirs: a cache, outside the outs DVC deletes before a rerun
    root: str | None = None  # base for relative paths; default the project root

    def base(self) -> Path:
        from medssr.tracking import workspace_root

        return Path(self.root) if self.root else workspace_root()

    def abs(self, p: str | os.PathLike) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.base() / p


def model_signature(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The architecture fields of a model dir's config.json (what must match between policy and checkpoint)."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        raise TrainError(f"{model_dir}: not a model directory (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise TrainError(f"{cfg_path}: invalid JSON ({e.msg})") from None
    return {k: cfg.get(k) for k in MODEL_KEYS}


def check_compatible(candidate: str | os.PathLike, policy: str | os.PathLike) -> None:
    """Refuse a checkpoint built from another model (vocab or architecture differ from the configured policy)."""
    a, b = model_signature(candidate), model_signature(policy)
    diffs = [f"{k} {a[k]!r} != {b[k]!r}" for k in MODEL_KEYS if a[k] != b[k]]
    if diffs:
        raise TrainError(
            f"{Path(candidate) / 'config.json'}: checkpoint does not match the policy {Path(policy) / 'config.json'} "
            f"({'; '.join(diffs)}): it was trained from another model.policy; delete it and rerun the earlier stage"
        )


def passthrough(src: str | os.PathLike, dst: str | os.PathLike, reason: str) -> Path:
    """Materialise an untrained stage: its out is its input model, hard-linked (copied across filesystems)."""
    src, dst = Path(src), Path(dst)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link, ignore=shutil.ignore_patterns(PASSTHROUGH_MARKER, "*.tmp*"),
                        dirs_exist_ok=True)
        (tmp / PASSTHROUGH_MARKER).write_text(json.dumps({"source": str(src), "reason": reason}, indent=2))
    return dst


def examples_hash(examples: Sequence[RLExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.label, e.question, e.options], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def run_fingerprint(params: Params, stage: str, init_model: str, examples: Sequence[RLExample], prompt: str,
                    chat_template: bool = True) -> str:
    """Identity of a stage run: a resumable checkpoint is reused only if all of this is unchanged."""
    # only this stage's params are read (dvc.yaml declares train minus the other stage: tests/test_dvc_params.py);
    # save_steps is left out, checkpoint cadence does not change what is trained
    skip = {stage, "stage1" if stage == "stage2" else "stage2", "save_steps"}
    train = {f.name: _plain(getattr(params.train, f.name)) for f in dataclasses.fields(params.train) if f.name not in skip}
    stage_cfg = _plain(getattr(params.train, stage))
    init_sig = model_signature(init_model) if Path(init_model, "config.json").exists() else init_model
    blob = json.dumps({"stage": stage, "train": train, "stage_cfg": stage_cfg, "init": str(init_model), "init_sig": init_sig,
                       "data": examples_hash(examples), "prompt": hashlib.sha256(prompt.encode()).hexdigest()[:16],
                       "dtype": params.model.dtype, **({} if chat_template else {"plain_prompt": True})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_run_dir(run_dir: Path, fingerprint: str) -> bool:
    """Keep ``run_dir`` for resuming if its fingerprint matches, else wipe it; True when it was kept."""
    marker = run_dir / "medssr_run.json"
    if marker.exists():
        try:
            same = json.loads(marker.read_text()).get("fingerprint") == fingerprint
        except json.JSONDecodeError:
            same = False
        if same:
            return True
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return False


def stage_input_model(params: Params, stage: str, paths: StagePaths, dry_run: bool = False) -> str:
    """Stage I starts from ``paths.policy`` (or ``model.policy`` for OpenRLHF hub ids); stage II from ``paths.init``.

    A dry run of stage II before stage I has run plans from the policy (the checkpoint's lineage starts there)."""
    if stage == "stage2":
        if not paths.init:
            raise TrainError("stage2 starts from the stage I checkpoint: pass its dir (the stage1 stage's out) as --init")
        p = paths.abs(paths.init)
        if dry_run and not (p / "config.json").exists():
            print(f"[train] stage2 dry run: {p} not trained yet; planning from the policy, where its lineage starts")
            return stage_input_model(params, "stage1", paths)
        if not (p / "config.json").exists():
            raise TrainError(f"{p}: stage I checkpoint missing: run `dvc repro stage1` first")
        return str(p)
    p = paths.abs(paths.policy)
    if (p / "config.json").exists():
        return str(p)
    if params.train.backend == "openrlhf" and not params.model.policy.startswith((".", "/")) and "/" in params.model.policy:
        return params.model.policy  # a hub id the cluster has cached (paper profiles)
    raise TrainError(f"{p}: policy dir missing (model.dir): run the model stage first (`dvc repro model`)")


def _section(params: Params, stage: str, plan: strategies.StagePlan) -> dict[str, Any]:
    from medssr.config import to_flat_dict

    flat = to_flat_dict(params.train, "train.")
    other = "stage1" if stage == "stage2" else "stage2"
    out = {k: v for k, v in flat.items() if not k.startswith(f"train.{other}.") and not k.startswith("train.openrlhf.")}
    if params.train.backend == "openrlhf":
        out.update({k: v for k, v in flat.items() if k.startswith("train.openrlhf.")})
    out.update({"stage.data": plan.data, "stage.reward": plan.reward})
    if stage == "stage1":  # the model it starts from (stage II starts from stage I's checkpoint and does not declare it)
        out["model.policy"] = params.model.policy
    return out


def heldout_curve_path(steps: str | os.PathLike) -> Path:
    """The held-out accuracy curve beside the steps file (reports/train_stage1_steps.json -> ..._heldout.json): its own
    file, since its points are not at every step and a plot of a field some rows lack fails in ``dvc plots``."""
    p = Path(steps)
    return p.with_name(p.name.replace("_steps.json", "") + "_heldout.json")


def _write_reports(paths: StagePaths, report: dict[str, Any], history: list[dict[str, Any]],
                   heldout: Sequence[dict[str, Any]] = ()) -> Path:
    """Write the report, the step rows and the held-out curve. Every step row carries every field dvc.yaml's plots read
    from the steps file, null where the stage does not measure it (stage I's majority reward logs no ``accuracy``):
    ``dvc plots`` fails a plot on a field the first row lacks and then drops it for the other stage too."""
    plotted = ("reward_mean", "kl", "distinct_answers", "accuracy")  # the y fields of dvc.yaml's plots on train_*_steps.json
    for p in (paths.abs(paths.report), paths.abs(paths.steps)):
        p.parent.mkdir(parents=True, exist_ok=True)
    out = write_text_atomic(paths.abs(paths.report), json.dumps(report, indent=2, default=str))
    rows = [{**dict.fromkeys(plotted), **row} for row in history]
    write_text_atomic(paths.abs(paths.steps), json.dumps(rows, indent=1, default=str))
    curve = paths.abs(paths.heldout_curve) if paths.heldout_curve else heldout_curve_path(paths.abs(paths.steps))
    write_text_atomic(curve, json.dumps(list(heldout), indent=1, default=str))
    return out


def run_train_stage(params: Params, stage: str, paths: StagePaths, *, dry_run: bool = False,
                    callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run training stage ``stage`` ('stage1' | 'stage2') as ``params.train.strategy`` plans it; returns the report."""
    set_offline_env()
    plan = strategies.stage_plan(params.train.strategy, stage)
    strategies.check_backend(params.train.strategy, params.train.backend)
    init_model = stage_input_model(params, stage, paths, dry_run)
    policy_dir = paths.abs(paths.policy)
    if stage == "stage2" and (policy_dir / "config.json").exists():
        check_compatible(init_model, policy_dir)
    out_dir = paths.abs(paths.out)
    report: dict[str, Any] = {"stage": stage, "strategy": params.train.strategy, "backend": params.train.backend,
                              "data": plan.data, "reward": plan.reward, "init_model": init_model, "out": str(out_dir)}
    t0 = time.time()

    if plan.data is None:
        reason = f"strategy {params.train.strategy!r} does not train {stage}"
        report.update(skipped=True, reason=reason)
        if dry_run:
            print(f"[train] {stage}: pass-through ({reason}): {init_model} -> {out_dir}")
            return report
        passthrough(init_model, out_dir, reason)
        from medssr import tracking

        with tracking.stage_run(stage, params, _section(params, stage, plan)) as mlflow:
            mlflow.set_tags({"passthrough": "true", "strategy": params.train.strategy})
        _write_reports(paths, report, [])
        print(f"[train] {stage}: pass-through ({reason}); {out_dir} links {init_model}")
        return report

    stage_cfg = getattr(params.train, stage)
    template = load_prompt_template(paths.abs(DEFAULT_PROMPT))
    fmt = prompt_format(init_model, params.model.chat_template)  # the rule the label stage and evaluation apply too
    examples, stats = load_examples(plan.data, paths.abs(paths.synthetic), paths.abs(paths.real),
                                    max_samples=stage_cfg.max_samples, seed=params.train.seed)
    report["dataset"] = stats
    run_dir = paths.abs(paths.runs) / stage

    if params.train.backend == "trl":
        result = _run_trl(params, stage, plan, stage_cfg, init_model, examples, template, fmt, run_dir, out_dir, report, dry_run,
                          callbacks, paths)
    else:
        result = _run_openrlhf(params, stage, plan, stage_cfg, init_model, examples, template, fmt, run_dir, out_dir, report,
                               dry_run, paths)
    if dry_run:
        return report
    history = result.pop("history", [])
    heldout = result.pop("heldout", [])
    report.update(result)
    report["heldout"] = heldout
    report["wall_s"] = round(time.time() - t0, 2)
    _write_reports(paths, report, history, heldout)
    s = report.get("summary", {})
    print(f"[train] {stage}: {params.train.strategy}/{plan.data}/{plan.reward} on {params.train.backend}: "
          f"{report.get('global_step')} steps, {stats['examples']} prompts, reward {s.get('reward_mean_mean', float('nan')):.3f} "
          f"(last {s.get('reward_mean_last', float('nan')):.3f}), distinct answers {s.get('distinct_answers_mean', float('nan')):.2f}, "
          f"{report['wall_s']:.1f}s -> {out_dir}")
    return report


def _log_summary(mlflow: Any, params: Params, stage: str, summary: dict[str, float], extra: dict[str, float]) -> None:
    """The run-level numbers on the stage run: steps, time, peak memory. One name per quantity: a step series
    (``train/<stage>/reward_mean``) is not repeated as ``_last``/``_mean`` scalars (MLflow draws those as lone bars);
    its summary stays in reports/train_<stage>.json and metrics/train_<stage>.json for DVC."""
    from medssr.metric_names import train_metric

    scalars = {k: v for k, v in summary.items() if k == "steps_logged"}
    values = {train_metric(stage, k): float(v) for k, v in {**scalars, **extra}.items() if isinstance(v, (int, float))}
    if values:
        mlflow.log_metrics(values)


def _prompt_record(stage: str, fmt: PromptFormat, tok: Any, template: str, examples: Sequence[RLExample], report: dict[str, Any]) -> dict:
    """The stage's prompt rule and probe sha, into its report, printed in one line (as label and evaluate do)."""
    from medssr.rl.data import render_prompt

    rec = fmt.record(fmt.renderer(tok), template, render_prompt(examples[0].question, template) if examples else None)
    report["prompt_format"] = rec
    print(prompt_summary(stage, rec))
    return rec


def _lineage(stage: str, params: Params, init_model: str, fingerprint: str, fmt: PromptFormat) -> dict[str, Any]:
    """What a trained checkpoint's medssr_source.json says: where it came from and the prompt rule it was trained with
    (``medssr.models.trained_prompt_format`` reads it back, so the next stage and evaluation ask it the same way)."""
    return {"stage": stage, "strategy": params.train.strategy, "init": init_model, "fingerprint": fingerprint,
            "prompt_format": {"chat_template": fmt.chat_template, "rule": fmt.rule}}


def _run_trl(params, stage, plan, stage_cfg, init_model, examples, template, fmt, run_dir, out_dir, report, dry_run, callbacks,
             paths) -> dict:
    from medssr import tracking
    from medssr.models import load_tokenizer
    from medssr.rl import trl_backend
    from medssr.rl.data import drop_long_prompts, to_trl_dataset

    tok = load_tokenizer(init_model)
    examples, dropped = drop_long_prompts(examples, template, tok, params.train.max_prompt_length, fmt)
    report["dataset"]["dropped_long_prompts"] = dropped
    if not examples:
        raise TrainError(f"train.max_prompt_length: all {dropped} prompts of {stage} are longer than {params.train.max_prompt_length} tokens")
    rec = _prompt_record(stage, fmt, tok, template, examples, report)
    fp = run_fingerprint(params, stage, init_model, examples, template, fmt.chat_template)
    if dry_run:
        cfg = trl_backend.grpo_config(params.train, stage_cfg, run_dir, dtype=params.model.dtype)
        print(f"[train] {stage} dry run (trl): {plan.data}/{plan.reward}, {len(examples)} prompts from {init_model}; "
              f"G={cfg.num_generations} steps={cfg.max_steps} lr={cfg.learning_rate} beta={cfg.beta} loss={cfg.loss_type} "
              f"batch={cfg.per_device_train_batch_size}x{cfg.gradient_accumulation_steps} completions, "
              f"max_completion_length={cfg.max_completion_length}, use_cpu={cfg.use_cpu}; run dir {run_dir}, out {out_dir}")
        report["fingerprint"] = fp
        return {}
    kept = prepare_run_dir(run_dir, fp)
    resume = trl_backend.last_checkpoint(run_dir) if kept else None
    if resume is not None:
        print(f"[train] {stage}: resuming from {resume}")
    dataset = to_trl_dataset(examples, template, fmt)
    heldout = _heldout_callback(params, stage, paths, template, fmt, init_model)
    with tracking.stage_run(stage, params, {**_section(params, stage, plan), **mlflow_params(rec)}) as mlflow:
        mlflow.set_tags({"strategy": params.train.strategy, "backend": "trl", "stage_data": plan.data, "stage_reward": plan.reward,
                         "resumed_from": resume.name if resume else "none"})
        result = trl_backend.train(init_model, dataset, plan.reward, params.train, stage_cfg, stage=stage, run_dir=run_dir, out_dir=out_dir,
                                   mlflow=mlflow, dtype=params.model.dtype, resume_from=resume, callbacks=callbacks, heldout=heldout,
                                   meta=_lineage(stage, params, init_model, fp, fmt))
        _log_summary(mlflow, params, stage, result["summary"], {"global_step": result["global_step"], "train_s": result["train_s"]})
    return result


def _heldout_callback(params: Params, stage: str, paths: StagePaths, template: str, fmt: PromptFormat, init_model: str) -> Any:
    """The held-out accuracy probe of ``train.eval_every`` (None when off or no benchmarks dir was given)."""
    t = params.train
    if not t.eval_every or not paths.heldout:
        return None
    from medssr.rl.heldout import HeldoutCallback, heldout_questions

    questions = heldout_questions(paths.abs(paths.heldout), t.heldout_n, t.seed)
    return HeldoutCallback(stage, questions, template, fmt, init_model, every=t.eval_every, max_new_tokens=t.heldout_max_new_tokens)


def _export_heldout(params: Params, stage: str, paths: StagePaths, template: str, fmt: PromptFormat, tok: Any) -> str | None:
    """The held-out set as OpenRLHF eval rows (gold labels, datasource 'heldout'), relative to the working dir, or None."""
    if not params.train.eval_every or not paths.heldout:
        return None
    from medssr.rl.data import examples_from_questions, write_openrlhf_jsonl
    from medssr.rl.heldout import heldout_questions

    examples, _ = examples_from_questions(heldout_questions(paths.abs(paths.heldout), params.train.heldout_n, params.train.seed), "real")
    examples = [dataclasses.replace(e, kind="heldout") for e in examples]
    rel = Path(paths.rl_data) / f"{stage}_heldout.jsonl"
    write_openrlhf_jsonl(examples, template, paths.abs(rel), fmt, tok)
    return str(rel)


def _run_openrlhf(params, stage, plan, stage_cfg, init_model, examples, template, fmt, run_dir, out_dir, report, dry_run, paths) -> dict:
    from medssr import tracking
    from medssr.models import load_tokenizer
    from medssr.rl import openrlhf_backend as orl

    data_rel = Path(paths.rl_data) / f"{stage}.jsonl"
    try:  # a dry run of a paper profile names a hub model this machine may not have: lengths then go unchecked
        tok = load_tokenizer(init_model)
    except Exception as e:
        if not dry_run:
            raise TrainError(f"model.policy: cannot load the tokenizer of {init_model} to drop over-long prompts: {e}") from None
        print(f"[train] {stage}: tokenizer of {init_model} not available here ({type(e).__name__}); prompt lengths not checked")
        tok = None
    rec = _prompt_record(stage, fmt, tok, template, examples, report)
    export = orl.export_prompts(examples, template, paths.abs(data_rel), params.train, stage_cfg, tokenizer=tok, fmt=fmt)
    report["dataset"].update(export)
    n = export["exported"]
    heldout_rel = _export_heldout(params, stage, paths, template, fmt, tok)
    run_paths = orl.RunPaths(model=init_model, dataset=str(data_rel), output_dir=str(out_dir), ckpt_path=str(run_dir / "ckpt"),
                             tensorboard_dir=str(run_dir / "tb"), heldout_dataset=heldout_rel)
    wd = params.train.openrlhf.working_dir
    wd = str(paths.abs(wd).resolve())
    # the interpreter of the separate OpenRLHF environment (used when train.openrlhf.ray_address is empty)
    python = os.environ.get("MEDSSR_OPENRLHF_PYTHON", params.train.openrlhf.python)
    cmd = orl.build_command(params.train, stage_cfg, run_paths, n_prompts=n, run_name=f"medssr-{stage}", working_dir=wd, python=python,
                            chat_template=fmt.chat_template)
    report["command"] = cmd
    if dry_run:
        print(orl.format_command(cmd))
        return {}
    fp = run_fingerprint(params, stage, init_model, examples, template, fmt.chat_template)
    prepare_run_dir(run_dir, fp)
    with tracking.stage_run(stage, params, {**_section(params, stage, plan), **mlflow_params(rec)}) as mlflow:
        mlflow.set_tags({"strategy": params.train.strategy, "backend": "openrlhf", "stage_data": plan.data, "stage_reward": plan.reward})
        mlflow.log_text(orl.format_command(cmd), f"openrlhf_{stage}_command.sh")
        t0 = time.time()
        rc = orl.launch(cmd, run_dir / "openrlhf.log", cwd=paths.base())
        train_s = time.time() - t0
        history = orl.tensorboard_to_mlflow(run_dir / "tb", stage, mlflow, params.train.rollout_batch_size * params.train.num_generations)
        if rc != 0:
            raise TrainError(f"{run_dir / 'openrlhf.log'}: OpenRLHF exited with status {rc}")
        if not (out_dir / "config.json").exists():
            raise TrainError(f"{out_dir}: OpenRLHF finished but wrote no HF model (see {run_dir / 'openrlhf.log'})")
        # OpenRLHF writes no lineage of its own: without this the checkpoint's rule would restart from its saved files
        write_text_atomic(out_dir / "medssr_source.json", json.dumps(_lineage(stage, params, init_model, fp, fmt), indent=2, default=str))
        from medssr.rl.callbacks import summarize

        summary = summarize(history)
        _log_summary(mlflow, params, stage, summary, {"global_step": history[-1]["step"] if history else 0, "train_s": train_s})
    return {"history": history, "summary": summary, "global_step": int(history[-1]["step"]) if history else 0, "train_s": train_s}


__all__ = ["StagePaths", "TrainError", "check_compatible", "passthrough", "run_train_stage"]
