"""Retrieval text: read the bundled sources into documents, chunk them into passages, drop duplicates.

Every passage keeps its provenance (source, document id, url) and a license tag, so synthetic
questions can cite what they were built from. Sources are plain reader functions in ``SOURCES``;
a paper-scale user adds MedRAG-style corpora with ``corpus.extra_jsonl`` (a JSONL file of
``{id, title, content}`` rows, or a ``datasets`` folder saved with ``save_to_disk``).
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssr.errors import MedssrError
from medssr.records import RecordError, iter_jsonl_rows

MEDQUAD_LICENSE = "CC BY 4.0 (MedQuAD)"
NORD_LICENSE = "research-only (NORD text via the RareDis corpus; do not redistribute)"
ORPHANET_LICENSE = "CC BY 4.0 (Orphanet)"


class CorpusError(MedssrError, ValueError):
    """Bad corpus input; the message names the file (and line or member) and what to fix."""


@dataclass
class Passage:
    """One retrievable snippet: what the synthesizer quotes as knowledge, with where it came from."""

    id: str
    title: str
    text: str
    source: str
    license: str
    url: str = ""
    doc_id: str = ""
    aliases: tuple[str, ...] = ()  # other names of the document's subject (MedQuAD focus synonyms, Orphanet synonyms)
    rare: bool = False  # from a rare-disease source: always kept when the corpus is capped
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "title", "text", "source", "license", "url", "doc_id", "rare")}
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Passage:
        return cls(id=d["id"], title=d["title"], text=d["text"], source=d["source"], license=d["license"], url=d.get("url", ""),
                   doc_id=d.get("doc_id", ""), aliases=tuple(d.get("aliases") or ()), rare=bool(d.get("rare", False)),
                   score=float(d.get("score", 0.0)))


@dataclass(frozen=True)
class Document:
    """A source document before chunking."""

    doc_id: str
    title: str
    text: str
    url: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Source:
    """A named corpus source: where its file lives under the raw data dir and how to read it."""

    name: str
    path: str  # relative to data.raw_dir
    read: Callable[[Path, Counter], Iterator[Document]]  # (path, skipped counter) -> documents
    license: str
    rare: bool


@dataclass
class CorpusStats:
    """What went into the corpus: counts per source, and what was dropped and why."""

    documents: dict[str, int] = field(default_factory=dict)
    passages: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # e.g. Orphanet entries without a definition
    capped_dropped: int = 0

    @property
    def total(self) -> int:
        return sum(self.passages.values())


# ---------------------------------------------------------------- reading


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` per non-empty line of a (gzipped) JSONL file (records' reader); a bad line, a non-object
    row, an unreadable or an empty file raise a CorpusError naming it."""
    if not path.exists():
        raise CorpusError(f"{path}: corpus file not found")
    n = 0
    try:
        for lineno, obj in iter_jsonl_rows(path):
            if isinstance(obj, RecordError):
                raise CorpusError(f"{path}:{lineno}: {obj.problem}")
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            n += 1
            yield lineno, obj
    except (OSError, EOFError) as e:  # a truncated or non-gzip .gz file
        raise CorpusError(f"{path}: cannot read ({e})") from None
    if n == 0:
        raise CorpusError(f"{path}: corpus file is empty (no JSON rows)")


def _text_field(obj: dict, key: str, path: Path, line: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CorpusError(f"{path}:{line}: {key}: empty or missing text")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str) and v.strip()) if isinstance(value, list) else ()


def read_medquad(path: Path, skipped: Counter | None = None) -> Iterator[Document]:
    """MedQuAD QA pairs (GARD, GHR, other NIH pages): one document per answer, titled by its focus."""
    for line, obj in _iter_jsonl(path):
        text = _text_field(obj, "answer", path, line)
        title = str(obj.get("focus") or "").strip() or str(obj.get("question") or "").strip()  # a few CDC pairs have no focus
        yield Document(doc_id=str(obj.get("id") or f"{path.name}:{line}"), title=title, text=text, url=str(obj.get("url") or ""),
                       aliases=_str_list(obj.get("focus_synonyms")))


_LEAD_END = re.compile(r"\s+(?:is|are|was|were|affects?|refers?|has|have|occurs?|may|can|belongs?|describes?)\b|\s*[(,.;:]")


