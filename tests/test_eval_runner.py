"""The evaluation runner on the tiny random model with real benchmark rows (4- and 5-option, yes/no/maybe, a user file)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from eval.benchmarks import BenchmarkError, load_declared, sampling_for_family, seeded_slice
from eval.runner import (
    EvalError,
    eval_spec,
    evaluate_model,
    load_eval_prompt,
    resolve_checkpoints,
    run_evaluate,
    second_pass_reason,
    stage_headlines,
)
from medssr import tracking
from medssr.config import Params, SamplingCfg
from medssr.data.loaders import load_benchmark_file
from medssr.records import CATEGORIES, RecordError, append_jsonl, read_partial_jsonl, write_jsonl
from medssr.rollout import Item, progress_row
from medssr.sampling import Completion

RAW = Path(__file__).resolve().parents[1] / "data" / "raw" / "benchmarks"


def _raw_rows(name: str, n: int, start: int = 0) -> list[dict]:
    with gzip.open(RAW / f"test_short_{name}.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)[start : start + n]


def _bench_files(d: Path) -> dict[str, str]:
    """medqa as prepared Question JSONL, medbullets/pubmedqa as the raw gz lists, raredis_sub with categories, a user file."""
    medqa = load_benchmark_file(RAW / "test_short_medqa.json.gz")
    write_jsonl(d / "medqa.jsonl", medqa[:3])
    rare = []
    for i, q in enumerate(medqa[10:14]):
        rare.append(dataclasses.replace(q, id=f"raredis-{q.id}", source="raredis_sub", rare_disease="Fabry disease",
                                        category=CATEGORIES[i % 3]))
    write_jsonl(d / "raredis_sub.jsonl", rare)
    user = [{"id": f"mine-{i}", "question": r["question"], "gold": r["gold"]} for i, r in enumerate(_raw_rows("bioasq", 2))]
    (d / "my_new_bench.json").write_text(json.dumps(user), encoding="utf-8")
    return {"medqa": str(d / "medqa.jsonl"), "medbullets": str(RAW / "test_short_medbullets.json.gz"),
            "pubmedqa": str(RAW / "test_short_pubmedqa.json.gz"), "my_bench": str(d / "my_new_bench.json"),
            "raredis_sub": str(d / "raredis_sub.jsonl")}


def _params(d: Path) -> Params:
    p = Params()
    p.project.experiment = "eval-test"
    p.eval.benchmarks = _bench_files(d)
    p.eval.max_per_benchmark = 3
    p.eval.max_raredis = None  # the rare slice follows max_per_benchmark here (the shipped default evaluates 32)
    p.eval.runs = 2
    p.eval.sampling = SamplingCfg(max_new_tokens=8, batch_size=16, temperature=1.0)
    return p


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    """One evaluation of two checkpoints (both the tiny model) over five benchmarks, logged to a fresh MLflow store."""
    d = tmp_path_factory.mktemp("evalrun")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
        params = _params(d)
        results = run_evaluate(params, checkpoints={"base": str(tiny_model_dir), "stage2": str(tiny_model_dir)}, prepared_dir=d,
                               metrics_path=d / "metrics" / "eval.json", predictions_dir=d / "eval",
                               progress=False, progress_dir=d / "progress")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{d}/mlflow.db")
        exp = client.get_experiment_by_name("eval-test")
        runs = client.search_runs([exp.experiment_id])
    return {"dir": d, "results": results, "params": params, "runs": runs}


def _preds(evaluated, ckpt: str) -> list[dict]:
    return [json.loads(line) for line in (evaluated["dir"] / "eval" / f"predictions_{ckpt}.jsonl").read_text().splitlines()]


def test_predictions_have_one_row_per_question_and_run(evaluated):
    rows = _preds(evaluated, "stage2")
    assert len(rows) == 3 * 4 * 2 + 2 * 2  # 3 per sliced benchmark x 4, the 2-row user file; 2 runs
    assert set(rows[0]) >= {"id", "benchmark", "run", "output", "extracted", "constrained", "final", "gold", "correct"}
    assert {r["run"] for r in rows} == {0, 1}
    assert all(r["correct"] == (r["final"] == r["gold"]) for r in rows)


def test_eval_json_has_checkpoints_benchmarks_average_and_raredis_categories(evaluated):
    data = json.loads((evaluated["dir"] / "metrics" / "eval.json").read_text())
    assert data == evaluated["results"]
    assert list(data) == ["base", "stage2"]
    s2 = data["stage2"]
    for b in ("medqa", "medbullets", "pubmedqa", "my_bench", "raredis_sub"):
        assert {"acc", "n", "invalid_before", "invalid_after"} <= set(s2[b])  # statistics keys: eval/scoring.py
    assert s2["medqa"]["n"] == 3 and s2["my_bench"]["n"] == 2
    main = [s2[b]["acc"] for b in ("medqa", "medbullets", "pubmedqa", "my_bench")]
    assert s2["avg"] == pytest.approx(sum(main) / 4, abs=1e-5)
    cats = {k for k, v in s2["raredis"].items() if isinstance(v, dict)}
    assert cats and cats <= {"symptoms", "causes", "affects"}
    assert sum(s2["raredis"][c]["n"] for c in cats) == 3


def test_constrained_pass_brings_invalid_rate_to_zero(evaluated):
    s2 = evaluated["results"]["stage2"]
    assert s2["invalid_before"] > 0.5  # a random model almost never writes a letter
    assert s2["invalid_after"] == 0.0
    rows = _preds(evaluated, "stage2")
    assert all(r["constrained"] is not None for r in rows if r["extracted"] is None)


def test_five_option_and_yes_no_maybe_questions_get_letters_from_their_own_options(evaluated):
    rows = _preds(evaluated, "stage2")
    bullets = [r for r in rows if r["benchmark"] == "medbullets"]
    pubmed = [r for r in rows if r["benchmark"] == "pubmedqa"]
    assert bullets and all(r["final"] in "ABCDE" for r in bullets)
    assert pubmed and all(r["final"] in "ABC" for r in pubmed)


def test_same_seed_gives_every_checkpoint_the_same_samples(evaluated):
    base, s2 = _preds(evaluated, "base"), _preds(evaluated, "stage2")
    assert [r["output"] for r in base] == [r["output"] for r in s2]


def test_mlflow_stage_run_has_final_unprefixed_and_other_checkpoints_prefixed(evaluated):
    stage = [r for r in evaluated["runs"] if r.data.tags.get("medssr_stage") == "evaluate"]
    assert len(stage) == 1
    m = stage[0].data.metrics
    for name in ("eval/medqa/acc", "eval/avg", "eval/raredis/avg", "eval/invalid_before", "eval/invalid_after",
                 "eval/base/medqa/acc", "eval/base/avg", "eval/my_bench/acc"):
        assert name in m, name
    assert any(k.startswith("eval/raredis/") and k.endswith("/acc") for k in m)
    assert m["eval/invalid_after"] == 0.0
    assert stage[0].data.tags["medssr_eval_final"] == "stage2"


def test_stage_headlines_are_the_numbers_of_the_named_reports(tmp_path):
    (tmp_path / "synth.json").write_text(json.dumps({"accepted": 12, "rare_share_measured": 0.25, "cost_usd": 0.0, "by_source": {"rare": 3},
                                                     "name": "x", "seed": 5, "sampling": {"temperature": 1.0}}))
    m = stage_headlines({"synth": tmp_path / "synth.json", "label": tmp_path / "absent.json"})
    assert m == {"synth/accepted": 12.0, "synth/rare_share_measured": 0.25, "synth/cost_usd": 0.0, "synth/by_source/rare": 3.0,
                 "synth/seed": 5.0, "synth/sampling/temperature": 1.0}  # every number, under the names metric_names.flatten gives
    # a report not written yet is skipped; the parent run keeps only the headline names (tracking.HEADLINE_METRICS)
    assert {k for k in m if k in tracking.HEADLINE_METRICS} == {"synth/accepted", "synth/rare_share_measured"}


def test_parent_run_gets_the_final_checkpoints_headline_metrics(evaluated):
    parent = [r for r in evaluated["runs"] if r.data.tags.get("medssr_role") == "pipeline"]
    assert len(parent) == 1
    m = parent[0].data.metrics
    assert not any(k.startswith("synth/") for k in m)  # the stage reports' headlines are the report stage's (its cmd names them)
    assert "eval/avg" in m and "eval/raredis/avg" in m
    # the parent holds the few headline metrics only; per-benchmark accuracies stay on the evaluate stage run
    assert set(m) <= set(tracking.HEADLINE_METRICS) and "eval/medqa/acc" not in m
    assert parent[0].data.params["synth.rare_ratio"] == "0.25"


def test_finished_samples_are_kept_and_the_same_weights_elsewhere_sample_nothing(evaluated, tiny_model_dir, tmp_path):
    """A sweep re-evaluates the unchanged base model in every value (from a DVC queue copy): it must cost nothing."""
    import shutil

    from medssr.sampling import make_sampler

    assert len(list((evaluated["dir"] / "progress").glob("*.jsonl"))) == 2
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copied-model")  # another path, new mtimes, same weights
    samplers = []

    def factory(*a, **kw):
        samplers.append(make_sampler(*a, **kw))
        return samplers[-1]

    d = evaluated["dir"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
        again = run_evaluate(evaluated["params"], checkpoints={"base": str(copy), "stage2": str(tiny_model_dir)}, prepared_dir=d,
                             metrics_path=tmp_path / "eval.json", predictions_dir=tmp_path / "eval",
                             progress=False, progress_dir=d / "progress", sampler_factory=factory, log_mlflow=False)
    assert again == evaluated["results"]
    assert len(samplers) == 2 and all(s.last_stats.sequences == 0 for s in samplers)


def test_resume_reuses_saved_samples_and_samples_only_the_rest(tmp_path, tiny_model_dir):
    from medssr.sampling import make_sampler

    """A benchmark whose questions are all saved is not sampled; with vLLM's rule (samples fixed by their seeds) an
    unfinished one samples only its missing questions."""
    qs = load_benchmark_file(RAW / "test_short_medqa.json.gz")[:3]
    bullets = load_benchmark_file(RAW / "test_short_medbullets.json.gz")[:2]
    benches = {"medbullets": bullets, "medqa": qs}
    prog = tmp_path / "progress.jsonl"
    sampling = SamplingCfg(max_new_tokens=4, backend="vllm")
    sampler = make_sampler(str(tiny_model_dir), batch_size=4)
    _save(prog, sampler, sampling, [("medbullets", q) for q in bullets] + [("medqa", q) for q in qs[:2]], "Reasoning... The answer is B.")
    stats: dict = {}
    preds = evaluate_model(sampler, benches, sampling, runs=1, seed=0, template=load_eval_prompt(), progress_path=prog, progress=False,
                           stats=stats)
    assert [p.extracted for p in preds[:4]] == ["B", "B", "B", "B"]
    assert preds[4].output != "Reasoning... The answer is B."
    assert sampler.last_stats.sequences == 1
    assert (stats["resumed"], stats["sampled"]) == (4, 1)
    assert len(read_partial_jsonl(prog)) == 5


def test_an_evaluation_stopped_mid_benchmark_resumes_to_the_uninterrupted_predictions(tmp_path, tiny_model_dir):
    """hf: a benchmark left unfinished is sampled again whole, in the company an uninterrupted run gives each question
    (sampling only its missing questions would move their floats); its saved questions are kept (#14.2)."""
    from medssr.sampling import HFSampler
    from tests.test_rollout import Stop, composition_sensitive, stop_after

    benches = {"medqa": load_benchmark_file(RAW / "test_short_medqa.json.gz")[:3],
               "pubmedqa": load_benchmark_file(RAW / "test_short_pubmedqa.json.gz")[:3]}
    sampling = SamplingCfg(max_new_tokens=5, batch_size=4, temperature=1.0)

    def evaluate(prog: Path, stop: int | None = None) -> tuple[list[dict], dict]:
        sampler = HFSampler(str(tiny_model_dir), batch_size=4)
        composition_sensitive(sampler)  # any change of company changes the outputs, so this test can fail
        if stop is not None:
            stop_after(sampler, stop)
        stats: dict = {}
        preds = evaluate_model(sampler, benches, sampling, 2, 0, load_eval_prompt(), progress_path=prog, progress=False, stats=stats)
        return [p.to_dict() for p in preds], stats

    uninterrupted, _ = evaluate(tmp_path / "ref.jsonl")
    with pytest.raises(Stop):
        evaluate(tmp_path / "run.jsonl", stop=4)  # medqa finished, one pubmedqa question saved
    resumed, stats = evaluate(tmp_path / "run.jsonl")
    assert resumed == uninterrupted
    assert (stats["resumed"], stats["sampled"]) == (3, 3)
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 6


def _save(prog: Path, sampler, sampling: SamplingCfg, questions: list, text: str, finish: str = "answer") -> None:
    """Progress rows as a finished run of ``evaluate_model`` with these settings would have left them."""
    fp = eval_spec(sampler.model_dir, sampling, 1, 0, load_eval_prompt()).fingerprint()
    for bench, q in questions:
        item = Item(f"{bench}:{q.id}", load_eval_prompt().render(question=q.render()), q.options)
        append_jsonl(prog, progress_row(fp, item, [Completion(text, 9, finish)]))


@pytest.mark.parametrize("where", ["middle", "last-with-newline"])
def test_damaged_progress_lines_are_quarantined_and_the_rerun_equals_an_uninterrupted_run(evaluated, tiny_model_dir, tmp_path,
                                                                                         capsys, where):
    """A progress line damaged by a full disk or an editor costs its benchmark at most, not the run (issue #13.5): with
    hf the benchmark it belongs to is sampled again whole, in the composition of an uninterrupted run."""
    import shutil

    from medssr.records import quarantine_path_for

    d = evaluated["dir"]
    progress = shutil.copytree(d / "progress", tmp_path / "progress")
    base = next(progress.glob("base-*.jsonl"))
    lines = base.read_text().splitlines(keepends=True)
    n = 1 if where == "middle" else len(lines) - 1
    bad = lines[n][: len(lines[n]) // 2] + "\n"
    base.write_text("".join(lines[:n] + [bad] + lines[n + 1 :]))
    kw = dict(checkpoints={"base": str(tiny_model_dir), "stage2": str(tiny_model_dir)}, prepared_dir=d, metrics_path=tmp_path / "eval.json",
              predictions_dir=tmp_path / "eval", progress=False, progress_dir=progress, log_mlflow=False)
    capsys.readouterr()
    assert run_evaluate(evaluated["params"], **kw) == evaluated["results"]
    out = capsys.readouterr().out
    bench = json.loads(lines[n])["key"].split(":")[0]
    same_bench = sum(json.loads(x)["key"].startswith(f"{bench}:") for x in lines)
    assert f"[evaluate] base: {same_bench} questions sampled, {len(lines) - same_bench} resumed" in out
    assert f"1 damaged progress line quarantined to {quarantine_path_for(base)}" in out
    assert [json.loads(x)["raw"] for x in quarantine_path_for(base).read_text().splitlines()] == [bad.rstrip("\n")]
    for ckpt in ("base", "stage2"):
        assert (tmp_path / "eval" / f"predictions_{ckpt}.jsonl").read_bytes() == (d / "eval" / f"predictions_{ckpt}.jsonl").read_bytes()
    # the next run meets a clean file: nothing damaged, nothing sampled
    assert run_evaluate(evaluated["params"], **kw) == evaluated["results"]
    out = capsys.readouterr()
    assert "quarantined" not in out.out + out.err and f"[evaluate] base: 0 questions sampled, {len(lines)} resumed" in out.out


def test_missing_standard_checkpoint_is_skipped_but_missing_explicit_dir_is_an_error(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    standard = {"base": str(tiny_model_dir), "stage1": "checkpoints/stage1", "stage2": "checkpoints/stage2"}  # --checkpoint-dir
    got = resolve_checkpoints(["base", "stage1", f"mine={tiny_model_dir}"], standard)
    assert got == {"base": str(tiny_model_dir), "mine": str(tiny_model_dir)}
    with pytest.raises(EvalError, match="nowhere"):
        resolve_checkpoints(["base", str(tmp_path / "nowhere")], standard)


def test_declared_benchmarks_accept_json_list_question_jsonl_and_raw_jsonl(tmp_path):
    files = _bench_files(tmp_path)
    raw_jsonl = tmp_path / "raw_rows.jsonl"
    raw_jsonl.write_text("\n".join(json.dumps(r) for r in _raw_rows("pubmedqa", 2)) + "\n")
    got = load_declared({"medqa": files["medqa"], "mine": files["my_bench"], "pq": str(raw_jsonl), "mb": files["medbullets"]})
    assert [len(v) for v in got.values()] == [3, 2, 2, 308]
    assert got["pq"][0].options == {"A": "yes", "B": "no", "C": "maybe"}
    assert got["mine"][0].source == "mine"
    assert len(got["mb"][0].options) == 5


def test_missing_benchmark_file_names_the_params_key(tmp_path):
    with pytest.raises(BenchmarkError, match=r"eval\.benchmarks\.medqa: .*nope\.jsonl: no such file"):
        load_declared({"medqa": str(tmp_path / "nope.jsonl")})


def test_malformed_benchmark_row_names_file_and_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x1", "question": "Q?\nA. a\nB. b", "gold": "C"}]))
    with pytest.raises(RecordError, match=r"bad\.json:\d+: record 1: gold: 'C' is not among options A-B"):
        load_declared({"bad": str(bad)})


def test_seeded_slice_is_reproducible_and_keeps_file_order(tmp_path):
    qs = load_benchmark_file(RAW / "test_short_pubmedqa.json.gz")
    a, b = seeded_slice(qs, 20, seed=3), seeded_slice(qs, 20, seed=3)
    assert [q.id for q in a] == [q.id for q in b]
    assert [q.id for q in a] == [q.id for q in qs if q.id in {x.id for x in a}]
    assert [q.id for q in seeded_slice(qs, 20, seed=4)] != [q.id for q in a]


def test_family_defaults_replace_decoding_only_when_asked():
    cfg = SamplingCfg(temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=77)
    assert sampling_for_family(cfg, "qwen", family_defaults=False) == cfg
    q = sampling_for_family(cfg, "qwen", family_defaults=True)
    assert (q.temperature, q.top_p, q.top_k, q.max_new_tokens) == (0.6, 0.95, 20, 77)
    assert sampling_for_family(cfg, "llama", True).top_p == 0.9


def test_benchmark_names_that_would_clash_with_eval_json_keys_are_rejected(tmp_path):
    files = _bench_files(tmp_path)
    with pytest.raises(BenchmarkError, match=r"eval\.benchmarks\.avg: a benchmark name must match"):
        load_declared({"avg": files["medqa"]})
    with pytest.raises(BenchmarkError, match=r"eval\.benchmarks\.med/qa"):
        load_declared({"med/qa": files["medqa"]})


def test_medssr_table_prints_the_evaluation_table_and_names_a_bad_file(evaluated, tmp_path, capsys):
    from medssr.cli import main

    assert main(["table", str(evaluated["dir"] / "metrics" / "eval.json")]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("benchmark"))
    assert header.split()[0] == "benchmark" and header.split()[-2:] == ["base", "stage2"] and "\nMedQA " in out and "\navg " in out
    bad = tmp_path / "eval.json"
    bad.write_text('{"base": {\n  "medqa": }\n')
    assert main(["table", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["table", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_each_checkpoints_sampler_is_closed_and_unreferenced_before_the_next_is_built(tmp_path, tiny_model_dir, monkeypatch):
    """vLLM refuses a second engine while the first holds memory: the runner must not keep the old one alive."""
    import gc
    import weakref

    from medssr.sampling import make_sampler

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = _params(tmp_path)
    params.eval.max_per_benchmark = 1
    params.eval.runs = 1
    built: list[weakref.ref] = []
    closed: list[bool] = []

    def factory(model_dir, **kw):
        gc.collect()
        assert all(r() is None for r in built), "the previous checkpoint's sampler is still alive while the next is built"
        s = make_sampler(model_dir, **kw)
        orig = s.close

        def close():
            closed.append(True)
            orig()
        s.close = close
        built.append(weakref.ref(s))
        return s

    run_evaluate(params, checkpoints={"base": str(tiny_model_dir), "stage1": str(tiny_model_dir), "stage2": str(tiny_model_dir)},
                 prepared_dir=tmp_path, metrics_path=tmp_path / "eval.json", predictions_dir=tmp_path / "eval",
                 sampler_factory=factory, log_mlflow=False, progress=False, progress_dir=tmp_path / "progress")
    assert len(built) == 3 and len(closed) == 3


ECHO_Q = {"A": "Decrease in serum ACTH", "B": "Decrease in urinary 17-hydroxycorticosteroids",
          "C": "Increase in serum aldosterone", "D": "Increase in serum cortisol"}


def test_second_pass_reason_separates_echoes_from_missing_answers():
    assert second_pass_reason("D. Increase in serum cortisol\n", ECHO_Q) == "echo"
    assert second_pass_reason("Prednisone suppresses the HPA axis, so", ECHO_Q) == "no_answer"
    assert second_pass_reason("The answer is A. Wait... The answer is B.", ECHO_Q) is None


def test_echoes_and_unanswered_outputs_go_to_the_second_pass_with_their_reason(tmp_path, tiny_model_dir):
    from medssr.sampling import make_sampler

    qs = load_benchmark_file(RAW / "test_short_medqa.json.gz")[:4]
    last = qs[0].options[max(qs[0].options)]
    prog = tmp_path / "progress.jsonl"
    outputs = [(f"{max(qs[0].options)}. {last}\n", "eos"), ("The patient presents with", "eos"),
               ("The answer is A. Wait... The answer is B.", "eos"), ("Which is most likely?\nA", "length")]  # a cut line
    sampler = make_sampler(str(tiny_model_dir), batch_size=4)
    for q, (text, finish) in zip(qs, outputs, strict=True):
        _save(prog, sampler, SamplingCfg(max_new_tokens=4), [("medqa", q)], text, finish)
    preds = evaluate_model(sampler, {"medqa": qs}, SamplingCfg(max_new_tokens=4), runs=1, seed=0, template=load_eval_prompt(),
                           progress_path=prog, progress=False)
    assert [p.to_dict()["second_pass_reason"] for p in preds] == ["echo", "no_answer", None, "no_answer"]
    assert [p.extracted for p in preds] == [None, None, "B", None]
    assert preds[0].constrained in qs[0].options and preds[1].constrained in qs[1].options and preds[2].constrained is None


def test_eval_fingerprint_changes_with_the_chat_template_rule_the_stop_rule_and_the_dtype(tiny_model_dir):
    cfg, t = SamplingCfg(), load_eval_prompt()
    base = eval_spec(str(tiny_model_dir), cfg, 1, 0, t).fingerprint()
    assert eval_spec(str(tiny_model_dir), cfg, 1, 0, t, chat_template=False).fingerprint() != base
    assert eval_spec(str(tiny_model_dir), dataclasses.replace(cfg, stop_at_answer=not cfg.stop_at_answer), 1, 0, t).fingerprint() != base
    assert eval_spec(str(tiny_model_dir), cfg, 1, 0, t, dtype="bfloat16").fingerprint() != base


def test_hf_samples_a_benchmark_in_one_call_and_vllm_in_the_shared_chunks(tiny_model_dir):
    """hf: other chunks would move an uninterrupted run's floats; vLLM: a kill loses at most a chunk in flight."""
    hf, vllm = SamplingCfg(batch_size=32), SamplingCfg(batch_size=256, backend="vllm")
    assert eval_spec(str(tiny_model_dir), hf, 4, 0, load_eval_prompt()).chunk is None
    assert eval_spec(str(tiny_model_dir), vllm, 4, 0, load_eval_prompt()).chunk == 128


def test_each_checkpoint_gets_its_chat_template_rule_and_it_is_logged(tmp_path, tiny_model_dir, monkeypatch):
    """A base-named checkpoint is sampled without the chat template, an instruct one with it; both are MLflow params."""
    import shutil

    from mlflow.tracking import MlflowClient

    from medssr.sampling import make_sampler

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = _params(tmp_path)
    params.eval.max_per_benchmark = 1
    params.eval.runs = 1
    base_named = shutil.copytree(tiny_model_dir, tmp_path / "TinyLM-Base")
    asked: dict[str, bool] = {}

    def factory(model_dir, **kw):
        asked[model_dir] = kw["chat_template"]
        return make_sampler(model_dir, **kw)

    run_evaluate(params, checkpoints={"base": str(base_named), "stage2": str(tiny_model_dir)}, prepared_dir=tmp_path,
                 metrics_path=tmp_path / "eval.json", predictions_dir=tmp_path / "eval", sampler_factory=factory, progress=False,
                 progress_dir=tmp_path / "progress")
    assert asked == {str(base_named): False, str(tiny_model_dir): True}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = next(r for r in client.search_runs([client.get_experiment_by_name("eval-test").experiment_id])
               if r.data.tags.get("medssr_stage") == "evaluate")
    assert run.data.params["eval.used.base.chat_template"] == "false"
    assert run.data.params["eval.used.stage2.chat_template"] == "true"
    assert "TinyLM-Base" in run.data.params["eval.used.base.chat_template_rule"]
