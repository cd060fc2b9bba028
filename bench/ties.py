"""Exact ties for the top letter, and batch dependence, before and after the fp32 letter head (issue 9, #7/#19).

  before  the old scorer: the model's full output layer in the compute dtype, the letter logits taken from it
          (bf16-rounded), ties broken by argmax (toward "A")
  after   `evaluate.choice_logprobs`: the letter logits computed in fp32 from the final hidden state; a tie
          is counted wrong (`evaluate.predicted_options`)

For each: exact ties for the top letter, how many of them argmax gave to "A", accuracy (ties by argmax and ties
counted wrong), and how far a question's probabilities move between batch size 1 and --batch-size.
Optionally (--fp32-reference) the largest probability difference to an fp32 load of the same run.

    python bench/ties.py RUN_DIR --data ../shared/data/medmcqa/validation.jsonl --limit 500 --dtype bf16 \\
        --batch-one --fp32-reference --out bench/results/ties-500-bf16.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from medtune.answer import Answerer
from medtune.data import load_examples
from medtune.evaluate import choice_logprobs, predicted_options
from medtune.tokenization import collate_prompts, encode_prompt, letter_token_ids, pad_token_id


@torch.no_grad()
def old_logprobs(answerer: Answerer, examples, batch_size: int) -> torch.Tensor:
    """The scorer before the fix: letter logits read off the full head's output in the compute dtype."""
    model, tokenizer, template = answerer.model, answerer.tokenizer, answerer.template
    letter_ids = torch.tensor(letter_token_ids(tokenizer, template, 5, sample=examples[0]))
    prompts = [encode_prompt(tokenizer, template, example) for example in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    scores = torch.full((len(examples), 5), -math.inf)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate_prompts([prompts[i] for i in rows], pad_token_id(tokenizer))
        logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1]
        letters = logits.index_select(-1, letter_ids).float()
        for row, index in enumerate(rows):
            k = len(examples[index].options)
            scores[index, :k] = torch.log_softmax(letters[row, :k], dim=-1)
    return scores


def tie_figures(logprobs: torch.Tensor, examples) -> dict:
    argmax = logprobs.argmax(-1).tolist()
    strict = predicted_options(logprobs, examples)
    tied = [i for i, p in enumerate(strict) if p is None]
    n = len(examples)
    return {
        "ties": len(tied),
        "ties_given_to_A_by_argmax": sum(argmax[i] == 0 for i in tied),
        "accuracy_ties_by_argmax": sum(p == e.answer for p, e in zip(argmax, examples)) / n,
        "accuracy_ties_wrong": sum(p is not None and p == e.answer for p, e in zip(strict, examples)) / n,
    }


def movement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """How far probabilities move between two scorings of the same questions."""
    pa, pb = a.exp().nan_to_num(0.0), b.exp().nan_to_num(0.0)
    delta = (pa - pb).abs().max(dim=-1).values
    return {"max_abs_prob_change": round(delta.max().item(), 6), "mean_abs_prob_change": round(delta.mean().item(), 6),
            "questions_moved": int((delta > 0).sum()), "top_letter_changed": int((a.argmax(-1) != b.argmax(-1)).sum())}


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-one", action="store_true", help="also score one question at a time")
    parser.add_argument("--fp32-reference", action="store_true", help="also score an fp32 load of the run")
    parser.add_argument("--out")
    args = parser.parse_args()

    examples, _ = load_examples(args.data, skip_invalid=True, limit=args.limit)
    answerer = Answerer.from_run(args.run_dir, "cpu", args.dtype)
    result: dict = {"run": args.run_dir, "data": args.data, "n": len(examples), "dtype": args.dtype,
                    "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
    for name, scorer in (("before", old_logprobs), ("after", None)):
        score = scorer or (lambda a, e, b: choice_logprobs(a.model, a.tokenizer, a.template, e, b))
        batched, seconds = timed(score, answerer, examples, args.batch_size)
        result[name] = {**tie_figures(batched, examples), "seconds": seconds, "logprobs": batched}
        print(name, {k: v for k, v in result[name].items() if k != "logprobs"}, flush=True)
        if args.batch_one:
            single, seconds = timed(score, answerer, examples, 1)
            result[name][f"batch_1_vs_{args.batch_size}"] = movement(batched, single)
            print(name, "batch 1:", result[name][f"batch_1_vs_{args.batch_size}"], f"{seconds} s", flush=True)
    if args.fp32_reference:
        reference = Answerer.from_run(args.run_dir, "cpu", "fp32")
        exact = choice_logprobs(reference.model, reference.tokenizer, reference.template, examples, args.batch_size)
        for name in ("before", "after"):
            result[name]["vs_fp32_load"] = movement(result[name]["logprobs"], exact)
            print(name, "vs fp32 load:", result[name]["vs_fp32_load"], flush=True)
    for name in ("before", "after"):
        del result[name]["logprobs"]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
