"""The `medssr` command: inspect data and retrieval, apply profiles, review synthetic data, render reports and tables."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _validate(args: argparse.Namespace) -> int:
    from medssr.data.validate import main_validate

    return main_validate(args.files)


def _retrieve(args: argparse.Namespace) -> int:
    from medssr.knowledge import main_retrieve

    index_dir = args.index_dir
    if index_dir is None:  # where the corpus stage wrote it: dvc.yaml passes it corpus.index_dir
        from medssr.config import load_params

        index_dir = load_params(args.params).corpus.index_dir
    return main_retrieve(args.query, index_dir, args.k)


def _report(args: argparse.Namespace) -> int:
    from eval.report import main_report

    return main_report(out_dir=args.out, experiment=args.experiment)


def _table(args: argparse.Namespace) -> int:
    import json

    from eval.scoring import format_table

    path = Path(args.metrics)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        print(f"medssr table: {path}:{e.lineno}: not valid JSON ({e.msg})", file=sys.stderr)
        return 2
    print(f"evaluation ({path}, accuracy %):\n{format_table(results, _display_names(Path(args.params)))}")
    return 0


def _display_names(params_path: Path) -> dict[str, str]:
    """Table names of the benchmarks declared in params.yaml (plain keys when there is no valid params file)."""
    if not params_path.exists():
        return {}
    from eval.benchmarks import display_names
    from medssr.config import load_params
    from medssr.errors import MedssrError

    try:
        return display_names(load_params(params_path))
    except MedssrError as e:  # the table itself does not need params: print it with plain benchmark keys
        print(f"medssr table: {e}; printing benchmark keys", file=sys.stderr)
        return {}


def _review(args: argparse.Namespace) -> int:
    from medssr.review import main_review

    return main_review(args.rest)


def _profile(args: argparse.Namespace) -> int:
    from medssr.profiles import apply_profile, list_profiles

    if args.action == "list":
        for name, desc in list_profiles():
            print(f"{name:24s} {desc}")
        return 0
    changed = apply_profile(args.name, params_path=args.params)
    print(f"[profile] applied {args.name} to {args.params}: {len(changed)} keys changed")
    for k in changed:
        print(f"  {k}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from medssr.models import materialize

    out = materialize(args.policy, args.out)
    print(f"[model] {args.policy} -> {out}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from medssr.config import load_params
    from medssr.mlflow_ui import serve
    from medssr.tracking import project_root, tracking_uri

    root = project_root()
    experiment = args.experiment or load_params(args.params).project.experiment
    return serve(tracking_uri(), root / "mlruns", experiment, args.port, root / ".cache" / "mlflow_ui.log")


def _plots(args: argparse.Namespace) -> int:
    from medssr.dvc_plots import render
    from medssr.tracking import project_root

    vega_dir = Path(args.vega_dir or os.environ.get("MEDSSR_VEGA_DIR") or project_root() / ".cache" / "vega")
    index = render(args.action, args.dvc_args, Path(args.out), vega_dir)
    print(f"[plots] {index}: open it in a browser; it renders offline (Vega from {index.parent / 'vega'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medssr", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    v = sub.add_parser("validate", help="check question files (benchmark JSON lists or our JSONL records)")
    v.add_argument("files", nargs="+", help="question files to check (benchmark JSON lists or JSONL records)")
    v.set_defaults(fn=_validate)

    r = sub.add_parser("retrieve", help="show the passages the synthesizer would see for a query")
    r.add_argument("query", help="the text to retrieve passages for (e.g. a rare disease name)")
    r.add_argument("-k", type=int, default=4, help="passages to show (default 4, as the synthesizer uses)")
    r.add_argument("--index-dir", default=None, help="corpus index written by the corpus stage (default: corpus.index_dir of --params)")
    r.add_argument("--params", default="params.yaml", help="params file naming the corpus index (default params.yaml)")
    r.set_defaults(fn=_retrieve)

    rep = sub.add_parser("report", help="render reports/report.md and figures from MLflow runs")
    rep.add_argument("--out", default="reports", help="directory for report.md and figures/ (default reports)")
    rep.add_argument("--experiment", default=None, help="MLflow experiment to read (default: project.experiment of params.yaml)")
    rep.set_defaults(fn=_report)

    t = sub.add_parser("table", help="print the evaluation table (accuracy [interval], n; differences to base with p) "
                       "from metrics/eval.json")
    t.add_argument("metrics", nargs="?", default="metrics/eval.json", help="the evaluate stage's results (default metrics/eval.json)")
    t.add_argument("--params", default="params.yaml", help="params file whose benchmark display names the table uses")
    t.set_defaults(fn=_table)

    rev = sub.add_parser("review", help="physician review sheets: `review export --n 200` / `review import FILE...`",
                         add_help=False)  # `medssr review [export|import] --help` is answered by medssr.review's own parser
    rev.add_argument("rest", nargs=argparse.REMAINDER, help="export|import and their arguments (see `medssr review --help`)")
    rev.set_defaults(fn=_review)

    prof = sub.add_parser("profile", help="apply a parameter profile from params/ onto params.yaml")
    prof.add_argument("action", choices=["apply", "list"], help="apply: write a profile's keys into the params file; list: show the profiles")
    prof.add_argument("name", nargs="?", help="profile name for apply (a file params/<name>.yaml, e.g. micro)")
    prof.add_argument("--params", default="params.yaml", help="params file to change (default params.yaml)")
    prof.set_defaults(fn=_profile)

    ui = sub.add_parser("ui", help="serve the MLflow UI of the project's store on 127.0.0.1 and print the runs-table link")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000; 0 picks a free one)")
    ui.add_argument("--experiment", default=None, help="MLflow experiment to link (default: project.experiment of params.yaml)")
    ui.add_argument("--params", default="params.yaml", help="params file naming the experiment (default params.yaml)")
    ui.set_defaults(fn=_ui)

    pl = sub.add_parser("plots", help="`dvc plots show|diff` as a page that renders offline (Vega from npm packages, not a CDN)")
    pl.add_argument("action", choices=["show", "diff"], help="show: the workspace's plots; diff: overlay revisions/experiments")
    pl.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed on to `dvc plots <action>` (plot names, revisions, ...)")
    pl.add_argument("--out", default="dvc_plots", help="output dir (default dvc_plots; index.html and vega/)")
    pl.add_argument("--vega-dir", default=None, help="unpacked npm packages vega, vega-lite, vega-embed "
                    "(default $MEDSSR_VEGA_DIR or .cache/vega; the error says how to fetch them)")
    pl.set_defaults(fn=_plots)

    m = sub.add_parser("model", help="materialise a policy (smollm2-135m, a dir or a hub id) as a transformers dir")
    m.add_argument("policy", help="smollm2-135m, tiny-random-llama, a local HF dir or a hub id")
    m.add_argument("out", help="directory to write the transformers model to")
    m.set_defaults(fn=_model)
    return p


def main(argv: list[str] | None = None) -> int:
    from medssr.config import set_offline_env
    from medssr.errors import MedssrError

    set_offline_env()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["review"]:  # its own parser, so `medssr review --help` lists export/import with their arguments
        from medssr.review import main_review

        return main_review(argv[1:])
    args = build_parser().parse_args(argv)
    if args.cmd == "profile" and args.action == "apply" and not args.name:
        print("medssr profile apply: name a profile (see `medssr profile list`)", file=sys.stderr)
        return 2
    try:
        return int(args.fn(args) or 0)
    except (MedssrError, FileNotFoundError) as e:
        print(f"medssr {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
_ = Path
