"""dvc.yaml's top-level plots, rendered by the real `dvc plots show --json` over files shaped as the stages write them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medssr.rl.run import StagePaths, _write_reports

ROOT = Path(__file__).resolve().parents[1]
PLOTS = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
STEP_FILES = ("reports/train_stage1_steps.json", "reports/train_stage2_steps.json")


def _plots_on(files: tuple[str, ...]) -> dict[str, dict]:
    """The top-level plots (name -> definition) whose y reads one of ``files``."""
    return {name: d for p in PLOTS for name, d in p.items() if set(d.get("y", {})) & set(files)}


def _write_stage(root: Path, stage: str, history: list[dict]) -> None:
    paths = StagePaths(synthetic="-", real="-", policy="-", out="-", report=f"reports/train_{stage}.json",
                       steps=f"reports/train_{stage}_steps.json", rl_data="-", root=str(root))
    _write_reports(paths, {"stage": stage}, history, [{"step": 1, "heldout_acc": 0.25}])


def _dvc_plots_json(repo: Path, targets: list[str]) -> dict:
    env = {**os.environ, "DVC_NO_ANALYTICS": "true"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": PLOTS}, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json", *targets], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_step_plots_render_for_both_stages_when_stage1_logs_no_accuracy(tmp_path):
    stage1 = [{"step": s, "distinct_answers": 2.0, "kl": 0.01 * s, "reward_mean": 0.5} for s in (1, 2)]  # majority reward
    stage2 = [{"accuracy": 0.25 * s, "distinct_answers": 3.0, "kl": 0.02, "reward_mean": 0.4, "step": s} for s in (1, 2)]
    _write_stage(tmp_path, "stage1", stage1)
    _write_stage(tmp_path, "stage2", stage2)
    names = sorted(_plots_on(STEP_FILES))
    assert "train_accuracy" in names
    shown = _dvc_plots_json(tmp_path, names)
    assert shown.get("errors") is None, shown["errors"]
    acc = shown["data"]["train_accuracy"][0]["content"]["data"]["values"]
    assert [r["accuracy"] for r in acc if r["filename"] == "train_stage2_steps.json"] == [0.25, 0.5]


@pytest.mark.parametrize("name", sorted(_plots_on(STEP_FILES)))
def test_every_field_a_step_plot_reads_is_in_every_written_row(name, tmp_path):
    _write_stage(tmp_path, "stage1", [{"step": 1}, {"step": 2}])
    rows = json.loads((tmp_path / STEP_FILES[0]).read_text())
    plot = _plots_on(STEP_FILES)[name]
    fields = {plot["x"], *(f for y in plot["y"].values() for f in ([y] if isinstance(y, str) else y))}
    assert all(fields <= set(r) for r in rows), (fields, rows)


def _fake_vega(where: Path) -> Path:
    for name in ("vega", "vega-lite", "vega-embed"):
        build = where / f"{name}-5.0.0/package/build/{name}.min.js"
        build.parent.mkdir(parents=True)
        build.write_text(f"/* {name} */")
    return where


def test_medssr_plots_writes_a_page_that_loads_vega_from_beside_it_not_a_cdn(tmp_path):
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    _write_stage(repo, "stage1", [{"step": 1, "distinct_answers": 2.0, "kl": 0.01, "reward_mean": 0.5}])
    _dvc_plots_json(repo, ["reward"])
    done = subprocess.run([sys.executable, "-m", "medssr.cli", "plots", "--vega-dir", str(_fake_vega(tmp_path / "vega")),
                           "show", "reward"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (repo / "dvc_plots/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed(" in page
    for name in ("vega", "vega-lite", "vega-embed"):
        assert f'<script src="vega/{name}.min.js">' in page
        assert (repo / f"dvc_plots/vega/{name}.min.js").read_text() == f"/* {name} */"


def test_medssr_plots_without_vega_says_how_to_get_it(tmp_path):
    done = subprocess.run([sys.executable, "-m", "medssr.cli", "plots", "--vega-dir", str(tmp_path / "none"), "show"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "npm pack vega@5 vega-lite@5 vega-embed@6" in done.stderr and "offline" in done.stderr
