#!/usr/bin/env bash
# Build .venv-vbench: a separate Python 3.11 environment for the VBench scorer of record.
# vbench 0.1.5 pins transformers==4.33.2 and numpy<2; installing it into .venv would downgrade the
# main environment, so it lives here and is installed with --no-deps (requirements-vbench.txt lists
# its real imports). torch==2.14.1 / torchvision==0.29.1 is the pair on local disk that imports
# together (a CUDA build, ~5.5 GB installed, runs on CPU).
# Usage: scripts/setup_vbench_env.sh [VENV_DIR]   (default: <repo>/.venv-vbench)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vbench}"
PY="${PYTHON:-python3.11}"

"$PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"   # keep the ~6 GB environment out of git
PIP=("$VENV/bin/pip" install --disable-pip-version-check)

# requirements-vbench.txt as constraints: torch's own dependencies get its pinned versions too.
"${PIP[@]}" -c "$ROOT/requirements-vbench.txt" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" --no-deps -r "$ROOT/requirements-vbench.txt"
# The project itself, without its (main-environment) dependencies, so `yume.tasks.scoring_vbench` imports.
"${PIP[@]}" --no-deps -e "$ROOT"

# Fail now, not inside a Ray actor, if an import is missing.
"$VENV/bin/python" - <<'PY'
import numpy, torch, torchvision
import vbench.subject_consistency, vbench.background_consistency, vbench.motion_smoothness
import vbench.aesthetic_quality, vbench.imaging_quality, vbench.dynamic_degree
print("vbench env ok: numpy", numpy.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)
PY
