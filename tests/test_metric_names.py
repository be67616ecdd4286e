"""The metric-name registry: every name medssr logs is registered, once; docs/metrics.md is the registry's table."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import pytest

from medssr import metric_names as mn
from medssr.config import load_params
from tests.conftest import RAW, write_params

ROOT = Path(__file__).resolve().parents[1]


# --- the registry --------------------------------------------------------------------------------------------


def _variants(pattern: str) -> list[list[str]]:
    """A pattern's segment lists, one per choice of its optional ``[/...]`` segments."""
    parts = re.findall(r"\[/([^\]]+)\]|/?([^/\[]+)", pattern)
    choices = [((opt,), ()) if opt else ((seg,),) for opt, seg in parts]
    return [[s for pick in combo for s in pick] for combo in itertools.product(*choices)]


_FINITE = {p for p, (rx, _) in mn.PLACEHOLDERS.items() if re.fullmatch(r"[A-Za-z0-9_|]+", rx)}


def _values(segment: str) -> list[str] | None:
    """Every string a segment stands for, when its placeholders all have finitely many values; else None."""
    parts = re.split(r"<([a-z_]+)>", segment)
    if any(p not in _FINITE for p in parts[1::2]):
        return None
    pools = [mn.PLACEHOLDERS[p][0].split("|") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*pools)]


def _segments_may_overlap(a: str, b: str) -> bool:
    """False only when no string can match both segment patterns (a sound test: it may say True in vain, never False)."""
    for x, y in ((a, b), (b, a)):
        vals = _values(x)
        if vals is not None:
            return any(re.fullmatch(mn._segment_regex(y), v) for v in vals)
    pa, pb = a.split("<", 1)[0], b.split("<", 1)[0]
    sa, sb = a.rsplit(">", 1)[-1], b.rsplit(">", 1)[-1]
    return (pa.startswith(pb) or pb.startswith(pa)) and (sa.endswith(sb) or sb.endswith(sa))


def _may_overlap(p: str, q: str) -> bool:
    return any(len(u) == len(v) and all(map(_segments_may_overlap, u, v)) for u in _variants(p) for v in _variants(q))


def test_no_name_can_match_two_registry_entries():
    clashes = [(a.pattern, b.pattern) for a, b in itertools.combinations(mn.REGISTRY, 2) if _may_overlap(a.pattern, b.pattern)]
    assert not clashes


def test_the_overlap_check_sees_a_clash():
    assert _may_overlap("eval[/<checkpoint>]/avg", "eval/base/avg")
    assert _may_overlap("eval/<benchmark>/invalid_before", "eval/<checkpoint>/invalid_before")
    assert not _may_overlap("eval[/<checkpoint>]/raredis/avg", "eval[/<checkpoint>]/<benchmark>/acc")
    assert not _may_overlap("label/reliability/bucket_<lo>_<hi>_n", "label/reliability/bucket_<lo>_<hi>_acc")


def test_every_entry_says_what_it_holds_and_in_what_unit():
    assert len({e.pattern for e in mn.REGISTRY}) == len(mn.REGISTRY)
    for e in mn.REGISTRY:
        assert e.quantity.strip() and e.unit.strip(), e.pattern
        assert set(re.findall(r"<([a-z_]+)>", e.pattern)) <= set(mn.PLACEHOLDERS), e.pattern


def test_headline_metrics_are_plain_registered_names():
    for name in mn.HEADLINE_METRICS:
        assert "<" not in name and mn.lookup(name)


