"""`medtune report`: one self-contained HTML page (and PNGs beside it) from runs, evaluations, suites and
comparisons. The evaluations here are synthetic but carry every metrics.json field, in the shapes the evaluation
code writes; the run is a real (tiny) training run."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from conftest import write_jsonl
from medtune.cli import main
from medtune.evaluation.compare import compare
from medtune.report import write_report
from medtune.report.figures import sorted_subjects
from medtune.report.training import guard_events

HOSTILE = "<script>alert('subject')</script>"
SUBJECTS = ["Anatomy", "Pharmacology", "Surgery", HOSTILE]
LETTERS = "ABCD"


def _bins(count: int, n: int, skew: float) -> list[dict]:
    """`count` equal-width bins with plausible confidence and accuracy (accuracy = confidence - skew)."""
    bins = []
    for i in range(count):
        low, high = i / count, (i + 1) / count
        filled = low >= 0.25
        centre = (low + high) / 2
        bins.append({"low": low, "high": high, "count": n // count if filled else 0,
                     "confidence": centre if filled else None,
                     "accuracy": max(0.0, centre - skew) if filled else None})
    return bins


def _calibration_values(n: int, skew: float, ece: float) -> dict:
    return {"ece": ece, "ece_equal_mass": ece * 1.1, "brier": 0.7 - skew, "nll": 1.3 - skew, "n": n,
            "bins": _bins(15, n, skew), "bins_equal_mass": _bins(10, n, skew),
            "per_subject": {s: {"n": n // 4, "ece": ece, "brier": 0.7, "nll": 1.3} for s in SUBJECTS}}


def synthetic_metrics(predictions: list[dict], *, extras: bool = True) -> dict:
    """metrics.json for `predictions`, with the calibration, selective and robustness fields when `extras`."""
    n = len(predictions)
    correct = sum(p["pred"] == p["gold"] for p in predictions)
    confusion = {g: {} for g in LETTERS}
    for p in predictions:
        confusion[p["gold"]][p["pred"]] = confusion[p["gold"]].get(p["pred"], 0) + 1
    per_subject = {}
    for s in SUBJECTS:
        rows = [p for p in predictions if p["subject"] == s]
        per_subject[s] = {"n": len(rows), "accuracy": sum(p["pred"] == p["gold"] for p in rows) / len(rows)}
    gold = {k: sum(p["gold"] == k for p in predictions) for k in LETTERS}
    metrics = {"n": n, "accuracy": correct / n, "ci95": [correct / n - 0.05, correct / n + 0.05], "correct": correct,
               "baselines": {"random": 0.25, "majority": max(gold.values()) / n, "majority_letter": "A"},
               "gold_distribution": gold,
               "predicted_distribution": {k: sum(p["pred"] == k for p in predictions) for k in LETTERS},
               "per_subject": per_subject, "confusion": confusion,
               "warnings": [f"the model answered 'A' for many questions <img src=x onerror=alert(1)> ({HOSTILE})"],
               "mode": "scored", "prompt_format": "chat", "task": "medmcqa", "fewshot": {"k": 0}, "ties": 0,
               "questions_per_second": 100.0,
               "model": {"base_model": "tiny-qwen3", "adapter": None, "dtype": "fp32", "dtype_reason": "auto: fp32",
                         "device": "cpu", "prompt": "chat"},
               "data": {"source": "validation.jsonl", "sha256": "ab" * 32, "split": "validation",
                        "rows_read": n, "rows_loaded": n}}
    if extras:
        metrics["calibration"] = {"raw": _calibration_values(n, 0.15, 0.12),
                                  "calibrated": _calibration_values(n, 0.02, 0.03),
                                  "temperature": 1.7, "temperature_file": "run/calibration.json"}
        metrics["selective"] = {"confidence": "calibrated", "aurc": 0.41,
                                "curve": [{"coverage": c / 10, "risk": 0.3 + c / 40, "accuracy": 0.7 - c / 40,
                                           "threshold": 1 - c / 10} for c in range(1, 11)],
                                "accuracy_at_coverage": {"0.5": 0.575, "0.8": 0.5, "0.9": 0.475}}
        metrics["robustness"] = {"permutations": "cyclic", "shifts": 4, "n": n,
                                 "accuracy_per_shift": [0.45, 0.40, 0.38, 0.41], "consistency": 0.31,
                                 "letter_prior": {k: 0.25 for k in LETTERS},
                                 "gold_distribution": {k: gold[k] / n for k in LETTERS},
                                 "permutation_averaged_accuracy": 0.41}
    return metrics


def make_evaluation(folder: Path, seed: int, skill: float, extras: bool = True) -> Path:
    """An eval folder of 80 questions (ids q0..q79, the same gold in every folder) answered right with
    probability `skill`."""
    gold_rng, rng = random.Random(0), random.Random(seed)
    predictions = []
    for i in range(80):
        gold = gold_rng.choice(LETTERS)
        pred = gold if rng.random() < skill else rng.choice(LETTERS)
        predictions.append({"id": f"q{i}", "gold": gold, "pred": pred, "subject": SUBJECTS[i % 4],
                            "probs": {k: 0.7 if k == pred else 0.1 for k in LETTERS}})
    folder.mkdir(parents=True)
    write_jsonl(folder / "predictions.jsonl", predictions)
    (folder / "metrics.json").write_text(json.dumps(synthetic_metrics(predictions, extras=extras)))
    return folder


def make_suite(folder: Path, seed: int, skill: float) -> Path:
    tasks = {}
    for offset, task in enumerate(["medmcqa", "medqa_4options", "pubmedqa"]):
        metrics = json.loads((make_evaluation(folder / task, seed + offset, skill) / "metrics.json").read_text())
        tasks[task] = {key: metrics[key] for key in ("n", "accuracy", "ci95", "baselines")}
    mean = sum(t["accuracy"] for t in tasks.values()) / len(tasks)
    (folder / "suite.json").write_text(json.dumps({
        "tasks": tasks, "average": {"weighted": mean, "macro": mean},
        "skipped": {"mmlu_anatomy": "the Hub is unreachable; give --source mmlu_anatomy=PATH"}, "suite": "medical",
        "n": 240, "duplicates": {"questions": 0, "extra_scorings": 0, "pairs": {}, "items": {}},
        "sources": {task: f"{task}.jsonl" for task in tasks}}))
    return folder


@pytest.fixture(scope="module")
def run_with_evaluations(tiny_run, tmp_path_factory) -> Path:
    """The tiny run, as `medtune train --eval-data` leaves it: eval/base, eval/tuned, eval/comparison.json,
    and a calibration.json."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("with-evals") / "run"))
    make_evaluation(run / "eval" / "base", seed=1, skill=0.2)
    make_evaluation(run / "eval" / "tuned", seed=2, skill=0.5)
    result = compare(run / "eval" / "base", run / "eval" / "tuned", warn=lambda _: None)
    (run / "eval" / "comparison.json").write_text(json.dumps(result))
    (run / "calibration.json").write_text(json.dumps({
        "temperature": 1.7, "n": 40, "nll_before": 1.31, "nll_after": 1.22, "fitted_on": "calibration slice",
        "data": {"source": "train.jsonl", "sha256": "cd" * 32, "ids": ["q1"]},
        "method": "temperature scaling, NLL minimised (golden-section search on 1/T)"}))
    return run


