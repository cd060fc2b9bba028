#!/usr/bin/env bash
# The README's report screenshot (docs/report.png), made from a real run: `medtune train --eval-data` fine-tunes,
# fits the temperature on its calibration slice, scores the base model and the run on the held-out questions and
# compares them; `medtune report` writes the page; tests/test_report_browser.py checks it in headless Chromium and
# photographs it.
#
#   bash docs/report.sh [TRAIN_DATA] [HELD_OUT_DATA] [OUT_DIR]
#
# MODEL defaults to the tests' tiny random 2-layer Qwen3 (made here; about 10 minutes in all on 2 busy CPU cores),
# so the figures show the report's layout, not medicine: its accuracies sit near chance. MODEL=<folder or Hub id>
# makes the same report of a real model (SmolLM2-135M trains at tens of tokens/s on such a CPU: use a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${1:-src/medtune/demo_data/medmcqa-train.jsonl}
HELD_OUT=${2:-src/medtune/demo_data/medmcqa-heldout.jsonl}
OUT=${3:-runs/report-demo}
PYTHON=${PYTHON:-.venv/bin/python}
if [ -z "${MODEL:-}" ]; then
    MODEL="$OUT/tiny-qwen3"
    "$PYTHON" - "$MODEL" <<'EOF'
import sys

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, "tests")
from conftest import QWEN3_TOKENIZER  # the same model as the tiny_qwen3 fixture

torch.manual_seed(0)
config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                     bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, initializer_range=0.1)
Qwen3ForCausalLM(config).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(QWEN3_TOKENIZER).save_pretrained(sys.argv[1])
EOF
fi

"$PYTHON" -m medtune.cli train --model "$MODEL" --data "$TRAIN" --eval-data "$HELD_OUT" --output "$OUT/run" \
    --overwrite --max-steps 30 --skip-invalid --device cpu --quiet \
    batch_size=2 max_seq_len=256 learning_rate=1e-3 dev_size=32 eval_every=5 save_every=0 calibration_size=128
"$PYTHON" -m medtune.cli report "$OUT/run" --output "$OUT/report.html"
MEDTUNE_REPORT_PAGE="$OUT/report.html" "$PYTHON" -m pytest tests/test_report_browser.py -q -p no:cacheprovider
echo "screenshot -> docs/report.png"
