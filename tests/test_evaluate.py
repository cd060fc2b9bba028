import math

import pytest
import torch

from medtune.data import MCQExample
from medtune.evaluate import (
    choice_logprobs,
    evaluate,
    parse_strict_answer,
    predicted_options,
    summarize,
    wilson_interval,
)
from medtune.modeling import load_base
from medtune.prompts import template_for
from medtune.tokenization import collate_prompts, encode_prompt, pad_token_id


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


def _letter_ids(tokenizer, letters):
    return [tokenizer.encode(f" {letter}", add_special_tokens=False)[0] for letter in letters]


def test_letter_logits_are_computed_in_fp32_on_a_bf16_model(tiny_qwen3):
    model, tokenizer, _ = load_base(str(tiny_qwen3), "bf16")
    template = template_for(tokenizer)
    example = _questions(1)[0]  # two options
    batch = collate_prompts([encode_prompt(tokenizer, template, example)], pad_token_id(tokenizer))
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state[0, -1].float()  # the bf16 model's final hidden state
    rows = model.lm_head.weight[_letter_ids(tokenizer, "AB")].float()
    expected = torch.log_softmax(rows @ hidden, dim=-1)  # the head in fp32, not rounded to bf16's 8 bits
    assert torch.allclose(choice_logprobs(model, tokenizer, template, [example])[0, :2], expected, atol=1e-6)


def test_top_option_ties_give_no_prediction():
    examples = [MCQExample(str(i), "Q", ("a", "b", "c", "d"), 0) for i in range(3)]
    logprobs = torch.tensor([[-1.0, -0.5, -0.5, -3.0], [-1.0, -0.5, -0.7, -3.0], [-0.5, -0.5, -2.0, -3.0]])
    assert predicted_options(logprobs, examples) == [None, 1, None]


def test_tied_letters_are_counted_wrong_not_given_to_a(tiny_qwen3):
    """A model whose letter logits are all equal must not score 100% on questions whose answer is A."""
    model, tokenizer, _ = load_base(str(tiny_qwen3))
    ids = _letter_ids(tokenizer, "ABCD")
    with torch.no_grad():
        model.lm_head.weight[ids[1:]] = model.lm_head.weight[ids[0]].clone()  # tied: every letter scores alike
    examples = [MCQExample(str(i), f"Which {i}?", ("w", "x", "y", "z"), 0) for i in range(4)]
    metrics, predictions = evaluate(model, tokenizer, template_for(tokenizer), examples, progress=False)
    assert metrics["ties"] == 4 and metrics["accuracy"] == 0.0 and metrics["correct"] == 0
    assert [p["pred"] for p in predictions] == [None] * 4
    assert metrics["confusion"] == {"A": {"tie": 4}}
