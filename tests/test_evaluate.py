import math

import pytest
import torch

from medtune.data import MCQExample
from medtune.evaluate import choice_logprobs, parse_strict_answer, summarize, wilson_interval
from medtune.modeling import load_base
from medtune.prompts import template_for


def test_wilson_interval_literal_values():
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson_interval(0, 10)[0] == 0.0 and math.isclose(wilson_interval(10, 10)[1], 1.0)


def test_summary_reports_baselines_subjects_and_confusion():
    examples = [MCQExample(str(i), "Q", ("a", "b", "c", "d"), gold, subject=subject)
                for i, (gold, subject) in enumerate([(0, "Anatomy"), (0, "Anatomy"), (1, "Pathology"), (2, None)])]
    metrics = summarize(examples, [0, 1, 1, None])
    assert metrics["accuracy"] == 0.5 and metrics["n"] == 4
    assert metrics["baselines"] == {"random": 0.25, "majority": 0.5, "majority_letter": "A"}
    assert metrics["per_subject"] == {"Anatomy": {"n": 2, "accuracy": 0.5}, "Pathology": {"n": 1, "accuracy": 1.0}}
    assert metrics["confusion"] == {"A": {"A": 1, "B": 1}, "B": {"B": 1}, "C": {"unparseable": 1}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Answer: C", 2), (" Answer: (B) because", 1), ("Answer: A.", 0), ("Answer: D", None), ("C", None),
     ("The answer is C", None), ("Answer: Cardiac", None), ("Answer:", None), ("", None)],
)
def test_strict_parser_accepts_only_answer_colon_letter(text, expected):
    assert parse_strict_answer(text, n_options=3) == expected


@pytest.fixture(scope="module")
def tiny(tiny_qwen3):
    model, tokenizer, _ = load_base(str(tiny_qwen3))
    return model, tokenizer, template_for(tokenizer)


def _questions(n):
    return [MCQExample(str(i), "Which?" + " longer" * (i % 5), tuple(f"opt {i} {j}" for j in range(2 + i % 4)), 0)
            for i in range(n)]


def test_scores_are_probabilities_over_each_examples_options(tiny):
    examples = _questions(6)
    logprobs = choice_logprobs(*tiny, examples)
    for example, row in zip(examples, logprobs):
        k = len(example.options)
        assert math.isclose(row[:k].exp().sum().item(), 1.0, rel_tol=1e-5)
        assert torch.isinf(row[k:]).all()


def test_batched_scores_equal_one_at_a_time(tiny):
    examples = _questions(7)
    batched = choice_logprobs(*tiny, examples, batch_size=4)
    single = torch.cat([choice_logprobs(*tiny, [example], batch_size=1) for example in examples])
    assert torch.allclose(batched, single, atol=1e-5)


def test_scoring_reads_the_letter_logits_after_the_prompt(tiny):
    model, tokenizer, template = tiny
    example = _questions(1)[0]
    ids = tokenizer.encode(template.prompt(example), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        last = model(ids).logits[0, -1]
    letters = [tokenizer.encode(f" {letter}", add_special_tokens=False)[0] for letter in "AB"]
    expected = torch.log_softmax(last[letters], dim=-1)
    assert torch.allclose(choice_logprobs(model, tokenizer, template, [example])[0, :2], expected, atol=1e-5)
