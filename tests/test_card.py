"""`medtune card`: the model card's front matter, its model-index and every figure in it come from the run's
files; it says "not for clinical decisions" and never names a path of the training machine."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from conftest import original_row, write_jsonl
from medtune.cli import main
from medtune.rundir import write_json

HUB_BASE = "example-org/tiny-qwen3"  # the Hub id the tests give a run trained from a local folder


def make_evaluated_run(tiny_run: Path, tiny_qwen3: Path, folder: Path) -> Path:
    """A copy of the tiny run with what a full run holds: eval/base and eval/tuned (12 held-out questions),
    eval/comparison.json, calibration.json, a calibration block in the tuned metrics, a checkpoint, and a
    suite folder beside it."""
    from medtune.answer import Answerer
    from medtune.data import load_examples
    from medtune.evaluate import evaluate_to_dir
    from medtune.evaluation.calibration import write_calibration
    from medtune.evaluation.compare import compare_evaluations
    from medtune.suite import suite_summary

    run = folder / "run"
    shutil.copytree(tiny_run, run)
    checkpoint = run / "checkpoints" / "step-0000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    (checkpoint / "trainer_state.json").write_text("{}")
    held = write_jsonl(folder / "held.jsonl", [original_row(100 + i, cop=(i * 3) % 4) for i in range(12)])
    examples, report = load_examples(str(held))
    torch.manual_seed(0)
    write_calibration(run, torch.randn(8, 4).log_softmax(-1), [0, 1, 2, 3] * 2, source=str(held),
                      sha256=report.to_dict().get("sha256"), ids=[f"c{i}" for i in range(8)],
                      fitted_on="medtune calibrate")
    tuned = evaluate_to_dir(Answerer.from_run(run, "cpu", "fp32"), examples, run / "eval" / "tuned",
                            data=report.to_dict(), overwrite=True)
    evaluate_to_dir(Answerer.from_model(str(tiny_qwen3), "cpu", "fp32"), examples, run / "eval" / "base",
                    data=report.to_dict(), overwrite=True)
    write_json(run / "eval" / "comparison.json", compare_evaluations(run / "eval" / "base", run / "eval" / "tuned"))
    if "calibration" not in tuned:  # the contract's shape, in case this evaluation does not write it yet
        cal = {"ece": 0.1234, "ece_equal_mass": 0.2, "brier": 0.7654, "nll": 1.3, "n": 12, "bins": []}
        tuned["calibration"] = {"raw": cal, "calibrated": {**cal, "ece": 0.0567}, "temperature": 1.75,
                                "temperature_file": str(run / "calibration.json")}
        write_json(run / "eval" / "tuned" / "metrics.json", tuned)
    suite = folder / "suite"
    (suite / "medmcqa").mkdir(parents=True)
    # as a suite reads it: MedMCQA's Hub copy, its validation split (the figures are the tuned eval's)
    task_metrics = {**tuned, "data": {**tuned["data"], "source": "openlifescienceai/medmcqa", "split": "validation"}}
    write_json(suite / "medmcqa" / "metrics.json", task_metrics)
    duplicates = {"questions": 0, "extra_scorings": 0, "pairs": {}, "items": []}
    write_json(suite / "suite.json", suite_summary("medical", {"medmcqa": tuned}, {"pubmedqa": "no local copy"},
                                                   duplicates, {}))
    return run


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, tiny_qwen3, tmp_path_factory) -> Path:
    return make_evaluated_run(tiny_run, tiny_qwen3, tmp_path_factory.mktemp("evaluated"))


@pytest.fixture(scope="module")
def card(evaluated_run, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("card")
    assert main(["card", str(evaluated_run), "--suite", str(evaluated_run.parent / "suite"),
                 "--base-model", HUB_BASE, "--output", str(output)]) == 0
    return output / "README.md"


def source_numbers(run: Path) -> list[float]:
    """Every number in the run's files (numbers inside strings too, e.g. a dtype reason's probe loss)."""
    found: list[float] = []

    def walk(value):
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            found.append(float(value))
        elif isinstance(value, str):
            found.extend(float(token) for token in re.findall(r"-?\d+(?:\.\d+)?", value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in [*run.rglob("*.json"), run.parent / "suite" / "suite.json"]:
        if "checkpoints" not in path.parts:
            walk(json.loads(path.read_text()))
    walk(yaml.safe_load((run / "config.yaml").read_text()))
    return found


def test_card_front_matter_has_the_hub_keys_and_reads_back(card):
    data = ModelCard.load(card).data.to_dict()
    for key in ("base_model", "library_name", "license", "datasets" if data.get("datasets") else "license",
                "language", "tags", "pipeline_tag", "model-index"):
        assert key in data, key
    assert data["base_model"] == HUB_BASE
    assert data["library_name"] == "peft"
    assert "medical" in data["tags"]


def test_model_index_holds_every_evaluation_of_the_model_with_its_metrics(card, evaluated_run):
    results = ModelCard.load(card).data.eval_results
    tuned = json.loads((evaluated_run / "eval" / "tuned" / "metrics.json").read_text())
    suite = json.loads((evaluated_run.parent / "suite" / "suite.json").read_text())
    # eval/tuned and the suite's one task; eval/base is the base model's, reported in the body as a baseline
    assert len(results) == 2
    for result in results:
        assert result.task_type == "multiple-choice" and result.metric_type == "accuracy"
    assert results[0].metric_value == tuned["accuracy"]
    assert results[0].dataset_split == tuned["data"]["split"]
    assert results[0].dataset_type == "held.jsonl"  # a local file, by name: not claimed to be MedMCQA
    assert results[1].dataset_type == "openlifescienceai/medmcqa" and results[1].dataset_split == "validation"
    assert results[1].metric_value == suite["tasks"]["medmcqa"]["accuracy"]


def test_every_figure_in_the_card_is_read_from_the_run(card, evaluated_run):
    text = ModelCard.load(card).text
    sources = source_numbers(evaluated_run)
    decimals = re.findall(r"(?<![\w.])-?\d+\.\d+(?![\w.])", text)
    assert len(decimals) > 30
    for token in decimals:
        places = len(token.split(".")[1])
        assert any(abs(round(value, places) - float(token)) < 1e-9 for value in sources), token
    tuned = json.loads((evaluated_run / "eval" / "tuned" / "metrics.json").read_text())
    comparison = json.loads((evaluated_run / "eval" / "comparison.json").read_text())
    temperature = json.loads((evaluated_run / "calibration.json").read_text())["temperature"]
    low, high = tuned["ci95"]
    assert f"| {tuned['n']} | {tuned['accuracy']:.3f} | {low:.3f}–{high:.3f} |" in text
    assert f"McNemar exact p = {comparison['mcnemar_p']:.3f}" in text
    assert f"T = {temperature:.3f}" in text
    assert f"{tuned['calibration']['raw']['ece']:.3f} | {tuned['calibration']['calibrated']['ece']:.3f}" in text
    sha = json.loads((evaluated_run / "manifest.json").read_text())["data"]["train"]["sha256"]
    assert sha in text


def test_card_has_the_medical_sections_and_no_local_path(card, evaluated_run, tiny_qwen3):
    text = card.read_text()
    assert "not for clinical decisions" in text
    for heading in ("## Intended use", "## Out-of-scope use", "## Training data", "## Training procedure",
                    "## Hardware, precision and time", "## Evaluation", "### Paired comparison", "### Calibration",
                    "### Benchmark suite", "## Limitations and biases", "## How to load it"):
        assert heading in text, heading
    assert "one country's exams" in text and "Small-model accuracy" in text
    assert "--enable-lora" in text and "--max-lora-rank 16" in text and "ollama create" in text
    for local in (str(evaluated_run.parent), str(tiny_qwen3), str(Path.home()), "/tmp/"):
        assert local not in text


def test_card_of_a_local_base_names_no_base_model_and_merged_cards_are_transformers(evaluated_run, tmp_path):
    assert main(["card", str(evaluated_run), "--output", str(tmp_path / "a"), "--merged"]) == 0
    data = ModelCard.load(tmp_path / "a" / "README.md").data
    assert data.base_model is None  # the run's base is a local folder: no Hub id to claim
    assert data.library_name == "transformers" and "peft" not in data.tags
    assert len(data.eval_results) == 1  # default evals: eval/base (baseline) and eval/tuned


def test_medmcqa_from_the_hub_is_credited_with_both_licenses(evaluated_run, tmp_path):
    from medtune.publish.card import card_text

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["data"]["sources"][0]["source"] = "openlifescienceai/medmcqa"
    write_json(run / "manifest.json", manifest)
    text = card_text(run, base_model=HUB_BASE)
    assert "MIT in its GitHub repository" in text and "Apache-2.0 on its Hugging Face card" in text
    assert ModelCard(text).data.datasets == ["openlifescienceai/medmcqa"]
    assert "No evaluation was given" in text
