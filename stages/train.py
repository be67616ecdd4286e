"""DVC stages `stage1` / `stage2`: GRPO training as train.strategy plans it (python stages/train.py stage1|stage2 [--dry-run])."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("stage", choices=["stage1", "stage2"])
    ap.add_argument("--dry-run", action="store_true", help="print the plan (TRL) or the OpenRLHF command, train nothing")


def body(args, params):
    from medssr.rl.run import run_train_stage

    run_train_stage(params, args.stage, dry_run=args.dry_run)


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, add_args, body, argv)


if __name__ == "__main__":
    sys.exit(main())
