"""Run configuration: typed, frozen, checked up front, resolved as CLI > YAML file > a run's saved config (on
resume) > defaults, and saved with every run."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_MODEL = "Qwen/Qwen3-1.7B"
QUICKSTART_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The names device.py and prompts.py accept, spelled out here so that reading a config does not import torch;
# tests/test_config.py checks that they agree.
DTYPES = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("auto", "none", "4bit", "8bit")
ATTENTIONS = ("auto", "eager", "sdpa", "flash_attention_2")
PROMPT_FORMATS = ("auto", "chat", "plain", "harness")
MAX_SEED = 2**32 - 1  # the widest range every seeded library (random, torch, numpy) accepts
# plan.parse_memory_size's form: a positive number with an optional unit (GB = 10**9, GiB = 2**30)
MEMORY_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class DataSource:
    """One source of a training mixture: a local file or Hub id, read by `task`'s reader (detected when None).

    `weight`: the share of each epoch's rows drawn from this source, relative to the other sources' weights
    (rows are drawn with a seeded RNG: a source smaller than its share is repeated, a larger one subsampled,
    a new draw every epoch). Without weights every row is used once per epoch, as with a single source.
    """

    source: str
    task: str | None = None  # a name from medtune.tasks, e.g. "pubmedqa"; None: the layout is detected
    columns: str | None = None  # a question bank's own columns, as `--columns` spells them
    split: str | None = None  # None: train_split for a Hub id; a local file's own rule otherwise
    weight: float | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataSource))


def parse_source(text: str) -> DataSource:
    """'PATH' or 'TASK=PATH' (the command line's spelling): the prefix is a task only when it names one, so a
    path that holds '=' still reads as a path."""
    from medtune.tasks import TASKS

    task, sep, rest = text.partition("=")
    return DataSource(rest, task=task) if sep and task in TASKS and rest else DataSource(text)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `medtune train` needs, checked when built (a value that cannot work raises ValueError).

    Defaults: LoRA r=16 on Qwen/Qwen3-1.7B over the Hub's MedMCQA, batch 4 x 4 accumulation, dev slice 64,
    evaluation and checkpoints every 50 steps, invalid rows refused. The tuned GPU recipe is a separate file,
    configs/qwen3-1.7b-lora.yaml (batch 8 x 4, dev slice 256, every 100 steps, invalid rows skipped).
    """

    model: str = DEFAULT_MODEL
    data: str | tuple[DataSource, ...] = "openlifescienceai/medmcqa"  # one source, or a mixture (see DataSource)
    output: str = "runs/medtune"
    eval_data: str | None = None
    train_split: str = "train"  # a Hub split, or a local PubMedQA/MMLU source's (a one-split file ignores it)
    eval_split: str = "validation"  # for a Hub eval_data without a task; else its task's scored split / the file
    revision: str | None = None  # Hub commit/branch of the base model
    answer_base: int | None = None  # 0 or 1 for integer answers when the data cannot tell
    skip_invalid: bool = False
    limit: int | None = None  # first N valid training rows
    eval_limit: int | None = None
    dev_size: int = 64  # rows carved from the training data for periodic evaluation
    # rows carved from the training data to fit the temperature after training (0: none): at most a tenth of
    # the rows, and none under 30 (see data/dev.py); a temperature fitted on trained rows would be too confident
    calibration_size: int = 256
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
    # auto: the memory plan picks (off when the run fits, else every n-th decoder layer with the largest n that
    # fits, else every layer, and only then QLoRA); true/false; or n: checkpoint every n-th decoder layer
    gradient_checkpointing: str | bool | int = "auto"
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
    # quantize=auto and gradient_checkpointing=auto plan against it, e.g. "24GB"; None: GPU memory or available RAM
    memory_budget: str | None = None
    trust_remote_code: bool = False  # runs code from the model repository: only for repositories you trust
    resume: bool = False
    overwrite: bool = False  # start over in a folder that holds a run (finished or not): its files are deleted
    fsdp: bool = False  # under several processes, shard the frozen decoder layers (torch FSDP2) instead of copying them
    exclude_overlap: bool = False  # drop training rows that overlap eval_data (counted in report.json)
    # with eval_data: after training, evaluate the base model and the tuned run on it and compare them, paired
    compare_base: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.lora_target_modules, list):  # the Python API's natural spelling; stored hashable
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if isinstance(self.data, list):  # likewise a list of sources (text or mappings) -> DataSource entries
            object.__setattr__(self, "data", _coerce("data", self.data))
        for name in _field_types():
            problem = _problem(name, getattr(self, name))
            if problem:
                raise ValueError(problem)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if isinstance(values["lora_target_modules"], tuple):
            values["lora_target_modules"] = list(values["lora_target_modules"])
        if isinstance(self.data, tuple):
            values["data"] = [entry.to_dict() for entry in self.data]
        return values

    def sources(self) -> tuple[DataSource, ...]:
        """The training sources: `data` as one entry (its 'TASK=PATH' prefix read) or the mixture's entries."""
        return (parse_source(self.data),) if isinstance(self.data, str) else self.data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _field_types() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value):
    """Convert what YAML and the command line give to the field's type; `_problem` then judges the result."""
    default = _field_types()[name].default
    if name == "lora_target_modules":
        if isinstance(value, list):
            return tuple(str(item).strip() for item in value)
        return tuple(part.strip() for part in value.split(",")) if isinstance(value, str) and "," in value else value
    if name == "data" and isinstance(value, list | tuple):
        return tuple(map(_data_entry, value))
    if name in _TEXT_FROM_NUMBER and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # YAML reads `cuda_visible_devices: 1` or `memory_budget: 8000000000` as a number
    if isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            return value
    return value


