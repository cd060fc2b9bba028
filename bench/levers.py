"""One lever at a time: time medtune's LoRA training step or its scoring pass under a variant.

    python bench/levers.py train --model MODEL --attention eager --base-dtype bf16 --micro 4 --steps 6
    python bench/levers.py train --model MODEL --attention eager --micro 4 --pack
    python bench/levers.py score --model MODEL --attention eager --batch-size 16 --compile layers
    python bench/levers.py matmul --model MODEL --tokens 960
    python bench/levers.py batchdiff --model MODEL --attention eager --questions 64

`train` runs the seed-recipe-sized step of bench/train_throughput.py (LoRA r 8 on q_proj/v_proj, 16 questions
per optimizer step, harness prompt, bf16 autocast, AnswerLoss), on consecutive rows of the train sample, and
times steps after a warm-up step. `--pack` concatenates each micro-batch's rows into one row with restarting
position ids (transformers then masks across rows), instead of padding. `score` times `choice_logprobs` on the
first validation questions after a warm-up; `matmul` times bf16 GEMMs of one decoder layer's shapes;
`batchdiff` compares each question's probabilities scored in a batch with scored alone. Each prints one
JSON line; peak RSS is this process's.
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
from medtune.evaluate import choice_logprobs  # noqa: E402
from medtune.modeling import add_lora, load_base  # noqa: E402
from medtune.prompts import PromptTemplate  # noqa: E402
from medtune.tokenization import (  # noqa: E402
    IGNORE,
    collate,
    encode_example,
    encode_prompt,
    letter_token_ids,
    pad_token_id,
)
from medtune.train import AnswerLoss, compile_layers  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"


def _load(args):
    model, tokenizer, _ = load_base(args.model, args.base_dtype, attention=args.attention)
    return model, tokenizer


def _compile(model, how: str) -> None:
    if how == "layers":  # what `compile: true` does in training
        compile_layers(model)
    elif how == "model":
        model.forward = torch.compile(model.forward, dynamic=True)


def _packed(items) -> dict[str, torch.Tensor]:
    """One row: the items back to back, position ids restarting at each, no label across a boundary."""
    labels = [label for item in items for label in [IGNORE, *item.labels[1:]]]
    return {"input_ids": torch.tensor([[t for item in items for t in item.input_ids]]),
            "position_ids": torch.tensor([[p for item in items for p in range(len(item.input_ids))]]),
            "attention_mask": None, "labels": torch.tensor([labels])}


def run_train(args) -> dict:
    model, tokenizer = _load(args)
    torch.manual_seed(0)
    model = add_lora(model, 8, 16, 0.05, ("q_proj", "v_proj"))
    _compile(model.get_base_model(), args.compile)
    loss_module = AnswerLoss(model).train()
    template = PromptTemplate(format="harness")
    letters = letter_token_ids(tokenizer, template, 4)
    examples, _ = load_examples(str(SHARED / "train-sample-original.jsonl"), skip_invalid=True,
                                limit=16 * (args.steps + 1))
    encoded = [encode_example(tokenizer, template, e, letters, 256) for e in examples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    timings, tokens = [], 0
    for step in range(args.steps + 1):  # step 0 warms up
        rows = sorted(range(16 * step, 16 * step + 16), key=lambda i: len(encoded[i].input_ids))
        started = time.perf_counter()
        for start in range(0, 16, args.micro):
            items = [encoded[i] for i in rows[start : start + args.micro]]
            batch = _packed(items) if args.pack else collate(items, pad_token_id(tokenizer))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss_sum, _ = loss_module(**batch)
            (loss_sum / 1000).backward()
            tokens += sum(len(item.input_ids) for item in items) if step else 0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            timings.append(time.perf_counter() - started)
    seconds = sum(timings)
    return {"questions_per_second": round(16 * args.steps / seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1), "step_seconds": [round(t, 2) for t in timings]}


def run_score(args) -> dict:
    model, tokenizer = _load(args)
    started = time.perf_counter()
    _compile(model, args.compile)
    template = PromptTemplate(format="harness")
    examples, _ = load_examples(str(SHARED / "validation.jsonl"), limit=args.questions)
    choice_logprobs(model, tokenizer, template, examples[:48], args.batch_size)  # warm-up (and compilation)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    choice_logprobs(model, tokenizer, template, examples, args.batch_size)
    seconds = time.perf_counter() - started
    prompt_tokens = sum(len(encode_prompt(tokenizer, template, e)) for e in examples)
    peak = peak_matmul_flops(torch.bfloat16)
    return {"questions_per_second": round(len(examples) / seconds, 2), "warmup_seconds": round(warmup, 1),
            "mfu": round(2 * non_embedding_parameters(model) * prompt_tokens / seconds / peak, 3),
            "peak_matmul_flops": round(peak)}


def run_batchdiff(args) -> dict:
    """How far a question's probabilities move when it is scored in a batch of `--batch-size` instead of alone."""
    model, tokenizer = _load(args)
    template = PromptTemplate(format="harness")
    examples, _ = load_examples(str(SHARED / "validation.jsonl"), limit=args.questions)
    batched = choice_logprobs(model, tokenizer, template, examples, args.batch_size).exp()
    alone = torch.cat([choice_logprobs(model, tokenizer, template, [e], 1).exp() for e in examples])
    moved = (batched - alone).abs().nan_to_num()
    flipped = int((batched.argmax(-1) != alone.argmax(-1)).sum())
    return {"max_abs_probability_change": round(moved.max().item(), 6),
            "mean_abs_probability_change": round(moved[:, :4].mean().item(), 6), "letters_changed": flipped}


