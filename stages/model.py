"""DVC stage `model`: materialise the configured policy as a plain transformers directory."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import run_stage  # noqa: E402


def body(args, params):
    from medssr import models, tracking

    t0 = time.time()
    out = models.materialize(params.model.policy, params.model.dir, params.model.dtype)
    size_mb = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
    family = models.model_family(str(out))
    with tracking.stage_run("model", params, {"model.policy": params.model.policy, "model.dtype": params.model.dtype}) as mlflow:
        mlflow.log_metrics({tracking.metric("model", "size_mb"): size_mb, tracking.metric("model", "materialize_s"): time.time() - t0})
        mlflow.set_tag("model_family", family)
    return f"[model] {params.model.policy} -> {out} ({size_mb:.0f} MB, family {family}) in {time.time() - t0:.1f}s"


def main(argv: list[str] | None = None) -> int:
    return run_stage("model", __doc__, lambda ap: None, body, argv)


if __name__ == "__main__":
    sys.exit(main())
