#!/usr/bin/env bash
# Set up medtune for use and tests. Uses the active virtual environment if there is one, else ./.venv.
# torch is installed only where none is present: GPU users install their CUDA or ROCm build of torch first,
# and this script leaves it alone. Prints the Python it set up as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${VIRTUAL_ENV:-}" ]; then
  python="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  python=.venv/bin/python
fi
quiet=(--quiet --disable-pip-version-check)
if ! "$python" -c "import torch" 2>/dev/null; then
  echo "[setup] no torch in $python: installing the CPU build torch==2.13.0" >&2
  "$python" -m pip install "${quiet[@]}" "torch==2.13.0"
fi
"$python" -m pip install "${quiet[@]}" -e ".[dev]"
echo "$python"
