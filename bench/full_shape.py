"""Training tokens/s and MFU for a model of exactly Qwen3-1.7B's shape (random weights, real Qwen3 tokenizer).

    python bench/full_shape.py --steps 3 --batch-size 2 --seq-len 256 --dtype bf16 --out bench/results/full-shape.json

Runs medtune's own training step (`AnswerLoss` on a PEFT LoRA model, AdamW), on real MedMCQA questions
with explanations, in the dtype asked (bf16: base weights in bf16 under autocast).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import non_embedding_parameters, peak_matmul_flops, peak_rss_bytes  # noqa: E402

from medtune.data import load_examples  # noqa: E402
from medtune.device import select_attention  # noqa: E402
from medtune.modeling import add_lora  # noqa: E402
from medtune.prompts import template_for  # noqa: E402
from medtune.tokenization import IGNORE, collate, encode_example, letter_token_ids  # noqa: E402
from medtune.train import AnswerLoss  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--attention", default="auto", help="auto | eager | sdpa (auto: medtune's choice)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    config = AutoConfig.from_pretrained(SHARED / "models" / "qwen3-1.7b-config")
    tokenizer = AutoTokenizer.from_pretrained(SHARED / "models" / "qwen3-tokenizer")
    torch.manual_seed(0)
    started = time.perf_counter()
    attention = select_attention(args.attention, "cpu")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention.value)
    build_seconds = time.perf_counter() - started
    model = add_lora(model, 16, 32, 0.05, "all-linear")
    loss_module = AnswerLoss(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    template = template_for(tokenizer)
    letters = letter_token_ids(tokenizer, template)
    examples, _ = load_examples(str(SHARED / "data" / "medmcqa" / "train-sample-original.jsonl"), skip_invalid=True,
                                limit=args.batch_size * (args.steps + 1))
    encoded = [encode_example(tokenizer, template, e, letters, args.seq_len) for e in examples]
    batches = [collate(encoded[i : i + args.batch_size], tokenizer.pad_token_id)
               for i in range(0, len(encoded), args.batch_size)]
    timings, tokens = [], []
    for batch in batches:  # the first batch warms up and is not counted
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss_sum, n = loss_module(**batch)
        (loss_sum / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timings.append(time.perf_counter() - start)
        tokens.append(int(batch["attention_mask"].sum()))
    seconds, counted = sum(timings[1:]), sum(tokens[1:])
    peak = peak_matmul_flops(dtype)
    n_params = non_embedding_parameters(model.get_base_model())
    supervised = sum(int((b["labels"] != IGNORE).sum()) for b in batches[1:])
    # the output head runs on supervised positions only: forward 2Vd + backward to its input 2Vd per position
    head_flops = 4 * config.vocab_size * config.hidden_size * supervised
    result = {
        "shape": "Qwen3-1.7B (random weights)", "dtype": args.dtype, "batch_size": args.batch_size,
        "max_seq_len": args.seq_len, "attention": attention.value, "steps_timed": len(timings) - 1, "tokens": counted,
        "seconds": round(seconds, 2), "tokens_per_second": round(counted / seconds, 1),
        "step_seconds": [round(t, 2) for t in timings], "non_embedding_params": n_params,
        "peak_matmul_flops": peak,
        # LoRA model FLOPs per token: forward 2N + backward to the inputs 2N (frozen weights need no weight grad)
        "mfu": round((4 * n_params * counted + head_flops) / seconds / peak, 4),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20), "build_seconds": round(build_seconds, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
