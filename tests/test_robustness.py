"""Option-order robustness (`medtune eval --permutations cyclic`): the shifts, the statistics on hand-made scores
whose every figure is worked out in the comments, and the command end to end on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import original_row, write_jsonl
from medtune.data import MCQExample
from medtune.evaluation.robustness import (
    check_permutations,
    cyclic_order,
    shifted,
    shifted_copies,
    summarize_robustness,
)
from medtune.prompts import PromptTemplate


def _scores(rows: list[list[float]]) -> torch.Tensor:
    """Log-probabilities from probabilities, padded to 5 columns with -inf as `choice_logprobs` pads them."""
    table = torch.full((len(rows), 5), -math.inf)
    for i, row in enumerate(rows):
        table[i, : len(row)] = torch.log(torch.tensor(row, dtype=torch.float64)).float()
    return table


# ---------------------------------------------------------------- the shifts


def test_cyclic_shifts_of_a_four_option_question():
    example = MCQExample("q", "Q?", ("a", "b", "c", "d"), answer=1)
    copies = [shifted(example, s) for s in range(4)]
    assert [c.options for c in copies] == [("a", "b", "c", "d"), ("d", "a", "b", "c"), ("c", "d", "a", "b"),
                                           ("b", "c", "d", "a")]
    assert [c.answer for c in copies] == [1, 2, 3, 0]  # "b" moves with its option
    assert [c.id for c in copies] == ["q@shift0", "q@shift1", "q@shift2", "q@shift3"]
    assert cyclic_order(4, 1) == [3, 0, 1, 2]


def test_cyclic_shifts_of_a_five_option_question():
    example = MCQExample("m", "Q?", ("a", "b", "c", "d", "e"), answer=4)
    copies = [shifted(example, s) for s in range(5)]
    assert [c.options for c in copies] == [("a", "b", "c", "d", "e"), ("e", "a", "b", "c", "d"),
                                           ("d", "e", "a", "b", "c"), ("c", "d", "e", "a", "b"),
                                           ("b", "c", "d", "e", "a")]
    assert [c.answer for c in copies] == [4, 0, 1, 2, 3]


def test_each_question_gets_its_own_number_of_shifts():
    examples = [MCQExample("four", "Q?", tuple("abcd"), 0), MCQExample("five", "Q?", tuple("abcde"), 0)]
    assert [c.id for c in shifted_copies(examples)] == [f"four@shift{s}" for s in range(4)] + \
        [f"five@shift{s}" for s in range(5)]


# ---------------------------------------------------------------- the statistics, by hand


def _hand_case():
    """Three questions of 3, 2 and 2 options; rows are the copies' probabilities by POSITION.

    q1 (gold 0): shift 0 picks A = option 0 (right); shift 1 (positions hold options 2, 0, 1) picks A = option 2;
        shift 2 (positions hold 1, 2, 0) picks A = option 1. Chosen [0, 2, 1]: inconsistent.
        Averaged: option 0 (0.6 + 0.4 + 0.3) / 3, option 1 (0.3 + 0.1 + 0.5) / 3, option 2 (0.1 + 0.5 + 0.2) / 3
        -> option 0, right.
    q2 (gold 1): shift 0 picks B = option 1; shift 1 (positions hold 1, 0) picks A = option 1. Consistent, right
        twice. Averaged: option 1 (0.8 + 0.7) / 2 -> right.
    q3 (gold 0): shift 0 ties (no choice: wrong, inconsistent); shift 1 picks A = option 1 (wrong).
        Averaged: option 0 (0.5 + 0.1) / 2, option 1 (0.5 + 0.9) / 2 -> option 1, wrong.
    """
    examples = [MCQExample("q1", "Q?", ("x", "y", "z"), 0), MCQExample("q2", "Q?", ("x", "y"), 1),
                MCQExample("q3", "Q?", ("x", "y"), 0)]
    rows = [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.5, 0.2, 0.3], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5], [0.9, 0.1]]
    return examples, _scores(rows)


def test_robustness_figures_on_hand_made_scores():
    summary, rows = summarize_robustness(*_hand_case())
    assert summary["shifts"] == 3 and summary["n"] == 3
    # shift 0: q1, q2 right, q3 tied; shift 1: q2 right only; shift 2 exists for q1 alone, wrong
    assert summary["accuracy_per_shift"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert summary["n_per_shift"] == [3, 3, 1]
    assert summary["consistency"] == pytest.approx(1 / 3)  # q2 only
    # picks by position: q1 A A A, q2 B A, q3 (tie) A -> 6 picks, A 5, B 1; the tie is counted apart
    assert summary["letter_prior"] == pytest.approx({"A": 5 / 6, "B": 1 / 6, "C": 0.0})
    assert (summary["ties"], summary["copies"]) == (1, 7)
    # gold positions: q1 A B C, q2 B A, q3 A B -> A 3, B 3, C 1 of 7
    assert summary["gold_distribution"] == pytest.approx({"A": 3 / 7, "B": 3 / 7, "C": 1 / 7})
    assert summary["permutation_averaged_accuracy"] == pytest.approx(2 / 3)  # q1 and q2
    assert [(r["id"], r["gold"], r["chosen"], r["averaged"]) for r in rows] == [
        ("q1", 0, [0, 2, 1], 0), ("q2", 1, [1, 1], 1), ("q3", 0, [None, 1], 1)]
    assert rows[0]["probs"][1] == pytest.approx([0.4, 0.1, 0.5], abs=1e-6)  # shift 1 in original option order


def test_a_model_that_always_picks_a_is_inconsistent_and_debiased_to_ties():
    """Every copy gets the same position probabilities, whatever the options: a pure letter prior.

    Golds 0, 0, 1, 2. Under shift s the gold sits at A when (gold + s) mod 4 == 0, so the share of gold at A per
    shift is [2/4, 0/4 (no gold 3), 1/4 (gold 2), 1/4 (gold 1)], and always-A scores exactly that. Each option
    visits every position once, so its averaged probability is (0.4 + 0.3 + 0.2 + 0.1) / 4 = 0.25 for every
    option: an exact tie on every question, counted wrong, so the permutation-averaged accuracy is 0: averaging
    removes the prior and nothing is left to choose with."""
    examples = [MCQExample(f"q{i}", "Q?", tuple("abcd"), gold) for i, gold in enumerate([0, 0, 1, 2])]
    summary, rows = summarize_robustness(examples, _scores([[0.4, 0.3, 0.2, 0.1]] * 16))
    assert summary["consistency"] == 0.0
    gold_at_a = [sum((e.answer + s) % 4 == 0 for e in examples) / 4 for s in range(4)]
    assert gold_at_a == [0.5, 0.0, 0.25, 0.25]
    assert summary["accuracy_per_shift"] == gold_at_a
    assert summary["letter_prior"] == {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}
    assert summary["gold_distribution"] == {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    assert summary["permutation_averaged_accuracy"] == 0.0
    assert all(row["averaged"] is None for row in rows)


def test_averaging_removes_a_letter_prior_on_top_of_a_content_preference():
    """Probabilities proportional to prior[position] x content[option], prior (8, 1, 1) and content favouring
    the gold option 2 as (1, 1, 2): always-A wins at shifts 0 and 2 (A holds option 0 and 1, 8 > 2), the gold
    wins only at shift 1 (A holds option 2). Averaged, option 2 gets the most (it takes A's share once
    with weight 16 of 18): right."""
    example = MCQExample("q", "Q?", ("x", "y", "z"), 2)
    prior, content = [8, 1, 1], [1, 1, 2]
    rows = []
    for shift in range(3):
        weights = [prior[p] * content[o] for p, o in enumerate(cyclic_order(3, shift))]
        rows.append([w / sum(weights) for w in weights])
    summary, out = summarize_robustness([example], _scores(rows))
    assert out[0]["chosen"] == [0, 2, 1]
    assert summary["accuracy_per_shift"] == [0.0, 1.0, 0.0]
    assert summary["permutation_averaged_accuracy"] == 1.0


def test_a_question_tied_under_every_shift_is_not_consistent():
    """It never chose a text, so "the same text every time" cannot be said of it; no letter is picked either."""
    example = MCQExample("q", "Q?", ("x", "y"), 0)
    summary, rows = summarize_robustness([example], _scores([[0.5, 0.5], [0.5, 0.5]]))
    assert rows[0]["chosen"] == [None, None] and summary["consistency"] == 0.0
    assert summary["letter_prior"] == {"A": 0.0, "B": 0.0} and summary["ties"] == 2
    assert summary["accuracy_per_shift"] == [0.0, 0.0] and summary["permutation_averaged_accuracy"] == 0.0


def test_scores_for_the_wrong_number_of_copies_are_refused():
    examples, scores = _hand_case()
    with pytest.raises(ValueError, match="7 shifted copies"):
        summarize_robustness(examples, scores[:6])


# ---------------------------------------------------------------- what may be permuted


def test_harness_pubmedqa_is_refused_and_lettered_pubmedqa_is_not():
    with pytest.raises(ValueError, match="never lists its choices"):
        check_permutations("cyclic", PromptTemplate(format="harness").for_task("pubmedqa"))
    assert check_permutations("cyclic", PromptTemplate(format="plain").for_task("pubmedqa")) is True
    assert check_permutations("cyclic", PromptTemplate(format="harness").for_task("medmcqa")) is True
    assert check_permutations("none", PromptTemplate(format="harness").for_task("pubmedqa")) is False
    with pytest.raises(ValueError, match="not one of none, cyclic"):
        check_permutations("random", PromptTemplate(format="plain"))


def test_harness_medmcqa_prompt_lists_the_shifted_options():
    template = PromptTemplate(format="harness").for_task("medmcqa")
    copy = shifted(MCQExample("q", "Q?", ("a", "b", "c", "d"), 0), 1)
    assert template.prompt(copy).endswith("Choices:\nA. d\nB. a\nC. b\nD. c\nAnswer:")


# ---------------------------------------------------------------- end to end on the tiny model


def test_eval_with_cyclic_permutations_writes_robustness(tiny_qwen3, tmp_path, capsys):
    from medtune.cli import main

    data = write_jsonl(tmp_path / "q.jsonl", [original_row(i, cop=i % 4) for i in range(5)])
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_qwen3), "--data", str(data), "--output", str(out),
                 "--permutations", "cyclic", "--batch-size", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    robustness = metrics["robustness"]
    assert set(robustness) >= {"permutations", "shifts", "n", "accuracy_per_shift", "consistency", "letter_prior",
                               "gold_distribution", "permutation_averaged_accuracy"}
    assert (robustness["permutations"], robustness["shifts"], robustness["n"]) == ("cyclic", 4, 5)
    rows = [json.loads(line) for line in (out / "permutations.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"q{i}" for i in range(5)]
    assert all(len(row["chosen"]) == 4 and len(row["probs"]) == 4 for row in rows)
    # anyone can recompute the figures from the file
    assert robustness["accuracy_per_shift"] == [sum(r["chosen"][s] == r["gold"] for r in rows) / 5 for s in range(4)]
    assert robustness["consistency"] == sum(None not in r["chosen"] and len(set(r["chosen"])) == 1
                                            for r in rows) / 5
    assert "consistency" in capsys.readouterr().out


def test_shift_zero_is_the_plain_evaluation_also_with_mixed_option_counts(tiny_qwen3, tmp_path):
    from medtune.answer import Answerer
    from medtune.evaluate import evaluate_to_dir

    answerer = Answerer.from_model(str(tiny_qwen3))
    examples = [MCQExample(f"q{i}", f"Question {i}" + " more" * i, tuple(f"option {i}{j}" for j in range(4 + i % 2)),
                           i % 4) for i in range(6)]
    metrics = evaluate_to_dir(answerer, examples, tmp_path, batch_size=3, permutations="cyclic")
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "permutations.jsonl").read_text().splitlines()]
    assert [len(row["chosen"]) for row in rows] == [4, 5, 4, 5, 4, 5]
    assert metrics["robustness"]["shifts"] == 5 and metrics["robustness"]["n_per_shift"] == [6, 6, 6, 6, 3]
    assert [None if r["chosen"][0] is None else "ABCDE"[r["chosen"][0]] for r in rows] == \
        [p["pred"] for p in predictions]
    for row, prediction in zip(rows, predictions):
        assert row["probs"][0] == pytest.approx(list(prediction["probs"].values()), abs=1e-5)
    assert metrics["robustness"]["accuracy_per_shift"][0] == metrics["accuracy"]


def test_harness_pubmedqa_with_permutations_is_one_sentence(tiny_qwen3, tmp_path, capsys):
    from medtune.cli import main

    code = main(["eval", "--model", str(tiny_qwen3), "--data", "tests/fixtures/pubmedqa/single/ori_pqal.json",
                 "--task", "pubmedqa", "--prompt-format", "harness", "--output", str(tmp_path / "out"),
                 "--permutations", "cyclic"])
    err = capsys.readouterr().err
    assert code == 2 and "--permutations cyclic has nothing to permute" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_suite_scores_harness_pubmedqa_without_permutations_and_says_why(tiny_qwen3, tmp_path, capsys):
    from medtune.answer import Answerer
    from medtune.suite import TaskRows, score_task

    answerer = Answerer.from_model(str(tiny_qwen3), prompt_format="harness")
    rows = TaskRows([MCQExample("p1", "Does it?", ("yes", "no", "maybe"), 0, context="An abstract.")], {})
    metrics = score_task(answerer, "pubmedqa", rows, tmp_path, 4, False, permutations="cyclic")
    assert "robustness" not in metrics and not (tmp_path / "pubmedqa" / "permutations.jsonl").exists()
    assert "pubmedqa: scored without --permutations: PubMedQA's harness prompt never lists" in capsys.readouterr().out
    medmcqa = TaskRows([MCQExample("m1", "Which?", ("a", "b", "c", "d"), 1)], {})
    assert score_task(answerer, "medmcqa", medmcqa, tmp_path, 4, False, "cyclic")["robustness"]["shifts"] == 4
