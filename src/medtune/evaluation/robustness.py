"""Option-order robustness: `medtune eval --permutations cyclic`.

Every question is scored again under each cyclic shift of its options. Shift s moves the option at index i to
position (i + s) mod k (k = the question's option count); shift 0 is the original order, and the gold answer moves
with its option. The shifted copies are ordinary `MCQExample`s (id "<id>@shift<s>"), all scored in one batch by
`evaluate.choice_logprobs`, the one scorer, so a shifted prompt is exactly what the model would see had the data
listed the options in that order (in the harness format too: its prompt lists the option texts).

What is reported (metrics.json "robustness"; `summarize_robustness` computes it from the scores alone):

- accuracy_per_shift  accuracy of the copies at each shift (n_per_shift: the questions that have that shift).
- consistency         share of questions whose chosen option *text* (its original index) is the same under every
                      shift. A shift whose top options tie exactly chooses no text, so the question is inconsistent:
                      "the same answer every time" cannot be said of a question that once gave none.
- letter_prior        share of the picks that went to each position letter, over all copies; ties pick no letter,
                      so they are left out of the shares and counted in "ties" (out of "copies").
- gold_distribution   share of the copies whose gold sits at each letter: uniform over A..k for k-option questions,
                      since each option visits every position once. That is the point: under cyclic shifts a model
                      with a letter prior gains nothing from the data's own skewed gold letters.
- permutation_averaged_accuracy  for each question, each original option's probability averaged over the k
                      positions it visited, then the argmax (an exact tie counts wrong, as in `evaluate`). This is
                      the permutation debiasing of Zheng et al. 2023 ("Large Language Models Are Not Robust Multiple
                      Choice Selectors"), the full-cyclic form that their PriDe approximates from a few questions.
                      The probabilities are the raw ones (a run's temperature could move this argmax).

Questions with different option counts (MedQA's 4 and 5) share one evaluation: "shifts" is the largest k, and a
k-option question has shifts 0..k-1 only, so accuracy_per_shift[4] counts the 5-option questions alone.

The cost: k forward passes per question (k scorings per question, on top of the plain evaluation's one).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from medtune.data import LETTERS, MCQExample

PERMUTATIONS = ("none", "cyclic")
PERMUTATIONS_FILE = "permutations.jsonl"
TIE_RULE = ("a copy whose top options tie exactly chooses nothing: it counts wrong, picks no letter, and makes "
            "its question inconsistent; an exact tie of averaged probabilities counts wrong")


def cyclic_order(k: int, shift: int) -> list[int]:
    """The original option index at each position under `shift`: position p holds option (p - shift) mod k."""
    return [(position - shift) % k for position in range(k)]


def shifted(example: MCQExample, shift: int) -> MCQExample:
    """`example` with option i moved to position (i + shift) mod k, the gold with it; the id names the shift."""
    k = len(example.options)
    options = tuple(example.options[i] for i in cyclic_order(k, shift))
    answer = None if example.answer is None else (example.answer + shift) % k
    return replace(example, id=f"{example.id}@shift{shift}", options=options, answer=answer)


def shifted_copies(examples: list[MCQExample]) -> list[MCQExample]:
    """Every question under each of its k shifts, question by question: q0 shift 0..k0-1, q1 shift 0..k1-1, ..."""
    return [shifted(example, shift) for example in examples for shift in range(len(example.options))]


def unpermutable(template) -> str | None:
    """Why the option order cannot matter under `template`, or None where it can.

    Harness PubMedQA scores its choices (yes, no, maybe) as words and never lists them in the prompt, so their
    order changes nothing the model reads and consistency would be 1 by construction. (chat and plain list them
    as lettered options, so there the order is real.)"""
    if template.format == "harness" and template.layout == "pubmedqa":
        return ("PubMedQA's harness prompt never lists its choices (yes, no, maybe; they are scored as words), so "
                "their order cannot change a score")
    return None


def check_permutations(permutations: str | None, template) -> bool:
    """Whether to run the robustness scoring; a sentence (ValueError) where it cannot mean anything."""
    if permutations in (None, "none"):
        return False
    if permutations not in PERMUTATIONS:
        raise ValueError(f"--permutations {permutations!r} is not one of {', '.join(PERMUTATIONS)}")
    reason = unpermutable(template)
    if reason:
        raise ValueError(f"--permutations cyclic has nothing to permute: {reason}; drop --permutations, or use "
                         "--prompt-format chat or plain, which list the choices as lettered options")
    return True


def _shares(counts: list[int], total: int, letters: str) -> dict[str, float]:
    return {letter: (count / total if total else 0.0) for letter, count in zip(letters, counts)}


def _averaged_choice(probs: list[list[float]]) -> int | None:
    """The original option with the highest probability averaged over shifts, None on an exact tie.

    math.fsum is exactly rounded, so the same probabilities met in another order average to the same float: a
    model with a pure letter prior ties exactly, as it should, rather than by rounding noise."""
    averaged = [math.fsum(column) / len(column) for column in zip(*probs)]
    top = [j for j, value in enumerate(averaged) if value == max(averaged)]
    return top[0] if len(top) == 1 else None


def summarize_robustness(examples: list[MCQExample], logprobs: torch.Tensor) -> tuple[dict, list[dict]]:
    """(metrics.json "robustness", permutations.jsonl rows) from the scores of `shifted_copies(examples)`.

    `logprobs` is `choice_logprobs` of those copies, in that order: [sum of k, 5], columns = positions. No model
    is needed, so every figure can be checked on a hand-made tensor."""
    from medtune.evaluate import predicted_options  # the one tie rule

    copies = shifted_copies(examples)
    if logprobs.shape[0] != len(copies):
        raise ValueError(f"{logprobs.shape[0]} rows of scores for {len(copies)} shifted copies")
    picked = predicted_options(logprobs, copies)
    shifts = max((len(e.options) for e in examples), default=0)
    letters = LETTERS[:shifts]
    correct, scored = [0] * shifts, [0] * shifts
    prior, gold_at = [0] * shifts, [0] * shifts
    consistent = averaged_correct = 0
    rows, start = [], 0
    for example in examples:
        k = len(example.options)
        chosen, probs = [], []
        for shift in range(k):
            row, position = start + shift, picked[start + shift]
            order = cyclic_order(k, shift)
            chosen.append(None if position is None else order[position])
            probs.append([math.exp(logprobs[row, (j + shift) % k].item()) for j in range(k)])  # original order
            scored[shift] += 1
            correct[shift] += chosen[-1] == example.answer
            gold_at[copies[row].answer] += 1
            if position is not None:
                prior[position] += 1
        start += k
        consistent += None not in chosen and len(set(chosen)) == 1
        averaged = _averaged_choice(probs)
        averaged_correct += averaged == example.answer
        rows.append({"id": example.id, "gold": example.answer, "chosen": chosen, "averaged": averaged,
                     "probs": [[round(p, 6) for p in shift_probs] for shift_probs in probs]})
    n, ties = len(examples), picked.count(None)
    summary = {
        "permutations": "cyclic", "shifts": shifts, "n": n,
        "accuracy_per_shift": [c / s if s else 0.0 for c, s in zip(correct, scored)],
        "n_per_shift": scored,
        "consistency": consistent / n if n else 0.0,
        "letter_prior": _shares(prior, len(copies) - ties, letters),
        "gold_distribution": _shares(gold_at, len(copies), letters),
        "permutation_averaged_accuracy": averaged_correct / n if n else 0.0,
        "ties": ties, "copies": len(copies), "tie_rule": TIE_RULE,
        "file": PERMUTATIONS_FILE,
        "indices": "permutations.jsonl: gold, chosen and averaged are 0-based ORIGINAL option indices (null: a tie); "
                   "chosen[s] is shift s, which moves option i to position (i + s) mod k; probs[s][j] is option j's "
                   "probability under shift s",
    }
    return summary, rows


def score_permutations(answerer, examples: list[MCQExample], output: Path, batch_size: int = 16,
                       progress: bool = True) -> dict:
    """Score every cyclic shift of every question with the answerer's model and prompt, write
    OUTPUT/permutations.jsonl, print one line, and return metrics.json's "robustness"."""
    from medtune.evaluate import choice_logprobs

    copies = shifted_copies(examples)
    logprobs = choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, copies, batch_size, progress)
    summary, rows = summarize_robustness(examples, logprobs)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / PERMUTATIONS_FILE, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(format_robustness(summary))
    return summary


def format_robustness(summary: dict) -> str:
    """The one printed line: consistency, accuracy per shift, permutation-averaged accuracy, the letter prior."""
    per_shift = ", ".join(f"{accuracy:.3f}" for accuracy in summary["accuracy_per_shift"])
    prior = ", ".join(f"{letter} {share:.2f}" for letter, share in summary["letter_prior"].items())
    ties = f"; {summary['ties']} tied copies" if summary["ties"] else ""
    return (f"option order ({summary['copies']} cyclic-shift scorings of {summary['n']} questions): consistency "
            f"{summary['consistency']:.3f}; accuracy per shift {per_shift}; permutation-averaged accuracy "
            f"{summary['permutation_averaged_accuracy']:.3f}; picks by position {prior}{ties} -> {PERMUTATIONS_FILE}")
