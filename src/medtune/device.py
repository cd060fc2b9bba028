"""The only module that inspects hardware: which device, which dtype, which backend -- each with its reason.

PyTorch's ROCm build exposes AMD GPUs as the `cuda` device; `torch.version.hip` tells them apart.
Nothing here sets hardware environment variables: HIP/CUDA settings come from the user's environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class HardwareError(RuntimeError):
    """An explicit request the hardware cannot honour."""


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str


def backend() -> str:
    """'rocm', 'cuda', 'mps' or 'cpu': the accelerator stack this PyTorch build can use right now."""
    if torch.cuda.is_available():
        return "rocm" if torch.version.hip else "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def select_device(requested: str = "auto") -> Choice:
    """'auto' takes the first accelerator PyTorch can use, else the CPU; an explicit one must exist."""
    if requested == "auto":
        kind = backend()
        device = "cuda" if kind in ("cuda", "rocm") else kind
        why = {"rocm": "AMD GPU via PyTorch's ROCm build", "cuda": "NVIDIA GPU", "mps": "Apple GPU (MPS)",
               "cpu": "no GPU visible to PyTorch"}[kind]
        return Choice(device, f"auto: {why}")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HardwareError(f"--device {requested} was asked for, but this PyTorch build sees no CUDA/ROCm GPU "
                                f"(torch {torch.__version__}); use --device cpu or install a GPU build of torch")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise HardwareError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif requested == "mps" and not torch.backends.mps.is_available():
        raise HardwareError("--device mps was asked for, but MPS is not available on this machine")
    elif requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise HardwareError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    return Choice(requested, "asked for")


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device in ("cpu", "mps")  # CPU always computes bf16 (emulated without native support); MPS on macOS 14+


def select_dtype(requested: str, device: str) -> Choice:
    """'auto': bf16 on GPUs that support it, else fp16 with loss scaling; fp32 on CPU and MPS."""
    if requested != "auto":
        if requested not in DTYPES:
            raise HardwareError(f"unknown dtype {requested!r}; use auto, bf16, fp16 or fp32")
        if requested == "bf16" and not bf16_supported(device):
            raise HardwareError(f"bf16 was asked for, but {device} does not support bfloat16; use fp16 or fp32")
        if requested == "fp16" and device == "cpu":
            raise HardwareError("fp16 training is not supported on the CPU; use bf16 or fp32")
        return Choice(requested, "asked for")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return Choice("bf16", "auto: the GPU supports bfloat16 (fp32 range, no loss scaling needed)")
        return Choice("fp16", "auto: the GPU lacks bfloat16; fp16 with dynamic loss scaling")
    return Choice("fp32", f"auto: fp32 on {device} (no fast 16-bit training path assumed)")
