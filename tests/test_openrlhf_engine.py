"""OpenRLHF 0.11.2's own code run over medssr's output, in .venv-openrlhf (made by ``.ci/openrlhf_env.sh``).

Its prompt dataset reads our export, its reward-file loader calls our reward as a rollout does, and a real Ray head
runs a job with the runtime_env medssr builds and train_ppo_ray's own ``ray.init`` block (executed from its source).
Skipped without the environment unless ``MEDSSR_REQUIRE_OPENRLHF=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from medssr.config import load_params
from medssr.rl import openrlhf_backend as orl
from medssr.rl.data import examples_from_questions, load_prompt_template, prompt_token_ids
from medssr.rl.rewards import encode_label
from tests.conftest import require_engine_env

ROOT = Path(__file__).resolve().parents[1]
ENV_BIN = ROOT / ".venv-openrlhf" / "bin"
REWARD_FILE = ROOT / orl.REWARD_FILE


@pytest.fixture(scope="module", autouse=True)
def openrlhf_env() -> Path:
    require_engine_env(ENV_BIN / "python", "MEDSSR_REQUIRE_OPENRLHF", "make openrlhf-env")
    return ENV_BIN


def _env_python(code: str, *args: str, timeout: float = 180) -> object:
    """Run code with the OpenRLHF environment's python (not our venv: transformers 5.15, no medssr installed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(ENV_BIN / "python"), "-c", code, *args], cwd="/tmp", env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _params(**overrides):
    return load_params(ROOT / "params.yaml", {"train.backend": "openrlhf", "train.rollout_batch_size": 4, "train.global_batch_size": 4,
                                              "train.micro_batch_size": 1, "train.stage1": {"max_steps": 3},
                                              "train.openrlhf": {"gpus_per_node": 1, "vllm_num_engines": 1}, **overrides})


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_model_dir):
    """medssr's stage export of 8 real MedMCQA questions, the limit set so that the longer half is dropped."""
    from medssr.data.loaders import load_medmcqa
    from medssr.models import load_tokenizer
    from tests.conftest import RAW

    tok = load_tokenizer(str(tiny_model_dir))
    template = load_prompt_template()
    examples, _ = examples_from_questions(load_medmcqa(RAW)[:8], "real")
    limit = sorted(len(prompt_token_ids(e, template, tok)) for e in examples)[3]
    p = _params(**{"train.max_prompt_length": limit})
    path = tmp_path_factory.mktemp("rl") / "stage1.jsonl"
    report = orl.export_prompts(examples, template, path, p.train, p.train.stage1, tokenizer=tok)
    flags = orl.train_flags(p.train, p.train.stage1, orl.RunPaths(str(tiny_model_dir), str(path), "o", "c", "t"),
                            n_prompts=report["exported"], run_name="r")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {"path": path, "report": report, "flags": flags, "rows": rows, "limit": limit, "tok": tok, "model": str(tiny_model_dir)}


def _flag(flags: list[str], name: str) -> str | bool:
    i = flags.index(name)
    return flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else True


# OpenRLHF's prepare_datasets + PromptDataset with the argparse values our command sets (only the fields they read).
PROMPT_DATASET = """
import json, sys
from types import SimpleNamespace as NS
from openrlhf.datasets import PromptDataset
from openrlhf.datasets.utils import blending_datasets
from openrlhf.utils.utils import get_tokenizer
path, model, a = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
args = NS(data=NS(input_key=a["input_key"], label_key=a["label_key"], apply_chat_template=a["apply_chat_template"]), use_ms=False)
strategy = NS(args=args, is_rank_0=lambda: True, print=lambda *x: None)
data = blending_datasets(path, None, strategy, 0, max_count=a["max_samples"], dataset_split="train")
data = data.select(range(min(a["max_samples"], len(data))))
tok = get_tokenizer(model, None, "left", strategy)
ds = PromptDataset(data, tok, strategy, input_template=None)
print(json.dumps([{"datasource": d, "prompt": p, "label": l, "n_tokens": len(tok(text=p, add_special_tokens=False)["input_ids"])}
                  for d, p, l, _ in (ds[i] for i in range(len(ds)))]))
"""


