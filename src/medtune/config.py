"""Run configuration: typed, frozen, resolved as CLI > YAML file > defaults, and saved with every run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_MODEL = "Qwen/Qwen3-1.7B"
QUICKSTART_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class TrainConfig:
    """Everything `medtune train` needs. Defaults are the Qwen3-1.7B LoRA recipe."""

    model: str = DEFAULT_MODEL
    data: str = "openlifescienceai/medmcqa"
    output: str = "runs/medtune"
    eval_data: str | None = None
    train_split: str = "train"  # Hub split names; ignored for local files
    eval_split: str = "validation"
    revision: str | None = None  # Hub commit/branch of the base model
    answer_base: int | None = None  # 0 or 1 for integer answers when the data cannot tell
    skip_invalid: bool = False
    limit: int | None = None  # first N valid training rows
    eval_limit: int | None = None
    dev_size: int = 64  # rows carved from the training data for periodic evaluation
    prompt_format: str = "auto"  # auto: the model's chat template when it has one, else plain text
    max_seq_len: int = 512  # MedMCQA prompt + answer + explanation fits in 512 Qwen3 tokens for ~98% of rows
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 4  # per device and micro-step
    grad_accum: int = 4  # micro-steps per optimizer step
    learning_rate: float = 2e-4  # usual LoRA rate; LoRA tolerates 10x full fine-tuning's rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32  # alpha/r = 2, the common LoRA scaling
    lora_dropout: float = 0.05
    lora_target_modules: str | tuple[str, ...] = "all-linear"  # every Linear except the output head
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory; off when memory allows
    compile: bool = False  # torch.compile each decoder layer: a one-off compile, then faster, leaner steps
    eval_every: int = 50  # optimizer steps between dev-slice evaluations (0: only at the end)
    save_every: int = 50  # optimizer steps between resumable checkpoints
    nonfinite_patience: int = 3  # non-finite steps in a row before rolling back and stepping down the dtype
    early_stopping_patience: int = 0  # dev evaluations without improvement before stopping (0: off)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    cuda_visible_devices: str | None = None  # set before the first CUDA call; None leaves the environment alone
    hip_visible_devices: str | None = None  # the same, for AMD GPUs under ROCm
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    attention: str = "auto"  # auto | eager | sdpa | flash_attention_2; auto: eager on the CPU, sdpa on GPUs
    quantize: str = "auto"  # auto | none | 4bit | 8bit (QLoRA, bitsandbytes); auto: only when 16-bit does not fit
    trust_remote_code: bool = False  # runs code from the model repository: only for repositories you trust
    resume: bool = False

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if isinstance(values["lora_target_modules"], tuple):
            values["lora_target_modules"] = list(values["lora_target_modules"])
        return values

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _field_types() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value, source: str):
    """Type-check one value against the field's default; YAML already gave numbers, booleans and lists."""
    default = _field_types()[name].default
    if name == "lora_target_modules":
        if isinstance(value, list):
            return tuple(str(item) for item in value)
        return tuple(value.split(",")) if isinstance(value, str) and "," in value else value
    if value is None or default is None:
        return value
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ValueError(f"{source}: '{name}' must be true or false, got {value!r}")
    if isinstance(default, float) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: '{name}' must be a number, got {value!r}") from None
    if not isinstance(value, type(default)):
        raise ValueError(f"{source}: '{name}' must be {type(default).__name__}, got {value!r}")
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """['lora_r=8', 'epochs=2'] -> {'lora_r': 8, 'epochs': 2}; values are read as YAML scalars."""
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"override {pair!r} is not of the form key=value")
        values[name.strip().replace("-", "_")] = yaml.safe_load(text) if text else None
    return values


def load_config(yaml_path: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then the YAML file, then `overrides` (CLI flags and key=value pairs; None means unset)."""
    values: dict = {}
    known = _field_types()
    if yaml_path:
        loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path}: expected a mapping of setting: value")
        for name, value in loaded.items():
            if name not in known:
                raise ValueError(f"{yaml_path}: unknown setting '{name}'; known: {', '.join(sorted(known))}")
            values[name] = _coerce(name, value, yaml_path)
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"unknown setting '{name}'; known: {', '.join(sorted(known))}")
        if value is not None:
            values[name] = _coerce(name, value, "command line")
    return TrainConfig(**values)
