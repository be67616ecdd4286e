"""DVC stage `model`: materialise the configured policy as a plain transformers directory."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medssr.config import load_params, set_offline_env  # noqa: E402


def main() -> None:
    set_offline_env()
    from medssr import models, tracking

    params = load_params()
    t0 = time.time()
    out = models.materialize(params.model.policy, params.model.dir, params.model.dtype)
    size_mb = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
    family = models.model_family(str(out))
    with tracking.stage_run("model", params, {"model.policy": params.model.policy, "model.dtype": params.model.dtype}) as mlflow:
        mlflow.log_metrics({tracking.metric("model", "size_mb"): size_mb, tracking.metric("model", "materialize_s"): time.time() - t0})
        mlflow.set_tag("model_family", family)
    print(f"[model] {params.model.policy} -> {out} ({size_mb:.0f} MB, family {family}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
