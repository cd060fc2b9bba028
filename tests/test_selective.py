"""Selective prediction against hand calculations: risk-coverage, AURC and accuracy at coverage."""

import numpy as np
import pytest

from medtune.evaluation.selective import accuracy_at_coverage, aurc, risks, selective_metrics


def test_aurc_of_a_perfectly_ranked_model_is_the_hand_value():
    # 3 right then 1 wrong, most confident first: risks 0, 0, 0, 1/4 -> AURC = (1/4) / 4
    confidence, correct = [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 0]
    assert risks(confidence, correct).tolist() == [0, 0, 0, 0.25]
    assert aurc(confidence, correct) == pytest.approx(0.0625)


def test_aurc_of_a_small_known_case():
    # most confident first: wrong, right, right, wrong -> risks 1, 1/2, 1/3, 2/4
    confidence, correct = [0.6, 0.8, 0.7, 0.9], [0, 1, 1, 0]  # given in another order: sorting is the function's
    assert risks(confidence, correct) == pytest.approx([1, 1 / 2, 1 / 3, 1 / 2])
    assert aurc(confidence, correct) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 2) / 4)


def test_equal_confidences_take_their_expected_risk_in_any_order():
    # a group of two at 0.9 (one right, one wrong) then a right one: risk(1) = 0.5 (either could be first),
    # risk(2) = 1/2, risk(3) = 1/3; the same whichever of the tied pair is listed first
    assert risks([0.9, 0.9, 0.5], [1, 0, 1]) == pytest.approx([0.5, 0.5, 1 / 3])
    assert risks([0.9, 0.9, 0.5], [0, 1, 1]) == pytest.approx([0.5, 0.5, 1 / 3])
    assert aurc([0.9, 0.9, 0.5], [0, 1, 1]) == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)


def test_a_constant_confidence_gives_the_error_rate_everywhere():
    assert aurc([0.5] * 4, [1, 0, 0, 1]) == pytest.approx(0.5)


def test_accuracy_at_coverage_keeps_the_most_confident_share():
    confidence = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    correct = [1, 1, 1, 1, 0, 1, 1, 1, 0, 0]
    assert accuracy_at_coverage(confidence, correct, 0.5) == pytest.approx(4 / 5)
    assert accuracy_at_coverage(confidence, correct, 0.8) == pytest.approx(7 / 8)
    assert accuracy_at_coverage(confidence, correct, 0.9) == pytest.approx(7 / 9)
    metrics = selective_metrics(confidence, correct, "raw")
    assert metrics["accuracy_at_coverage"] == pytest.approx({"0.5": 0.8, "0.8": 0.875, "0.9": 7 / 9})
    assert metrics["curve"][4] == {"coverage": 0.5, "risk": pytest.approx(0.2), "accuracy": pytest.approx(0.8),
                                   "threshold": 0.75}


def test_the_stored_curve_is_compact_and_aurc_uses_every_point():
    generator = np.random.default_rng(0)
    confidence = generator.random(1003)
    correct = generator.random(1003) < confidence  # confident answers are right more often
    metrics = selective_metrics(confidence, correct, "calibrated")
    assert len(metrics["curve"]) == 100 and metrics["curve"][-1]["coverage"] == 1.0
    assert metrics["curve"][0]["coverage"] == pytest.approx(11 / 1003)  # k = ceil(1003 / 100)
    assert metrics["aurc"] == pytest.approx(risks(confidence, correct).mean())
    assert metrics["curve"][-1]["risk"] == pytest.approx(1 - correct.mean())
    assert metrics["confidence"] == "calibrated"


def test_no_questions_give_no_figures():
    metrics = selective_metrics([], [], "raw")
    assert metrics["aurc"] is None and metrics["curve"] == []
    assert metrics["accuracy_at_coverage"] == {"0.5": None, "0.8": None, "0.9": None}
