"""`medtune compare`: McNemar against a binomial computed by hand, the multinomial bootstrap against a plain
index-resampling bootstrap, coverage of a known difference, folders matched by id, suites per task."""

import json
import math

import numpy as np
import pytest

from medtune.cli import main
from medtune.evaluation.compare import (
    bootstrap_difference_ci,
    compare,
    compare_outcomes,
    mcnemar_exact_p,
)


def write_eval(folder, rows: list[tuple[str, str, str | None]], subject: str | None = None):
    """An eval folder holding predictions.jsonl rows (id, gold, pred)."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": i, "gold": g, "pred": p, "probs": {}, **({"subject": subject} if subject else {})})
             for i, g, p in rows]
    (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_mcnemar_equals_the_two_sided_binomial_by_hand():
    # 12 discordant questions, 2 favour A: 2 x P(X <= 2), X ~ Bin(12, 1/2) = 2 x (1 + 12 + 66) / 4096
    assert mcnemar_exact_p(2, 10) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact_p(10, 2) == mcnemar_exact_p(2, 10)
    assert mcnemar_exact_p(5, 5) == 1.0  # capped: 2 x P(X <= 5) > 1
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 7) == pytest.approx(2 / 2**7)


def test_multinomial_bootstrap_matches_resampling_question_indices():
    rng = np.random.default_rng(1)
    right_a = rng.random(300) < 0.55
    right_b = np.where(rng.random(300) < 0.8, right_a, rng.random(300) < 0.7)  # correlated, as paired models are
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    low, high = bootstrap_difference_ci([(a_only, b_only, 300)])
    indices = np.random.default_rng(2).integers(0, 300, size=(10_000, 300))
    differences = right_b[indices].mean(1) - right_a[indices].mean(1)
    by_index = np.quantile(differences, [0.025, 0.975])
    assert low == pytest.approx(by_index[0], abs=0.006) and high == pytest.approx(by_index[1], abs=0.006)


def test_bootstrap_interval_covers_a_known_difference():
    # B is right on 60 more of 1,000 questions than A: the true paired difference is 0.06
    right_a = [i < 600 for i in range(1000)]
    right_b = [i < 600 or 600 <= i < 660 for i in range(1000)]
    result = compare_outcomes(right_a, right_b)
    assert result.difference == pytest.approx(0.06)
    low, high = result.difference_ci95
    assert low < 0.06 < high and low > 0  # 60 discordant, all for B: clearly significant
    assert result.mcnemar_p == pytest.approx(2 / 2**60) and result.b_only_correct == 60
    assert result.verdict.startswith("B is better than A by 6.0 points")


def test_no_significant_difference_is_said_in_words():
    right_a = [i % 2 == 0 for i in range(100)]
    right_b = [i % 2 == 0 if i >= 10 else i % 2 == 1 for i in range(100)]  # 5 each way
    result = compare_outcomes(right_a, right_b)
    assert result.difference == 0 and result.mcnemar_p == 1.0
    assert result.verdict.startswith("no significant difference between A and B")


def test_folders_are_matched_by_id_and_a_partial_overlap_is_warned(tmp_path, capsys):
    a = write_eval(tmp_path / "a", [("q1", "A", "A"), ("q2", "B", "C"), ("q3", "C", "C"), ("q4", "D", None)])
    b = write_eval(tmp_path / "b", [("q3", "C", "A"), ("q2", "B", "B"), ("q1", "A", "A"), ("q9", "A", "A")])
    warnings = []
    result = compare(a, b, warn=warnings.append)
    assert result["n"] == 3 and result["accuracy_a"] == pytest.approx(2 / 3)
    assert result["accuracy_b"] == pytest.approx(2 / 3)
    assert (result["a_only_correct"], result["b_only_correct"]) == (1, 1)
    assert warnings == [f"warning: comparing the 3 questions both scored; 1 only in {a}, 1 only in {b}"]


def test_folders_without_a_shared_question_are_refused(tmp_path):
    a = write_eval(tmp_path / "a", [("q1", "A", "A")])
    b = write_eval(tmp_path / "b", [("x1", "A", "A")])
    with pytest.raises(ValueError, match="share no question id"):
        compare(a, b)


def test_a_question_with_two_golds_is_refused(tmp_path):
    a = write_eval(tmp_path / "a", [("q1", "A", "A")])
    b = write_eval(tmp_path / "b", [("q1", "B", "A")])
    with pytest.raises(ValueError, match="'q1' has gold 'A' in .* and 'B' in .*different questions"):
        compare(a, b)


def test_per_subject_differences(tmp_path):
    a = write_eval(tmp_path / "a", [("q1", "A", "B"), ("q2", "A", "A")], subject="Anatomy")
    b = write_eval(tmp_path / "b", [("q1", "A", "A"), ("q2", "A", "A")], subject="Anatomy")
    assert compare(a, b)["per_subject"] == {"Anatomy": {"n": 2, "accuracy_a": 0.5, "accuracy_b": 1.0,
                                                        "difference": 0.5}}


def write_suite(folder, tasks: dict[str, list[tuple[str, str, str | None]]]):
    for task, rows in tasks.items():
        write_eval(folder / task, rows)
    (folder / "suite.json").write_text(json.dumps({"tasks": {task: {"n": len(rows)} for task, rows in tasks.items()}}))
    return folder


def test_suites_are_compared_per_task_and_on_both_averages(tmp_path):
    a = write_suite(tmp_path / "a", {"medmcqa": [(f"m{i}", "A", "A" if i < 2 else "B") for i in range(4)],
                                     "pubmedqa": [("p1", "A", "A"), ("p2", "B", "A")]})
    b = write_suite(tmp_path / "b", {"medmcqa": [(f"m{i}", "A", "A") for i in range(4)],
                                     "pubmedqa": [("p1", "A", "A"), ("p2", "B", "A")],
                                     "mmlu_anatomy": [("x", "A", "A")]})
    result = compare(a, b)
    assert set(result["tasks"]) == {"medmcqa", "pubmedqa"} and result["only_in_one"] == ["mmlu_anatomy"]
    assert result["tasks"]["medmcqa"]["difference"] == pytest.approx(0.5)
    assert result["tasks"]["pubmedqa"]["difference"] == 0
    weighted = result["average"]["weighted"]  # 6 pooled questions: A 3 right, B 5 right
    assert weighted["n"] == 6 and weighted["difference"] == pytest.approx(2 / 6)
    assert result["average"]["macro"]["difference"] == pytest.approx((0.5 + 0) / 2)


def test_cli_prints_the_verdict_and_json(tmp_path, capsys):
    a = write_eval(tmp_path / "a", [(f"q{i}", "A", "A" if i < 50 else "B") for i in range(100)])
    b = write_eval(tmp_path / "b", [(f"q{i}", "A", "A" if i < 70 else "B") for i in range(100)])
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"{b} is better than {a} by 20.0 points" in out
    assert main(["compare", str(a), str(b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mcnemar_p"] == pytest.approx(2 / 2**20) and result["b_only_correct"] == 20
    assert math.isclose(result["difference"], 0.2)


def test_cli_names_a_folder_that_is_not_an_evaluation(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    a = write_eval(tmp_path / "a", [("q1", "A", "A")])
    assert main(["compare", str(a), str(tmp_path / "empty")]) == 2
    assert "predictions.jsonl is missing" in capsys.readouterr().err