def test_openrlhf_prompt_dataset_reads_every_exported_prompt_untruncated(export):
    f = export["flags"]
    a = {"input_key": _flag(f, "--data.input_key"), "label_key": _flag(f, "--data.label_key"),
         "apply_chat_template": _flag(f, "--data.apply_chat_template"), "max_samples": int(_flag(f, "--data.max_samples"))}
    got = _env_python(PROMPT_DATASET, str(export["path"]), export["model"], json.dumps(a))
    rows, tok = export["rows"], export["tok"]
    assert export["report"]["dropped_long_prompts"] == 4 and len(got) == len(rows) == 12
    # OpenRLHF's agent left-truncates a prompt only beyond --data.max_len - --rollout.max_new_tokens tokens
    budget = int(_flag(f, "--data.max_len")) - int(_flag(f, "--rollout.max_new_tokens"))
    assert budget == export["limit"] and max(g["n_tokens"] for g in got) <= budget
    for g, row in zip(got, rows, strict=True):
        assert g["prompt"] == tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert g["prompt"].startswith("<|im_start|>") and row["prompt"][0]["content"] in g["prompt"]
        assert (g["label"], g["datasource"]) == (row["label"], "real")


# OpenRLHF's SingleTurnAgentExecutor: loads --reward.remote_url (a .py) and, per rollout, tokenizes the prompt,
# left-truncates it if needed, decodes prompt + response tokens into the query and calls reward_func([q], [p], [l]).
# vLLM (GPU-only) is stood in for by an engine that returns each case's response tokens and EOS.
REWARD_CALL = """
import asyncio, json, sys
from types import SimpleNamespace as NS
from openrlhf.datasets.prompts_dataset import preprocess_data
from openrlhf.utils.agent import SingleTurnAgentExecutor
from openrlhf.utils.utils import get_tokenizer
reward_file, model, row, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
tok = get_tokenizer(model, None, "left", None)
prompt, _ = preprocess_data(row, None, "prompt", "label", tok.apply_chat_template)
executor = SingleTurnAgentExecutor(remote_rm_url=reward_file)

class ScriptedEngine:
    def __init__(self, ids):
        self.ids = ids
    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return NS(outputs=[NS(token_ids=self.ids, finish_reason="stop", logprobs=None)])

prompt_ids = tok(text=prompt, add_special_tokens=False)["input_ids"]
# the first token after the prompt's 'Example' word: cutting there leaves ': "The answer is A"' unquoted
cut = next(k for k in range(len(prompt_ids)) if "Example" not in tok.decode(prompt_ids[k:]))
out = []
for c in cases:
    response = prompt.split("user\\n", 1)[1].split("<|im_end|>")[0] + c["response"] if c["repeat_prompt"] else c["response"]
    ids = tok(text=response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    max_length = len(prompt_ids) - cut + len(ids) if c["truncate"] else len(prompt_ids) + len(ids)
    o = asyncio.run(executor.execute(prompt, c["label"], NS(max_tokens=len(ids), logprobs=None), max_length, tok, ScriptedEngine(ids)))
    query = tok.decode(o["observation_tokens"], skip_special_tokens=False)
    out.append({"reward": o["reward"].tolist(), "score": o["scores"].tolist(), "logs": {k: v.tolist() for k, v in o["extra_logs"].items()},
                "prompt_whole": query.startswith(prompt), "query_tail": query[-30:]})
print(json.dumps(out))
"""

CASES = {  # name: (response, label letter or "gold", repeat the prompt's user text first, OpenRLHF truncates the prompt)
    "correct": ("Drawing on the findings.\nThe answer is {gold}.", "gold", False, False),
    "incorrect": ("The answer is {other}.", "gold", False, False),
    "answerless": ("I cannot decide between them.", "A", False, False),
    "bare_last_line_before_eos": ("Weighing each option.\n{gold}", "gold", False, False),
    "repeats_prompt_then_answers": ("\nThe answer is {gold}.", "gold", True, False),
    "repeats_prompt_only": ("", "A", True, False),
    "truncated_prompt_answerless": ("I cannot decide between them.", "A", False, True),
    "truncated_prompt_correct": ("The answer is {gold}.", "gold", False, True),
}
EXPECTED = {"correct": 1.0, "incorrect": 0.0, "answerless": 0.0, "bare_last_line_before_eos": 1.0, "repeats_prompt_then_answers": 1.0,
            "repeats_prompt_only": 0.0, "truncated_prompt_answerless": 0.0, "truncated_prompt_correct": 1.0}


