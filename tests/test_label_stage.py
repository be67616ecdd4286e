"""The label stage end to end on the tiny model with real MedQA questions: output, report, plot, MLflow, resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medssr.config import LabelCfg, Params, ProjectCfg, SamplingCfg
from medssr.label.run import progress_path_for, reliability_sample, reliability_table, run_label
from medssr.label.vote import majority_vote
from medssr.records import Question, RecordError, read_questions, write_jsonl
from tests.test_rollout import recording

ROOT = Path(__file__).resolve().parents[1]
MEDQA = ROOT / "data" / "raw" / "benchmarks" / "test_short_medqa.json.gz"
MEDMCQA = ROOT / "data" / "raw" / "benchmarks" / "test_short_medmcqa.json.gz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(n: int = 4, reliability_n: int = 2, **label: object) -> Params:
    sampling = SamplingCfg(n=n, temperature=1.0, max_new_tokens=12, batch_size=4)
    return Params(project=ProjectCfg(experiment="label-test"), label=LabelCfg(sampling=sampling, reliability_n=reliability_n, **label))


def _real(path: Path, k: int, skip: int = 0) -> list[Question]:
    from medssr.data.loaders import load_benchmark_file

    return load_benchmark_file(path)[skip : skip + k]


def _write_inputs(tmp: Path, n_syn: int) -> tuple[Path, Path]:
    """Synthetic questions made from real MedQA rows (gold removed) and a prepared-benchmarks dir with gold answers."""
    syn = [dataclasses.replace(q, id=f"syn-{i:04d}", source="synthetic", split="train", answer=None, meta={})
           for i, q in enumerate(_real(MEDQA, n_syn))]
    write_jsonl(tmp / "synthetic" / "questions.jsonl", syn)
    write_jsonl(tmp / "benchmarks" / "medqa.jsonl", _real(MEDQA, 4, skip=100))
    write_jsonl(tmp / "benchmarks" / "medmcqa.jsonl", _real(MEDMCQA, 4))
    return tmp / "synthetic" / "questions.jsonl", tmp / "benchmarks"


def force_letter_answers(sampler, slow_s: float = 0.0) -> None:
    """Bias the real tiny model's logits so it 'writes' ``Well( so)* The answer is <A-D or unclear>.`` then EOS.

    A random model never commits to an answer; this small Markov chain over the last token lets the stage see
    real disagreement (letters drawn by each row's own seeded stream), unanswered samples and rows that finish
    at different steps, while the real model, KV cache, batching and early stop run underneath.
    """
    tok = sampler.tok

    def one(s: str) -> int:
        ids = tok.encode(s, add_special_tokens=False)
        assert len(ids) == 1, s
        return ids[0]

    well, so, the, answer, is_, unclear, dot = (one(s) for s in ("Well", " so", " The", " answer", " is", " unclear", "."))
    letters = [one(f" {L}") for L in "ABCD"]
    eos = tok.eos_token_id
    prompt_end = tok.encode(sampler.render("x"), add_special_tokens=False)[-1]
    chain = {prompt_end: [well], well: [so, the], so: [so, the], the: [answer], answer: [is_], is_: letters + [unclear],
             unclear: [eos], dot: [eos], **{t: [dot] for t in letters}}
    real = sampler._forward

    def forward(input_ids, attention_mask, position_ids, cache):
        if slow_s:
            time.sleep(slow_s)
        logits = real(input_ids, attention_mask, position_ids, cache)
        for r, last in enumerate(input_ids[:, -1].tolist()):
            allowed = chain.get(last, [eos])
            logits[r] = -1e4
            logits[r, allowed] = 0.0
        return logits

    sampler._forward = forward


def _sampler(model_dir, slow_s: float = 0.0):
    from medssr.sampling import HFSampler

    s = HFSampler(str(model_dir), batch_size=4, seed=0)
    force_letter_answers(s, slow_s)
    return s


def _params_for(backend: str) -> Params:
    """hf, or a backend whose samples depend on their seeds alone (like vLLM): the forced sampler's are, exactly,
    since it replaces the model's logits by constants, so it stands in for that rule with the real decode loop."""
    params = _params()
    params.label.sampling.backend = backend
    return params


def child_main(model_dir: str, tmp: str, out_name: str, slow_s: str, chunk: str = "3", backend: str = "hf") -> None:
    """Entry point of the subprocess that the resume tests kill: same params, same forced sampler."""
    torch.set_num_threads(1)
    t = Path(tmp)
    run_label(_params_for(backend), model_dir, t / "synthetic" / "questions.jsonl", t / "benchmarks", t / out_name, t / "report.json",
              t / "plot.png", sampler=_sampler(model_dir, float(slow_s)), chunk_size=int(chunk) if chunk != "default" else None,
              progress=False, track=False)


def _run_and_kill(tiny_model_dir, tmp_path: Path, out_name: str, chunk: str, backend: str = "hf", at_least: int = 4) -> list[str]:
    """Start the label stage in a subprocess, SIGKILL it once ``at_least`` questions are in its progress file; their keys."""
    code = "import sys; from tests.test_label_stage import child_main; child_main(*sys.argv[1:])"
    cmd = [sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path), out_name, "0.03", chunk, backend]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    prog = progress_path_for(tmp_path / out_name)
    child = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if prog.exists() and len(prog.read_text().splitlines()) >= at_least:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / out_name).exists()
    return [json.loads(line)["key"] for line in prog.read_text().splitlines() if line.endswith("}")]