def nord_title(member: str, text: str = "") -> str:
    """Disease name from a RareDis file name: ``train/Winchester-Syndrome.txt`` -> ``Winchester Syndrome``.

    The corpus files replaced apostrophes by ``_`` (``Bell_s-Palsy``) and cut names at their first hyphen
    (``Haim.txt`` holds "Haim-Munk syndrome is ..."); such cut names are completed from the text's opening words.
    """
    stem = Path(member).stem
    title = re.sub(r"_s\b", "'s", stem).replace("_", "").replace("-", " ").strip()
    if "-" not in stem and "_" not in stem and text:
        m = re.match(rf"\W*({re.escape(stem)}-[\w-]+)", text, flags=re.IGNORECASE)
        if m:
            rest = text[m.end() :]
            end = _LEAD_END.search(rest)
            tail = rest[: end.start()] if end else ""
            title = m.group(1) + (tail if end and len(tail.split()) <= 5 else "")
    return " ".join(title.split())


def read_nord(path: Path, skipped: Counter | None = None) -> Iterator[Document]:
    """NORD overview texts of the RareDis corpus: the .txt halves of the brat pairs in train.zip and dev.zip."""
    if not path.is_dir():
        raise CorpusError(f"{path}: RareDis/NORD folder not found (expected train.zip and dev.zip)")
    zips = sorted(path.glob("*.zip"))
    if not zips:
        raise CorpusError(f"{path}: no .zip files (expected train.zip and dev.zip of brat .txt/.ann pairs)")
    for zpath in zips:
        try:
            zf = zipfile.ZipFile(zpath)
        except zipfile.BadZipFile as e:
            raise CorpusError(f"{zpath}: not a valid zip file ({e})") from None
        with zf:
            members = sorted(n for n in zf.namelist() if n.endswith(".txt"))
            if not members:
                raise CorpusError(f"{zpath}: no .txt members")
            for m in members:
                try:
                    text = zf.read(m).decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{zpath}:{m}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
                if not text.strip():
                    raise CorpusError(f"{zpath}:{m}: empty text")
                yield Document(doc_id=f"nord:{m.removesuffix('.txt')}", title=nord_title(m, text), text=text)


def read_orphanet(path: Path, skipped: Counter | None = None) -> Iterator[Document]:
    """Orphanet definitions: one document per disorder that has one (entries without a definition are skipped)."""
    for line, obj in _iter_jsonl(path):
        code, name = obj.get("orphacode"), obj.get("name")
        if not code or not isinstance(name, str) or not name.strip():
            raise CorpusError(f"{path}:{line}: orphacode/name: missing")
        definition = obj.get("definition")
        if not isinstance(definition, str) or not definition.strip():
            if skipped is not None:
                skipped["no definition"] += 1
            continue
        yield Document(doc_id=f"ORPHA:{code}", title=name, text=definition, url=f"http://www.orpha.net/ORDO/Orphanet_{code}",
                       aliases=_str_list(obj.get("synonyms")))



def read_extra(path: Path, skipped: Counter | None = None) -> Iterator[Document]:
    """A MedRAG-style corpus: JSONL rows ``{id, title, content}`` (or ``contents``), or a ``datasets`` save_to_disk folder."""
    if path.is_dir():
        yield from _read_hf_disk(path)
        return
    for line, obj in _iter_jsonl(path):
        text = obj.get("content") if "content" in obj else obj.get("contents")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{path}:{line}: content: empty or missing text")
        title = obj.get("title") if isinstance(obj.get("title"), str) else ""
        yield Document(doc_id=str(obj.get("id") or f"{path.stem}:{line}"), title=title, text=text, url=str(obj.get("url") or ""))


