"""DVC stage `model`: materialise the configured policy as a plain transformers directory."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_path_args, run_stage  # noqa: E402


def add_args(ap):
    add_path_args(ap, ("--out", "the policy directory to write (dvc.yaml: ${model.dir})"))


def body(args, params):
    from medssr import metric_names, models, tracking

    t0 = time.time()
    out = models.materialize(params.model.policy, args.out, params.model.dtype)
    size_mb = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
    family = models.model_family(str(out))
    with tracking.stage_run("model", params, {"model.policy": params.model.policy, "model.dtype": params.model.dtype}) as mlflow:
        mlflow.log_metrics({metric_names.metric("model", "size_mb"): size_mb, metric_names.metric("model", "materialize_s"): time.time() - t0})
        mlflow.set_tag("model_family", family)
    return f"[model] {params.model.policy} -> {out} ({size_mb:.0f} MB, family {family}) in {time.time() - t0:.1f}s"


def main(argv: list[str] | None = None) -> int:
    return run_stage("model", __doc__, add_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