@pytest.fixture(scope="module")
def inputs(run_with_evaluations, tmp_path_factory) -> list[Path]:
    """One input of each kind: a run, an evaluation, a suite, and a comparison file of two suites."""
    tmp_path = tmp_path_factory.mktemp("inputs")
    evaluation = make_evaluation(tmp_path / "eval", seed=3, skill=0.4)
    suite_a, suite_b = make_suite(tmp_path / "suite-a", 10, 0.2), make_suite(tmp_path / "suite-b", 20, 0.4)
    comparison = tmp_path / "suites.json"
    comparison.write_text(json.dumps(compare(suite_a, suite_b, warn=lambda _: None)))
    return [run_with_evaluations, evaluation, suite_b, comparison]


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory) -> Path:
    """The report of `inputs`, written once for the tests that only read it."""
    return write_report(inputs, tmp_path_factory.mktemp("report") / "out" / "report.html")


def figure_kinds(page: str) -> list[str]:
    return re.findall(r'<figure id="[^"]+" data-figure="([^"]+)"', page)


def test_report_has_every_section_and_figure(report):
    page = report.read_text(encoding="utf-8")
    for anchor in ("s1", "s1-eval1", "s1-eval2", "s1-comparison", "s2", "s3", "s4"):
        assert f'id="{anchor}"' in page, anchor
    kinds = figure_kinds(page)
    evaluation = ["accuracy", "subjects", "confusion", "letters", "reliability", "risk-coverage", "robustness"]
    assert kinds == ["training", *evaluation, *evaluation, "comparison", *evaluation, "suite", "comparison"]
    for heading in ("Non-finite guard", "Calibration (temperature)", "Provenance", "Robustness to option order"):
        assert f">{heading}<" in page
    assert "not measured" not in page  # every field is present in these inputs
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', page)
    assert len(alts) == len(kinds) and all("n=" in alt for alt in alts if "Training" not in alt)


