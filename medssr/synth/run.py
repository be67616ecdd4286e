"""The synthesize stage (paper §3.2, Eq. 2): plan attempts, build F.1/F.2 requests, generate in waves, parse,
validate, filter contamination, and write the synthetic set in attempt order.

Resumable at two levels. Every finished response is appended (fsync'd) to a progress file keyed by the
request's cache key, so a rerun after a crash re-sends nothing that finished, even without the response
cache; and the plan of attempt ``i`` is a pure function of ``(synth.seed, i)``, so the rerun builds the same
requests. The output is rebuilt from scratch in attempt order on every run (parse, contamination and
duplicate checks are cheap and deterministic), hence identical to an uninterrupted run.

Every accepted question is tagged with the tagger that builds RareDis-Sub from the benchmarks (medssr.data.rare,
same E_rare, stoplist, minimum length and scope): the paper's rare-disease ratio (§4.2-4.3) is that measured share,
not the share of F.2 prompts. With ``synth.rare_share_target`` set, each wave's α comes from the counts so far
(``plan.steer_alpha``) and questions beyond the tagged/untagged quota are dropped and counted; the counts are a pure
function of the responses in attempt order, so a rerun replays the same α per wave.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medssr.config import Params, to_flat_dict
from medssr.data.entities import Entity, read_entities
from medssr.data.rare import STOPLIST, Tagger, build_tagger, tag_question
from medssr.errors import MedssrError
from medssr.files import write_json_atomic
from medssr.llm.base import BUDGET_ERROR, diff_counts
from medssr.llm.tokens import tokenizer_name
from medssr.records import Question, append_jsonl, read_partial_jsonl, read_questions, write_jsonl
from medssr.secrets import scrub_params
from medssr.synth.contamination import build_index, build_similarity_index, question_text
from medssr.synth.parse import QUESTION_SCHEMA, InvalidQuestion, ParsedQuestion, parse_question
from medssr.synth.plan import Attempt, entity_pool, plan_attempt, share_quotas, steer_alpha
from medssr.synth.prompts import PROMPT_NAMES, Prompt, load_prompt

log = logging.getLogger("medssr.synth")

# A passage's text is cut at this many characters in the prompt (our corpus chunks are ~200 words).
MAX_PASSAGE_CHARS = 1500
NGRAM = 8  # contamination n-gram size; calibrated on the real benchmarks (see contamination.py)

Retriever = Callable[[str, int], Sequence[Any]]  # (query, k) -> passages with .id, .title, .text
# why an accepted question was dropped to hold synth.rare_share_target: tagged rare or not, written from F.1 or F.2
SHARE_DROP_REASONS = ("rare_in_f1", "rare_in_f2", "not_rare_in_f1", "not_rare_in_f2")


class SynthError(MedssrError, RuntimeError):
    """The stage cannot finish: requests failed after retries, or inputs are missing. Finished work is kept."""


@dataclass
class SynthInputs:
    """Everything the stage reads besides params: seeds, E_rare, corpus coverage, and the evaluation sets.

    ``entity_records`` are E_rare's rows with their synonyms (entities.jsonl), what the tagger matches; without
    them the tagger matches the names in ``entities``."""

    seeds: list[Question]
    entities: list[str]
    coverage: dict[str, list[str]] = field(default_factory=dict)
    benchmarks: dict[str, list[Question]] = field(default_factory=dict)
    raredis_sub: list[Question] = field(default_factory=list)
    entity_records: list[Entity] = field(default_factory=list)


def load_inputs(prepared_dir: str | os.PathLike, corpus_dir: str | os.PathLike) -> SynthInputs:
    """Read seeds.jsonl, entities.jsonl, every benchmarks/*.jsonl (one per data.benchmarks entry), raredis_sub.jsonl, coverage.json."""
    prepared = Path(prepared_dir)
    seeds = read_questions(prepared / "seeds.jsonl")
    records = read_entities(prepared / "entities.jsonl")  # the one entity reader (medssr.data.entities)
    benchmarks = {p.stem: read_questions(p) for p in sorted((prepared / "benchmarks").glob("*.jsonl"))}
    raredis = read_questions(prepared / "raredis_sub.jsonl") if (prepared / "raredis_sub.jsonl").exists() else []
    cov_path = Path(corpus_dir) / "coverage.json"
    coverage = json.loads(cov_path.read_text(encoding="utf-8")) if cov_path.exists() else {}
    return SynthInputs(seeds, [e.name for e in records], coverage, benchmarks, raredis, records)


def synth_tagger(inputs: SynthInputs, data_cfg: Any) -> Tagger:
    """The benchmark tagger (prepare's ``build_tagger`` with data.min_entity_len and data.rare_stoplist) over E_rare.

    entities.jsonl holds prepare's E_rare less the stoplisted names, so the same stoplist gives the same trie."""
    records = inputs.entity_records or [Entity(id=name, name=name) for name in inputs.entities]
    return build_tagger(records, min_len=data_cfg.min_entity_len, stoplist=STOPLIST | frozenset(data_cfg.rare_stoplist))


def rare_tagged(q: Question) -> bool:
    """Whether the synthesize stage tagged ``q`` as naming a rare disease (``meta.rare_tagged``)."""
    return bool(q.meta.get("rare_tagged"))


def measured_rare_share(questions: Iterable[Question]) -> float | None:
    """The share of questions tagged rare-disease: the paper's rare-disease ratio of a synthetic set (None when empty)."""
    flags = [rare_tagged(q) for q in questions]
    return round(sum(flags) / len(flags), 4) if flags else None


def format_knowledge(passages: Sequence[Any], max_chars: int = MAX_PASSAGE_CHARS) -> str:
    """The {medical_knowledge} block: numbered passages with their titles."""
    if not passages:
        return "(no passages were found for this disease)"
    blocks = []
    for n, p in enumerate(passages, 1):
        text = " ".join(str(p.text).split())
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
        blocks.append(f"[{n}] {p.title}\n{text}")
    return "\n\n".join(blocks)


def render_seed(q: Question, seed_format: str = "text") -> str:
    """A seed question as the prompt shows it: stem and ``A. option`` lines (``text``), the same with an
    ``Answer: X`` line (``text_answer``), or the JSON layout we ask the generator for (``json``)."""
    if seed_format == "json":
        return json.dumps({"question": q.question, "options": q.options, "answer": q.answer}, ensure_ascii=False)
    if seed_format == "text_answer":
        return "Question: " + q.render() + (f"\nAnswer: {q.answer}" if q.answer else "")
    if seed_format != "text":
        raise SynthError(f"prompt header seed_format: expected 'text', 'text_answer' or 'json', got {seed_format!r}")
    return q.render()


def build_request(attempt: Attempt, seeds: Sequence[Question], prompts: Mapping[str, Prompt], retriever: Retriever | None,
                  top_k: int, structured: bool, assistant_prefix: str | None = None):
    """The LLMRequest of one attempt and the ids of the passages it quotes.

    Seed layout, reply prefix and passage length come from the prompt file's header (``assistant_prefix``
    overrides the header's)."""
    from medssr.llm import LLMRequest

    prompt = prompts[attempt.kind]
    fmt = prompt.meta.get("seed_format", "text")
    s1, s2 = (seeds[i] for i in attempt.seed_indices)
    values = {"seed_question1": render_seed(s1, fmt), "seed_question2": render_seed(s2, fmt)}
    retrieved: list[str] = []
    if attempt.kind == "F2":
        if retriever is None:
            raise SynthError("synth.rare_ratio > 0 needs a retriever: build the corpus index first (stage 'corpus')")
        passages = list(retriever(attempt.rare_disease, top_k))[:top_k]
        retrieved = [str(p.id) for p in passages]
        max_chars = int(prompt.meta.get("max_passage_chars", MAX_PASSAGE_CHARS))
        values |= {"rare_disease": attempt.rare_disease, "medical_knowledge": format_knowledge(passages, max_chars)}
    text = prompt.render(**values)
    prefix = assistant_prefix if assistant_prefix is not None else (prompt.meta.get("assistant_prefix") or None)
    req = LLMRequest(messages=(("user", text),), json_schema=QUESTION_SCHEMA if structured else None, schema_name="question",
                     assistant_prefix=prefix, nonce=f"synth-attempt-{attempt.index}")
    return req, retrieved


def synth_prompts(variant: str = "", prompt_dir: str | os.PathLike | None = None) -> dict[str, Prompt]:
    """The F.1/F.2 prompt files: ``synth_f1.txt``/``synth_f2.txt``, or ``synth_f1_<variant>.txt``/..."""
    suffix = f"_{variant}" if variant else ""
    return {k: load_prompt(PROMPT_NAMES[k] + suffix, prompt_dir) for k in ("F1", "F2")}


def synth_section(params: Params) -> dict[str, Any]:
    """The flat synth.* params logged on the stage's MLflow run (credentials scrubbed)."""
    return scrub_params(to_flat_dict(params.synth, "synth."))


@dataclass
class _Finished:
    attempt: int
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cached: bool


def run_synthesize(params: Params, inputs: SynthInputs, out_path: str | os.PathLike, report_path: str | os.PathLike | None = None,
                   progress_path: str | os.PathLike | None = None, retriever: Retriever | None = None, generator: Any = None,
                   prompt_dir: str | os.PathLike | None = None, assistant_prefix: str | None = None, prompt_variant: str | None = None,
                   track: bool = True, show_progress: bool = True) -> dict[str, Any]:
    """Synthesize ``synth.n`` questions; writes ``out_path`` (JSONL) and ``report_path`` (JSON); returns the report.

    ``generator`` defaults to ``make_generator(synth.generator)``; ``retriever(query, k)`` (``corpus_retriever(index_dir)``:
    the corpus stage's index) is needed only when F.2 prompts can be drawn (synth.rare_ratio > 0, or synth.rare_share_target > 0). ``prompt_variant`` 'small' picks ``prompts/synth_f{1,2}_small.txt``
    (the layout for small local generators); default: ``synth.prompt_variant`` when params has it, else the paper's. Raises SynthError when requests fail after their retries; every
    finished response is kept in the progress file (default ``<out>.progress.jsonl``) for the rerun.
    """
    cfg = params.synth
    t0 = time.time()
    out_path = Path(out_path)
    progress_path = Path(progress_path) if progress_path else out_path.with_name(out_path.stem + ".progress.jsonl")
    max_attempts = cfg.max_attempts or 8 * cfg.n
    target = cfg.rare_share_target
    may_draw = cfg.rare_ratio > 0 if target is None else target > 0  # F.2 prompts can be planned
    if may_draw and retriever is None:
        raise SynthError("synth.rare_ratio > 0 (or synth.rare_share_target > 0) needs a retriever: pass corpus_retriever(<the corpus "
                         "stage's index dir>)")
    if generator is None:
        from medssr.llm import make_generator
        from medssr.tracking import project_root

        cache_dir = Path(cfg.cache_dir) if Path(cfg.cache_dir).is_absolute() else project_root() / cfg.cache_dir
        generator = make_generator(cfg.generator, cache_dir, cfg.prices)
    if prompt_variant is None:
        prompt_variant = cfg.prompt_variant
    prompts = synth_prompts(prompt_variant, prompt_dir)
    seeds = inputs.seeds
    # E_rare as drawn from (α = 0 never draws: skip the coverage check and its warning)
    pool = entity_pool(inputs.entities, inputs.coverage, cfg.prefer_covered) if may_draw else list(inputs.entities)
    tagger, scope = synth_tagger(inputs, params.data), params.data.rare_scope
    quota = share_quotas(cfg.n, target) if target is not None else None  # (tagged, untagged) accepted questions wanted
    index = build_index(inputs.benchmarks, inputs.raredis_sub, seeds, n=NGRAM, threshold=cfg.contamination_threshold)
    similar = (build_similarity_index(inputs.benchmarks, inputs.raredis_sub, seeds, cfg.dedup_threshold)
               if cfg.dedup_threshold is not None else None)
    near_dup: Counter[str] = Counter()  # near-duplicates by what they resemble (benchmark name, raredis_sub, seed, synthetic)
    done: dict[str, _Finished] = {}
    progress_rows = read_partial_jsonl(progress_path)  # damaged lines are quarantined beside it, counted below
    for row in progress_rows:
        if isinstance(row, dict) and "key" in row and "text" in row:
            done[row["key"]] = _Finished(row["attempt"], row["text"], row.get("finish_reason"), row.get("input_tokens", 0),
                                         row.get("output_tokens", 0), row.get("cost_usd", 0.0), True)

    accepted: list[Question] = []
    rejected: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    dropped_by_group: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    examples: dict[str, str] = {}
    seen: dict[str, list[int]] = {}  # prompt kind -> [questions past the contamination check, of them tagged rare]
    have = [0, 0]  # accepted questions [tagged rare, not tagged]
    share_dropped: Counter[str] = Counter({k: 0 for k in SHARE_DROP_REASONS})
    alpha_waves: list[list[float]] = []  # [first attempt, α] wherever α changes
    alpha_sum = 0.0
    tokens_in = tokens_out = 0
    dataset_cost = 0.0
    reused = valid = attempts = 0
    stopped = "max_attempts"
    errors: list[str] = []
    spend0 = generator.ledger.spend_usd
    counts0 = generator.ledger.counts()
    failures0 = len(getattr(generator, "batch_failures", []))

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.n, desc="synthesize", unit="q", disable=not show_progress, dynamic_ncols=True)

    def consume(a: Attempt, fin: _Finished, retrieved: list[str], prompt: Prompt) -> None:
        nonlocal tokens_in, tokens_out, dataset_cost, valid, attempts
        attempts += 1
        kinds[a.kind] += 1
        tokens_in += fin.input_tokens
        tokens_out += fin.output_tokens
        dataset_cost += fin.cost_usd
        try:
            pq = parse_question(fin.text, fin.finish_reason)
        except InvalidQuestion as e:
            rejected[e.reason] += 1
            examples.setdefault(e.reason, f"attempt {a.index}: {e.detail}"[:300])
            return
        valid += 1
        q = _to_question(a, pq, fin, seeds, retrieved, generator.name, prompt, cfg.seed)
        m = index.match(question_text(q))
        if m is not None:
            dropped[m.kind] += 1
            dropped_by_group[m.group] += 1
            return
        d = similar.match(question_text(q)) if similar is not None else None
        if d is not None:
            near_dup[d.group] += 1
            examples.setdefault("near_duplicate", f"attempt {a.index}: {d.score:.0f} % like {d.kind} {d.ref_id}"[:300])
            return
        tag = tag_question(replace(q, answer=pq.answer), tagger, scope)  # as the benchmarks: with the (generator's) answer
        q.meta["rare_tagged"] = tag.name
        if tag.name:
            q.meta["rare_matches"], q.meta["rare_where"] = tag.names, tag.where
        counts = seen.setdefault(a.kind, [0, 0])
        counts[0] += 1
        counts[1] += tag.name is not None
        slot = 0 if tag.name else 1
        if quota is not None and have[slot] >= quota[slot]:  # that kind's quota is full: this question would move the share
            share_dropped[f"{'rare' if tag.name else 'not_rare'}_in_{a.kind.lower()}"] += 1
            return
        have[slot] += 1
        index.add("synthetic", q.id, question_text(q))
        if similar is not None:
            similar.add("synthetic", q.id, question_text(q))
        accepted.append(q)
        if len(accepted) <= cfg.n:
            bar.update(1)

    next_attempt = 0
    try:
        while len(accepted) < cfg.n:
            if next_attempt >= max_attempts:
                stopped = "max_attempts"
                break
            size = min(wave_size(cfg.generator, cfg.n - len(accepted)), max_attempts - next_attempt)
            if cfg.max_usd is not None and dataset_cost >= cfg.max_usd:
                stopped = "budget"
                break
            alpha = cfg.rare_ratio if quota is None else steer_alpha(quota[0] - have[0], quota[1] - have[1],
                                                                     {k: (n, t) for k, (n, t) in seen.items()})
            if not alpha_waves or alpha_waves[-1][1] != alpha:
                alpha_waves.append([next_attempt, alpha])
            wave = [plan_attempt(i, cfg.seed, alpha, len(seeds), pool) for i in range(next_attempt, next_attempt + size)]
            next_attempt += size
            built = [build_request(a, seeds, prompts, retriever, cfg.top_k, cfg.generator.structured, assistant_prefix) for a in wave]
            keys = [generator.key(req) for req, _ in built]
            results: dict[int, _Finished] = {}
            todo = []
            for j, k in enumerate(keys):
                if k in done:
                    results[j] = done[k]
                    reused += 1
                else:
                    todo.append(j)

            def on_done(t: int, resp: Any, todo=todo, wave=wave, keys=keys, results=results) -> None:
                j = todo[t]
                if resp.error is not None:
                    return
                fin = _Finished(wave[j].index, resp.text, resp.finish_reason, resp.input_tokens, resp.output_tokens, resp.cost_usd, resp.cached)
                results[j] = fin
                append_jsonl(progress_path, {"key": keys[j], "attempt": fin.attempt, "text": fin.text, "finish_reason": fin.finish_reason,
                                             "input_tokens": fin.input_tokens, "output_tokens": fin.output_tokens, "cost_usd": fin.cost_usd})
                done[keys[j]] = fin

            if todo:
                allowance = None  # the generator reserves each request's worst case against it (medssr.llm.ledger)
                if cfg.max_usd is not None:
                    allowance = generator.ledger.spend_usd + max(0.0, cfg.max_usd - dataset_cost)
                responses = generator.run([built[j][0] for j in todo], on_done=on_done, progress=False, max_usd=allowance)
                for t, resp in enumerate(responses):
                    if resp.error is not None:
                        if resp.error.startswith(BUDGET_ERROR):
                            stopped = "budget"
                        else:
                            errors.append(f"attempt {wave[todo[t]].index}: {resp.error}")
            for j, a in enumerate(wave):
                if j in results:
                    alpha_sum += alpha
                    consume(a, results[j], built[j][1], prompts[a.kind])
            bar.set_postfix_str(f"attempts={attempts} valid={valid} ${dataset_cost:.4f}", refresh=False)
            if errors:
                c = diff_counts(generator.ledger.counts(), counts0)
                faults = ", ".join(f"{k} {v}" for k, v in c["faults"].items() if v) or "none"
                failed_items = list(getattr(generator, "batch_failures", []))[failures0:]
                where = ""
                if report_path:  # the failed requests, batch items with their custom_id and the provider's message
                    write_json_atomic(report_path, {"stopped": "request_errors", "errors": errors, "batch_failures": failed_items,
                                                    "faults": c["faults"], "progress": str(progress_path), "generator": generator.name},
                                      ensure_ascii=False)
                    where = f"; all listed in {report_path}"
                raise SynthError(
                    f"synthesize: {len(errors)} request(s) failed (retryable errors were retried synth.generator.max_retries={cfg.generator.max_retries} "
                    f"times; this run: {c['requests']} requests as {c['http_requests']} HTTP requests, faults: {faults}); "
                    f"{len(done)} finished responses are kept in {progress_path} (rerun to resume, failed batch items go into a new batch)"
                    f"{where}. First: {errors[0]}")
            if stopped == "budget":
                break
        else:
            stopped = "done"
    finally:
        bar.close()

    final = accepted[: cfg.n]
    write_jsonl(out_path, final)
    n_f2 = sum(q.meta.get("prompt_kind") == "F2" for q in final)
    by_kind: dict[str, dict[str, int]] = {}
    for q in final:
        k = by_kind.setdefault(q.meta.get("prompt_kind", "?"), {"accepted": 0, "tagged": 0})
        k["accepted"] += 1
        k["tagged"] += rare_tagged(q)
    ledger = generator.ledger.to_dict()
    counts = diff_counts(generator.ledger.counts(), counts0)
    report = {
        "accepted": len(final),
        "target_n": cfg.n,
        "surplus": len(accepted) - len(final),
        "attempts": attempts,
        "max_attempts": max_attempts,
        "stopped": stopped,
        "valid": valid,
        "acceptance_rate": round((valid - sum(dropped.values()) - sum(share_dropped.values()) - sum(near_dup.values())) / attempts, 4) if attempts else 0.0,
        "rejected": dict(sorted(rejected.items())),
        "rejected_examples": dict(sorted(examples.items())),
        "contamination_dropped": sum(dropped.values()),
        # question-level near-duplicates (rapidfuzz ratio >= synth.dedup_threshold) of an accepted question, a seed or a benchmark
        "near_duplicates_dropped": sum(near_dup.values()),
        "near_duplicates": {"by_group": dict(sorted(near_dup.items())), "threshold": cfg.dedup_threshold},
        "contamination": {"by_kind": dict(dropped), "by_group": dict(dropped_by_group), "ngram": NGRAM,
                          "threshold": cfg.contamination_threshold},
        "rare_ratio_target": cfg.rare_ratio,  # α as configured (not read while rare_share_target is set)
        "rare_share_target": target,
        # the paper's rare-disease ratio: accepted questions the benchmark tagger flags (meta.rare_tagged)
        "rare_share_measured": measured_rare_share(final) or 0.0,
        "f2_share": round(n_f2 / len(final), 4) if final else 0.0,  # accepted questions written from an F.2 prompt
        "alpha_used": round(alpha_sum / attempts, 4) if attempts else (cfg.rare_ratio if quota is None else None),
        # questions dropped to hold the target share: rare_in_f1 = F.1 questions that name a rare disease (all of them at 0 %)
        "share_dropped": dict(share_dropped),
        "rare_share": {"tagged": sum(rare_tagged(q) for q in final), "by_kind": dict(sorted(by_kind.items())),
                       "seen_by_kind": {k: {"questions": n, "tagged": t} for k, (n, t) in sorted(seen.items())},
                       "quota": {"tagged": quota[0], "untagged": quota[1]} if quota else None,
                       "alpha_per_wave": alpha_waves, "tag_scope": scope, "tagger_surfaces": tagger.n_surfaces},
        "prompt_kinds": dict(sorted(kinds.items())),
        "entity_pool": len(pool),
        # the provider's billed usage tokens of every attempt (rejected ones included) per accepted question (paper Fig. 2)
        "tokens": {"input": tokens_in, "output": tokens_out},
        "tokens_per_accepted_question": tokens_per_accepted(tokens_in, tokens_out, len(final)),
        "tokenizer": tokenizer_name(cfg.generator.backend, cfg.generator.model),
        "cost_usd": round(dataset_cost, 6),
        "spend_usd_this_run": round(generator.ledger.spend_usd - spend0, 6),
        "cache_hits": ledger.get("cache_hits", 0),
        # this run's requests as made (logical) and as the server received them (retries included), and every
        # fault met on the way by kind (FAULT_KINDS), also those retried into a good answer
        "requests": counts["requests"],
        "http_requests": counts["http_requests"],
        "retries": counts["retries"],
        "faults": counts["faults"],
        # batch items the provider failed this run (left as misses: a rerun sends them in a new batch)
        "batch_failures": list(getattr(generator, "batch_failures", []))[failures0:],
        "resumed_from_progress": reused,
        "progress": {"quarantined_lines": progress_rows.quarantined, "torn_tail": progress_rows.torn_tail,
                     "quarantine_file": str(progress_rows.side_file) if progress_rows.side_file else None},
        "generator": generator.name,
        "batch": bool(getattr(cfg.generator, "batch", False)),  # sent through the provider's batch endpoint, at batch prices
        "prompt_variant": prompt_variant,
        "prompts": {k: {"file": Path(p.path).name, "version": p.version, "hash": p.hash} for k, p in prompts.items()},
        "ledger": ledger,
        "elapsed_s": round(time.time() - t0, 2),
    }
    if report_path:
        write_json_atomic(report_path, report, ensure_ascii=False)
    if report["stopped"] != "done":
        log.warning("synthesize: stopped by %s with %d of %d questions", stopped, len(final), cfg.n)
    if track:
        log_to_mlflow(params, report)
    return report


def wave_size(gen_cfg: Any, needed: int) -> int:
    """Attempts per round: ``concurrency`` synchronously; through a batch endpoint (one batch per round, each a
    poll-long wait), at least as many as questions still needed."""
    return max(gen_cfg.concurrency, needed) if getattr(gen_cfg, "batch", False) else gen_cfg.concurrency


def tokens_per_accepted(tokens_in: int, tokens_out: int, accepted: int) -> dict[str, float]:
    """Input, output and total tokens spent per accepted question (0 when none was accepted)."""
    per = (lambda n: round(n / accepted, 1)) if accepted else (lambda n: 0.0)
    return {"input": per(tokens_in), "output": per(tokens_out), "total": per(tokens_in + tokens_out)}


def _to_question(a: Attempt, pq: ParsedQuestion, fin: _Finished, seeds: Sequence[Question], retrieved: list[str],
                 generator_name: str, prompt: Prompt, seed: int) -> Question:
    return Question(
        id=f"synth-s{seed}-{a.index:06d}", source="synthetic", split="train", question=pq.question, options=pq.options, answer=None,
        rare_disease=a.rare_disease, meta={"generator_answer": pq.answer, "attempt": a.index, "prompt_kind": a.kind,
                                           "rho": round(a.rho, 6), "layout": pq.layout, "prompt_version": prompt.version},
        seed_ids=[seeds[i].id for i in a.seed_indices], retrieved=retrieved, generator=generator_name, prompt_hash=prompt.hash,
        usage={"input_tokens": fin.input_tokens, "output_tokens": fin.output_tokens},
    )


def log_to_mlflow(params: Params, report: Mapping[str, Any]) -> None:
    """Stage metrics under the stable ``synth/...`` names, plus the report as an artifact."""
    from medssr.metric_names import metric
    from medssr.tracking import log_summary_to_parent, stage_run

    metrics = {
        metric("synth", "accepted"): report["accepted"],
        metric("synth", "attempts"): report["attempts"],
        metric("synth", "acceptance_rate"): report["acceptance_rate"],
        metric("synth", "rare_share_measured"): report["rare_share_measured"],
        metric("synth", "f2_share"): report["f2_share"],
        metric("synth", "rare_ratio_target"): report["rare_ratio_target"],
        **{metric("synth", k): report[k] for k in ("rare_share_target", "alpha_used") if report[k] is not None},
        **{metric("synth", f"share_dropped/{k}"): v for k, v in report["share_dropped"].items()},
        **{metric("synth", f"tokens_per_accepted_question/{k}"): v for k, v in report["tokens_per_accepted_question"].items()},
        metric("synth", "cost_usd"): report["cost_usd"],
        metric("synth", "contamination_dropped"): report["contamination_dropped"],
        metric("synth", "near_duplicates_dropped"): report["near_duplicates_dropped"],
        metric("synth", "cache_hits"): report["cache_hits"],
        metric("synth", "requests"): report["requests"],
        metric("synth", "http_requests"): report["http_requests"],
        metric("synth", "retries"): report["retries"],
    }
    for kind, c in report["faults"].items():
        metrics[metric("synth", f"faults/{kind}")] = c
    for reason, c in report["rejected"].items():
        metrics[metric("synth", f"rejected/{reason}")] = c
    with stage_run("synthesize", params, synth_section(params)) as mlflow:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict(dict(report), "synth_report.json")
    log_summary_to_parent(params, metrics)  # it copies the headline ones (metric_names.HEADLINE_METRICS)


def corpus_retriever(index_dir: str | os.PathLike) -> Retriever:
    """The passage index the `corpus` stage built in ``index_dir`` (medssr.knowledge.retrieve); opened on the first query."""
    from medssr.knowledge import retrieve

    def _retrieve(query: str, k: int) -> Sequence[Any]:
        return retrieve(query, index_dir, k=k)

    return _retrieve


def summary_line(report: Mapping[str, Any]) -> str:
    """The one line the stage prints."""
    rej = sum(report["rejected"].values())
    faults = ", ".join(f"{k} {v}" for k, v in report["faults"].items() if v) or "none"
    return (f"synthesize: {report['accepted']}/{report['target_n']} questions from {report['attempts']} attempts "
            f"(acceptance {report['acceptance_rate']:.0%}, {rej} rejected, {report['contamination_dropped']} contamination/duplicate drops, "
            f"{report['near_duplicates_dropped']} near-duplicates), "
            f"rare share {report['rare_share_measured']:.2f} measured" + _share_note(report) + ", "
            f"{report['tokens_per_accepted_question']['total']:.0f} tok/q, ${report['cost_usd']:.4f}, stopped: {report['stopped']}; "
            f"{report['requests']} requests as {report['http_requests']} HTTP requests ({report['retries']} retries), faults: {faults}"
            + _quarantine_note(report.get("progress", {})))


def _share_note(report: Mapping[str, Any]) -> str:
    """`` (target 0.25, F.2 share 0.18, α 0.16, 12 dropped)`` or `` (α=0.25, F.2 share 0.24)``."""
    alpha = report["alpha_used"]
    if report["rare_share_target"] is None:
        return f" (α={report['rare_ratio_target']}, F.2 share {report['f2_share']:.2f})"
    return (f" (target {report['rare_share_target']}, F.2 share {report['f2_share']:.2f}, α {'-' if alpha is None else f'{alpha:.2f}'}, "
            f"{sum(report['share_dropped'].values())} dropped for the share)")


def _quarantine_note(progress: Mapping[str, Any]) -> str:
    n = progress.get("quarantined_lines", 0)
    return f"; {n} damaged progress line{'s' if n != 1 else ''} quarantined to {progress.get('quarantine_file')}" if n else ""
