"""Explanations with and without medtune's loop guard, on the first N MedMCQA validation questions.

    python bench/explanations.py --questions 12 [--model FOLDER] [--max-new-tokens 160]

For each question: the scored letter, then its explanation twice -- plain greedy `model.generate`, and
`Answerer.explain` (greedy + `answer.explanation_settings`: no repeated 6-token sequence, cut at a sentence end
or marked) -- and counts explanations that repeat a sentence (of 5+ words), that repeat a 6-word span, and that
state another option as the answer (`answer.explanation_consistent`). Default model: SmolLM2-135M-Instruct
from the PyPI wheel (`modeling.smollm2_from_wheel`), on the CPU, fp32.
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import torch

from medtune.answer import Answerer, explanation_consistent
from medtune.data import LETTERS, example_from_input
from medtune.modeling import smollm2_from_wheel

VALIDATION = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmcqa" / "validation.jsonl"


def repeated_sentence(text: str) -> bool:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.split()) >= 5]
    return max(Counter(sentences).values(), default=0) >= 2


def repeated_span(text: str, size: int = 6) -> bool:
    words = text.split()
    return max(Counter(tuple(words[i:i + size]) for i in range(len(words) - size + 1)).values(), default=0) >= 2


@torch.no_grad()
def plain_explanation(answerer: Answerer, example, index: int, max_new_tokens: int) -> str:
    context = answerer.template.explanation_context(example, index)
    ids = answerer.tokenizer(context, add_special_tokens=answerer.template.add_special_tokens, return_tensors="pt")
    output = answerer.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return answerer.tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--model", help="a model folder (default: SmolLM2-135M-Instruct from the wheel)")
    parser.add_argument("--data", default=str(VALIDATION))
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    answerer = Answerer.from_model(args.model or str(smollm2_from_wheel()), device="cpu", dtype="fp32")
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()[:args.questions]]
    counts = Counter()
    for row in rows:
        options = [choice[3:] for choice in row["choices"]]  # "A. text"
        example = example_from_input(row["question"], options)
        letter = answerer.answer_many([(row["question"], options)])[0].answer
        index = LETTERS.index(letter)
        for name, text in (("plain", plain_explanation(answerer, example, index, args.max_new_tokens)),
                           ("medtune", answerer.explain(example, index, args.max_new_tokens))):
            counts[name, "repeated sentence"] += repeated_sentence(text)
            counts[name, "repeated 6-word span"] += repeated_span(text)
            counts[name, "states another option"] += not explanation_consistent(text, index, options, LETTERS)
            counts[name, "cut marker"] += text.endswith(" […]")
            print(f"{row['question'][:60]!r} {letter} {name}: {text!r}")
    print(f"\n{len(rows)} questions, {args.max_new_tokens} new tokens")
    for name in ("plain", "medtune"):
        print(f"{name:8}", ", ".join(f"{what}: {counts[name, what]}" for what in
                                    ("repeated sentence", "repeated 6-word span", "states another option",
                                     "cut marker")))


if __name__ == "__main__":
    main()
