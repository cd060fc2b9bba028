"""Shared measuring tools for the benchmarks: peak matmul rate, peak memory, held-out answer-token loss."""

from __future__ import annotations

import json
import math
import resource
import time

import torch

from medtune.evaluate import choice_logprobs
from medtune.tokenization import collate_prompts, encode_prompt, letter_token_ids, pad_token_id


def peak_matmul_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """Best sustained FLOP/s of a square matmul in `dtype` on the CPU, with all of torch's threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def non_embedding_parameters(model) -> int:
    """Parameters that take part in per-token matmuls: all but the input embedding (the tied head is counted
    separately by callers that use it)."""
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


@torch.no_grad()
def answer_token_loss(model, tokenizer, template, examples, batch_size: int = 16) -> tuple[float, float]:
    """(mean -log p(gold letter token) over the whole vocabulary at the answer position, letter accuracy)."""
    letters = torch.tensor(letter_token_ids(tokenizer, template, 5, sample=examples[0]))
    prompts = [encode_prompt(tokenizer, template, example) for example in examples]
    losses = []
    model.eval()
    for start in range(0, len(examples), batch_size):
        batch = collate_prompts(prompts[start : start + batch_size], pad_token_id(tokenizer))
        logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1].float()
        gold = letters[[e.answer for e in examples[start : start + batch_size]]]
        losses += (-torch.log_softmax(logits, -1).gather(1, gold[:, None])[:, 0]).tolist()
    predicted = choice_logprobs(model, tokenizer, template, examples, batch_size).argmax(-1).tolist()
    accuracy = sum(p == e.answer for p, e in zip(predicted, examples)) / len(examples)
    return sum(losses) / len(losses), accuracy


def write_result(path: str, values: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)
