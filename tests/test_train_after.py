"""What `medtune train` does after training: the calibration slice (held out, recorded, used to fit T) and, with
--eval-data, the base-vs-tuned comparison written into the run. Tiny random Qwen3, real Qwen3 tokenizer, CPU."""

import json
import math

import pytest

from conftest import original_row, write_jsonl
from medtune.answer import Answerer
from medtune.cli import main
from medtune.config import TrainConfig
from medtune.data import MCQExample, load_examples
from medtune.data.dev import calibration_slice_size, split_calibration, split_dev
from medtune.data.overlap import trained_on
from medtune.evaluation.after_training import base_of, calibrate_on_slice, slice_source

ROWS = 320  # enough for a calibration slice (a tenth: 32 rows; none under 300)


def _rows(path, n):
    return write_jsonl(path, [original_row(i, cop=i % 4) for i in range(n)])


def _train_cli(model, data, output, flags=(), settings=()):
    """`medtune train` for two steps with `flags`, then key=value `settings` (argparse wants those together)."""
    return main(["train", "--model", str(model), "--data", str(data), "--output", str(output), "--max-steps", "2",
                 "--quiet", "--dtype", "fp32", "--device", "cpu", *flags, "batch_size=4", "grad_accum=1",
                 "eval_every=0", "save_every=0", "learning_rate=1e-2", "lora_dropout=0.0", *settings])


