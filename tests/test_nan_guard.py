"""Non-finite values never reach the weights: skipped, counted, and after a few in a row rolled back to the
last good checkpoint and continued in a safer dtype."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import original_row, write_jsonl
from medtune.config import TrainConfig
from medtune.train import AnswerLoss, train


def _inject(monkeypatch, when):
    """Make AnswerLoss return inf on the calls for which when(call_number) is true."""
    real_forward, calls = AnswerLoss.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        loss_sum, n = real_forward(self, *args, **kwargs)
        return (loss_sum * math.inf if when(calls["n"]) else loss_sum), n

    monkeypatch.setattr(AnswerLoss, "forward", forward)


def _config(model, data, output, **changes):
    values = dict(model=str(model), data=str(data), output=str(output), max_steps=6, batch_size=4, grad_accum=1,
                  dev_size=0, eval_every=0, save_every=2, learning_rate=5e-3, device="cpu")
    return TrainConfig(**(values | changes))


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(24)])


def test_single_nonfinite_step_is_skipped_and_counted(tiny_qwen3, data, tmp_path, monkeypatch):
    _inject(monkeypatch, lambda call: call == 3)
    run = train(_config(tiny_qwen3, data, tmp_path / "run"), progress=False)
    guard = json.loads(run.manifest.read_text())["training"]["nonfinite_guard"]
    assert guard == {"skipped_steps": 1, "rollbacks": []}
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert steps == [1, 2, 4, 5, 6]  # step 3 made no update and logged nothing
    assert all(torch.isfinite(t).all() for t in load_file(run.adapter / "adapter_model.safetensors").values())


def test_repeated_nonfinite_steps_roll_back_and_step_down_to_fp32(tiny_qwen3, data, tmp_path, monkeypatch):
    # Non-finite only while computing in bf16: after the fall-back to fp32 training is healthy again.
    _inject(monkeypatch, lambda call: torch.is_autocast_enabled("cpu"))
    config = _config(tiny_qwen3, data, tmp_path / "run", dtype="bf16", nonfinite_patience=3)
    run = train(config, progress=False)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["training"]["nonfinite_guard"] == {
        "skipped_steps": 3, "rollbacks": [{"at_step": 3, "back_to_step": 0, "from": "bf16", "to": "fp32"}]}
    assert manifest["dtype"] == "bf16" and manifest["final_dtype"] == "fp32"
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and {r["dtype"] for r in records} == {"fp32"}


def test_base_weights_follow_the_compute_dtype_and_adapters_stay_fp32(tiny_qwen3, data, tmp_path, monkeypatch):
    # bf16 on the CPU: the frozen base is held in bf16 (no fp32 master copy); after the fall-back it is fp32.
    seen = []
    real_forward = AnswerLoss.forward

    def forward(self, *args, **kwargs):
        dtypes = {("lora" if "lora_" in name else "base"): p.dtype for name, p in self.model.named_parameters()
                  if p.is_floating_point()}
        seen.append((torch.is_autocast_enabled("cpu"), dtypes["base"], dtypes["lora"]))
        loss_sum, n = real_forward(self, *args, **kwargs)
        return (loss_sum * math.inf if torch.is_autocast_enabled("cpu") else loss_sum), n

    monkeypatch.setattr(AnswerLoss, "forward", forward)
    train(_config(tiny_qwen3, data, tmp_path / "run", dtype="bf16", nonfinite_patience=2), progress=False)
    assert seen[0] == (True, torch.bfloat16, torch.float32)
    assert seen[-1] == (False, torch.float32, torch.float32)


def test_rollback_returns_to_the_last_checkpoint(tiny_qwen3, data, tmp_path, monkeypatch):
    bad_calls = {5, 6, 7}  # steps 5-7 (one micro-batch per step; the first 4 steps are fine)
    _inject(monkeypatch, lambda call: call in bad_calls)
    run = train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=8, dtype="bf16"), progress=False)
    rollbacks = json.loads(run.manifest.read_text())["training"]["nonfinite_guard"]["rollbacks"]
    assert rollbacks == [{"at_step": 7, "back_to_step": 4, "from": "bf16", "to": "fp32"}]


def test_nonfinite_values_in_fp32_stop_with_a_sentence(tiny_qwen3, data, tmp_path, monkeypatch):
    _inject(monkeypatch, lambda call: True)
    with pytest.raises(FloatingPointError, match="already in fp32: lower the learning rate"):
        train(_config(tiny_qwen3, data, tmp_path / "run", dtype="fp32"), progress=False)