@pytest.fixture(scope="module")
def rewards(export):
    from medssr.rl.rewards import decode_label

    row = next(r for r in export["rows"] if decode_label(r["label"])[0] != "A")  # so that label A is a wrong answer
    gold, options = decode_label(row["label"])
    other = next(k for k in options if k != gold)
    cases = [{"response": resp.format(gold=gold, other=other), "label": row["label"] if lab == "gold" else encode_label(lab, options),
              "repeat_prompt": rep, "truncate": trunc} for resp, lab, rep, trunc in CASES.values()]
    got = _env_python(REWARD_CALL, str(REWARD_FILE), export["model"], json.dumps(row), json.dumps(cases))
    return dict(zip(CASES, got, strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_reward_through_openrlhfs_loader_scores_the_response_only(rewards, case):
    r = rewards[case]
    assert r["reward"] == r["score"] == [EXPECTED[case]], r
    assert r["logs"]["response_found"] == [1.0]


def test_openrlhf_keeps_special_tokens_and_truncates_where_the_cases_say(rewards):
    assert rewards["bare_last_line_before_eos"]["query_tail"].endswith("<|im_end|>")
    assert [c for c, r in rewards.items() if not r["prompt_whole"]] == ["truncated_prompt_answerless", "truncated_prompt_correct"]


# --- a real Ray head and `ray job submit` with medssr's runtime_env ---------------------------------------------------
# What train_ppo_ray does before it touches a GPU: the first statement of its train(), `if not ray.is_initialized():
# ray.init(runtime_env={"env_vars": {...}})`, taken from OpenRLHF's installed source and executed as is (importing the
# module needs vLLM, DeepSpeed and flash-attn). Then it reports what the job's working_dir holds.
RAY_INIT_ENTRYPOINT = """
import ast, json, os, pathlib
import openrlhf, ray
src = pathlib.Path(openrlhf.__file__).parent / "cli" / "train_ppo_ray.py"
train = next(n for n in ast.parse(src.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "train")
block = train.body[0]
assert isinstance(block, ast.If) and "ray.init(" in ast.unparse(block), ast.unparse(block)
exec(compile(ast.Module(body=[block], type_ignores=[]), str(src), "exec"), {"ray": ray, "os": os})
env = ray.get_runtime_context().runtime_env
print("MEDSSR_JOB", json.dumps({"env_vars": env.get("env_vars", {}), "files": sorted(os.listdir("."))}))
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1, 1 CPU, every port free-picked; killed (its process group) at the end."""
    import tempfile

    gcs, dash, agent, agent_grpc, metrics, rt_agent, client, node, obj = _free_ports(9)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 107 characters
    cmd = [str(ENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_agent), "--ray-client-server-port", str(client),
           "--node-manager-port", str(node), "--object-manager-port", str(obj), "--num-cpus", "1", "--num-gpus", "0",
           "--object-store-memory", str(100 * 2**20), "--temp-dir", temp, "--disable-usage-stats"]
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/jobs/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"Ray head did not come up in 120 s: {Path(log.name).read_text()[-2000:]}")
            time.sleep(1)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # --block stops the processes it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its session is left
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _submit(address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_env: dict | None = None) -> tuple[int, str]:
    """medssr's launch of medssr's `ray job submit` command for stage1, the entrypoint swapped for RAY_INIT_ENTRYPOINT."""
    p = _params(**{"train.openrlhf": {"ray_address": address, "gpus_per_node": 1, "vllm_num_engines": 1}})
    cmd = orl.build_command(p.train, p.train.stage1, orl.RunPaths("m", "data/rl/stage1.jsonl", "o", "c", "t"),
                            n_prompts=orl.stage_prompt_count(p.train, p.train.stage1), run_name="r", working_dir=str(ROOT))
    head = cmd[: cmd.index("--") + 1]
    if runtime_env is not None:
        head[head.index("--runtime-env-json") + 1] = json.dumps(runtime_env)
    entry = tmp_path / "entry.py"
    entry.write_text(RAY_INIT_ENTRYPOINT)
    monkeypatch.setenv("PATH", f"{ENV_BIN}{os.pathsep}{os.environ['PATH']}")  # `ray` of the OpenRLHF environment
    rc = orl.launch([*head, str(ENV_BIN / "python"), str(entry)], tmp_path / "job.log", cwd=ROOT)
    return rc, (tmp_path / "job.log").read_text()


def test_ray_job_with_medssrs_runtime_env_passes_train_ppo_rays_ray_init(ray_head, tmp_path, monkeypatch):
    rc, log = _submit(ray_head, tmp_path, monkeypatch)
    assert rc == 0 and "succeeded" in log, log[-3000:]
    job = json.loads(log.split("MEDSSR_JOB ", 1)[1].splitlines()[0])
    assert set(orl.OPENRLHF_RAY_INIT_ENV_VARS) <= set(job["env_vars"])  # OpenRLHF's own defaults are in force
    assert {"medssr", "tests"} <= set(job["files"]) and not {".venv", ".venv-openrlhf", ".git", ".cache"} & set(job["files"])


def test_ray_job_with_the_old_tokenizers_parallelism_env_var_fails_to_start(ray_head, tmp_path, monkeypatch):
    old = {**orl.runtime_env(str(ROOT)), "env_vars": {"TOKENIZERS_PARALLELISM": "true"}}
    rc, log = _submit(ray_head, tmp_path, monkeypatch, old)
    assert rc != 0 and "Failed to merge the Job's runtime env" in log, log[-3000:]