def test_every_figure_is_also_a_png_beside_the_page(report):
    ids = re.findall(r'<figure id="([^"]+)"', report.read_text(encoding="utf-8"))
    pngs = sorted(path.name for path in report.parent.glob("report-*.png"))
    assert pngs == sorted(f"report-{figure_id}.png" for figure_id in ids)
    assert all((report.parent / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for name in pngs)


def test_the_page_refers_to_no_outside_resource(report):
    page = report.read_text(encoding="utf-8")
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert references and all(ref.startswith(("data:image/png;base64,", "#")) for ref in references)
    assert "http" not in "".join(references) and "<script" not in page and "<link" not in page
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page  # the policy that makes the browser refuse anything else


def test_a_missing_field_says_not_measured(tiny_run, tmp_path):
    evaluation = make_evaluation(tmp_path / "old-eval", seed=4, skill=0.3, extras=False)
    page = write_report([evaluation, tiny_run], tmp_path / "report.html").read_text(encoding="utf-8")
    missing = re.findall(r'data-missing="([^"]+)"', page)
    assert missing == ["Calibration", "Risk–coverage", "Robustness", "Temperature"]
    assert figure_kinds(page) == ["accuracy", "subjects", "confusion", "letters", "training"]


def test_text_taken_from_files_is_escaped(report):
    page = report.read_text(encoding="utf-8")
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;subject&#x27;)&lt;/script&gt;" in page  # the subject, in the tables
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the warning


def test_subjects_are_sorted_best_first():
    metrics = {"per_subject": {"b": {"n": 5, "accuracy": 0.2}, "a": {"n": 9, "accuracy": 0.8},
                               "c": {"n": 3, "accuracy": 0.2}}}
    assert [name for name, _ in sorted_subjects(metrics)] == ["a", "b", "c"]


def test_guard_events_come_from_log_gaps_overflows_and_rollbacks():
    log = [{"step": 1}, {"step": 2, "overflow": True}, {"step": 5}, {"step": 6}]
    guard = {"skipped_steps": 2, "rollbacks": [{"at_step": 9, "back_to_step": 6, "from": "fp16", "to": "bf16"}]}
    events = guard_events(log, guard)
    assert [step for step, _ in events] == [2, 3, 4, 9]
    assert "overflow" in events[0][1] and "skipped" in events[1][1] and "bf16" in events[3][1]


def test_cli_report_writes_the_page(run_with_evaluations, tmp_path, capsys):
    output = tmp_path / "r" / "page.html"
    assert main(["report", str(run_with_evaluations), "--output", str(output)]) == 0
    assert output.is_file() and (tmp_path / "r" / "page-s1-training.png").is_file()
    assert str(output) in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "absent", "does not exist"),
    (lambda tmp: tmp, "is not a run (manifest.json), evaluation (metrics.json) or suite"),
    (lambda tmp: write_jsonl(tmp / "x.json", [{"a": 1}]), "is not a comparison"),
])
def test_an_unknown_input_is_one_line_error(tmp_path, capsys, make, message):
    assert main(["report", str(make(tmp_path)), "--output", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune report: error: ") and message in err and "\n" not in err


def test_output_must_be_an_html_file(tmp_path):
    with pytest.raises(ValueError, match="does not end in .html"):
        write_report([tmp_path], tmp_path / "report.png")


def test_a_runs_own_evaluations_given_again_are_shown_once(run_with_evaluations, tmp_path):
    evaluations = run_with_evaluations / "eval"
    page = write_report([run_with_evaluations, evaluations / "base", evaluations / "tuned",
                         evaluations / "comparison.json"], tmp_path / "report.html").read_text(encoding="utf-8")
    assert figure_kinds(page).count("accuracy") == 2 and figure_kinds(page).count("comparison") == 1


def test_null_numbers_in_the_new_fields_render_as_dashes(tmp_path):
    folder = make_evaluation(tmp_path / "eval", seed=5, skill=0.3)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["calibration"]["calibrated"] = None
    metrics["calibration"]["raw"].update(ece=None, brier=None, nll=None)
    metrics["selective"]["aurc"] = None
    metrics["robustness"]["consistency"] = None
    (folder / "metrics.json").write_text(json.dumps(metrics))
    page = write_report([folder], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "AURC —" in page and "consistency —" in page
    assert "reliability" in figure_kinds(page)
