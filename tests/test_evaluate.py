import json
import math

import pytest
import torch

from medtune.data import MCQExample
from medtune.evaluate import (
    choice_logprobs,
    encode_pair,
    evaluate,
    fewshot_exemplars,
    parse_strict_answer,
    predicted_options,
    summarize,
    wilson_interval,
)
from medtune.modeling import load_base
from medtune.prompts import PromptTemplate, template_for
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


# ---------------------------------------------------------------- the harness format: words, several tokens, few-shot


def _pubmedqa(i: int, options=("yes", "no", "maybe"), answer: int = 0) -> MCQExample:
    return MCQExample(f"p{i}", f"Does drug {i} lower blood pressure" + " really" * i + "?", options, answer,
                      context=f"Background {i}.\nResults: it did{' not' * (i % 2)}.")


def test_encode_pair_splits_context_and_continuation_as_lm_evaluation_harness(qwen3_tokenizer):
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM

    harness = SimpleNamespace(backend="causal", tok_encode=lambda text: qwen3_tokenizer.encode(text))
    for context, continuation in [("Answer:", " yes"), ("Answer: ", "maybe"), ("x  ", " perhaps not"), ("A.", "B")]:
        assert encode_pair(qwen3_tokenizer, context, continuation, True) == TemplateLM._encode_pair(
            harness, context, continuation)


def test_harness_pubmedqa_scores_the_words_yes_no_maybe_as_columns_a_b_c(tiny):
    model, tokenizer, _ = tiny
    template = PromptTemplate(format="harness").for_task("pubmedqa")
    example = _pubmedqa(1)
    ids = tokenizer.encode(template.prompt(example), return_tensors="pt")
    with torch.no_grad():
        last = model(ids).logits[0, -1]
    words = [tokenizer.encode(f" {word}", add_special_tokens=False)[0] for word in ("yes", "no", "maybe")]
    expected = torch.log_softmax(last[words], dim=-1)
    scores = choice_logprobs(model, tokenizer, template, [example])
    assert torch.allclose(scores[0, :3], expected, atol=1e-5) and torch.isinf(scores[0, 3:]).all()


