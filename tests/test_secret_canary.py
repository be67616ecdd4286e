"""The canary (#25): a whole `dvc repro` of the micro profile with a credential in synth.generator.base_url and another in
OPENAI_API_KEY, synthesizing through a real loopback OpenAI-compatible server, into a real sqlite MLflow store and
artifact directory; then every byte the run left behind is searched for both canaries, raw, URL-encoded and base64.

Routes it covers: the parent run (params, tags, run name, description ``mlflow.note.content``), the stage runs (params,
tags, metrics, dataset inputs: names, sources, digests), every artifact (reports, report.md, eval.json, predictions,
figures), reports/, metrics/, .cache/ (the LLM request cache and ledger), the DVC outs and the DVC cache, the progress
files, and the stages' own output (stdout/stderr of `dvc repro`). What the user typed stays where they typed it:
params.yaml, and dvc.lock, which DVC fills from it (that is why the stage warns, see README "Credentials").
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

KEY = "sk-canary-7f3a9e51c0d24b86a1e9"  # OPENAI_API_KEY
PASSWORD = "pw-canary-4d91be07f2c3a85e"  # the password in base_url
USER = "proxyuser"
# Where the user typed the URL credential, and DVC's own copies of it: dvc.lock and the run cache (.dvc/cache/runs)
# record every stage's params by design. That is why a stage warns about a credential in params.yaml.
TYPED_BY_USER = ("params.yaml", "dvc.lock", ".dvc/cache/runs")


def _b64_forms(secret: str) -> set[bytes]:
    """Base64 (standard and URL-safe) of ``secret`` at each of the three alignments it can sit at inside a longer blob."""
    raw = secret.encode()
    out: set[bytes] = set()
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            s = enc(b"\0" * pad + raw + b"\0\0\0")
            skip = -(-pad * 4 // 3)  # characters touched by the padding before it
            core = s[skip : (len(raw) + pad) * 4 // 3]
            if len(core) >= 12:
                out.add(core)
    return out


def canary_forms() -> dict[str, set[bytes]]:
    forms = {}
    for name, secret in (("OPENAI_API_KEY", KEY), ("base_url password", PASSWORD)):
        f = {secret.encode(), quote(secret, safe="").encode(), quote_plus(secret).encode(), *_b64_forms(secret)}
        forms[name] = f
    forms["base_url password"] |= _b64_forms(f"{USER}:{PASSWORD}")  # the Basic Authorization header's value
    return forms


def scan(paths: list[Path], blobs: dict[str, bytes] | None = None, skip: tuple[Path, ...] = ()) -> list[str]:
    """``path: canary (form)`` for every file under ``paths`` (and every named blob) holding a canary in any form."""
    forms = canary_forms()
    hits = []

    def check(where: str, data: bytes) -> None:
        for name, fs in forms.items():
            for form in fs:
                if form in data:
                    hits.append(f"{where}: {name} ({form.decode()!r})")
                    break

    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file() and not p.is_symlink() and not any(p == s or s in p.parents for s in skip):
                check(str(p), p.read_bytes())
    for where, data in (blobs or {}).items():
        check(where, data)
    return hits


def sqlite_dump(db: Path) -> bytes:
    """Every row of every table of the store as text (a value can sit in a page the file scan reads split)."""
    con = sqlite3.connect(db)
    try:
        return "\n".join(line for line in con.iterdump()).encode()
    finally:
        con.close()


def _run(cmd, cwd, env, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_the_canary_form_finder_finds_each_form(tmp_path):
    (tmp_path / "a").write_text(f"x {quote(PASSWORD, safe='')} y")
    (tmp_path / "b").write_bytes(b"Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()))
    (tmp_path / "c").write_bytes(b"zz" + base64.b64encode(b"q" + KEY.encode()))
    (tmp_path / "d").write_text("nothing here")
    hits = scan([tmp_path])
    assert [h.split(":")[0] for h in hits] == [str(tmp_path / n) for n in "abc"], hits


@pytest.mark.slow
def test_no_credential_reaches_mlflow_reports_caches_or_outs(tmp_path):
    from tests.llm_servers import FakeOpenAIServer
    from tests.test_synthesize_stage import fake_question

    repo = tmp_path / "repo"
    repo.mkdir()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "--ignore-failed-read", "--null", "-T", "-", "-cf", str(tmp_path / "src.tar")], cwd=ROOT, input=files, check=True)
    subprocess.run(["tar", "xf", str(tmp_path / "src.tar")], cwd=repo, check=True)
    (tmp_path / "src.tar").unlink()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "true", "HF_HUB_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_WAIT_POLICY": "PASSIVE", "MEDSSR_MODEL_CACHE": str(ROOT / ".cache" / "models"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
           "MEDSSR_STRICT": "1", "OPENAI_API_KEY": KEY,
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db"}  # the project's own store; artifacts under <repo>/mlruns
    for k in ("PYTEST_CURRENT_TEST", "MEDSSR_ROOT", "ANTHROPIC_API_KEY"):
        env.pop(k, None)
    _run([BIN / "medssr", "profile", "apply", "micro"], repo, env)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "micro"], repo, env)

    import yaml

    from medssr.config import set_dotted

    with FakeOpenAIServer(responder=fake_question) as srv:
        url = srv.base_url.replace("http://", f"http://{USER}:{PASSWORD}@")
        raw = yaml.safe_load((repo / "params.yaml").read_text())  # changed after the commit: the parent's description lists it
        for k, v in {"backend": "openai_compatible", "model": "fake-model", "base_url": url, "max_retries": 0, "timeout_s": 20.0}.items():
            set_dotted(raw, f"synth.generator.{k}", v)
        (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        out = _run([BIN / "dvc", "repro"], repo, env, timeout=1200)
        sent = list(srv.requests)

    logs = {"dvc repro stdout": out.stdout.encode(), "dvc repro stderr": out.stderr.encode()}
    hits = scan([tmp_path], {**logs, "mlflow.db (rows)": sqlite_dump(repo / "mlflow.db")},
                skip=(*(repo / p for p in TYPED_BY_USER), repo / ".git", repo / "tests" / Path(__file__).name))
    print("\n".join(hits))
    # the run was real: requests arrived with both credentials, every logging stage made a run, artifacts were uploaded
    assert sent and any(base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() in r.headers.get("authorization", "") for r in sent)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stages = {r.data.tags.get("medssr_stage") for r in runs}
    assert {"synthesize", "label", "stage1", "stage2", "evaluate", "report"} <= stages, stages
    parent = next(r for r in runs if r.data.tags.get("medssr_role") == "pipeline")
    assert "synth.generator.base_url" in parent.data.tags["mlflow.note.content"]  # the route #25 found, present and scrubbed
    assert (repo / "mlruns").is_dir() and any((repo / "mlruns").rglob("report.md"))

    assert not hits, "credentials leaked:\n" + "\n".join(hits)
    from medssr.secrets import PARAMS_SECRET_WARNING

    # the stage said once, in one line, that the credential in params.yaml is a git-tracked secret
    warned = [line for line in out.stderr.splitlines() if PARAMS_SECRET_WARNING in line]
    assert warned and "synth.generator.base_url" in warned[0], out.stderr[-3000:]
    # and the places the user typed it do hold it (the scan would have seen a leak)
    assert all(scan([repo / p]) for p in TYPED_BY_USER)
