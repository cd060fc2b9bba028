"""The quickstart: the shipped MedMCQA slice (its rule, counts, validity, no overlap), the settings it trains with
when the Hub is unreachable, and the words it prints (true when the fine-tune changes nothing)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import medtune.quickstart as quickstart
from conftest import MEDMCQA
from medtune.data import load_examples
from medtune.evaluation.compare import compare_outcomes

ROOT = Path(__file__).resolve().parents[1]


def _shipped():
    train, _ = load_examples(str(quickstart.demo_data_path(quickstart.TRAIN_FILE)))  # refuses any invalid row
    held_out, _ = load_examples(str(quickstart.demo_data_path(quickstart.HELD_OUT_FILE)))
    return train, held_out


def _text(question: str) -> str:
    return re.sub(r"\s+", " ", question.lower()).strip()


# ------------------------------------------------------------------ the shipped slice


def test_the_shipped_slice_has_a_few_hundred_training_rows_with_explanations_and_300_held_out():
    train, held_out = _shipped()
    assert len(train) == 355 and all(e.explanation and e.explanation.strip() for e in train)
    assert len(held_out) == 322 >= 300


def test_the_shipped_training_and_held_out_rows_do_not_overlap_by_id_or_question_text():
    train, held_out = _shipped()
    assert not {e.id for e in train} & {e.id for e in held_out}
    assert not {_text(e.question) for e in train} & {_text(e.question) for e in held_out}
    assert not {e.key() for e in train} & {e.key() for e in held_out}


def test_the_shipped_files_are_small_and_found_as_package_data():
    sizes = [quickstart.demo_data_path(name).stat().st_size for name in (quickstart.TRAIN_FILE,
                                                                           quickstart.HELD_OUT_FILE)]
    assert sum(sizes) < 600_000
    assert 'demo_data/*.jsonl' in (ROOT / "pyproject.toml").read_text()


def test_the_stated_rule_reproduces_the_shipped_slice_from_the_stored_medmcqa_files(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("medmcqa_slice", ROOT / "scripts" / "medmcqa_slice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUTPUT", tmp_path)
    module.main(MEDMCQA)
    for name in (quickstart.TRAIN_FILE, quickstart.HELD_OUT_FILE):
        assert (tmp_path / name).read_bytes() == quickstart.demo_data_path(name).read_bytes(), name


def test_the_held_out_rows_are_every_13th_validation_question_in_hub_order():
    _, held_out = _shipped()
    ids = [json.loads(line)["id"] for line in (MEDMCQA / "dev-ids-mirage.jsonl").read_text().splitlines()]
    assert [e.id for e in held_out] == ids[::13]


def test_the_readme_attributes_medmcqa_with_both_licenses():
    text = quickstart.demo_data_path("README.md").read_text()
    assert "MIT" in text and "Apache-2.0" in text and "Pal" in text


# ------------------------------------------------------------------ what the quickstart runs


class Stop(Exception):
    pass


def test_without_the_hub_the_quickstart_trains_on_the_shipped_slice_and_compares_on_all_held_out(monkeypatch,
                                                                                                    tmp_path):
    seen = []

    def fake_train(config, *args, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(quickstart, "hub_reachable", lambda: False)
    monkeypatch.setattr(quickstart, "train", fake_train)
    with pytest.raises(Stop):
        quickstart.quickstart(tmp_path)
    config = seen[0]
    assert config.data.endswith(quickstart.TRAIN_FILE) and config.eval_data.endswith(quickstart.HELD_OUT_FILE)
    assert config.eval_limit is None and config.compare_base and config.calibration_size > 0
    assert config.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and config.device == "cpu"
    assert config.max_steps == quickstart.QUICKSTART_STEPS


def test_data_without_eval_data_is_refused():
    with pytest.raises(ValueError, match="--data needs --eval-data"):
        quickstart._choose_data("train.jsonl", None)


def test_a_missing_report_module_is_said_in_words(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "medtune.report", None)  # importing it now raises ImportError
    assert quickstart._write_report([tmp_path], tmp_path / "report.html") is None
    assert "HTML report is not available" in capsys.readouterr().out


# ------------------------------------------------------------------ the words it prints


def _comparison(base: list[bool], tuned: list[bool]) -> dict:
    return compare_outcomes(base, tuned, ("eval/base", "eval/tuned")).to_dict()


def test_a_fine_tune_that_changed_nothing_reads_as_no_significant_difference():
    same = [i % 4 == 0 for i in range(322)]
    baselines = {"random": 0.25, "majority": 0.314, "majority_letter": "A"}
    text = quickstart.conclusion(_comparison(same, same), trained_rows=32, baselines=baselines)
    assert "no significant difference" in text and "+0.0 points" in text and "tuned on 32 rows" in text
    assert 'always answering "A" 0.314' in text
    assert "not expected to learn medicine" in text and "qwen3-1.7b-lora.yaml" in text
    assert not re.search(r"improv|better|learned", text)


def test_a_small_change_within_the_interval_is_still_no_significant_difference():
    base = [i % 4 == 0 for i in range(322)]
    tuned = list(base)
    for i in (1, 2, 3, 5):  # four more right, none fewer: McNemar p = 0.125
        tuned[i] = True
    text = quickstart.conclusion(_comparison(base, tuned))
    assert "no significant difference" in text and "+1.2 points" in text


def test_a_significant_gain_is_reported_with_a_caution():
    base = [i % 4 == 0 for i in range(322)]
    tuned = [True if i % 2 else right for i, right in enumerate(base)]
    text = quickstart.conclusion(_comparison(base, tuned))
    assert "significantly higher" in text and "predicted-letter distribution" in text


def test_calibration_text_reads_metrics_defensively():
    assert "no calibration figures" in quickstart.calibration_text(None)
    cal = {"n": 322, "ece": 0.21, "nll": 1.5}
    raw_only = quickstart.calibration_text({"raw": cal, "calibrated": None, "temperature": None})
    assert "0.210" in raw_only and "no temperature" in raw_only
    both = quickstart.calibration_text({"raw": cal, "calibrated": {"n": 322, "ece": 0.05, "nll": 1.3},
                                        "temperature": 2.5, "temperature_file": "run/calibration.json"})
    assert "0.210" in both and "0.050" in both and "T = 2.50" in both