def _read_hf_disk(path: Path) -> Iterator[Document]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise CorpusError(f"{path}: not a JSONL file or a datasets folder saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in sorted(ds)])
    col = "content" if "content" in ds.column_names else "contents"
    if col not in ds.column_names:
        raise CorpusError(f"{path}: dataset has no 'content' column (columns: {ds.column_names})")
    for i, row in enumerate(ds):
        text = row[col]
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{path}: row {i}: content: empty or missing text")
        yield Document(doc_id=str(row.get("id") or f"{path.name}:{i}"), title=str(row.get("title") or ""), text=text,
                       url=str(row.get("url") or ""))


SOURCES: dict[str, Source] = {
    "medquad_gard_ghr": Source("medquad_gard_ghr", "corpus/medquad_gard_ghr.jsonl.gz", read_medquad, MEDQUAD_LICENSE, rare=True),
    "medquad_other_nih": Source("medquad_other_nih", "corpus/medquad_other_nih.jsonl.gz", read_medquad, MEDQUAD_LICENSE, rare=False),
    "raredis_nord": Source("raredis_nord", "corpus/raredis_nord", read_nord, NORD_LICENSE, rare=True),
    "orphanet": Source("orphanet", "rare_disease/orphanet_diseases.jsonl.gz", read_orphanet, ORPHANET_LICENSE, rare=True),
}


def register_source(source: Source) -> None:
    """Add a named source (a reader over a file under data.raw_dir) that ``corpus.sources`` can then list."""
    SOURCES[source.name] = source


# ---------------------------------------------------------------- chunking


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Split on whitespace into windows of ``size`` words sharing ``overlap``; a short tail joins the last window."""
    if overlap >= size:
        raise CorpusError(f"corpus.chunk_overlap ({overlap}) must be smaller than corpus.chunk_words ({size})")
    words = text.split()
    if len(words) <= size + size // 4:
        return [" ".join(words)] if words else []
    step = size - overlap
    chunks, start = [], 0
    while True:
        end = start + size
        if len(words) - end <= size // 4:  # a tail of a few words is not worth its own passage
            chunks.append(" ".join(words[start:]))
            break
        chunks.append(" ".join(words[start:end]))
        start += step
    return chunks


def chunk_documents(docs: Iterable[Document], source: Source, size: int, overlap: int) -> Iterator[Passage]:
    for doc in docs:
        for i, piece in enumerate(chunk_words(doc.text, size, overlap)):
            yield Passage(id=f"{doc.doc_id}#{i}", title=" ".join(doc.title.split()), text=piece, source=source.name,
                          license=source.license, url=doc.url, doc_id=doc.doc_id, aliases=doc.aliases, rare=source.rare)


# ---------------------------------------------------------------- assembling


def _dedupe(passages: Iterable[Passage], stats: CorpusStats) -> list[Passage]:
    """Drop exact duplicate texts (first one wins); make a repeated id unique instead of losing a distinct text."""
    seen_text: set[str] = set()
    seen_id: Counter[str] = Counter()
    out = []
    for p in passages:
        key = hashlib.sha1(p.text.encode("utf-8")).hexdigest()
        if key in seen_text:
            stats.duplicates_dropped += 1
            continue
        seen_text.add(key)
        seen_id[p.id] += 1
        if seen_id[p.id] > 1:
            p.id = f"{p.id}~{seen_id[p.id]}"
        out.append(p)
    return out


def cap_passages(passages: list[Passage], max_passages: int | None, seed: int = 0) -> list[Passage]:
    """Keep every rare-disease passage; fill up to ``max_passages`` with a seeded, id-hashed pick of the rest (order kept)."""
    if max_passages is None or len(passages) <= max_passages:
        return passages
    rest = [p for p in passages if not p.rare]
    room = max(0, max_passages - (len(passages) - len(rest)))
    keep = {p.id for p in sorted(rest, key=lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest())[:room]}
    return [p for p in passages if p.rare or p.id in keep]


def load_passages(sources: list[str], raw_dir: str | Path, extra: list[str] | None = None, chunk_size: int = 200,
                  overlap: int = 30, max_passages: int | None = None, seed: int = 0) -> tuple[list[Passage], CorpusStats]:
    """Read, chunk, dedupe and (optionally) cap the corpus, in a fixed order: sources as listed, then extra files."""
    raw_dir = Path(raw_dir)
    stats = CorpusStats()
    plan: list[tuple[Source, Path]] = []
    for name in sources:
        if name not in SOURCES:
            raise CorpusError(f"corpus.sources: unknown source {name!r}; known: {', '.join(SOURCES)} (add your own with corpus.extra_jsonl)")
        plan.append((SOURCES[name], raw_dir / SOURCES[name].path))
    for item in extra or []:
        p = Path(item)
        name = f"extra:{p.name.split('.')[0]}"
        plan.append((Source(name, str(p), read_extra, "as given by the user's source", rare=False), p))
    if not plan:
        raise CorpusError("corpus.sources: no sources listed and no corpus.extra_jsonl files: nothing to index")

    def all_passages() -> Iterator[Passage]:
        for src, path in plan:
            if not path.exists():
                param = "corpus.extra_jsonl" if src.read is read_extra else f"corpus.sources ({src.name}, under data.raw_dir)"
                raise CorpusError(f"{path}: corpus file not found (from {param})")
            skipped: Counter[str] = Counter()
            docs = list(src.read(path, skipped))
            stats.documents[src.name] = len(docs)
            if skipped:
                stats.skipped[src.name] = sum(skipped.values())
            yield from chunk_documents(docs, src, chunk_size, overlap)

    passages = _dedupe(all_passages(), stats)
    capped = cap_passages(passages, max_passages, seed)
    stats.capped_dropped = len(passages) - len(capped)
    for p in capped:
        stats.passages[p.source] = stats.passages.get(p.source, 0) + 1
    return capped, stats


def corpus_hash(passages: Iterable[Passage]) -> str:
    """Identity of the passage set (ids, titles, texts in order): the index manifest records it."""
    h = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.title, p.text):
            h.update(part.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()[:16]


def passage_input(p: Passage) -> str:
    """The text an embedder or BM25 sees for a passage: MedRAG's ``title. content``."""
    return f"{p.title}. {p.text}" if p.title else p.text