# --- end to end ------------------------------------------------------------------------------------------------


def test_run_label_writes_voted_questions_report_plot_and_mlflow_metrics(tiny_model_dir, tmp_path, mlflow_store):
    syn_path, bench = _write_inputs(tmp_path, 6)
    out, report_p, plot = tmp_path / "labeled" / "synthetic.jsonl", tmp_path / "reports" / "label.json", tmp_path / "reports" / "label.png"
    params = _params()
    report = run_label(params, tiny_model_dir, syn_path, bench, out, report_p, plot, sampler=_sampler(tiny_model_dir), progress=False)

    labeled = read_questions(out)
    assert report["kept"] == len(labeled) > 0
    assert report["kept"] + report["dropped_no_valid"] + report["dropped_ties"] + report["dropped_low_agreement"] \
        + report["dropped_high_agreement"] == 6
    for q in labeled:
        assert len(q.votes) == 4 and q.majority in q.options and q.answer is None
        assert q.agreement == pytest.approx(q.votes.count(q.majority) / 4)
        assert q.n_valid == sum(v is not None for v in q.votes)
        assert q.majority == majority_vote(q.votes, q.id, seed=0).majority
        assert q.label == q.majority
    assert [q.id for q in labeled] == sorted(q.id for q in labeled)  # input order

    on_disk = json.loads(report_p.read_text())
    assert on_disk["reliability"]["n"] == 2
    assert sum(b["n"] for b in on_disk["reliability"]["buckets"]) == 2
    assert on_disk["timing"]["votes"] == (6 + 2) * 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("label-test")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.medssr_stage = 'label'")
    m = run.data.metrics
    for name in ("label/kept", "label/dropped_no_valid", "label/dropped_ties", "label/dropped_low_agreement", "label/agreement_mean",
                 "label/reliability/majority_acc", "label/reliability/single_acc", "label/votes_per_s",
                 "label/reliability/majority_acc_ci_low", "label/reliability/majority_acc_ci_high", "label/dropped_high_agreement",
                 "label/reliability/pass_at_g", "label/reliability/pass_at_g_ci_low", "label/reliability/pass_at_g_ci_high",
                 "label/reliability/majority_ratio", "label/reliability/majority_ratio_ci_low", "label/reliability/majority_ratio_ci_high"):
        assert name in m, name
    assert m["label/kept"] == report["kept"]
    rel = on_disk["reliability"]
    assert m["label/reliability/pass_at_g"] == pytest.approx(rel["pass_at_g"]) and rel["pass_at_g"] >= rel["majority_acc"]
    assert m["label/reliability/majority_ratio"] == pytest.approx(rel["majority_ratio"])
    assert any(k.startswith("label/reliability/bucket_") and k.endswith("_acc") for k in m)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"label.json", "label.png"}


