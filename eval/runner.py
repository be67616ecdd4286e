"""Evaluate checkpoints on the declared benchmarks: prompt F.4, k runs, a constrained second pass, scores, MLflow.

For each checkpoint, ``medssr.rollout`` (the loop the label stage uses too) draws k samples per question (sample j is
run j; each question's random streams are keyed by ``<benchmark>:<id>`` and the eval seed, so every checkpoint sees
the same random numbers). With hf, whose floats move with the batch composition, each benchmark is one
``Sampler.sample`` call and a benchmark left unfinished by a kill is sampled again whole, so a resumed run equals an
uninterrupted one; with vLLM (samples fixed by their seeds) a benchmark goes in chunks and only missing questions
are sampled. Each checkpoint is prompted by ``medssr.models.chat_template_rule`` (params
``model.chat_template``; auto: base models get the plain prompt, instruct models their own template, as the official
evaluator does), logged as ``eval.used.<checkpoint>.chat_template``. With ``eval.sampling.stop_at_answer: false``
(recommended) a model writes to EOS or max_new_tokens and ``extract_answer`` reads its last committed answer.
Outputs with no valid single answer, and outputs that only repeat the prompt's option lines, get the paper's second
pass (``second_pass_reason`` 'no_answer' | 'echo' in the prediction): ``Sampler.constrained_choice`` restricts the
next token after ``<prompt><output>\\nThe answer is`` to the option letters (allowed_token_ids on vLLM; the official
script adds +100 to the letters' logits, the same argmax). Sampled outputs are appended to
``.cache/eval_progress/<checkpoint>-<fingerprint>.jsonl`` in the project root as each question's k runs finish
(outside data/eval, which DVC clears before the stage runs), so a killed run resumes where it stopped; a damaged
line goes to a ``.quarantine.jsonl`` beside it, is counted in the stage's output, and its question (with hf, its
benchmark) is sampled again. The file is kept: the fingerprint (``medssr.rollout.RolloutSpec``) is the weights' content and dtype,
decoding (stop rule included), k, seed, prompt and chat-template rule, so a later run of the same model reuses its
samples (the base model in every value of a sweep, a DVC queue copy included).
See docs/evaluation.md, "Decoding and answer extraction".

Outputs (paths from the evaluate stage's cmd in dvc.yaml): ``<predictions_dir>/predictions_<checkpoint>.jsonl``, ``metrics/eval.json`` and MLflow metrics (accuracy with Wilson
interval and n per benchmark and RareDis-Sub category, the average over the paper's nine benchmarks, and each
checkpoint's paired difference to base with its bootstrap interval and McNemar p): names and keys in eval/scoring.py.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.benchmarks import load_evaluated, paper_benchmarks, sampling_for_family
from eval.scoring import REFERENCE, Prediction, format_table, results_json, results_metrics
from medssr import metric_names
from medssr.answers import ANSWER_SUFFIX, echoes_options, extract_answer
from medssr.config import SamplingCfg, set_offline_env, to_flat_dict
from medssr.errors import MedssrError
from medssr.files import write_json_atomic
from medssr.prompt_format import question_message
from medssr.records import Question, write_jsonl
from medssr.rollout import Item, RolloutSpec, cache_path_for, chunk_size_for, composition_matters, rollout

PROGRESS_DIR = ".cache/eval_progress"
EVAL_PROMPT = "eval_f4"


class EvalError(MedssrError, RuntimeError):
    """An evaluation that cannot run: a missing checkpoint, no benchmark, a bad checkpoint name."""


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_.") or "checkpoint"


def resolve_checkpoints(names: Sequence[str], standard: Mapping[str, str], skip_missing: bool = True) -> dict[str, str]:
    """``eval.checkpoints`` entries -> {name: model dir}: a standard name ('base', 'stage1', 'stage2': the dirs the
    evaluate stage's ``--checkpoint-dir`` arguments give in ``standard``), a directory, or 'name=directory'.

    A missing standard checkpoint (not trained yet) is skipped with a warning when ``skip_missing``; a missing
    explicit directory is always an error.
    """
    out: dict[str, str] = {}
    for entry in names:
        explicit = True
        if "=" in entry:
            name, path = (s.strip() for s in entry.split("=", 1))
        elif entry in standard:
            name, path, explicit = entry, standard[entry], False
        else:
            name, path = Path(entry.rstrip("/")).name, entry
        name = _safe_name(name)
        if name in out:
            raise EvalError(f"eval.checkpoints: two checkpoints are named {name!r}; write one as 'name=path'")
        if not (Path(path) / "config.json").exists():
            if explicit or not skip_missing:
                raise EvalError(f"eval.checkpoints: {entry!r}: {path} is not a model directory (no config.json)")
            print(f"[evaluate] warning: checkpoint {name!r} not found at {path}; skipped")
            continue
        out[name] = str(path)
    if not out:
        raise EvalError(f"eval.checkpoints: none of {list(names)} exists yet (train first, or list a model directory)")
    return out


def load_eval_prompt():
    """Prompt F.4 from prompts/eval_f4.txt (placeholder {question}: the stem with 'A. ...' option lines)."""
    from medssr.synth.prompts import load_prompt

    return load_prompt(EVAL_PROMPT)


def eval_spec(model_dir: str, sampling: SamplingCfg, runs: int, seed: int, template: Any, dtype: str = "float32",
              chat_template: bool = True) -> RolloutSpec:
    """What decides a checkpoint's samples (its progress file is named by its fingerprint). Extraction runs on load,
    so it is not in it. hf: one call per benchmark, as an uninterrupted run has always sampled it (other chunks
    would move its floats); vLLM: the shared chunks."""
    from medssr.models import weights_fingerprint

    chunk = None if composition_matters(sampling) else chunk_size_for(sampling, runs)
    return RolloutSpec(sampling, runs, seed, weights_fingerprint(model_dir), dtype, template.sha256, chat_template, chunk)


def second_pass_reason(output: str, options: Mapping[str, str], complete: bool = True) -> str | None:
    """Why an output goes to the second pass: 'echo' (it only repeats the option lines), 'no_answer', or None."""
    if extract_answer(output, options, complete) is not None:
        return None
    return "echo" if echoes_options(output, options, complete) else "no_answer"


def evaluate_model(sampler: Any, benchmarks: Mapping[str, Sequence[Question]], sampling: SamplingCfg, runs: int, seed: int,
                   template: Any, constrained_pass: bool = True, progress_path: str | os.PathLike | None = None,
                   progress: bool = True, stats: dict[str, Any] | None = None, *, dtype: str = "float32",
                   chat_template: bool = True, spec: RolloutSpec | None = None) -> list[Prediction]:
    """Predictions of one loaded model: k samples per question, answer extraction, constrained pass for invalid ones.

    Each question's k outputs are appended to ``progress_path`` as soon as they are complete and reused by a later
    call with the same ``eval_spec`` (``dtype`` and ``chat_template``: how the sampler was built); ``stats`` (if
    given) receives this call's ``medssr.rollout.RolloutStats`` (resumed and sampled questions, progress lines
    quarantined as damaged). ``spec``: the caller's ``eval_spec`` of these arguments, when it has one (saves hashing
    the weights again)."""
    spec = spec or eval_spec(sampler.model_dir, sampling, runs, seed, template, dtype, chat_template)
    items = [Item(f"{bench}:{q.id}", question_message(template, q.render()), q.options) for bench, qs in benchmarks.items() for q in qs]
    done, st = rollout(sampler, spec, items, progress_path, groups=[len(qs) for qs in benchmarks.values()], progress=progress,
                       desc="evaluating")
    preds: list[Prediction] = []
    for bench, questions in benchmarks.items():
        for q in questions:
            for run, c in enumerate(done[f"{bench}:{q.id}"]):
                complete = c.finish_reason != "length"  # a cut-off last line is unfinished, not an answer
                letter = extract_answer(c.text, q.options, complete)
                pred = Prediction(id=q.id, benchmark=bench, run=run, gold=q.answer or "", output=c.text, extracted=letter,
                                  constrained=None, final=letter, correct=letter == q.answer, category=q.category,
                                  n_tokens=c.n_tokens, finish_reason=c.finish_reason)
                pred.second_pass_reason = second_pass_reason(c.text, q.options, complete)  # type: ignore[attr-defined]
                preds.append(pred)
    if constrained_pass:
        _constrained_pass(sampler, benchmarks, preds, template)
    if stats is not None:
        stats.update(dataclasses.asdict(st))
    return preds


def _constrained_pass(sampler: Any, benchmarks: Mapping[str, Sequence[Question]], preds: list[Prediction], template: Any) -> None:
    """Force one option letter after '<prompt><output>\\nThe answer is' for every prediction with no valid letter
    (an option echo extracts to None, so it is among them)."""
    qmap = {(b, q.id): q for b, qs in benchmarks.items() for q in qs}
    todo = [p for p in preds if p.extracted is None]
    if not todo:
        return
    rendered: dict[tuple[str, str], str] = {}
    texts, letters = [], []
    for p in todo:
        q = qmap[(p.benchmark, p.id)]
        if (p.benchmark, p.id) not in rendered:
            rendered[(p.benchmark, p.id)] = sampler.render(question_message(template, q.render()))
        texts.append(rendered[(p.benchmark, p.id)] + p.output.rstrip() + "\n" + ANSWER_SUFFIX)
        letters.append(list(q.options))
    for p, letter in zip(todo, sampler.constrained_choice(texts, letters), strict=True):
        p.constrained = letter
        p.final = letter
        p.correct = letter == p.gold


def _release(sampler: Any) -> None:
    """Close a checkpoint's sampler (model or engine) before the next one is built.

    The caller must also drop its own reference: deleting a parameter here would leave the caller's variable
    holding the old engine, and vLLM refuses to start a second engine while the first holds the memory.
    """
    close = getattr(sampler, "close", None)
    if callable(close):
        close()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def eval_json_headlines(metrics_path: str | os.PathLike) -> dict[str, float]:
    """The final checkpoint's numbers from the evaluate stage's metrics (metrics/eval.json) under the unprefixed MLflow names."""
    path = Path(metrics_path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return metric_names.flatten(data[list(data)[-1]], "eval") if data else {}


def stage_headlines(reports: Mapping[str, str | os.PathLike]) -> dict[str, float]:
    """The numbers of every stage report present ({prefix: report file}) under their MLflow names; the parent run
    keeps the headline ones (``tracking.log_summary_to_parent``)."""
    out: dict[str, float] = {}
    for prefix, fname in reports.items():
        path = Path(fname)
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            print(f"[report] warning: {path} is not valid JSON; its headline metrics are not copied")
            continue
        if isinstance(data, dict):
            out |= metric_names.flatten(data, prefix)
    return out


def run_evaluate(params: Any, checkpoints: Mapping[str, str], prepared_dir: str | os.PathLike, metrics_path: str | os.PathLike,
                 predictions_dir: str | os.PathLike, family_defaults: bool | None = None, sampler_factory: Callable[..., Any] | None = None,
                 log_mlflow: bool = True, progress: bool = True, progress_dir: str | os.PathLike = PROGRESS_DIR,
                 dry_run: bool = False) -> dict[str, Any]:
    """Evaluate every checkpoint (``checkpoints`` {name: dir}, see ``resolve_checkpoints``) on the benchmarks of
    ``load_evaluated(params, prepared_dir)`` and return eval.json.

    The last checkpoint is the final one: its MLflow metrics are unprefixed and copied onto the pipeline parent run,
    so the compare view shows a whole sweep (the report stage adds every stage report's headlines there).
    ``dry_run`` prints each checkpoint's prompt rule and probe sha (``medssr.prompt_format``) and samples nothing.
    """
    set_offline_env()
    from medssr.prompt_format import prompt_format
    from medssr.prompt_format import summary as prompt_summary
    from medssr.sampling import make_sampler

    cfg = params.eval
    if family_defaults is None:
        family_defaults = bool(getattr(cfg, "family_defaults", False))  # proposed param eval.family_defaults
    factory = sampler_factory or make_sampler
    ckpts = dict(checkpoints)
    benchmarks = load_evaluated(params, prepared_dir)
    paper = paper_benchmarks(params)  # the headline average is over the paper's nine when all of them are evaluated
    average_over = paper if paper and set(paper) <= set(benchmarks) else None
    clash = sorted(set(benchmarks) & set(ckpts))
    if clash:
        raise EvalError(f"eval: {clash[0]!r} names both a benchmark and a checkpoint; metric names eval/<checkpoint>/... would be ambiguous")
    template = load_eval_prompt()
    progress_root = Path(progress_dir)
    if not progress_root.is_absolute():
        from medssr.tracking import project_root

        progress_root = project_root() / progress_root
    final = list(ckpts)[-1]
    preds_by: dict[str, list[Prediction]] = {}
    used: dict[str, dict[str, Any]] = {}
    pred_dir = Path(predictions_dir)
    first = next((question_message(template, q.render()) for qs in benchmarks.values() for q in qs), None)
    if dry_run:
        from medssr.models import load_tokenizer

        recs = {}
        for name, model_dir in ckpts.items():
            fmt = prompt_format(model_dir, params.model.chat_template)
            recs[name] = fmt.record(fmt.renderer(load_tokenizer(model_dir)), template, first)
            print(prompt_summary(f"evaluate {name}", recs[name]))
        print(f"[evaluate] dry run: {sum(map(len, benchmarks.values()))} questions x k={cfg.runs}, T={cfg.sampling.temperature} "
              f"top_p={cfg.sampling.top_p} max_new_tokens={cfg.sampling.max_new_tokens} stop_at_answer={cfg.sampling.stop_at_answer}")
        return {"dry_run": True, "prompt_format": recs}
    for name, model_dir in ckpts.items():
        fmt = prompt_format(model_dir, params.model.chat_template)
        use_template, rule = fmt.chat_template, fmt.rule
        sampler = factory(model_dir, backend=cfg.sampling.backend, dtype=params.model.dtype, batch_size=cfg.sampling.batch_size, seed=cfg.seed,
                          chat_template=use_template, sampling=cfg.sampling)
        family = params.model.family if params.model.family != "auto" else getattr(sampler, "family", None)
        sampling = sampling_for_family(cfg.sampling, family, family_defaults)
        used[name] = {"dir": model_dir, "family": family, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                      "chat_template": use_template, "chat_template_rule": rule, "stop_at_answer": sampling.stop_at_answer}
        rec = fmt.record(sampler.render, template, first)
        used[name].update({"prompt_probe_sha256": rec["probe_sha256"], "prompt_first_sha256": rec.get("first_prompt_sha256")})
        print(prompt_summary(f"evaluate {name}", rec))
        spec = eval_spec(model_dir, sampling, cfg.runs, cfg.seed, template, params.model.dtype, use_template)
        used[name]["dtype"] = spec.sampling_dtype  # sampling.dtype resolved on this machine (auto: bf16 where faster)
        prog = cache_path_for(progress_root, _safe_name(name), spec)
        print(f"[evaluate] {name}: {model_dir} (family {family}, {spec.sampling_dtype}, T={sampling.temperature}, top_p={sampling.top_p}, "
              f"top_k={sampling.top_k}, k={cfg.runs}, chat template {'yes' if use_template else 'no'}: {rule}, "
              f"{'stop at first answer' if sampling.stop_at_answer else 'generate to the end'})")
        counts: dict[str, Any] = {}
        try:
            preds = evaluate_model(sampler, benchmarks, sampling, cfg.runs, cfg.seed, template, cfg.constrained_pass, prog, progress,
                                   counts, spec=spec)
        finally:
            _release(sampler)
            sampler = None
        damaged = counts["quarantined"]
        print(f"[evaluate] {name}: {counts['sampled']} questions sampled, {counts['resumed']} resumed from {prog}"
              + (f"; {damaged} damaged progress line{'s' if damaged != 1 else ''} quarantined to {', '.join(counts['quarantine_files'])}"
                 if damaged else ""))
        write_jsonl(pred_dir / f"predictions_{_safe_name(name)}.jsonl", (p.to_dict() for p in preds))
        preds_by[name] = preds
    results = results_json(preds_by, reference=REFERENCE, n_boot=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed,
                           average_over=average_over)
    metrics = results_metrics(results, final)
    write_json_atomic(metrics_path, results)
    if log_mlflow:
        _log(params, metrics, ckpts, final, used)
    return results


def _log(params: Any, metrics: dict[str, float], ckpts: Mapping[str, str], final: str, used: Mapping[str, Mapping[str, Any]]) -> None:
    from medssr import tracking

    section = to_flat_dict(params.eval, "eval.")
    for name, u in used.items():
        section.update({f"eval.used.{name}.{k}": v for k, v in u.items()})
    with tracking.stage_run("evaluate", params, section) as mlflow:
        mlflow.set_tags({"medssr_eval_checkpoints": json.dumps(list(ckpts)), "medssr_eval_final": final})
        mlflow.log_metrics(metrics)
    tracking.log_summary_to_parent(params, metrics)  # it keeps the headline names
    _tag_parent(params, ckpts, final)


def _tag_parent(params: Any, ckpts: Mapping[str, str], final: str) -> None:
    """The report reads which metric prefixes are checkpoints from these tags."""
    from medssr import tracking

    tracking.set_parent_tags(params, {"medssr_eval_checkpoints": json.dumps(list(ckpts)), "medssr_eval_final": final})


def _headline(block: Mapping[str, Any]) -> str:
    """An average as the summary line prints it: percent, its interval when bootstrapped, and its n."""
    ci = f" [{100 * block['avg_ci_low']:.1f}, {100 * block['avg_ci_high']:.1f}]" if "avg_ci_low" in block else ""
    return f"{100 * block['avg']:.2f}%{ci} (n={block.get('avg_n', '?')})"


def print_summary(results: Mapping[str, Any], display_names: Mapping[str, str] | None = None) -> None:
    """The evaluation table (benchmarks x checkpoints, accuracy % with intervals, differences to base) and a summary line."""
    print(format_table(results, display_names))
    final = list(results)[-1] if results else None
    if final:
        r = results[final]
        avg = _headline(r) if r.get("avg") is not None else "-"
        rare = _headline(r["raredis"]) if r.get("raredis") else "-"
        print(f"[evaluate] {len(results)} checkpoint(s); final {final}: avg {avg}, raredis avg {rare}, "
              f"invalid {100 * r['invalid_before']:.1f}% -> {100 * r['invalid_after']:.1f}% after the constrained pass")