def test_docs_metrics_md_is_the_registry_table():
    """Regenerate with `python -m medssr.metric_names > docs/metrics.md`."""
    assert (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8") == mn.markdown()


@pytest.mark.parametrize("name, pattern", [
    ("eval/avg", "eval[/<checkpoint>]/avg"),
    ("eval/base/avg", "eval[/<checkpoint>]/avg"),
    ("eval/raredis/avg", "eval[/<checkpoint>]/raredis/avg"),
    ("eval/stage1/raredis/related_disorders/ci_high", "eval[/<checkpoint>]/raredis/<category>/<ci>"),
    ("eval/vs_base/raredis/avg/p_perm_macro", "eval[/<checkpoint>]/vs_base/raredis/avg/p_perm_macro"),
    ("eval/stage1/vs_base/avg/p_mcnemar_pooled", "eval[/<checkpoint>]/vs_base/avg/p_mcnemar_pooled"),
    ("eval/base/invalid_before", "eval[/<checkpoint>][/<benchmark>]/invalid_before"),
    ("label/reliability/bucket_0.8_1_acc", "label/reliability/bucket_<lo>_<hi>_acc"),
    ("train/stage2/reward_mean", "train/<stage>/reward_mean"),
    ("train/stage1/orl_rollout_foo", "train/<stage>/orl_<key>"),
])
def test_a_name_finds_its_one_entry(name, pattern):
    assert mn.lookup(name).pattern == pattern


@pytest.mark.parametrize("name", ["eval/raredis/medqa/acc", "train/stage3/kl", "label/agreement", "synth/accepted_last",
                                  "train/stage1/reward_mean_mean", "eval/vs_base/raredis/avg",
                                  "eval/vs_base/avg/p_mcnemar"])
def test_names_outside_the_registry_are_not_found(name):
    with pytest.raises(mn.UnregisteredMetricError, match="not in the registry"):
        mn.lookup(name)


def test_builders_spell_the_stable_names():
    assert mn.eval_metric("medqa") == "eval/medqa/acc"
    assert mn.raredis_metric("Related disorders") == "eval/raredis/related_disorders/acc"
    assert mn.metric("label", "agreement_mean") == "label/agreement_mean"
    assert mn.train_metric("stage1", "kl") == "train/stage1/kl"
    assert mn.eval_prefix("stage2", final=True) == "eval" and mn.eval_prefix("base", final=False) == "eval/base"
    assert mn.flatten({"medqa": {"acc": 0.5, "note": "x"}, "avg": 0.5}, "eval/base") == {"eval/base/medqa/acc": 0.5, "eval/base/avg": 0.5}
    assert mn.prepare_category_metric("Related disorders") == "prepare/raredis/related_disorders"
    assert mn.label_bucket_metric(0.5, 0.75, "n") == "label/reliability/bucket_0.5_0.75_n"
    assert mn.review_metric("overall", "n_ratings") == "review/overall/n_ratings"


# --- enforcement -----------------------------------------------------------------------------------------------


def test_a_stage_run_refuses_an_unregistered_name_in_strict_mode(mlflow_store, monkeypatch):
    from medssr import tracking

    monkeypatch.setenv("MEDSSR_STRICT", "1")
    params = load_params(ROOT / "params.yaml")
    with tracking.stage_run("label", params) as mlflow:
        mlflow.log_metric("label/kept", 3)
        with pytest.raises(mn.UnregisteredMetricError, match=r"'label/kept_last' is not in the registry.*medssr/metric_names.py"):
            mlflow.log_metrics({"label/kept": 3, "label/kept_last": 3})
    assert mn.logged_names(mlflow_store) == {"label/kept"}


def test_outside_strict_mode_an_unregistered_name_is_logged_with_a_warning(mlflow_store, monkeypatch):
    from medssr import tracking
    from medssr.errors import ContractWarning

    monkeypatch.delenv("MEDSSR_STRICT", raising=False)
    params = load_params(ROOT / "params.yaml")
    with pytest.warns(ContractWarning, match="'label/not_a_registered_name' is not in the registry"):
        with tracking.stage_run("label", params) as mlflow:
            mlflow.log_metric("label/not_a_registered_name", 1.0)
    assert mn.unregistered(mn.logged_names(mlflow_store)) == ["label/not_a_registered_name"]
    assert mn.main(["--check", mlflow_store]) == 1


# --- what stages really log ------------------------------------------------------------------------------------


def _pred(qid, bench, run, correct, category=None):
    from eval.scoring import Prediction

    return Prediction(id=qid, benchmark=bench, run=run, gold="A", output="", extracted="A" if correct else "B", constrained=None,
                      final="A" if correct else "B", correct=correct, category=category)


def _eval_predictions(skill: int):
    out = [_pred(f"{b}{i}", b, r, i < skill) for b in ("medqa", "medbullets") for i in range(6) for r in range(2)]
    cats = ("Symptoms", "Related disorders", "Treatment")
    return out + [_pred(f"rd{i}", "raredis_sub", r, i < skill, cats[i % 3]) for i in range(6) for r in range(2)]


def test_every_name_the_stages_log_to_a_real_store_is_registered(tmp_path, mlflow_store, monkeypatch):
    """prepare on the bundled data, an evaluation of three checkpoints, training steps through the TRL callback and
    the OpenRLHF reader, and a review import: each logs through its own code into one sqlite store, in strict mode."""
    from types import SimpleNamespace

    from eval.scoring import results_json, results_metrics
    from medssr import tracking
    from medssr.data.prepare import run_prepare
    from medssr.review import import_review
    from medssr.rl import openrlhf_backend
    from medssr.rl.callbacks import OWN_PREFIX, TRL_KEYS, MLflowStepCallback

    monkeypatch.setenv("MEDSSR_STRICT", "1")
    params = load_params(write_params(tmp_path, {"data.max_seeds": 50}))
    run_prepare(params, RAW, tmp_path / "prepared", tmp_path / "reports" / "prepare.json")

    results = results_json({"base": _eval_predictions(2), "stage1": _eval_predictions(3), "stage2": _eval_predictions(5)}, n_boot=50)
    metrics = results_metrics(results, "stage2")
    with tracking.stage_run("evaluate", params) as mlflow:
        mlflow.log_metrics(metrics)
    tracking.log_summary_to_parent(params, metrics)

    logs = {**{k: 0.5 for k in TRL_KEYS}, **{OWN_PREFIX + k: 0.5 for k in ("distinct_answers", "answer_entropy", "all_agree_share",
            "valid_answer_share", "pseudo_label_agreement", "offline_label_agreement", "accuracy", "generation_s", "completion_tokens",
            "peak_rss_mb", "peak_gpu_mb")}}
    with tracking.stage_run("stage1", params) as mlflow:
        cb = MLflowStepCallback("stage1", mlflow)
        cb.on_train_begin(None, SimpleNamespace(log_history=[{"step": 1, **logs}]), None)  # a resumed run's restored rows
        cb.on_log(None, SimpleNamespace(global_step=2), None, logs=logs)
    series = {tag: {1: 0.5} for tag in openrlhf_backend.TB_TAGS} | {"train/rollout/other": {1: 1.0}, "eval/medqa": {1: 0.2}}
    monkeypatch.setattr(openrlhf_backend, "read_tensorboard", lambda tb_dir: series)
    with tracking.stage_run("stage2", params) as mlflow:
        openrlhf_backend.tensorboard_to_mlflow(tmp_path / "tb", "stage2", mlflow, samples_per_step=4)

    sheet = tmp_path / "sheet.csv"
    with open(sheet, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("id", "correct", "harmful", "plausibility", "reviewer", "group"), ("q1", "y", "n", 4, "A", "senior"),
                                  ("q2", "n", "y", 2, "B", "junior")])
    import_review([sheet], experiment=params.project.experiment)

    names = mn.logged_names(mlflow_store)
    assert {"prepare/seeds", "eval/base/raredis/avg", "eval/vs_base/avg/diff", "eval/stage1/vs_base/raredis/symptoms/p_mcnemar",
            "train/stage1/all_agree_share", "train/stage2/orl_rollout_other", "review/overall/n_ratings", "eval/avg"} <= names
    assert mn.unregistered(names) == []
    assert all(len(mn.matches(n)) == 1 for n in names)