def test_random_model_commits_to_no_answer_so_every_question_is_dropped_and_counted(tiny_model_dir, tmp_path):
    from medssr.sampling import HFSampler

    syn_path, bench = _write_inputs(tmp_path, 3)
    out = tmp_path / "labeled.jsonl"
    report = run_label(_params(n=2, reliability_n=0), tiny_model_dir, syn_path, bench, out, tmp_path / "r.json", tmp_path / "p.png",
                       sampler=HFSampler(str(tiny_model_dir), batch_size=4), progress=False, track=False)
    assert (report["kept"], report["dropped_no_valid"]) == (0, 3)
    assert out.read_text() == ""
    assert report["reliability"] == {"n": 0}


def test_ties_drop_and_min_agreement_are_applied_and_counted(tiny_model_dir, tmp_path):
    syn_path, bench = _write_inputs(tmp_path, 6)
    kw = dict(sampler=_sampler(tiny_model_dir), progress=False, track=False)
    base = run_label(_params(reliability_n=0), tiny_model_dir, syn_path, bench, tmp_path / "a.jsonl", tmp_path / "a.json", tmp_path / "a.png", **kw)
    strict = run_label(_params(reliability_n=0, ties="drop", min_agreement=0.75), tiny_model_dir, syn_path, bench, tmp_path / "b.jsonl",
                       tmp_path / "b.json", tmp_path / "b.png", **kw)
    votes = [q.votes for q in read_questions(tmp_path / "a.jsonl")]
    assert base["dropped_ties"] == 0 and base["dropped_low_agreement"] == 0
    expected = [majority_vote(v, "x", ties="drop", min_agreement=0.75).status for v in votes]
    assert strict["kept"] == expected.count("kept")
    assert strict["dropped_ties"] == expected.count("tie")
    assert strict["dropped_low_agreement"] == expected.count("low_agreement")
    assert all(q.agreement >= 0.75 for q in read_questions(tmp_path / "b.jsonl"))


def test_max_agreement_drops_too_easy_questions_counts_them_and_shows_the_histogram_before_and_after(tiny_model_dir, tmp_path,
                                                                                                      mlflow_store):
    from mlflow.tracking import MlflowClient

    from medssr.label.run import summary_line

    syn_path, bench = _write_inputs(tmp_path, 6)
    kw = dict(sampler=_sampler(tiny_model_dir), progress=False)
    base = run_label(_params(n=2, reliability_n=0), tiny_model_dir, syn_path, bench, tmp_path / "a.jsonl", tmp_path / "a.json",
                     tmp_path / "a.png", track=False, **kw)
    band = run_label(_params(n=2, reliability_n=0, max_agreement=0.5), tiny_model_dir, syn_path, bench, tmp_path / "b.jsonl",
                     tmp_path / "b.json", tmp_path / "b.png", plot_data_path=tmp_path / "b_rows.json", **kw)
    expected = [majority_vote(q.votes, q.id, max_agreement=0.5).status for q in read_questions(tmp_path / "a.jsonl")]
    assert base["dropped_high_agreement"] == 0 and base["dropped_no_valid"] + len(expected) == 6
    assert band["dropped_high_agreement"] == expected.count("too_easy") > 0  # the 2/2-unanimous questions
    assert band["kept"] == expected.count("kept")
    assert all(q.agreement <= 0.5 for q in read_questions(tmp_path / "b.jsonl"))

    rows = json.loads((tmp_path / "b_rows.json").read_text())
    assert rows == band["agreement_band_histogram"] and [r["agreement"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["before"] for r in rows] == [r["before"] for r in base["agreement_band_histogram"]] and sum(r["before"] for r in rows) == 6
    assert [r["after"] for r in rows] == [0, band["kept"], 0]
    assert f"too easy {band['dropped_high_agreement']})" in summary_line(band)
    client = MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("label-test").experiment_id], filter_string="tags.medssr_stage = 'label'")
    assert run.data.metrics["label/dropped_high_agreement"] == band["dropped_high_agreement"]