_TEXT_FROM_NUMBER = ("cuda_visible_devices", "hip_visible_devices", "memory_budget")


def _data_entry(item):
    """A mixture entry as YAML or the command line gives it -> DataSource; anything else is left for
    `_data_problem` to describe."""
    if isinstance(item, str):
        return parse_source(item)
    if not isinstance(item, dict) or not set(item) <= set(DATA_KEYS) or "source" not in item:
        return item
    values = dict(item)
    if isinstance(values.get("columns"), dict):  # `columns: {question: stem, options: [a, b]}` in YAML
        values["columns"] = ",".join(f"{key}={'|'.join(map(str, v)) if isinstance(v, list) else v}"
                                     for key, v in values["columns"].items())
    if _is_int(values.get("weight")):
        values["weight"] = float(values["weight"])
    return DataSource(**values)


# ---------------------------------------------------------------- what each field accepts


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _integer(low: int, high: int | None = None, optional: bool = False) -> tuple[Callable, str]:
    def accepts(value) -> bool:
        return (optional and value is None) or (_is_int(value) and low <= value and (high is None or value <= high))

    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    return accepts, allowed + (" or null" if optional else "")


def _one_of(names: tuple[str, ...]) -> tuple[Callable, str]:
    return (lambda value: isinstance(value, str) and value in names), f"one of {', '.join(names)}"


def _gpu_list(value) -> bool:
    """CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES: indices or UUIDs, comma-separated; "" hides every GPU."""
    return value is None or (isinstance(value, str) and re.fullmatch(r"([\w.:-]+(,[\w.:-]+)*)?", value) is not None)


def _memory_size(value) -> bool:
    match = isinstance(value, str) and MEMORY_SIZE.fullmatch(value)
    return value is None or bool(match and float(match.group(1)) > 0)


_TEXT = (_is_text, "non-empty text")
_OPTIONAL_TEXT = (lambda value: value is None or _is_text(value), "non-empty text or null")
_BOOL = (lambda value: isinstance(value, bool), "true or false")
_GPUS = (_gpu_list, "comma-separated GPU indices or UUIDs (e.g. '0,1'), or null")

