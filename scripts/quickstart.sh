#!/usr/bin/env bash
# One command: set up, then fine-tune SmolLM2-135M-Instruct on CPU, evaluating before and after, and answer
# a sample question. Extra arguments go to `medtune quickstart` (e.g. --output DIR, --data FILE --eval-data FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/setup.sh | tail -n 1)
exec "$python" -m medtune.cli quickstart "$@"
