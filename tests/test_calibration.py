"""Calibration statistics against hand calculations, temperature scaling recovering a known T, and calibrated
probabilities through evaluate, the Answerer and `medtune calibrate`."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import original_row, write_jsonl
from medtune.cli import main
from medtune.data import MCQExample
from medtune.evaluate import choice_logprobs, evaluate, predicted_options
from medtune.evaluation.calibration import (
    CALIBRATION_FILE,
    calibration_metrics,
    calibration_summary,
    equal_mass_bins,
    fit_temperature,
    scale_logprobs,
    temperature_note,
    top_confidence,
)
from medtune.modeling import load_base
from medtune.prompts import template_for

# Five hand-made questions, four options each: (probabilities, gold, subject). The argmax is option 0 everywhere.
HAND = [([0.90, 0.05, 0.03, 0.02], 0, "A"),  # confidence 0.90, right; bin (14/15=0.8667, 0.9333] = index 13
        ([0.85, 0.10, 0.03, 0.02], 1, "A"),  # 0.85, wrong;  bin (0.8, 0.8667] = 12
        ([0.62, 0.18, 0.10, 0.10], 0, "B"),  # 0.62, right;  bin (0.6, 0.6667] = 9
        ([0.64, 0.16, 0.10, 0.10], 2, "B"),  # 0.64, wrong;  bin 9
        ([0.45, 0.30, 0.15, 0.10], 0, "B")]  # 0.45, right;  bin (0.4, 0.4667] = 6


def _hand():
    logprobs = torch.tensor([p for p, _, _ in HAND], dtype=torch.float64).log()
    answers, subjects = [g for _, g, _ in HAND], [s for _, _, s in HAND]
    return logprobs, answers, [0] * len(HAND), subjects


def test_ece_with_fifteen_equal_width_bins_matches_the_hand_calculation():
    summary = calibration_summary(*_hand())
    # bin 13: |1 - 0.90| = 0.10; bin 12: |0 - 0.85| = 0.85; bin 9: mean conf 0.63, accuracy 0.5 -> 0.13 (2 questions);
    # bin 6: |1 - 0.45| = 0.55.  ECE = (0.10 + 0.85 + 2 * 0.13 + 0.55) / 5 = 1.76 / 5
    assert summary["ece"] == pytest.approx(0.352, abs=1e-9)
    bins = summary["bins"]
    assert len(bins) == 15 and [b["count"] for b in bins] == [0] * 6 + [1, 0, 0, 2, 0, 0, 1, 1, 0]
    assert bins[9]["low"] == pytest.approx(0.6) and bins[9]["high"] == pytest.approx(2 / 3)
    assert bins[9]["confidence"] == pytest.approx(0.63) and bins[9]["accuracy"] == 0.5
    assert bins[0] == {"low": 0.0, "high": pytest.approx(1 / 15), "count": 0, "confidence": None, "accuracy": None}


def test_a_confidence_on_a_bin_edge_belongs_to_the_bin_it_closes():
    logprobs = torch.tensor([[0.6, 0.4]], dtype=torch.float64).log()  # 0.6 = 9/15 closes (8/15, 9/15]
    bins = calibration_summary(logprobs, [0], [0])["bins"]
    assert bins[8]["count"] == 1 and bins[9]["count"] == 0


def test_equal_mass_ece_matches_the_hand_calculation():
    logprobs, answers, predicted, subjects = _hand()
    # 10 bins over 5 questions: one question a bin, the last 5 empty: ECE = mean |correct - confidence|
    summary = calibration_summary(logprobs, answers, predicted, subjects)
    assert summary["ece_equal_mass"] == pytest.approx((0.10 + 0.85 + 0.38 + 0.64 + 0.55) / 5, abs=1e-9)
    assert [b["count"] for b in summary["bins_equal_mass"]] == [1] * 5 + [0] * 5
    assert summary["bins_equal_mass"][9] == {"low": None, "high": None, "count": 0, "confidence": None,
                                             "accuracy": None}
    # 2 bins over 5: sizes 3 then 2, by confidence ascending: {0.45 R, 0.62 R, 0.64 W} and {0.85 W, 0.90 R}
    # |2/3 - 1.71/3| * 3/5 + |1/2 - 0.875| * 2/5 = 0.058 + 0.15
    confidence = top_confidence(logprobs)
    correct = torch.tensor([1.0, 0, 1, 0, 1], dtype=torch.float64).numpy()
    bins = equal_mass_bins(confidence, correct, k=2)
    assert [b["count"] for b in bins] == [3, 2]
    assert (bins[0]["low"], bins[0]["high"]) == pytest.approx((0.45, 0.64))
    ece = sum(b["count"] / 5 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(0.208, abs=1e-9)


def test_brier_and_nll_match_the_hand_calculation():
    summary = calibration_summary(*_hand())
    # sum over options of (p - onehot)^2 per question: 0.0138, 1.5338, 0.1968, 1.2552, 0.4250
    assert summary["brier"] == pytest.approx(3.4246 / 5, abs=1e-9)
    assert summary["nll"] == pytest.approx(-(math.log(0.9) + 2 * math.log(0.1) + math.log(0.62) + math.log(0.45)) / 5)
    assert summary["n"] == 5


def test_per_subject_figures_are_computed_on_each_subjects_questions():
    per_subject = calibration_summary(*_hand())["per_subject"]
    assert per_subject["A"] == {"n": 2, "ece": pytest.approx((0.10 + 0.85) / 2), "brier": pytest.approx(1.5476 / 2),
                                "nll": pytest.approx(-(math.log(0.9) + math.log(0.1)) / 2)}
    assert per_subject["B"]["n"] == 3 and per_subject["B"]["ece"] == pytest.approx((2 * 0.13 + 0.55) / 3)


def test_a_tied_question_counts_as_wrong_in_the_bins():
    logprobs = torch.tensor([[0.4, 0.4, 0.1, 0.1]], dtype=torch.float64).log()
    summary = calibration_summary(logprobs, [0], [None])
    assert summary["ece"] == pytest.approx(0.4) and summary["bins"][5]["accuracy"] == 0.0


def test_options_past_a_questions_count_add_nothing_to_brier():
    logprobs = torch.tensor([[math.log(0.7), math.log(0.3), -math.inf, -math.inf, -math.inf]])
    assert calibration_summary(logprobs, [0], [0])["brier"] == pytest.approx(0.09 + 0.09)


def test_temperature_scaling_recovers_a_known_temperature():
    """Logits z; the true model says p = softmax(z / 2.5) and the gold is drawn from it; the scorer reports
    softmax(z), so the fitted T must be 2.5."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 4, generator=generator, dtype=torch.float64) * 4
    answers = torch.multinomial(torch.softmax(logits / 2.5, dim=-1), 1, generator=generator).squeeze(1).tolist()
    assert fit_temperature(torch.log_softmax(logits, dim=-1), answers) == pytest.approx(2.5, abs=0.05)


