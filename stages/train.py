"""DVC stages `stage1` / `stage2`: GRPO training as train.strategy plans it (python stages/train.py stage1|stage2 [--dry-run])."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medssr.config import ConfigError, load_params, set_offline_env  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("stage", choices=["stage1", "stage2"])
    ap.add_argument("--dry-run", action="store_true", help="print the plan (TRL) or the OpenRLHF command, train nothing")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    set_offline_env()
    from medssr.records import RecordError
    from medssr.rl.data import RLDataError
    from medssr.rl.run import TrainError, run_train_stage

    try:
        params = load_params(args.params)
        run_train_stage(params, args.stage, dry_run=args.dry_run)
    except (ConfigError, RecordError, RLDataError, TrainError) as e:
        print(f"[train] {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