def run_matmul(args) -> dict:
    """bf16 GEMM rate at one decoder layer's shapes ([tokens, in] x [in, out] for each Linear) against the
    square peak: the ceiling for MFU if nothing but the Linears took time."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model)
    h, inter = config.hidden_size, config.intermediate_size
    head = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head, config.num_key_value_heads * head
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
    flops = seconds = 0.0
    for n_in, n_out in shapes:
        a = torch.randn(args.tokens, n_in, dtype=torch.bfloat16)
        w = torch.randn(n_out, n_in, dtype=torch.bfloat16)
        for _ in range(3):
            a @ w.t()
        started = time.perf_counter()
        for _ in range(20):
            a @ w.t()
        seconds += time.perf_counter() - started
        flops += 20 * 2 * args.tokens * n_in * n_out
    peak = peak_matmul_flops(torch.bfloat16)
    return {"layer_gemm_flops": round(flops / seconds), "peak_matmul_flops": round(peak),
            "share_of_peak": round(flops / seconds / peak, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["train", "score", "matmul", "batchdiff"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--attention", default="eager", choices=["eager", "sdpa"])
    parser.add_argument("--base-dtype", default="bf16", choices=["bf16", "fp32"], help="frozen weights' storage")
    parser.add_argument("--compile", default="none", choices=["none", "layers", "model"])
    parser.add_argument("--micro", type=int, default=4, help="train: rows per micro-batch (16 per step)")
    parser.add_argument("--pack", action="store_true", help="train: pack each micro-batch into one row")
    parser.add_argument("--steps", type=int, default=6, help="train: timed optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="score: questions per forward")
    parser.add_argument("--questions", type=int, default=300, help="score: validation questions timed")
    parser.add_argument("--tokens", type=int, default=960, help="matmul: rows (16 prompts of ~60 tokens)")
    args = parser.parse_args()
    if args.what == "train" and args.compile == "model":  # AnswerLoss calls the decoder, not model.forward
        parser.error("--compile model applies to score only; use --compile layers for train")
    result = {"train": run_train, "score": run_score, "matmul": run_matmul, "batchdiff": run_batchdiff}[args.what](args)
    settings = {k: v for k, v in vars(args).items() if k != "model"}
    print(json.dumps(settings | result | {"peak_rss_mib": round(peak_rss_bytes() / 2**20)}))


if __name__ == "__main__":
    main()
