"""Requests through the providers' batch endpoints (OpenAI Batch API, Anthropic Message Batches) at batch prices.

With ``synth.generator.batch: true`` the cache misses of one ``Generator.run`` call go out as one batch: its
worst-case cost (at the batch price) is reserved against ``max_usd`` first (only the prefix that fits is sent),
a journal naming the batch and the cache keys it covers (its ``custom_id``s) is written atomically under
``<cache_dir>/batches/`` before the batch is created, the batch is polled every ``batch_poll_s`` seconds until
it ends, and each item lands in the response cache and the ledger exactly once, as a synchronous answer would.

A run killed between create and collect leaves the journal: the next run that asks for any of its keys polls
and collects that batch instead of sending the requests again. Items the provider failed (errored, expired,
canceled) are counted by kind in the ledger, listed in ``generator.batch_failures`` (custom_id, batch id,
the provider's message, scrubbed) and left as misses, so the next run retries them in a new batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medssr.files import write_text_atomic

if TYPE_CHECKING:
    from medssr.llm.base import AsyncAPIGenerator, Finish, LLMRequest, LLMResponse

log = logging.getLogger("medssr.llm")

BATCH_WHOLE = "*"  # BatchItem.key of a failure of the whole batch (no per-item results at all)
JOURNAL_SUFFIX = ".batch"  # not .json: the response cache counts */*.json as its entries


@dataclass
class BatchItem:
    """One result line: a response, or the failure kind (a FAULT_KINDS batch_* kind) and the provider's message."""

    key: str
    response: LLMResponse | None
    kind: str | None = None
    message: str = ""


