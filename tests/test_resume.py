"""Kill a training process after a checkpoint, resume it, and end with the uninterrupted run's adapter."""

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import original_row, write_jsonl


def _command(model, data, output, *extra):
    return [sys.executable, "-m", "medtune.cli", "train", "--model", str(model), "--data", str(data), "--output",
            str(output), "--max-steps", "8", "--quiet", "dev_size=4", "batch_size=4", "grad_accum=1",
            "learning_rate=5e-3", "save_every=2", "eval_every=4", *extra]


def test_resumed_run_ends_with_the_same_adapter(tiny_qwen3, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(36)])
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    subprocess.run(_command(tiny_qwen3, data, tmp_path / "full"), check=True, env=environment)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(tiny_qwen3, data, killed), env=environment)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-0000004" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint at step 4"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "adapter").exists()

    subprocess.run(_command(tiny_qwen3, data, killed, "--resume"), check=True, env=environment)
    full = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    steps = [line for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 8  # lines past the checkpoint were dropped and logged again