@pytest.fixture(scope="module")
def run(tiny_qwen3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("after")
    data = _rows(folder / "train.jsonl", ROWS)
    held_out = write_jsonl(folder / "heldout.jsonl", [original_row(1000 + i, cop=(i + 1) % 4) for i in range(12)])
    assert _train_cli(tiny_qwen3, data, folder / "run", ["--eval-data", str(held_out)],
                      ["dev_size=16", "calibration_size=40"]) == 0
    return folder / "run", data, held_out


# ------------------------------------------------------------------ the calibration slice


def test_calibration_slice_size_is_capped_at_a_tenth_and_needs_30_rows():
    assert calibration_slice_size(2560, 256) == 256
    assert calibration_slice_size(2000, 256) == 200
    assert calibration_slice_size(355, 256) == 35
    assert calibration_slice_size(299, 256) == 0  # 29 rows would be too few to fit T on
    assert calibration_slice_size(5000, 0) == 0


def test_calibration_slice_avoids_the_dev_slice_and_the_evaluation_rows():
    examples = [MCQExample(f"q{i}", f"Question {i}?", ("a", "b")) for i in range(400)]
    exclude = {e.key() for e in examples[:100]}
    train_rows, dev = split_dev(examples, 40, seed=3, exclude=exclude)
    train_rows, calibration = split_calibration(train_rows, 40, seed=3, total_rows=400, exclude=exclude)
    ids = [{e.id for e in part} for part in (train_rows, dev, calibration)]
    assert len(ids[2]) == 40 and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert not ({e.id for e in examples[:100]} & ids[2])
    assert len(ids[0]) + len(ids[1]) + len(ids[2]) == 400


def test_calibration_slice_is_disjoint_from_trained_and_dev_rows_and_recorded(run):
    run_dir, data, _ = run
    report = json.loads((run_dir / "report.json").read_text())["data"]
    calibration, dev = set(report["calibration_ids"]), set(report["dev_ids"])
    assert report["calibration_rows"] == len(calibration) == 32  # calibration_size 40, capped at a tenth of 320
    assert len(dev) == 16 and not (calibration & dev)
    assert report["train_rows"] + len(dev) + len(calibration) == ROWS
    examples, _ = load_examples(str(data))
    fingerprint = json.loads((run_dir / "training_fingerprint.json").read_text())
    found = trained_on(fingerprint, [e for e in examples if e.id in calibration])
    assert not any(found.values())  # no calibration row was trained on
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["calibration_rows"] == 32


def test_calibration_json_is_written_after_training_with_a_positive_temperature(run):
    run_dir, data, _ = run
    record = json.loads((run_dir / "calibration.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())["data"]
    assert math.isfinite(record["temperature"]) and record["temperature"] > 0
    assert record["n"] == 32 and record["fitted_on"] == "calibration slice"
    assert record["nll_after"] <= record["nll_before"] + 1e-9  # T minimises the NLL; T = 1 is one candidate
    assert record["data"] == {"source": str(data), "sha256": load_examples(str(data))[1].sha256,
                              "ids": report["calibration_ids"]}


def test_a_run_under_300_rows_takes_no_calibration_slice(tiny_qwen3, tmp_path):
    data = _rows(tmp_path / "train.jsonl", 24)
    assert _train_cli(tiny_qwen3, data, tmp_path / "run") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())["data"]
    assert report["calibration_rows"] == 0 and report["train_rows"] == 22  # 2 dev rows (a tenth)
    assert not (tmp_path / "run" / "calibration.json").exists()


def test_only_the_main_process_writes_calibration(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.prompts import template_for

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_qwen3), AutoTokenizer.from_pretrained(tiny_qwen3)
    examples = [MCQExample(f"q{i}", f"Question {i}?", ("a", "b", "c", "d"), i % 4) for i in range(8)]
    source = {"source": "x.jsonl", "sha256": None}
    assert calibrate_on_slice(model, tokenizer, template_for(tokenizer), examples, tmp_path, source, False,
                              print) is None
    assert not (tmp_path / "calibration.json").exists()
    record = calibrate_on_slice(model, tokenizer, template_for(tokenizer), examples, tmp_path, source, True, print)
    assert (tmp_path / "calibration.json").is_file() and record["data"]["ids"] == [e.id for e in examples]


def test_a_slice_from_several_sources_names_them_all_and_has_no_single_hash():
    sources = [{"source": "a.jsonl", "sha256": "aa"}, {"source": "b.jsonl", "sha256": "bb"}]
    assert slice_source(sources, [1, 1]) == {"source": "b.jsonl", "sha256": "bb"}
    assert slice_source(sources, [0, 1, 0]) == {"source": "a.jsonl; b.jsonl", "sha256": None}


# ------------------------------------------------------------------ train --eval-data: base vs tuned


def _predictions(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_eval_data_writes_base_tuned_and_their_comparison_on_the_same_ids(run):
    run_dir, _, held_out = run
    base, tuned = _predictions(run_dir / "eval" / "base"), _predictions(run_dir / "eval" / "tuned")
    ids = [e.id for e in load_examples(str(held_out))[0]]
    assert [p["id"] for p in base] == [p["id"] for p in tuned] == ids
    comparison = json.loads((run_dir / "eval" / "comparison.json").read_text())
    assert comparison["n"] == 12 and "verdict" in comparison and "difference_ci95" in comparison
    right = [sum(p["pred"] == p["gold"] for p in side) / 12 for side in (base, tuned)]
    assert (comparison["accuracy_a"], comparison["accuracy_b"]) == pytest.approx(right)
    metrics = json.loads((run_dir / "eval" / "base" / "metrics.json").read_text())
    assert metrics["model"]["adapter"] is None and metrics["model"]["dtype"] == "fp32"
    tuned = json.loads((run_dir / "eval" / "tuned" / "metrics.json").read_text())
    assert tuned["model"]["adapter"]
    # the run's temperature is the tuned model's: the base side reports raw probabilities only
    assert metrics["calibration"]["temperature"] is None and metrics["calibration"]["temperature_file"] is None
    assert tuned["calibration"]["temperature"] == json.loads((run_dir / "calibration.json").read_text())["temperature"]


def test_the_base_side_scores_exactly_what_the_base_model_scores(run, tiny_qwen3):
    run_dir, _, held_out = run
    examples = load_examples(str(held_out))[0]
    fresh = Answerer.from_model(str(tiny_qwen3), "cpu", "auto").score(examples)  # same chat prompt as the run
    base = _predictions(run_dir / "eval" / "base")
    for row, probs in zip(base, fresh):
        assert row["probs"] == pytest.approx(probs, abs=1e-5)
    tuned = _predictions(run_dir / "eval" / "tuned")
    assert any(b["probs"] != pytest.approx(t["probs"], abs=1e-5) for b, t in zip(base, tuned))  # the adapter acts


def test_the_base_side_drops_the_runs_temperature():
    class Tuned:
        description = {"adapter": "run/adapter", "dtype": "fp32", "temperature": 1.7,
                       "calibration": "run/calibration.json"}
        temperature = 1.7

    base = base_of(Tuned())
    assert base.temperature is None and base.description["adapter"] is None and base.description["dtype"] == "fp32"
    assert "temperature" not in base.description and "calibration" not in base.description


@pytest.mark.parametrize(("flags", "settings"), [(["--no-compare"], []), ([], ["compare_base=false"])])
def test_no_compare_skips_the_comparison(tiny_qwen3, tmp_path, flags, settings):
    data = _rows(tmp_path / "train.jsonl", 24)
    held_out = write_jsonl(tmp_path / "heldout.jsonl", [original_row(1000 + i) for i in range(4)])
    assert _train_cli(tiny_qwen3, data, tmp_path / "run", ["--eval-data", str(held_out), *flags], settings) == 0
    assert (tmp_path / "run" / "adapter").is_dir() and not (tmp_path / "run" / "eval").exists()


def test_compare_base_is_on_by_default_and_off_through_the_api():
    assert TrainConfig().compare_base is True and TrainConfig(compare_base=False).compare_base is False


def test_the_calibration_slice_is_drawn_again_identically_from_the_seed():
    """A resumed run draws the same slice, so it stays out of training after a restart too."""
    examples = [MCQExample(f"q{i}", f"Question {i}?", ("a", "b")) for i in range(400)]
    first = split_calibration(examples, 40, seed=7, total_rows=400)[1]
    assert [e.id for e in first] == [e.id for e in split_calibration(list(examples), 40, seed=7, total_rows=400)[1]]
    assert [e.id for e in first] != [e.id for e in split_calibration(examples, 40, seed=8, total_rows=400)[1]]


def test_the_comparison_loads_the_run_with_the_same_dtype_rule_as_eval(monkeypatch, tmp_path):
    """Moved from test_cli.py (the quickstart's evaluations are now training's): dtype "auto", eval's rule."""
    from medtune.evaluation.after_training import compare_with_base

    asked = []

    class Stop(Exception):
        pass

    def from_run(run_dir, device, dtype, *rest, **options):
        asked.append(dtype)
        raise Stop

    held_out = write_jsonl(tmp_path / "heldout.jsonl", [original_row(i) for i in range(3)])
    monkeypatch.setattr(Answerer, "from_run", from_run)
    with pytest.raises(Stop):
        compare_with_base(TrainConfig(eval_data=str(held_out), dtype="fp32"), tmp_path, "cpu", print)
    assert asked == ["auto"]


def test_under_two_fsdp_processes_both_score_the_slice_and_the_main_one_writes(tiny_qwen3, tmp_path):
    """Under FSDP each process holds a shard of the layers, so both must score the calibration slice; only the main
    process writes calibration.json and runs the comparison."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = _rows(tmp_path / "train.jsonl", ROWS)
    held_out = write_jsonl(tmp_path / "heldout.jsonl", [original_row(1000 + i) for i in range(4)])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "medtune.cli", "train", "--model", str(tiny_qwen3), "--data",
               str(data), "--eval-data", str(held_out), "--output", str(tmp_path / "run"), "--max-steps", "1",
               "--quiet", "--dtype", "fp32", "batch_size=2", "grad_accum=1", "eval_every=0", "save_every=0",
               "dev_size=0", "lora_dropout=0", "fsdp=true"]
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert record["n"] == 32 and record["temperature"] > 0
    assert json.loads((tmp_path / "run" / "eval" / "comparison.json").read_text())["n"] == 4
    assert result.stdout.count("calibration: temperature T") == 1  # one process reports it
