"""Shared measuring tools for the benchmarks: peak matmul rate, peak memory, held-out answer-token loss."""

from __future__ import annotations

import json
import math
import resource

import torch

from medtune.evaluate import choice_logprobs
from medtune.suite import measured_peak_flops, non_embedding_parameters  # noqa: F401 (the benches' too)
from medtune.tokenization import collate_prompts, encode_prompt, letter_token_ids, pad_token_id


def peak_matmul_flops(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Best sustained FLOP/s of a 2048 square matmul in `dtype` on the CPU, with all of torch's threads: the
    suite's own MFU denominator (`medtune.suite.measured_peak_flops`), timed longer."""
    return measured_peak_flops("cpu", dtype, seconds)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
