"""The corpus stage end to end on a real slice: index, coverage.json, reports/corpus.json, MLflow metrics, summary line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from medssr.config import Params, build
from medssr.knowledge import CorpusError, entities_from_orphanet, run_corpus
from tests.test_knowledge import RAW, make_raw_slice

ROOT = Path(__file__).resolve().parents[1]


def _stage_main():
    spec = importlib.util.spec_from_file_location("corpus_stage", ROOT / "stages" / "corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _entities_file(path: Path) -> Path:
    """E_rare in the prepare stage's format, straight from Orphanet."""
    with open(path, "w", encoding="utf-8") as fh:
        for e in entities_from_orphanet(RAW / "rare_disease/orphanet_diseases.jsonl.gz"):
            fh.write(json.dumps({"name": e.name, "synonyms": list(e.synonyms), "orphacode": e.orphacode}) + "\n")
    return path


def test_stage_builds_the_index_and_writes_coverage_report_and_mlflow_metrics(tmp_path, mlflow_store, capsys):
    raw = make_raw_slice(tmp_path / "raw", gard=20, other=5, orphanet=30, nord=3)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # a params file is whole: the shipped one, changed
    params["project"]["experiment"] = "corpus-test"
    params["corpus"].update(sources=["medquad_gard_ghr", "medquad_other_nih", "raredis_nord", "orphanet"], batch_size=16,
                            eval_embedders=["minilm", "bm25", "hybrid"], eval_sample=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    report_path = tmp_path / "reports/corpus.json"
    assert _stage_main()(["--params", str(tmp_path / "params.yaml"), "--raw-dir", str(raw), "--index-dir", str(tmp_path / "artifacts/corpus"),
                          "--entities", str(_entities_file(tmp_path / "entities.jsonl")), "--report", str(report_path),
                          "--metrics", str(tmp_path / "metrics/corpus.json")]) == 0

    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("corpus: ") and "recall@4: minilm" in summary
    report = json.loads(report_path.read_text())
    assert set(report["passages_per_source"]) == {"medquad_gard_ghr", "medquad_other_nih", "raredis_nord", "orphanet"}
    assert report["passages"] == sum(report["passages_per_source"].values()) and report["build_passages_per_s"] > 0
    assert set(report["recall_at_4"]) == {"minilm", "bm25", "hybrid"} and report["recall_at_4"]["minilm"] >= 0.8
    coverage = json.loads((tmp_path / "artifacts/corpus/coverage.json").read_text())
    assert coverage["Worster-Drought syndrome"] == ["ORPHA:3465#0"] and len(coverage) == report["covered_entities"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("corpus-test")
    (run,) = client.search_runs([exp.experiment_id], "tags.medssr_stage = 'corpus'")
    m = run.data.metrics
    assert m["corpus/passages"] == report["passages"] and m["corpus/covered_entities"] == report["covered_entities"]
    assert m["corpus/recall_at_4/bm25"] == report["recall_at_4"]["bm25"] and "corpus/build_passages_per_s" in m
    assert run.data.params["corpus.embedder"] == "minilm"


def test_stage_fails_before_building_when_the_entity_file_is_missing(tmp_path):
    params = build(Params, {})
    with pytest.raises(CorpusError, match=r"entities\.jsonl: entity file not found; run the prepare stage"):
        run_corpus(params, RAW, tmp_path / "entities.jsonl", tmp_path / "idx", tmp_path / "corpus.json", log_mlflow=False)
    assert not (tmp_path / "idx").exists()