def test_min_agreement_above_max_agreement_is_a_config_error_naming_both_keys(tmp_path):
    from medssr.config import ConfigError, load_params
    from tests.conftest import write_params

    with pytest.raises(ConfigError, match=r"label\.min_agreement: 0\.9 is above label\.max_agreement \(0\.5\)"):
        load_params(write_params(tmp_path, {"label.min_agreement": 0.9, "label.max_agreement": 0.5}))


def test_no_label_kept_because_all_were_too_easy_names_max_agreement():
    sys.path.insert(0, str(ROOT / "stages"))
    try:
        import label as stage
    finally:
        sys.path.remove(str(ROOT / "stages"))
    report = {"questions": 3, "kept": 0, "dropped_no_valid": 1, "dropped_ties": 0, "dropped_low_agreement": 0, "dropped_high_agreement": 2}
    cause, change = stage.empty_cause(report, _params(max_agreement=0.75), "q.jsonl")
    assert "2 agreement above label.max_agreement=0.75" in cause
    assert change.startswith("label.max_agreement")  # the larger cause first


def _label(tiny_model_dir, tmp_path: Path, out_name: str, params: Params | None = None, sampler=None, **kw) -> dict:
    t = tmp_path
    return run_label(params or _params(), tiny_model_dir, t / "synthetic" / "questions.jsonl", t / "benchmarks", t / out_name,
                     t / f"{out_name}.report.json", t / "plot.png", sampler=sampler or _sampler(tiny_model_dir), progress=False,
                     track=False, **kw)


def test_resume_after_sigkill_gives_a_byte_identical_labeled_file(tiny_model_dir, tmp_path):
    """Explicit chunks of 3 with hf: the killed chunk is re-sampled whole (its composition fixes the floats)."""
    _write_inputs(tmp_path, 9)
    # uninterrupted reference, in this process (one thread, like the child)
    ref_report = _label(tiny_model_dir, tmp_path, "ref.jsonl", chunk_size=3)
    assert ref_report["kept"] > 0
    finished = _run_and_kill(tiny_model_dir, tmp_path, "killed.jsonl", "3")
    assert 0 < len(finished) < 9 + 2

    # the rerun (here in-process: same code, same single thread) skips the chunks the killed run finished
    sampler = _sampler(tiny_model_dir)
    calls = recording(sampler)
    report = _label(tiny_model_dir, tmp_path, "killed.jsonl", sampler=sampler, chunk_size=3)
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert report["reliability"] == ref_report["reliability"]
    syn = [f"syn-{i:04d}" for i in range(9)]
    whole = [c for c in (syn[0:3], syn[3:6], syn[6:9]) if set(c) <= set(finished)]
    sampled = [k for c in calls for k in c]
    assert not set(sampled) & {k for c in whole for k in c} and len(sampled) == 9 + 2 - 3 * len(whole)
    t = report["timing"]  # counts of this run's work only: a re-sampled question is not 'resumed'
    assert (t["resumed_questions"], t["sampled_questions"], t["votes"]) == (3 * len(whole), len(sampled), 4 * len(sampled))


