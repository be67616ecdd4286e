"""Credentials never leave the process: URL userinfo, secret query values and auth headers are scrubbed."""

from __future__ import annotations

from medssr.config import load_params, to_flat_dict
from medssr.secrets import REDACTED, scrub_params, scrub_text, scrub_url


def test_scrub_url_drops_userinfo_and_secret_query_values_keeps_the_rest():
    assert scrub_url("https://user:sk-secret@example.org:8443/v1") == "https://example.org:8443/v1"
    assert scrub_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert scrub_url("https://h/v1?api_key=abc&model=x") == f"https://h/v1?api_key={REDACTED}&model=x"
    assert scrub_url("https://h/v1?key=abc") == f"https://h/v1?key={REDACTED}"
    assert scrub_url(None) is None


def test_scrub_text_removes_known_values_urls_and_auth_headers():
    text = ('POST http://u:CANARY1@h/v1 failed; headers {"Authorization": "Bearer CANARY2abcdef", "x-api-key": "CANARY3"}; '
            "key CANARY4 echoed")
    out = scrub_text(text, secrets=["CANARY4"])
    assert not any(f"CANARY{i}" in out for i in range(1, 5)), out
    assert "http://h/v1" in out


def test_scrub_params_redacts_secret_named_keys_but_not_token_counts_or_env_var_names():
    flat = to_flat_dict(load_params("params.yaml"))
    assert scrub_params(flat) == flat  # nothing in the shipped params is a secret: token counts and env-var names pass
    out = scrub_params({"synth.generator.base_url": "http://a:CANARY@h/v1", "x.api_key": "CANARY", "x.max_tokens": 7})
    assert out == {"synth.generator.base_url": "http://h/v1", "x.api_key": REDACTED, "x.max_tokens": 7}


def test_parent_and_stage_runs_never_store_a_credential_from_base_url(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    from medssr.synth.run import synth_section
    from medssr.tracking import stage_run

    params = load_params("params.yaml", overrides={"synth.generator.base_url": "http://user:CANARYSECRET@127.0.0.1:9/v1"})
    with stage_run("synthesize", params, synth_section(params)) as mlflow:
        mlflow.log_metric("synth/accepted", 1.0)
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name(params.project.experiment).experiment_id])
    assert {r.data.tags.get("medssr_role") for r in runs} == {"pipeline", "stage"}
    for r in runs:
        logged = " ".join(f"{k}={v}" for k, v in r.data.params.items())
        assert "CANARYSECRET" not in logged, r.data.tags.get("medssr_role")
        assert r.data.params.get("synth.generator.base_url") == "http://127.0.0.1:9/v1"
