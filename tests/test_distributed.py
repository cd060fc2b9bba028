"""Data parallelism on the CPU: `medtune train` under torchrun with two gloo processes.

The trainer normalizes the loss by the whole global batch's supervised tokens and shards each step's rows
as rows[rank::world], so two processes of batch 2 take the same optimizer steps as one process of batch 4.
LoRA dropout is off: each process would draw its own masks.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import original_row, write_jsonl

SETTINGS = ["--quiet", "--dtype", "fp32", "dev_size=4", "grad_accum=1", "lora_dropout=0",
            "learning_rate=5e-3", "eval_every=0", "save_every=0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train(command: list[str], model: Path, data: Path, output: Path, batch_size: int, extra: list[str] = (),
           timeout: int = 600, steps: int = 4) -> None:
    arguments = [*command, "-m", "medtune.cli", "train", "--model", str(model), "--data", str(data),
                 "--output", str(output), "--max-steps", str(steps), *SETTINGS, f"batch_size={batch_size}", *extra]
    # One thread per process: two processes share this machine's cores, and oversubscription only slows.
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    result = subprocess.run(arguments, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tiny_qwen3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    data = write_jsonl(folder / "train.jsonl", [original_row(i, cop=i % 4) for i in range(20)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    _train(torchrun, tiny_qwen3, data, folder / "two", batch_size=2)
    _train([sys.executable], tiny_qwen3, data, folder / "one", batch_size=4)
    return folder / "two", folder / "one", tiny_qwen3


def _tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_two_processes_write_one_complete_run(runs):
    two, one, _ = runs
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert {"adapter/adapter_model.safetensors", "manifest.json", "prompt.yaml"} <= set(_tree(two))
    assert _tree(two) == _tree(one)  # the same files as a one-process run: nothing per rank
    assert sorted(p.name for p in two.parent.iterdir()) == ["one", "train.jsonl", "two"]
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # rank 0 alone logs: one line per step


def test_two_process_adapter_loads_with_peft(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    two, _, model = runs
    base = AutoModelForCausalLM.from_pretrained(model)
    loaded = PeftModel.from_pretrained(base, str(two / "adapter"))
    assert any("lora_B" in name for name, _ in loaded.named_parameters())


def test_two_processes_of_batch_2_match_one_process_of_batch_4(runs):
    two, one, _ = runs
    parallel = load_file(two / "adapter" / "adapter_model.safetensors")
    single = load_file(one / "adapter" / "adapter_model.safetensors")
    assert parallel.keys() == single.keys()
    assert any(t.abs().sum() > 0 for name, t in single.items() if "lora_B" in name)  # training moved B
    # Summation order differs (two partial gradients all-reduced vs one sum), and Adam divides tiny
    # gradients by their own size: ~4e-6 apart after 4 steps of lr 5e-3 that move weights by ~1e-2.
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-4, atol=2e-5, msg=name)


def test_a_last_step_with_fewer_rows_than_processes_finishes(tiny_qwen3, tmp_path):
    # 17 rows, 2 processes of batch 2: the 5th step holds 1 row, so one process has none. It must still take
    # part in every collective (a weightless stand-in micro-batch), or both wait forever (the subprocess timeout).
    data = write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(17)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    # dev_size=0 keeps all 17 rows for training: 5 steps of 4 rows, the last holding 1
    _train(torchrun, tiny_qwen3, data, tmp_path / "two", batch_size=2, extra=["dev_size=0"], timeout=240, steps=5)
    _train([sys.executable], tiny_qwen3, data, tmp_path / "one", batch_size=4, extra=["dev_size=0"], steps=5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    parallel = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    single = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    for name in single:  # the stand-in changed nothing: the same adapter as one process
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-4, atol=2e-5, msg=name)


def test_fsdp_over_two_processes_trains_the_same_adapter(tiny_qwen3, tmp_path):
    # fsdp=true shards each decoder layer's frozen weights over the 2 gloo processes (torch FSDP2 on the CPU);
    # the LoRA weights stay whole, so the adapter must match one process of the same global batch.
    data = write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(20)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    _train(torchrun, tiny_qwen3, data, tmp_path / "fsdp", batch_size=2, extra=["fsdp=true", "eval_every=2"],
           timeout=240)
    _train([sys.executable], tiny_qwen3, data, tmp_path / "one", batch_size=4, extra=["eval_every=2"])
    manifest = json.loads((tmp_path / "fsdp" / "manifest.json").read_text())
    assert manifest["fsdp"] is True and manifest["processes"] == 2
    sharded = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    single = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for name, t in single.items() if "lora_B" in name)
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=2e-5, msg=name)