@pytest.mark.parametrize("backend", ["hf", "vllm"], ids=["hf-chunk-of-one-batch", "seeds-alone"])
def test_sigkill_mid_chunk_loses_only_the_questions_in_flight(tiny_model_dir, tmp_path, backend):
    """Issue #13.6: each question is appended when its G votes are done and a resume samples only what is missing.
    hf: a chunk is what one batch holds (here batch 4 / G 4 = one question); seeds alone (vLLM's rule): the
    unfinished questions of a chunk are sampled on their own (here all 9 + 2 in one chunk)."""
    _write_inputs(tmp_path, 9)
    ref = _label(tiny_model_dir, tmp_path, "ref.jsonl", _params_for(backend))
    finished = _run_and_kill(tiny_model_dir, tmp_path, "killed.jsonl", "default", backend)
    assert 4 <= len(finished) < 9 + 2

    sampler = _sampler(tiny_model_dir)
    calls = recording(sampler)
    report = _label(tiny_model_dir, tmp_path, "killed.jsonl", _params_for(backend), sampler=sampler)
    sampled = [k for c in calls for k in c]
    assert not set(sampled) & set(finished) and len(sampled) == 9 + 2 - len(finished)  # nothing finished is sampled again
    t = report["timing"]
    assert (t["resumed_questions"], t["sampled_questions"], t["votes"]) == (len(finished), len(sampled), 4 * len(sampled))
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert report["reliability"] == ref["reliability"]


