"""Screenshots of the MLflow UI in headless Chromium: the runs table, a parent run and the compare view (#15.4).

    python docs/screenshots.py --db /tmp/sweep_keep/mlflow.db --artifacts /tmp/sweep_keep/art --out docs/
    python docs/screenshots.py --demo --out /tmp/shots          # a two-value α sweep of made-up numbers, through medssr.tracking
    python docs/screenshots.py --dvc-plots dvc_plots/index.html --vega-dir /tmp/vega --out /tmp/shots   # `dvc plots diff` offline

``--db``/``--artifacts`` are a store a sweep wrote (``MEDSSR_SWEEP_KEEP=<dir> pytest tests/test_sweep_mlflow.py`` keeps its
``mlflow.db`` and ``art/``). The script starts ``mlflow server`` on 127.0.0.1 (a free port), waits for /health, finds the
experiment's parent runs (tag ``medssr_role=pipeline``) through the REST API, and writes mlflow_runs.png,
mlflow_parent_run.png and mlflow_compare.png with ``chromium --headless --screenshot``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's medssr

from medssr.mlflow_ui import api, experiment_id, free_port, mlflow_server, runs_table_url  # noqa: E402


def shoot(url: str, out: Path, size: str = "1600,1000", budget_ms: int = 15000) -> None:
    """One headless-Chromium screenshot of ``url`` (a fresh profile, so no saved view state leaks in)."""
    if shoot_cdp(url, out, size):
        return
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with fresh_profile() as profile:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                                 f"--screenshot={out}", f"--window-size={size}", f"--virtual-time-budget={budget_ms}", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=180)
        finally:
            stop_browser(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"chromium --screenshot exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    print(f"[screenshots] {out}  <- {url}")


@contextlib.contextmanager
def fresh_profile():
    """A throwaway Chromium profile directory. Chromium's helper processes (crashpad, utility) can still be writing in it
    a moment after the browser exits, so removal retries and never fails the screenshot run."""
    profile = tempfile.mkdtemp(prefix="medssr-chromium-")
    try:
        yield profile
    finally:
        for _ in range(20):
            shutil.rmtree(profile, ignore_errors=True)
            if not os.path.exists(profile):
                break
            time.sleep(0.25)


def stop_browser(proc: subprocess.Popen) -> None:
    """End Chromium and every helper it forked (it runs in its own session, so its process group is all of them)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


TIDY_JS = """(() => {
  const byText = (sel, text) => [...document.querySelectorAll(sel)].find(e => e.textContent.trim() === text);
  const ml = byText('button, label, [role=radio], [role=tab], span', 'Model training');
  if (ml) ml.click();                                   // the sidebar's per-browser GenAI / Model training switch
  const panel = [...document.querySelectorAll('*')].find(e => e.textContent.trim().startsWith('MLflow Assistant') && e.children.length < 4);
  let closed = false;
  for (let box = panel; box && !closed; box = box.parentElement) {
    const btn = [...box.querySelectorAll('button')].find(b => /close/i.test(b.getAttribute('aria-label') || ''));
    if (btn) { btn.click(); closed = true; }
  }
  return JSON.stringify({model_training: !!ml, assistant_closed: closed});
})()"""


# the compare view: "Show diff only" for the params (the first switch), so the swept value is what is on screen; the
# metrics stay all listed (the parent carries only the headline ones), equal values included
DIFF_ONLY_JS = """(() => { const sw = document.querySelector('[role=switch]'); if (sw && sw.getAttribute('aria-checked') !== 'true') sw.click(); })()"""