_RULES: dict[str, tuple[Callable, str]] = {
    "model": _TEXT, "output": _TEXT, "eval_data": _OPTIONAL_TEXT,
    "train_split": _TEXT, "eval_split": _TEXT, "revision": _OPTIONAL_TEXT,
    "answer_base": (lambda value: value is None or (_is_int(value) and value in (0, 1)), "0, 1 or null"),
    "skip_invalid": _BOOL,
    "limit": _integer(1, optional=True), "eval_limit": _integer(1, optional=True), "dev_size": _integer(0),
    "calibration_size": _integer(0),
    "prompt_format": _one_of(PROMPT_FORMATS), "max_seq_len": _integer(1),
    "epochs": (lambda value: _is_number(value) and value > 0, "a number > 0"),
    "max_steps": _integer(1, optional=True), "batch_size": _integer(1), "grad_accum": _integer(1),
    # above 1, AdamW's first update alone moves every weight by about the rate: the run diverges at once
    "learning_rate": (lambda value: _is_number(value) and 0 < value <= 1, "a number > 0 and <= 1"),
    "weight_decay": (lambda value: _is_number(value) and value >= 0, "a number >= 0"),
    "warmup_ratio": (lambda value: _is_number(value) and 0 <= value <= 1, "a number from 0 to 1"),
    "max_grad_norm": (lambda value: _is_number(value) and value > 0, "a number > 0"),  # 0 would zero every update
    "lora_r": _integer(1), "lora_alpha": _integer(1),
    "lora_dropout": (lambda value: _is_number(value) and 0 <= value < 1, "a number >= 0 and < 1"),
    "lora_target_modules": (
        lambda value: _is_text(value) or (isinstance(value, tuple) and bool(value) and all(map(_is_text, value))),
        "'all-linear' or a non-empty list of module names"),
    "gradient_checkpointing": (lambda value: value == "auto" or isinstance(value, bool) or _integer(1)[0](value),
                               "auto, true, false or an integer n >= 1 (checkpoint every n-th decoder layer)"),
    "compile": _BOOL,
    "eval_every": _integer(0), "save_every": _integer(0),
    "nonfinite_patience": _integer(1), "early_stopping_patience": _integer(0),
    "seed": _integer(0, MAX_SEED),
    "device": (lambda value: isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None,
               "auto, cpu, cuda, cuda:N or mps"),
    "cuda_visible_devices": _GPUS, "hip_visible_devices": _GPUS,
    "dtype": _one_of(DTYPES), "attention": _one_of(ATTENTIONS), "quantize": _one_of(QUANTIZATIONS),
    "memory_budget": (_memory_size, "a memory size such as 24GB or 80GiB, or null"),
    "trust_remote_code": _BOOL, "resume": _BOOL, "overwrite": _BOOL, "fsdp": _BOOL, "exclude_overlap": _BOOL,
    "compare_base": _BOOL,
}


def _entry_problem(index: int, entry) -> str | None:
    from medtune.tasks import TASKS

    where = f"data[{index}]"
    if not isinstance(entry, DataSource):
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - set(DATA_KEYS))
            what = f"unknown key(s) {', '.join(unknown)}" if unknown else "no 'source'"
            return f"{where} has {what}: an entry takes {', '.join(DATA_KEYS)} (source required)"
        return f"{where}={entry!r} cannot work: an entry is a path or Hub id, or a mapping with {', '.join(DATA_KEYS)}"
    if not _is_text(entry.source):
        return f"{where}.source={entry.source!r} cannot work: it must be a file path or Hub dataset id"
    if entry.task is not None and entry.task not in TASKS:
        return f"{where}.task={entry.task!r} is not a known task; known: {', '.join(TASKS)}"
    for name in ("columns", "split"):
        if getattr(entry, name) is not None and not _is_text(getattr(entry, name)):
            return f"{where}.{name}={getattr(entry, name)!r} cannot work: it must be non-empty text or absent"
    if entry.columns is not None:
        from medtune.data.columns import parse_spec  # the reader's own rules, checked before anything loads

        try:
            parse_spec(entry.columns)
        except ValueError as error:
            return f"{where}.columns: {error}"
    if entry.weight is not None and not (_is_number(entry.weight) and entry.weight > 0):
        return (f"{where}.weight={entry.weight!r} cannot work: a weight is a number > 0, the share of each epoch's "
                "rows drawn from that source relative to the other weights")
    return None


