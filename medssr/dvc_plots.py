"""``medssr plots``: ``dvc plots show|diff`` whose HTML renders offline, with Vega from npm packages beside the page.

DVC's own page loads vega, vega-lite and vega-embed from a CDN: offline every chart is blank with a script error and
no word to the user. DVC takes a page template (``--html-template``, its ``{scripts}`` placeholder being where the CDN
tags go); ours leaves ``{scripts}`` out and loads the three builds from ``<out>/vega/``, copied from the unpacked npm
packages (``npm pack vega@5 vega-lite@5 vega-embed@6``, each tarball untarred into a directory named after it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medssr.errors import MedssrError

VEGA_PACKAGES = ("vega", "vega-lite", "vega-embed")
NPM_PACK = "npm pack vega@5 vega-lite@5 vega-embed@6"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    %s
    <style>table { border-spacing: 15px; }</style>
</head>
<body>
    {plot_divs}
</body>
</html>"""


class VegaMissing(MedssrError, FileNotFoundError):
    """The npm builds of Vega are not where ``medssr plots`` looks; the message says how to get them."""


def vega_builds(vega_dir: Path) -> dict[str, Path]:
    """``<name>.min.js`` of each package under ``vega_dir`` (``<name>-<version>/package/build/``), newest version first."""
    found: dict[str, Path] = {}
    for name in VEGA_PACKAGES:
        builds = sorted(vega_dir.glob(f"{name}-[0-9]*/package/build/{name}.min.js"), reverse=True)
        if not builds:
            raise VegaMissing(
                f"no {name}-<version>/package/build/{name}.min.js under {vega_dir}: the page would load Vega from a CDN "
                f"and stay blank offline. Get the builds once (npm registry):\n"
                f"  mkdir -p {vega_dir} && cd {vega_dir} && {NPM_PACK} && for t in *.tgz; do mkdir -p ${{t%.tgz}} && "
                f"tar -xzf $t -C ${{t%.tgz}}; done\n"
                f"or read the charts' Vega-Lite specs with `dvc plots show --json`.")
        found[name] = builds[0]
    return found


def render(action: str, dvc_args: Sequence[str], out: Path, vega_dir: Path, cwd: Path | None = None) -> Path:
    """Run ``dvc plots <action> <dvc_args> -o <out>`` with the offline template; returns ``<out>/index.html``."""
    builds = vega_builds(vega_dir)
    tags = "\n    ".join(f'<script src="vega/{name}.min.js"></script>' for name in VEGA_PACKAGES)
    env = {**os.environ, "DVC_NO_ANALYTICS": "true"}
    with tempfile.TemporaryDirectory(prefix="medssr-plots-") as tmp:
        template = Path(tmp) / "offline.html"
        template.write_text(PAGE % tags, encoding="utf-8")
        cmd = [sys.executable, "-m", "dvc", "plots", action, *dvc_args, "--html-template", str(template), "-o", str(out)]
        done = subprocess.run(cmd, cwd=cwd, env=env)
    if done.returncode:
        raise MedssrError(f"`dvc plots {action}` exited {done.returncode} (its message above)")
    index = (cwd or Path.cwd()) / out / "index.html"
    (index.parent / "vega").mkdir(exist_ok=True)
    for name, build in builds.items():
        shutil.copyfile(build, index.parent / "vega" / f"{name}.min.js")
    return index