@pytest.mark.parametrize("where", ["middle", "last-with-newline"])
def test_damaged_progress_line_is_quarantined_voted_again_and_the_output_equals_an_uninterrupted_run(tiny_model_dir, tmp_path,
                                                                                                   where):
    """Issue #13.5: a damaged line costs its question, not the run; it is set aside, counted, and gone next time."""
    from medssr.label.run import summary_line
    from medssr.records import quarantine_path_for

    _write_inputs(tmp_path, 4)
    params = _params(reliability_n=0)
    _label(tiny_model_dir, tmp_path, "ref.jsonl", params)
    lines = progress_path_for(tmp_path / "ref.jsonl").read_text().splitlines(keepends=True)
    n = 1 if where == "middle" else len(lines) - 1
    bad = lines[n][:40] + "\n"
    prog = progress_path_for(tmp_path / "damaged.jsonl")
    prog.write_text("".join(lines[:n] + [bad] + lines[n + 1 :]))

    report = _label(tiny_model_dir, tmp_path, "damaged.jsonl", params)
    assert (tmp_path / "damaged.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert report["progress"] == {"quarantined_lines": 1, "torn_tail": 0, "quarantine_files": [str(quarantine_path_for(prog))]}
    assert (report["timing"]["sampled_questions"], report["timing"]["resumed_questions"]) == (1, 3)
    assert f"1 damaged progress line quarantined to {quarantine_path_for(prog)}" in summary_line(report)
    assert [json.loads(x)["raw"] for x in quarantine_path_for(prog).read_text().splitlines()] == [bad.rstrip("\n")]

    again = _label(tiny_model_dir, tmp_path, "damaged.jsonl", params)  # no error, nothing damaged, nothing to sample
    assert again["progress"]["quarantined_lines"] == 0 and again["timing"]["resumed_questions"] == 4
    assert (tmp_path / "damaged.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert "quarantined" not in summary_line(again)


def test_progress_rows_from_another_prompt_or_model_are_not_reused(tiny_model_dir, tmp_path):
    syn_path, bench = _write_inputs(tmp_path, 3)
    out = tmp_path / "labeled.jsonl"
    stale = {"key": "syn-0000", "fp": "another-model", "prompt": "x", "votes": ["A"] * 4, "n_tokens": [1] * 4, "finish": ["eos"] * 4}
    progress_path_for(out).write_text(json.dumps(stale) + "\n")
    report = run_label(_params(reliability_n=0), tiny_model_dir, syn_path, bench, out, tmp_path / "r.json", tmp_path / "p.png",
                       sampler=_sampler(tiny_model_dir), progress=False, track=False)
    assert report["timing"]["resumed_questions"] == 0 and report["timing"]["sampled_questions"] == 3


# --- bad input -------------------------------------------------------------------------------------------------


def _bad_file(tmp_path: Path, bad_row: dict) -> Path:
    good = dataclasses.replace(_real(MEDQA, 1)[0], id="syn-0000", source="synthetic", split="train", answer=None, meta={}).to_dict()
    p = tmp_path / "questions.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad_row) + "\n")
    return p


def test_synthetic_row_without_options_is_an_error_naming_file_line_and_field(tmp_path):
    p = _bad_file(tmp_path, {"id": "syn-0001", "source": "synthetic", "split": "train", "question": "Which?"})
    with pytest.raises(RecordError, match=r"questions\.jsonl:2: options: missing"):
        run_label(_params(), tmp_path / "no-model", p, tmp_path, tmp_path / "o.jsonl", tmp_path / "r.json", tmp_path / "p.png", track=False)


def test_label_stage_prints_the_bad_row_and_exits_nonzero(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "stages"))
    try:
        import label as stage
    finally:
        sys.path.remove(str(ROOT / "stages"))
    p = _bad_file(tmp_path, {"id": "bad id!", "source": "synthetic", "split": "train", "question": "Which?", "options": {"A": "x", "B": "y"}})
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("  reliability_n: 16\n", "  reliability_n: 0\n"))
    rc = stage.main(["--params", str(tmp_path / "params.yaml"), "--synthetic", str(p), "--model", str(tmp_path / "none"),
                     "--benchmarks", str(tmp_path / "benchmarks"), "--out", str(tmp_path / "o.jsonl"), "--report", str(tmp_path / "r.json"),
                     "--metrics", str(tmp_path / "m.json"), "--plot", str(tmp_path / "p.png"),
                     "--plot-data", str(tmp_path / "p.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "questions.jsonl:2: id: malformed id 'bad id!'" in err


def test_missing_model_dir_is_an_error_naming_the_param(tmp_path):
    syn_path, bench = _write_inputs(tmp_path, 1)
    from medssr.label.run import LabelError

    with pytest.raises(LabelError, match="model.dir"):
        run_label(_params(), tmp_path / "absent", syn_path, bench, tmp_path / "o.jsonl", tmp_path / "r.json", tmp_path / "p.png", track=False)


# --- reliability pieces ----------------------------------------------------------------------------------------


def test_reliability_sample_is_seeded_and_draws_across_benchmark_files(tmp_path):
    _, bench = _write_inputs(tmp_path, 1)
    a = reliability_sample(bench, 6, seed=0)
    assert [q.id for q in a] == [q.id for q in reliability_sample(bench, 6, seed=0)]
    assert {q.source for q in a} == {"medqa", "medmcqa"} and all(q.answer for q in a)
    assert len(reliability_sample(bench, 100, seed=0)) == 8


def test_reliability_without_benchmark_files_says_what_to_do(tmp_path):
    from medssr.label.run import LabelError

    with pytest.raises(LabelError, match="reliability_n"):
        reliability_sample(tmp_path / "nothing", 4, seed=0)


def test_reliability_table_compares_majority_with_first_sample_per_bucket():
    qs = [Question(id=f"q{i}", source="medqa", split="test", question="?", options={"A": "a", "B": "b"}, answer="A") for i in range(3)]
    rs = [majority_vote(["B", "A", "A", "A"], "q0"),  # agreement .75, majority right, first sample wrong
          majority_vote(["A", "B", None, None], "q1"),  # tie -> seeded; agreement .25
          majority_vote([None] * 4, "q2")]  # no answer counts as wrong
    t = reliability_table(qs, rs)
    assert t["n"] == 3 and t["no_valid"] == 1
    assert t["single_acc"] == pytest.approx(1 / 3)
    assert t["majority_acc"] == pytest.approx((1 + (rs[1].majority == "A")) / 3)
    top = t["buckets"][-1]
    assert (top["lo"], top["hi"], top["n"], top["majority_acc"], top["single_acc"]) == (0.75, 1.0, 1, 1.0, 0.0)
    assert t["buckets"][0]["n"] == 2
    from eval.stats import wilson_interval

    assert t["single_acc_ci"] == pytest.approx(list(wilson_interval(1, 3)))  # every accuracy with n and its interval
    assert top["majority_acc_ci"] == pytest.approx(list(wilson_interval(1, 1))) and top["single_acc_ci"] == [0.0, pytest.approx(0.7935, abs=1e-3)]
    assert t["buckets"][1]["n"] == 0 and t["buckets"][1]["majority_acc_ci"] is None


def test_reliability_table_reports_ttrl_label_metrics_pass_at_g_and_majority_ratio_with_intervals():
    from eval.stats import wilson_interval

    qs = [Question(id=f"q{i}", source="medqa", split="test", question="?", options={"A": "a", "B": "b", "C": "c"}, answer="A")
          for i in range(4)]
    rs = [majority_vote(["A", "A", "A", "A"], "q0"),  # majority right, ratio 1
          majority_vote(["B", "B", "B", "A"], "q1"),  # majority wrong but one vote right: pass@G counts it; ratio .75
          majority_vote(["B", "C", None, None], "q2"),  # no vote right; ratio .25
          majority_vote([None] * 4, "q3")]  # nothing valid; ratio 0
    t = reliability_table(qs, rs)
    assert (t["g"], t["majority_acc"], t["pass_at_g"]) == (4, 0.25, 0.5)  # label accuracy is the majority's
    assert t["pass_at_g_ci"] == pytest.approx(list(wilson_interval(2, 4)))
    assert t["majority_ratio"] == pytest.approx((1 + 0.75 + 0.25 + 0) / 4)
    lo, hi = t["majority_ratio_ci"]
    assert 0 <= lo < t["majority_ratio"] < hi <= 1 and t["majority_ratio_ci"] == reliability_table(qs, rs)["majority_ratio_ci"]


def test_reliability_votes_are_reused_by_a_run_on_another_synthetic_set(tiny_model_dir, tmp_path):
    """Every value of an α sweep votes on the same real questions with the same model: only the first one pays."""
    syn_a, bench = _write_inputs(tmp_path / "a", 3)
    syn_b, _ = _write_inputs(tmp_path / "b", 5)
    cache = tmp_path / "reliability-cache"
    reports = []
    for name, syn in (("a", syn_a), ("b", syn_b)):
        out = tmp_path / name
        reports.append(run_label(_params(), tiny_model_dir, syn, bench, out / "l.jsonl", out / "r.json", out / "p.png",
                                 sampler=_sampler(tiny_model_dir), progress=False, track=False, reliability_cache=cache))
    first, second = reports
    assert first["timing"]["votes"] == (3 + 2) * 4 and second["timing"]["votes"] == 5 * 4  # real questions not re-voted
    assert second["reliability"] == first["reliability"]
    assert len(list(cache.glob("*.jsonl"))) == 1


def test_data_parallel_engines_vote_by_key_and_a_resume_on_one_engine_reuses_them(tiny_model_dir, tmp_path):
    """sampling.engines hands whole chunks to the next free sampler (hf); the votes are keyed, so resuming on fewer engines keeps them."""
    syn_path, bench = _write_inputs(tmp_path, 5)
    out = tmp_path / "labeled.jsonl"
    params = _params(n=2, reliability_n=2)
    params.label.sampling.engines = 2
    two = run_label(params, tiny_model_dir, syn_path, bench, out, tmp_path / "r.json", tmp_path / "p.png", progress=False, track=False)
    assert two["timing"]["votes"] == (5 + 2) * 2 and two["questions"] == 5
    labeled_by_two = out.read_bytes()
    params.label.sampling.engines = 1
    one = run_label(params, tiny_model_dir, syn_path, bench, out, tmp_path / "r.json", tmp_path / "p.png", progress=False, track=False)
    assert one["timing"]["sampled_questions"] == 0 and one["timing"]["resumed_questions"] == 7
    assert out.read_bytes() == labeled_by_two
