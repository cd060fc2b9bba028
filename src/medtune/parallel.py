"""How the processes of one run share it: which GPU each uses, how a step's rows are split between them, and
FSDP's sharding of the frozen weights. `torchrun` / `accelerate launch` start the processes; DDP itself is
accelerate's (train.py prepares the loss module with it).
"""

from __future__ import annotations

import math
import os

import torch

from medtune.device import HardwareError


def micro_batches(rows: list[int], rank: int, world: int, batch_size: int, lengths: list[int]) -> list[list[int]]:
    """This process's micro-batches of one optimizer step: rows[rank::world], shortest first, in chunks.

    Every process gets the same number of micro-batches: where its share runs out (the last step of an epoch
    can hold fewer rows than processes), the list is filled with `[]`, which the loop runs as a weightless
    stand-in. Each forward and backward is a collective under DDP and FSDP, so a process that skipped one
    would leave the others waiting forever.
    """
    shares = [rows[r::world] for r in range(world)]
    count = max(1, max(math.ceil(len(share) / batch_size) for share in shares))
    mine = sorted(shares[rank], key=lambda i: lengths[i])
    chunks = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    return chunks + [[] for _ in range(count - len(chunks))]


def launched_processes() -> int:
    """How many processes torchrun / accelerate launch started (read before any of them initializes)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pin_device(device: str, world: int) -> None:
    """Make GPU N current for `cuda:N`, before accelerate or bitsandbytes place anything.

    In one process accelerate uses the *current* CUDA device, so without this the run would land on GPU 0
    while the manifest says N. Several processes each take the GPU of their local rank; one index for all
    of them cannot be honoured, so it is refused.
    """
    if not device.startswith("cuda:"):
        return
    if world > 1:
        raise HardwareError(f"--device {device} names one GPU, but {world} processes were launched and each takes "
                            "the GPU of its local rank: use --device cuda, and choose the GPUs with "
                            "--cuda-visible-devices (or CUDA_VISIBLE_DEVICES)")
    torch.cuda.set_device(int(device.partition(":")[2]))


def wants_fsdp(config) -> bool:
    """`fsdp=true`, or `accelerate launch` with an FSDP config (it says so in ACCELERATE_USE_FSDP)."""
    return config.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")


def shard_frozen_layers(model) -> None:
    """FSDP2: shard each decoder layer's frozen weights across the processes, which all-gather a layer just
    before they use it. The LoRA weights (about 1% of the model) stay whole on every process, so the optimizer,
    checkpoints and the saved adapter are the same as without sharding; their gradients are averaged by
    `average_gradients`. Embeddings and the head stay whole too: they are called outside the layers' forward."""
    from torch.distributed.fsdp import fully_shard

    layers = getattr(model.get_base_model().get_decoder(), "layers", None)
    if layers is None:
        raise ValueError("fsdp=true needs a decoder with a `layers` list (Llama/Qwen/Mistral-style models)")
    for layer in layers:
        fully_shard(layer, ignored_params={p for p in layer.parameters() if p.requires_grad})


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """What DDP does in backward, for the FSDP path: each LoRA gradient becomes the mean over processes."""
    import torch.distributed as dist

    for parameter in parameters:
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.AVG)