def _data_problem(value) -> str | None:
    """None when `data` can work: one source as text, or a non-empty list of entries, weighted all or none."""
    if isinstance(value, str):
        return None if _is_text(value) else f"data={value!r} cannot work: data must be non-empty text or a list"
    if not isinstance(value, tuple) or not value:
        return f"data={value!r} cannot work: data must be a path or Hub id, or a non-empty list of sources"
    for index, entry in enumerate(value):
        problem = _entry_problem(index, entry)
        if problem:
            return problem
    weighted = [entry.weight is not None for entry in value]
    if any(weighted) and not all(weighted):
        missing = ", ".join(f"data[{i}]" for i, has in enumerate(weighted) if not has)
        return f"{missing} has no weight while other sources have one: give every source a weight, or none"
    return None


def _problem(name: str, value) -> str | None:
    """None when `value` can work for field `name`; else a sentence naming the field, the value and the range."""
    if name == "data":
        return _data_problem(value)
    accepts, allowed = _RULES[name]
    return None if accepts(value) else f"{name}={value!r} cannot work: {name} must be {allowed}"


def _checked(name: str, value, source: str):
    """One setting from `source` (a file name or "command line"), converted and checked."""
    known = _field_types()
    if name not in known:
        raise ValueError(f"{source}: unknown setting '{name}'; known: {', '.join(sorted(known))}")
    value = _coerce(name, value)
    problem = _problem(name, value)
    if problem:
        raise ValueError(f"{source}: {problem}")
    return value


# ---------------------------------------------------------------- reading settings


def parse_overrides(pairs: list[str]) -> dict:
    """['lora_r=8', 'epochs=2'] -> {'lora_r': 8, 'epochs': 2}; values are read as YAML scalars."""
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"override {pair!r} is not of the form key=value")
        values[name.strip().replace("-", "_")] = yaml.safe_load(text) if text else None
    return values


def _read_yaml(path: Path, missing: str):
    """The parsed YAML document at `path`; every way the file can be wrong is one sentence."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a YAML file; pass a settings file (a run keeps its own in "
                         "config.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file; {missing}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file; pass a YAML file of setting: value lines") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: malformed YAML{where}: {error.problem or error.context}; fix the file there "
                         "(quote a value that holds ': ' or ' #')") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: malformed YAML ({error}); fix the file") from None


def _read_settings(path: Path, missing: str) -> dict:
    loaded = _read_yaml(path, missing) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of setting: value")
    return {name: _checked(name, value, str(path)) for name, value in loaded.items()}


def load_config(yaml_path: str | Path | None = None, *, base: str | Path | None = None, **overrides) -> TrainConfig:
    """Resolve a run's settings: defaults, then `base`, then the YAML file, then `overrides`.

    `base` is a run's saved config.yaml: with it, `--resume` continues the run as it was configured and only
    what the user passes again (`yaml_path`, CLI flags, key=value pairs) changes it. In `overrides`, None means
    "not given". Every value is checked where it comes from, so an error names the file or "command line".
    """
    values: dict = {}
    if base:
        values.update(_read_settings(Path(base), "the run folder holds no saved settings: is it a medtune run?"))
    if yaml_path:
        values.update(_read_settings(Path(yaml_path), "pass a YAML file such as configs/quickstart-cpu.yaml"))
    for name, value in overrides.items():
        if name not in _field_types() or value is not None:
            values[name] = _checked(name, value, "command line")
    return TrainConfig(**values)
