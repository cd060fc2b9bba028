"""bench/gpu_check.py, the command for the day a GPU is lent, checked end to end on the CPU with its tiny model.

One run of `python bench/gpu_check.py --device cpu --tiny --out ...` (about a minute on 2 shared cores) is
shared by the tests that read its JSON; the budget and failure guards are tested in-process with stand-in
stages, so they cost no training.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402

TRAINING = ("train_bf16", "train_fp16", "train_qlora")


def _strict(text: str) -> dict:
    """json.loads that refuses NaN and Infinity, as strict parsers do."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu-check") / "check.json"
    command = [sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=BENCH.parent,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    assert done.returncode == 0, done.stderr[-4000:]
    return _strict(out.read_text(encoding="utf-8"))


def test_every_stage_has_figures_or_a_stated_skip_reason(report):
    assert list(report["stages"]) == list(gpu_check.STAGE_NAMES)
    for name, entry in report["stages"].items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
        if entry["status"] == "ok":
            assert isinstance(entry["figures"], dict) and entry["figures"], name
        else:
            assert isinstance(entry["reason"], str) and entry["reason"].strip(), name
        assert entry["seconds"] >= 0


def test_two_process_stage_is_skipped_with_fewer_than_two_gpus(report):
    entry = report["stages"]["two_process"]
    assert entry["status"] == "skipped"
    assert entry["reason"] == "fewer than 2 GPUs (0 visible)"


def test_bf16_training_runs_on_the_cpu(report):
    assert report["stages"]["train_bf16"]["status"] == "ok"


def test_training_stages_that_ran_report_throughput_mfu_and_the_plan(report):
    ran = [name for name in TRAINING if report["stages"][name]["status"] == "ok"]
    assert ran
    for name in ran:
        figures = report["stages"][name]["figures"]
        assert figures["tokens_per_second"] > 0 and figures["timed_tokens"] > 0
        assert 0 < figures["mfu"] < 1
        assert figures["memory"]["plan_total_bytes"] > 0, figures["memory"]
        assert figures["memory"]["measured_max_allocated_bytes"] is None  # no CUDA counter on the CPU
        assert figures["memory"]["measured_reason"]


def test_matmul_peak_is_measured_on_this_cpu(report):
    peaks = report["stages"]["matmul_peak"]["figures"]
    assert peaks["bf16"]["flops_per_second"] > 1e9 and peaks["bf16"]["size"] == 2048


def test_eval_and_serve_report_questions_per_second(report):
    evaluation = report["stages"]["eval"]["figures"]
    assert evaluation["questions"] == 32 and evaluation["questions_per_second"] > 0
    serve = report["stages"]["serve"]["figures"]
    for key in ("score_batch_1", "score_batch_16", "server_batch_1", "server_batch_16"):
        assert serve[f"{key}_questions_per_second"] > 0, key
    assert serve["server_batch_sizes"].get("16", 0) >= 1  # the batch request went through as one forward


def test_cpu_figures_are_labelled_as_not_gpu_figures(report):
    assert report["device"]["used"] == "cpu" and report["device"]["gpus_visible"] == 0
    assert "not GPU figures" in report["figures_are"]
    assert report["versions"]["torch"] and "cuda" in report["versions"] and "hip" in report["versions"]
    assert "--tiny" in report["command"] and "--device cpu" in report["command"]


def _stand_in_stages(monkeypatch, calls: list[str]) -> None:
    def stage(name):
        def run(check):
            calls.append(name)
            if name == "model":
                raise RuntimeError("the model could not be built")
            return {"ran": name}
        return run

    monkeypatch.setattr(gpu_check, "STAGES", {name: stage(name) for name in gpu_check.STAGE_NAMES})


def test_a_failing_stage_records_its_error_and_the_next_stages_run(tmp_path, monkeypatch):
    calls = []
    _stand_in_stages(monkeypatch, calls)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    stages = _strict(out.read_text())["stages"]
    assert stages["model"]["status"] == "failed"
    assert stages["model"]["error"] == "RuntimeError: the model could not be built"
    assert calls == list(gpu_check.STAGE_NAMES)
    assert stages["serve"] == {"status": "ok", "figures": {"ran": "serve"}, "seconds": stages["serve"]["seconds"]}


def test_a_spent_budget_skips_the_remaining_stages_with_that_reason(tmp_path, monkeypatch):
    calls = []
    _stand_in_stages(monkeypatch, calls)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out), "--budget-minutes", "0"]) == 0
    stages = _strict(out.read_text())["stages"]
    assert calls == []
    assert {entry["status"] for entry in stages.values()} == {"skipped"}
    assert stages["eval"]["reason"].startswith("the time budget of 0 min was spent")