def test_the_corpus_stage_logs_only_registered_names(tmp_path, mlflow_store, monkeypatch):
    import json

    import yaml

    from medssr.knowledge import entities_from_orphanet, run_corpus
    from tests.test_knowledge import RAW as KRAW
    from tests.test_knowledge import make_raw_slice

    monkeypatch.setenv("MEDSSR_STRICT", "1")
    raw = make_raw_slice(tmp_path / "raw", gard=10, other=3, orphanet=10, nord=2)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["corpus"].update(sources=["medquad_gard_ghr", "orphanet"], batch_size=16, eval_embedders=["bm25"], eval_sample=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with open(tmp_path / "entities.jsonl", "w", encoding="utf-8") as fh:
        for e in entities_from_orphanet(KRAW / "rare_disease/orphanet_diseases.jsonl.gz"):
            fh.write(json.dumps({"name": e.name, "synonyms": list(e.synonyms), "orphacode": e.orphacode}) + "\n")
    run_corpus(load_params(tmp_path / "params.yaml"), raw, tmp_path / "entities.jsonl", tmp_path / "index", tmp_path / "corpus.json",
               show_progress=False)
    names = mn.logged_names(mlflow_store)
    assert {"corpus/passages", "corpus/recall_at_4/bm25", "corpus/source_passages/orphanet"} <= names
    assert mn.unregistered(names) == []


def test_the_synthesize_stage_logs_only_registered_names(tmp_path, mlflow_store, monkeypatch):
    from medssr.data.loaders import load_benchmarks, load_medmcqa
    from tests.llm_servers import FakeOpenAIServer, first_time_faults, rate_limited
    from tests.test_synthesize_stage import fake_question, make_params, run

    monkeypatch.setenv("MEDSSR_STRICT", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.chdir(tmp_path)
    bench = load_benchmarks(load_params(ROOT / "params.yaml").data.benchmarks, RAW, names=["medqa"])
    seeds = [q for q in load_medmcqa(RAW) if len(q.question) >= 100][:40]
    with FakeOpenAIServer(responder=fake_question) as srv:
        srv.rule = first_time_faults([rate_limited(0.05)])
        params = make_params(tmp_path, "openai", srv.base_url, n=4)
        run(params, tmp_path, seeds, {"medqa": bench["medqa"][:100]}, track=True)
    names = mn.logged_names(mlflow_store)
    assert {"synth/accepted", "synth/faults/rate_limit", "synth/tokens_per_accepted_question/total"} <= names
    assert mn.unregistered(names) == []


def test_the_label_stage_logs_only_registered_names(tiny_model_dir, tmp_path, mlflow_store, monkeypatch):
    from medssr.label.run import run_label
    from tests.test_label_stage import _params, _sampler, _write_inputs

    monkeypatch.setenv("MEDSSR_STRICT", "1")
    syn, bench = _write_inputs(tmp_path, 4)
    run_label(_params(), tiny_model_dir, syn, bench, tmp_path / "labeled.jsonl", tmp_path / "label.json", tmp_path / "label.png",
              sampler=_sampler(tiny_model_dir), progress=False)
    names = mn.logged_names(mlflow_store)
    assert {"label/kept", "label/reliability/majority_acc_ci_low"} <= names
    assert any(n.startswith("label/reliability/bucket_") for n in names)
    assert mn.unregistered(names) == []