def _summed_by_hand(model, tokenizer, context: str, continuation: str) -> float:
    """The harness's loglikelihood: sum over the continuation's tokens of log p(token | everything before)."""
    context_ids, option_ids = encode_pair(tokenizer, context, continuation, True)
    ids = torch.tensor([context_ids + option_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    positions = range(len(context_ids) - 1, len(context_ids) + len(option_ids) - 1)
    return sum(logprobs[p, t].item() for p, t in zip(positions, option_ids))


def test_multi_token_choices_are_scored_by_their_summed_token_logprobs(tiny):
    model, tokenizer, _ = tiny
    template = PromptTemplate(format="harness").for_task("pubmedqa")
    example = _pubmedqa(2, options=("yes", "no", "perhaps not at all"))
    assert len(tokenizer.encode(" perhaps not at all", add_special_tokens=False)) == 4  # the path under test
    summed = torch.tensor([_summed_by_hand(model, tokenizer, template.prompt(example), text)
                           for text in template.choice_texts(example)])
    scores = choice_logprobs(model, tokenizer, template, [example])
    assert torch.allclose(scores[0, :3], torch.log_softmax(summed, dim=-1), atol=1e-5)


def test_multi_token_scores_batched_equal_one_at_a_time(tiny):
    model, tokenizer, _ = tiny
    template = PromptTemplate(format="harness").for_task("pubmedqa")
    examples = [_pubmedqa(i, options=("yes", "no", "perhaps not" + " so" * i)) for i in range(5)]
    batched = choice_logprobs(model, tokenizer, template, examples, batch_size=4)
    single = torch.cat([choice_logprobs(model, tokenizer, template, [example], batch_size=1) for example in examples])
    assert torch.allclose(batched, single, atol=1e-5)


def test_multi_token_path_agrees_with_the_single_token_path_on_one_token_choices(tiny):
    from medtune.evaluate import _summed_logprobs

    model, tokenizer, _ = tiny
    template = PromptTemplate(format="harness").for_task("medqa")
    examples = _questions(5)
    pairs = [[encode_pair(tokenizer, template.prompt(e), text, True) for text in template.choice_texts(e)]
             for e in examples]
    summed = _summed_logprobs(model, tokenizer, pairs, batch_size=3, progress=False)
    assert torch.allclose(summed, choice_logprobs(model, tokenizer, template, examples), atol=1e-5)


def test_fewshot_exemplars_are_the_first_k_rows_of_the_pool():
    pool = [MCQExample(f"d{i}", f"Dev {i}?", ("a", "b"), i % 2) for i in range(5)]
    assert [e.id for e in fewshot_exemplars(pool, 3, _questions(2))] == ["d0", "d1", "d2"]
    assert fewshot_exemplars(pool, 0, _questions(2)) == []


def test_fewshot_exemplars_that_are_scored_questions_are_refused():
    scored = _questions(3)
    same_question = MCQExample("other-id", scored[1].question, scored[1].options, 0)
    with pytest.raises(ValueError, match="other-id are also scored questions"):
        fewshot_exemplars([same_question], 1, scored)


def test_fewshot_k_beyond_the_pool_is_refused():
    with pytest.raises(ValueError, match="more exemplars than the 1 labelled rows"):
        fewshot_exemplars([MCQExample("d", "Q?", ("a", "b"), 0)], 2, [])


def test_metrics_record_the_task_and_the_fewshot_exemplars(tiny):
    model, tokenizer, _ = tiny
    shots = [MCQExample("dev-1", "Dev?", ("a", "b", "c", "d"), 1), MCQExample("dev-2", "Dev 2?", ("e", "f"), 0)]
    template = PromptTemplate(format="harness").for_task("mmlu_anatomy").with_fewshot(shots, "dev")
    metrics, _ = evaluate(model, tokenizer, template, _questions(3), progress=False)
    assert metrics["task"] == "mmlu_anatomy" and metrics["prompt_format"] == "harness"
    assert metrics["fewshot"] == {"k": 2, "split": "dev", "ids": ["dev-1", "dev-2"]}
    zero_shot, _ = evaluate(model, tokenizer, template.with_fewshot([]), _questions(3), progress=False)
    assert zero_shot["fewshot"] == {"k": 0}


def _mmlu_csvs(folder, subject: str = "anatomy") -> None:
    """Headerless MMLU release CSVs: question, A, B, C, D, answer letter."""
    import csv

    for split, n in (("test", 3), ("dev", 4)):
        with open(folder / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as handle:
            rows = [[f"{split} question {i}?", "w", "x", "y", "z", "ABCD"[i % 4]] for i in range(n)]
            csv.writer(handle).writerows(rows)


def test_eval_num_fewshot_takes_the_first_rows_of_dev_and_records_them(tiny_qwen3, tmp_path, capsys):
    from medtune.cli import main

    _mmlu_csvs(tmp_path)
    output = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_qwen3), "--data", str(tmp_path / "anatomy_test.csv"), "--prompt-format",
                 "harness", "--num-fewshot", "2", "--output", str(output)]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["task"] == "mmlu_anatomy" and metrics["n"] == 3
    assert metrics["fewshot"]["k"] == 2 and metrics["fewshot"]["split"] == "dev"
    assert len(metrics["fewshot"]["ids"]) == 2 and all("dev" in i for i in metrics["fewshot"]["ids"])
    assert "few-shot: the first 2 rows of split 'dev'" in capsys.readouterr().out


def test_eval_num_fewshot_from_the_scored_file_is_refused(tiny_qwen3, tmp_path, capsys):
    from conftest import original_row, write_jsonl
    from medtune.cli import main

    data = write_jsonl(tmp_path / "dev.jsonl", [original_row(i, cop=i % 4) for i in range(4)])
    assert main(["eval", "--model", str(tiny_qwen3), "--data", str(data), "--num-fewshot", "1",
                 "--output", str(tmp_path / "out")]) == 2
    assert "are also scored questions" in capsys.readouterr().err


def _rows(golds: str) -> list[MCQExample]:
    return [MCQExample(f"q{i}", f"Question {i}?", ("a", "b", "c", "d"), "ABCD".index(g)) for i, g in enumerate(golds)]


def test_a_model_collapsed_onto_one_letter_is_warned_about_in_words():
    examples = _rows("AAAAAABBBB")
    metrics = summarize(examples, [0] * 10)
    assert metrics["predicted_distribution"] == {"A": 10} and metrics["gold_distribution"] == {"A": 6, "B": 4}
    collapse, baseline = metrics["warnings"]
    assert collapse.startswith("the model answered 'A' for 10 of 10 questions (100.0%, more than 80%)")
    assert "is not above the always-A baseline 0.600 beyond its interval" in baseline


def test_no_warning_for_a_model_clearly_above_the_baseline_and_eight_in_ten_is_not_a_collapse():
    examples = _rows("ABCD" * 25)
    assert summarize(examples, [e.answer for e in examples])["warnings"] == []
    examples = _rows("A" * 8 + "BC")
    metrics = summarize(examples, [0] * 8 + [1, 2])  # A for 8 of 10: exactly 80%, not more
    assert not any("collapsed" in w for w in metrics["warnings"])