def test_temperature_scaling_never_changes_the_chosen_option():
    generator = torch.Generator().manual_seed(1)
    logprobs = torch.log_softmax(torch.randn(500, 5, generator=generator), dim=-1)
    logprobs[:50, 3:] = -math.inf  # three-option questions
    for temperature in (0.1, 0.7, 1.0, 2.5, 40.0):
        assert torch.equal(scale_logprobs(logprobs, temperature).argmax(-1), logprobs.argmax(-1))


def test_calibration_metrics_report_raw_and_calibrated():
    logprobs, answers, predicted, subjects = _hand()
    plain = calibration_metrics(logprobs, answers, predicted, subjects)
    assert plain["calibrated"] is None and plain["temperature"] is None
    scaled = calibration_metrics(logprobs, answers, predicted, subjects, temperature=2.0, temperature_file="c.json")
    expected = calibration_summary(scale_logprobs(logprobs, 2.0), answers, predicted, subjects)
    assert scaled["calibrated"] == expected and scaled["raw"] == plain["raw"]
    assert (scaled["temperature"], scaled["temperature_file"]) == (2.0, "c.json")


# ------------------------------------------------------------------ through evaluate, the Answerer and the CLI


@pytest.fixture(scope="module")
def tiny(tiny_qwen3):
    model, tokenizer, _ = load_base(str(tiny_qwen3))
    return model, tokenizer, template_for(tokenizer)


def _questions(n):
    return [MCQExample(f"e{i}", f"Which {i}?", tuple(f"opt {i} {j}" for j in range(2 + i % 3)), i % 2,
                       subject="Anatomy" if i % 2 else "Pathology") for i in range(n)]


def test_evaluate_with_a_temperature_adds_calibrated_probabilities_and_keeps_the_letter(tiny):
    model, tokenizer, template = tiny
    examples = _questions(6)
    raw_metrics, raw = evaluate(model, tokenizer, template, examples, progress=False)
    metrics, predictions = evaluate(model, tokenizer, template, examples, progress=False, temperature=0.5)
    assert "probs_calibrated" not in raw[0] and raw_metrics["calibration"]["calibrated"] is None
    assert raw_metrics["selective"]["confidence"] == "raw"
    logprobs = choice_logprobs(model, tokenizer, template, examples)
    scaled = scale_logprobs(logprobs, 0.5)
    for i, (row, plain) in enumerate(zip(predictions, raw)):
        assert row["pred"] == plain["pred"] and row["probs"] == plain["probs"]
        assert row["probs_calibrated"] == {k: round(math.exp(scaled[i, j].item()), 6)
                                           for j, k in enumerate(examples[i].letters)}
    calibration = metrics["calibration"]
    assert calibration["temperature"] == 0.5 and calibration["raw"] == raw_metrics["calibration"]["raw"]
    assert calibration["calibrated"]["nll"] == pytest.approx(
        -sum(scaled[i, e.answer].item() for i, e in enumerate(examples)) / 6, abs=1e-5)
    assert set(calibration["raw"]["per_subject"]) == {"Anatomy", "Pathology"}
    assert metrics["selective"]["confidence"] == "calibrated"
    assert set(metrics["selective"]["accuracy_at_coverage"]) == {"0.5", "0.8", "0.9"}
    assert predicted_options(logprobs, examples) == predicted_options(scaled, examples)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_answerer_from_a_run_with_calibration_returns_calibrated_probabilities(run_copy):
    from medtune.answer import Answerer

    (run_copy / CALIBRATION_FILE).write_text(json.dumps({"temperature": 3.0}), encoding="utf-8")
    answerer = Answerer.from_run(run_copy, "cpu")
    assert answerer.temperature == 3.0 and answerer.calibrated
    assert answerer.description["temperature"] == 3.0
    assert answerer.description["calibration"] == str(run_copy / CALIBRATION_FILE)
    examples = _questions(3)
    logprobs = choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, examples)
    scaled = scale_logprobs(logprobs.double(), 3.0)
    for i, (example, probs) in enumerate(zip(examples, answerer.score(examples))):
        assert list(probs.values()) == pytest.approx([math.exp(scaled[i, j]) for j in range(len(example.options))])
        assert max(probs, key=probs.get) == example.letters[int(logprobs[i].argmax())]
    raw = Answerer.from_run(run_copy, "cpu", use_calibration=False)
    assert raw.temperature is None and "temperature" not in raw.description


