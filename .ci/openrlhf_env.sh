#!/usr/bin/env bash
# The OpenRLHF 0.11.2 environment for tests/test_openrlhf_engine.py (CPU): its dataset and reward-loading code
# plus the Ray it pins, in .venv-openrlhf (it cannot share .venv: OpenRLHF pins transformers==5.15.0, .venv 5.23).
# openrlhf is installed --no-deps: its full requirements (deepspeed, flash-attn, vllm) need a GPU toolchain.
# Re-runs are instant once the stamp matches this script's package list. Usage: .ci/openrlhf_env.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-openrlhf}"
PY="${PYTHON311:-python3.11}"
# torch pinned so pip takes the local CPU wheel (a bare torch resolves a CUDA build); transformers is OpenRLHF's pin.
# datasets/tqdm: openrlhf.datasets; aiohttp: openrlhf.utils.agent (the reward-file loader); sympy/pylatexenc:
# openrlhf.utils.__init__ (math_utils); ray[default]==2.55.0: OpenRLHF's pin, with the job-submission server.
PACKAGES=(torch==2.13.0 transformers==5.15.0 datasets tqdm aiohttp sympy pylatexenc "ray[default]==2.55.0")
OPENRLHF=openrlhf==0.11.2
STAMP="$VENV/.medssr-stamp"
WANT="$OPENRLHF ${PACKAGES[*]}"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "[openrlhf-env] $VENV up to date ($WANT)"
  exit 0
fi
t0=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip_quiet() {  # pip without the "local index location is ignored" noise; fails when pip fails
  "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored" || true; }
  return "${PIPESTATUS[0]}"
}
pip_quiet "${PACKAGES[@]}"
pip_quiet --no-deps "$OPENRLHF"
"$VENV/bin/python" -c "import openrlhf.datasets, openrlhf.utils.agent, ray; print('[openrlhf-env] imports ok, ray', ray.__version__)"
echo "$WANT" > "$STAMP"
echo "[openrlhf-env] installed in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