def shoot_cdp(url: str, out: Path, size: str = "1600,1000", settle_s: float = 8.0) -> bool:
    """The screenshot through the DevTools protocol (websocket-client), after switching the sidebar to *Model training*
    and closing the Assistant panel, as a reader would; False when websocket-client is missing."""
    try:
        import websocket
    except ImportError:
        return False
    import base64

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    port = free_port()
    w, h = size.split(",")
    with fresh_profile() as profile:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                                 f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--window-size={w},{h}",
                                 "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2).read())
                    ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
                    break
                except (OSError, StopIteration, ValueError):
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)
            ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
            ids = iter(range(1, 10_000))

            def call(method: str, **params):
                i = next(ids)
                ws.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv())
                    if msg.get("id") == i:
                        return msg.get("result", {})

            call("Emulation.setDeviceMetricsOverride", width=int(w), height=int(h), deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            time.sleep(settle_s)
            tidy = call("Runtime.evaluate", expression=TIDY_JS, returnByValue=True).get("result", {}).get("value")
            time.sleep(2)
            call("Page.navigate", url=url)  # again: the switch navigates away; both settings persist in the browser
            time.sleep(settle_s)
            call("Runtime.evaluate", expression=DIFF_ONLY_JS)
            time.sleep(2)
            png = call("Page.captureScreenshot", format="png")["data"]
            out.write_bytes(base64.b64decode(png))
            ws.close()
        finally:
            stop_browser(proc)
    print(f"[screenshots] {out}  <- {url}  {tidy}")
    return True


def offline_plots(index_html: Path, vega_dir: Path) -> Path:
    """A copy of `dvc plots show/diff`'s index.html that loads Vega from ``vega_dir`` instead of a CDN.

    ``vega_dir`` holds the npm packages unpacked (``npm pack vega@5 vega-lite@5 vega-embed@6``, each tarball's
    ``package/`` under a directory named after it): the page then renders without a network.
    """
    html = index_html.read_text(encoding="utf-8")
    for name in ("vega", "vega-lite", "vega-embed"):
        build = next(vega_dir.glob(f"{name}-[0-9]*/package/build/{name}.min.js"), None)
        if build is None:
            raise SystemExit(f"{vega_dir}: no {name}-<version>/package/build/{name}.min.js (npm pack {name}, then untar)")
        start = html.index(f'src="https://cdn.jsdelivr.net/npm/{name}@')
        end = html.index('"', start + 5)
        html = html[:start] + f'src="{build.resolve().as_uri()}' + html[end:]
    out = index_html.with_name("index_offline.html")
    out.write_text(html, encoding="utf-8")
    return out


def demo_store(where: Path) -> tuple[Path, Path]:
    """A store holding a two-value α sweep through medssr.tracking's real code paths (stage runs, parent names, headline
    metrics, artifacts); the numbers are made up. For trying the script without running the pipeline."""
    db, art = where / "mlflow.db", where / "art"
    script = f"""
import json, os, time
from pathlib import Path
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///{db}"
import mlflow
mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
from medssr import tracking
from medssr.config import load_params
from medssr.stage import run_stage
for i, alpha in enumerate((0.0, 0.5)):
    os.environ["DVC_EXP_NAME"] = ("demo-low", "demo-high")[i]
    pfile = Path(f"params_{{i}}.yaml")
    pfile.write_text(Path("{ROOT / 'params.yaml'}").read_text().replace("rare_ratio: 0.25", f"rare_ratio: {{alpha}}", 1))
    params = load_params(pfile)
    exp = tracking.ensure_experiment(params.project.experiment)
    mlflow.set_experiment(experiment_id=exp)
    def body(args, p, alpha=alpha):
        with tracking.stage_run("evaluate", p) as m:
            m.log_metrics({{"eval/avg": 0.41 + 0.03 * alpha, "eval/raredis/avg": 0.30 + 0.1 * alpha, "eval/medqa/acc": 0.44}})
        tracking.log_summary_to_parent(p, {{"eval/avg": 0.41 + 0.03 * alpha, "eval/avg_ci_low": 0.38, "eval/avg_ci_high": 0.45 + alpha / 20,
                                           "eval/raredis/avg": 0.30 + 0.1 * alpha, "synth/accepted": 120, "label/kept": 97 - 10 * alpha}})
    run_stage("evaluate", None, lambda ap: None, body, ["--params", str(pfile)])
    with tracking.stage_run("stage1", params) as m:
        for step in range(1, 6):
            m.log_metrics({{"train/stage1/reward_mean": 0.2 + 0.1 * step * (1 + alpha), "train/stage1/kl": 0.001 * step}}, step=step)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=where)
    art.mkdir(exist_ok=True)
    return db, art


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="the sweep's sqlite MLflow store (mlflow.db)")
    ap.add_argument("--artifacts", type=Path, help="its artifact root (the server's --artifacts-destination)")
    ap.add_argument("--demo", action="store_true", help="make a small store of made-up numbers instead of reading --db")
    ap.add_argument("--experiment", default="medssr", help="MLflow experiment name (default medssr)")
    ap.add_argument("--out", type=Path, default=Path("docs"), help="directory for the PNGs (default docs/)")
    ap.add_argument("--dvc-plots", type=Path, help="also shoot this `dvc plots diff` index.html (as dvc_plots.png), with Vega from --vega-dir")
    ap.add_argument("--vega-dir", type=Path, help="unpacked npm packages vega, vega-lite, vega-embed (see offline_plots)")
    args = ap.parse_args(argv)
    if args.dvc_plots:
        args.out.mkdir(parents=True, exist_ok=True)
        page = offline_plots(args.dvc_plots, args.vega_dir) if args.vega_dir else args.dvc_plots
        shoot(page.resolve().as_uri(), args.out / "dvc_plots.png", size="1700,1000")
        if not (args.db or args.demo):
            return 0
    work = Path(tempfile.mkdtemp(prefix="medssr-shots-"))
    if args.demo:
        db, art = demo_store(work)
    elif args.db:
        db, art = args.db, args.artifacts or args.db.parent / "art"
    else:
        ap.error("give --db (and --artifacts) of a sweep's store, or --demo")
    args.out.mkdir(parents=True, exist_ok=True)
    with mlflow_server(f"sqlite:///{db.resolve()}", art, work / "server.log") as base:
        exp_id = experiment_id(base, args.experiment)
        runs = api(base, "runs/search", {"experiment_ids": [exp_id], "filter": "tags.medssr_role = 'pipeline'", "max_results": 50,
                                         "order_by": ["attributes.start_time DESC"]}).get("runs", [])
        parents = [r for r in runs if any(m["key"] == "eval/avg" for m in r["data"].get("metrics", []))] or runs
        if not parents:
            raise SystemExit(f"no pipeline runs in experiment {args.experiment!r} of {db}")
        ids = [r["info"]["run_id"] for r in parents[:2]]
        for r in parents[:2]:
            print(f"[screenshots] parent run {r['info']['run_name']!r}: "
                  + ", ".join(f"{m['key']}={m['value']:.3g}" for m in r["data"].get("metrics", [])))
        shoot(runs_table_url(base, exp_id), args.out / "mlflow_runs.png", size="2400,800")
        shoot(f"{base}/#/experiments/{exp_id}/runs/{ids[0]}", args.out / "mlflow_parent_run.png", size="1600,1300")
        q = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
        shoot(f"{base}/#/compare-runs?{q}", args.out / "mlflow_compare.png", size="1700,1500")
    return 0


if __name__ == "__main__":
    sys.exit(main())