@dataclass
class BatchJournal:
    """What a killed run needs to find its batch again; written atomically (files.py) before the batch is created."""

    path: Path
    id: str
    provider: str
    model: str
    custom_ids: list[str]
    created: float
    batch_id: str | None = None
    input_file_id: str | None = None  # OpenAI: the uploaded JSONL (a create cut off by a kill is found by it)
    prefixes: dict[str, str] = field(default_factory=dict)  # Anthropic: the assistant prefill sent, by custom_id

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        # fsync: a few per run, and the journal is what makes a paid batch findable
        write_text_atomic(self.path, json.dumps(data), fsync=True)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def journal_dir(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / "batches"


def new_journal(cache_dir: str | os.PathLike, provider: str, model: str, keys: list[str]) -> BatchJournal:
    jid = hashlib.sha256(json.dumps([provider, model, sorted(keys)]).encode()).hexdigest()[:16]
    return BatchJournal(journal_dir(cache_dir) / f"{provider}-{jid}{JOURNAL_SUFFIX}", jid, provider, model, list(keys), time.time())


def open_journals(cache_dir: str | os.PathLike, provider: str, model: str) -> list[BatchJournal]:
    """The journals of batches not yet collected for this provider and model, oldest first (unreadable ones warn)."""
    out = []
    for p in sorted(journal_dir(cache_dir).glob(f"{provider}-*{JOURNAL_SUFFIX}")):
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            j = BatchJournal(path=p, **d)
        except (OSError, ValueError, TypeError) as e:
            log.warning("%s: unreadable batch journal (%s); ignored", p, e)
            continue
        if j.model == model:
            out.append(j)
    return sorted(out, key=lambda j: j.created)


async def execute_batch(gen: AsyncAPIGenerator, todo: list[tuple[int, LLMRequest, str]], finish: Finish,
                        max_usd: float | None) -> None:
    """Run the cache misses ``todo`` through the provider's batch endpoint; ``finish`` each (see module doc)."""
    from medssr.llm.base import LLMResponse

    client = gen._make_client()
    remaining: dict[str, tuple[int, LLMRequest]] = {key: (i, req) for i, req, key in todo}
    try:
        for j in open_journals(gen.cache.dir, gen.batch_provider, gen.cfg.model):
            if remaining.keys() & set(j.custom_ids):
                log.info("%s: resuming batch %s (%d requests, journal %s)", gen.name, j.batch_id or "(being created)",
                         len(j.custom_ids), j.path.name)
                await _settle(gen, client, j, remaining, finish, {})
        if not remaining:
            return
        items: list[tuple[str, LLMRequest]] = []
        reserved: dict[str, float] = {}
        for key, (i, req) in list(remaining.items()):
            worst = gen.worst_case_cost(req, batch=True)
            if not gen.ledger.reserve(worst, max_usd):  # admitted while under the cap: at most one lands beyond it
                del remaining[key]
                finish(i, key, LLMResponse("", 0, 0, False, 0.0, 0.0, error=gen._budget_error(max_usd)))
                continue
            items.append((key, req))
            reserved[key] = worst
        if not items:
            return
        j = new_journal(gen.cache.dir, gen.batch_provider, gen.cfg.model, [k for k, _ in items])
        j.save()
        try:
            j.batch_id = await gen.batch_create(client, items, j)
        except Exception as e:  # noqa: BLE001 - the batch was not created: its items fail, the next run asks again
            j.delete()
            err = f"batch not created: {gen._describe(e)}"
            for key, _ in items:
                i, _req = remaining.pop(key)
                finish(i, key, LLMResponse("", 0, 0, False, 0.0, 0.0, error=err), reserved=reserved[key])
            return
        j.save()
        log.info("%s: batch %s created with %d requests; polling every %gs", gen.name, j.batch_id, len(items), gen.cfg.batch_poll_s)
        await _settle(gen, client, j, remaining, finish, reserved)
    finally:
        await client.close()


async def _settle(gen: AsyncAPIGenerator, client: Any, j: BatchJournal, remaining: dict[str, tuple[int, LLMRequest]],
                  finish: Finish, reserved: dict[str, float]) -> None:
    """Poll batch ``j`` until it ends, then deliver its items (those of this run through ``finish``, others to
    the cache) and drop the journal. If polling fails, the journal stays and this run's items get an error."""
    from medssr.llm.base import LLMResponse

    t0 = j.created
    if j.batch_id is None:  # killed between the journal and the create: look for the batch at the provider
        taken = {o.batch_id for o in open_journals(gen.cache.dir, gen.batch_provider, gen.cfg.model) if o.batch_id}
        found = await gen.batch_find(client, j, taken)
        if found is None:
            log.warning("%s: batch journal %s has no batch id (the run was stopped while creating it) and the provider lists "
                        "no batch for it; its requests go into a new batch", gen.name, j.path.name)
            j.delete()
            return
        log.info("%s: batch %s found for journal %s", gen.name, found, j.path.name)
        j.batch_id = found
        j.save()
    try:
        while (status := await gen.batch_poll(client, j.batch_id)) is None:
            await asyncio.sleep(gen.cfg.batch_poll_s)
        results = await gen.batch_results(client, j.batch_id, j)
    except Exception as e:  # noqa: BLE001 - keep the journal: the batch is paid for, the next run collects it
        err = f"batch {j.batch_id} not collected: {gen._describe(e)}; journal {j.path} kept, rerun to collect it"
        for key in j.custom_ids:
            if key in remaining:
                i, _ = remaining.pop(key)
                finish(i, key, LLMResponse("", 0, 0, False, 0.0, 0.0, error=err), reserved=reserved.get(key, 0.0))
        return
    whole = next((it for it in results if it.key == BATCH_WHOLE), None)
    by_key: dict[str, BatchItem] = {}
    for it in results:
        if it.key in j.custom_ids:
            by_key.setdefault(it.key, it)
    latency = time.time() - t0
    for key in j.custom_ids:
        it = by_key.get(key)
        if it is None:
            it = whole or BatchItem(key, None, "batch_errored", f"no result for this request (batch {status})")
        if it.response is not None:
            it.response.latency_s = latency
            if key in remaining:
                i, _ = remaining.pop(key)
                finish(i, key, it.response, reserved=reserved.get(key, 0.0))
            elif gen.cache.get(key) is None:  # paid for in an earlier run that was stopped: keep it
                gen._store(key, it.response)
            continue
        message = gen._scrub(str(it.message).replace("\n", " ")[:1000])
        gen.ledger.fault(it.kind or "batch_errored")
        gen.batch_failures.append({"custom_id": key, "batch_id": j.batch_id, "kind": it.kind or "batch_errored", "message": message})
        if key in remaining:
            i, _ = remaining.pop(key)
            finish(i, key, LLMResponse("", 0, 0, False, 0.0, latency, error=f"{it.kind} in batch {j.batch_id}: {message}"),
                   reserved=reserved.get(key, 0.0))
    j.delete()
    log.info("%s: batch %s %s: %d answered, %d failed", gen.name, j.batch_id, status,
             sum(1 for k in j.custom_ids if (it := by_key.get(k)) is not None and it.response is not None),
             sum(1 for k in j.custom_ids if (it := by_key.get(k)) is None or it.response is None))
