"""DVC stages `stage1` / `stage2`: GRPO training as train.strategy plans it (python stages/train.py stage1|stage2 [--dry-run])."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("stage", choices=["stage1", "stage2"], help="which training stage of train.strategy to run")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (TRL) or the OpenRLHF command, train nothing")


def body(args, params):
    from medssr.rl.run import run_train_stage
    from medssr.tracking import log_dataset_inputs, log_stage_artifacts, workspace_root

    root = workspace_root()
    log_dataset_inputs(args.stage, {"labeled_synthetic": root / "data/labeled/synthetic.jsonl", "real_train": root / "data/prepared/train.jsonl"})
    run_train_stage(params, args.stage, dry_run=args.dry_run)
    log_stage_artifacts(args.stage, root / f"reports/train_{args.stage}_steps.json")  # the step curves, as `dvc plots` draws them


def train_metrics(args):
    """metrics/train_<stage>.json: the numbers of reports/train_<stage>.json (both under the workspace root, as the trainer writes)."""
    from medssr.tracking import workspace_root

    root = workspace_root()
    return {} if args.dry_run else {str(root / f"metrics/train_{args.stage}.json"): str(root / f"reports/train_{args.stage}.json")}


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, add_args, body, argv, track=lambda a: None if a.dry_run else a.stage,
                     metrics=train_metrics)


if __name__ == "__main__":
    sys.exit(main())