def test_answerer_from_a_run_without_calibration_is_raw(tiny_run):
    from medtune.answer import Answerer

    assert Answerer.from_run(tiny_run, "cpu").temperature is None


def _calibration_rows(tmp_path) -> Path:
    return write_jsonl(tmp_path / "calib.jsonl", [original_row(100 + i, cop=i % 4) for i in range(12)])


def test_calibrate_writes_the_runs_temperature(run_copy, tmp_path, capsys):
    data = _calibration_rows(tmp_path)
    assert main(["calibrate", str(run_copy), "--data", str(data), "--limit", "10"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run_copy / CALIBRATION_FILE).read_text(encoding="utf-8"))
    assert record["fitted_on"] == "medtune calibrate" and record["n"] == 10 and record["temperature"] > 0
    assert record["data"]["ids"] == [f"q{100 + i}" for i in range(10)] and len(record["data"]["sha256"]) == 64
    assert record["nll_after"] <= record["nll_before"]
    assert f"temperature T = {record['temperature']:.4f}" in out and "ECE" in out and str(run_copy) in out
    assert main(["calibrate", str(run_copy), "--data", str(data)]) == 2  # already there: --overwrite to refit
    assert "--overwrite" in capsys.readouterr().err
    assert main(["calibrate", str(run_copy), "--data", str(data), "--overwrite"]) == 0


def _one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "warning" not in line]
    assert len(err) == 1 and err[0].startswith("medtune calibrate: error: "), err
    return err[0]


def test_calibrate_refuses_questions_the_run_was_evaluated_on(run_copy, tmp_path, capsys):
    data = _calibration_rows(tmp_path)
    scored = run_copy / "eval" / "tuned"
    scored.mkdir(parents=True)
    write_jsonl(scored / "predictions.jsonl", [{"id": "q103", "gold": "A", "pred": "A", "probs": {}}])
    assert main(["calibrate", str(run_copy), "--data", str(data)]) == 2
    error = _one_line_error(capsys)
    assert "1 of the 12 calibration questions (q103)" in error and "eval/tuned/predictions.jsonl" in error
    assert not (run_copy / CALIBRATION_FILE).exists()


def test_calibrate_refuses_the_runs_eval_data_matched_by_question_and_options(run_copy, tmp_path, capsys):
    data = _calibration_rows(tmp_path)
    held_out = write_jsonl(tmp_path / "held_out.jsonl", [original_row(105, id="other-id")])  # same question
    config = run_copy / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("eval_data: null", f"eval_data: {held_out}"),
                      encoding="utf-8")
    assert f"eval_data: {held_out}" in config.read_text(encoding="utf-8")
    assert main(["calibrate", str(run_copy), "--data", str(data)]) == 2
    assert "(q105)" in _one_line_error(capsys) and not (run_copy / CALIBRATION_FILE).exists()


def test_calibrate_warns_about_rows_the_run_trained_on(run_copy, tmp_path, capsys):
    data = write_jsonl(tmp_path / "seen.jsonl", [original_row(i, cop=i % 4) for i in range(3)])  # tiny_run's rows
    assert main(["calibrate", str(run_copy), "--data", str(data)]) == 0
    assert "3 of 3 calibration questions overlap the rows this run trained on" in capsys.readouterr().err


def test_a_temperature_at_the_end_of_the_search_range_is_explained():
    # answers independent of the scores: no T does better than uniform, so the search runs to its upper end
    logprobs = torch.log_softmax(torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 4, dtype=torch.float64), dim=-1)
    temperature = fit_temperature(logprobs, [0, 1, 2, 3])
    assert "carry almost no information" in temperature_note(temperature)
    assert temperature_note(fit_temperature(logprobs, [0, 0, 0, 0])) is None  # always right: T small, no note
    assert temperature_note(2.5) is None
