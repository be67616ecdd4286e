"""DVC stages `stage1` / `stage2`: GRPO training as train.strategy plans it (python stages/train.py stage1|stage2 <paths> [--dry-run])."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run this checkout's code, also in a DVC queue copy

from medssr.stage import add_metrics_arg, add_path_args, run_stage  # noqa: E402


def add_args(ap):
    ap.add_argument("stage", choices=["stage1", "stage2"], help="which training stage of train.strategy to run")
    add_path_args(ap, ("--synthetic", "labeled synthetic questions (JSONL, the label stage's out)"),
                  ("--real", "real training rows (JSONL, the prepare stage's train.jsonl)"),
                  ("--policy", "the policy dir (dvc.yaml: ${model.dir}): stage I starts from it, stage II checks its architecture"),
                  ("--out", "the checkpoint dir this stage writes"),
                  ("--report", "the rich JSON report (its numbers go to --metrics)"),
                  ("--steps", "one row per training step (JSON, for dvc plots)"),
                  ("--rl-data", "scratch dir of the prompt JSONL OpenRLHF reads (train.backend: openrlhf; not a DVC out)"))
    add_metrics_arg(ap)
    ap.add_argument("--init", default=None, help="stage2: the stage I checkpoint it starts from (required for stage2)")
    ap.add_argument("--heldout", default=None,
                    help="prepared benchmarks dir: train.heldout_n of its questions are answered every train.eval_every steps")
    ap.add_argument("--heldout-curve", default=None, help="held-out accuracy per measured step (JSON, for dvc plots)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (TRL) or the OpenRLHF command, train nothing")


def stage_paths(args, root: str | None = None):
    """The trainer's StagePaths from the stage's arguments (relative paths under ``root``, default the workspace root)."""
    from medssr.rl.run import StagePaths

    return StagePaths(synthetic=args.synthetic, real=args.real, policy=args.policy, out=args.out, init=args.init, report=args.report,
                      steps=args.steps, rl_data=args.rl_data, heldout=args.heldout,
                      heldout_curve=args.heldout_curve, root=root)


def body(args, params):
    from medssr.rl.run import run_train_stage
    from medssr.tracking import log_dataset_inputs, log_stage_artifacts

    paths = stage_paths(args)
    log_dataset_inputs(args.stage, {"labeled_synthetic": paths.abs(args.synthetic), "real_train": paths.abs(args.real)})
    run_train_stage(params, args.stage, paths, dry_run=args.dry_run)
    log_stage_artifacts(args.stage, paths.abs(args.steps))  # the step curves, as `dvc plots` draws them


def train_metrics(args):
    """--metrics: the numbers of --report (both under the workspace root, as the trainer writes)."""
    paths = stage_paths(args)
    return {} if args.dry_run else {str(paths.abs(args.metrics)): str(paths.abs(args.report))}


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, add_args, body, argv, track=lambda a: None if a.dry_run else a.stage,
                     metrics=train_metrics)


if __name__ == "__main__":
    sys.exit(main())
