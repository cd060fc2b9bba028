"""Training state that outlives a step: the compute precision, resumable checkpoints on disk, rollback snapshots.

A checkpoint holds everything a resumed run needs to continue the same run: the adapter, AdamW's moments, the
RNG of the CPU and of every GPU, the fp16 loss scaler's state and the dtype the run computes in (which a
non-finite fall-back may have changed). Tensors go to safetensors and the rest to JSON: nothing is pickled.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medtune.device import DTYPES
from medtune.rundir import RunDir, write_json

KEEP_CHECKPOINTS = 2


class Precision:
    """The compute dtype of the forward pass, with fp16 loss scaling; can step down to a safer dtype."""

    def __init__(self, dtype: str, device_type: str):
        self.device_type = device_type
        self._use(dtype)

    def _use(self, dtype: str) -> None:
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32")

    def step_down(self, model, to: str) -> None:
        """Continue in `to`: frozen base weights follow (LoRA weights are fp32 throughout)."""
        for parameter in model.parameters():
            if not parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(DTYPES[to])
        self._use(to)

    def state(self) -> dict:
        """JSON-ready: the dtype and the loss scaler's state (scale, growth tracker; {} when scaling is off)."""
        return {"dtype": self.dtype, "scaler": self.scaler.state_dict()}

    def restore(self, model, state: dict) -> None:
        if state["dtype"] != self.dtype:
            self.step_down(model, state["dtype"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def adapter_state(model) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the LoRA weights."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_state(model, tensors: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, tensors)


def _rng_tensors() -> dict[str, torch.Tensor]:
    """The CPU generator and, on GPUs, each device's generator (dropout masks come from the latter there)."""
    tensors = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda_rng.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    return tensors


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors.pop("torch_rng"))
    cuda = [tensors.pop(f"cuda_rng.{i}") for i in range(len(tensors)) if f"cuda_rng.{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(run: RunDir, step: int, model, optimizer, precision: Precision, best: dict,
                    best_adapter: dict | None = None) -> None:
    """Adapter, optimizer moments, RNG, precision and the best dev state; the state file last, so a
    checkpoint without it is incomplete and never loaded."""
    folder = run.checkpoint(step)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), folder / "adapter.safetensors")
    if best_adapter is not None:
        save_file(best_adapter, folder / "best_adapter.safetensors")
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.cpu().contiguous() for i, s in state["state"].items() for k, v in s.items()}
    save_file(tensors | _rng_tensors(), folder / "optimizer.safetensors")
    write_json(folder / "trainer_state.json", {"step": step, "param_groups": state["param_groups"], "best": best,
                                               "precision": precision.state()})
    for old in sorted(run.checkpoints.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)


def load_checkpoint(folder: Path, model, optimizer, precision: Precision) -> dict:
    """Restore what `save_checkpoint` wrote; returns the state file (step, best) plus "best_adapter"."""
    set_adapter_state(model, load_file(folder / "adapter.safetensors"))
    saved = json.loads((folder / "trainer_state.json").read_text())
    tensors = load_file(folder / "optimizer.safetensors")
    _set_rng(tensors)
    moments: dict = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})
    if "precision" in saved:
        precision.restore(model, saved["precision"])
    best_file = folder / "best_adapter.safetensors"
    saved["best_adapter"] = load_file(best_file) if best_file.exists() else None
    return saved


def snapshot(model, optimizer, step: int, best: dict) -> dict:
    """In-memory copy of everything a rollback restores: the last good checkpoint's state."""
    return {"adapter": adapter_state(model), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "rng": torch.get_rng_state(), "step": step, "best": dict(best)}


def restore(saved: dict, model, optimizer) -> None:
    set_adapter_state(model, saved["adapter"])
    optimizer.load_state_dict(copy.deepcopy(saved["optimizer"]))
    torch.set_rng_state(saved["rng"])

