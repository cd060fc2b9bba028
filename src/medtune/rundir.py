"""The on-disk layout of a run directory, and nothing else.

    RUN_DIR/
      adapter/            the LoRA adapter in standard PEFT format (adapter_config.json + safetensors)
      config.yaml         the resolved TrainConfig
      prompt.yaml         the PromptTemplate evaluation and serving load
      manifest.json       versions, device, dtype, data hashes and counts, base model id/revision/fingerprint
      metrics.jsonl       one line per logged training step or dev evaluation
      report.json         data reports (rows skipped by reason), final training and evaluation figures
      training_fingerprint.json  hashes of the rows trained on (keys, questions, 13-grams): eval warns on overlap
      checkpoints/step-N/ resumable state (adapter, optimizer, RNG), newest kept
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    adapter = property(lambda self: self.root / "adapter")
    config = property(lambda self: self.root / "config.yaml")
    prompt = property(lambda self: self.root / "prompt.yaml")
    manifest = property(lambda self: self.root / "manifest.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    report = property(lambda self: self.root / "report.json")
    fingerprint = property(lambda self: self.root / "training_fingerprint.json")
    checkpoints = property(lambda self: self.root / "checkpoints")

    def is_run(self) -> bool:
        return self.manifest.exists() and self.adapter.exists() and self.prompt.exists()

    def require_run(self) -> RunDir:
        missing = [p.name for p in (self.manifest, self.adapter, self.prompt) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{self.root} is not a finished medtune run: missing {', '.join(missing)}")
        return self

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text(encoding="utf-8"))

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}"

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint whose state file was written (it is written last, so it marks completion)."""
        done = sorted(p for p in self.checkpoints.glob("step-*") if (p / "trainer_state.json").exists())
        return done[-1] if done else None

    def clear(self) -> None:
        """Delete what a run writes (for --overwrite); other files the user put in the folder stay."""
        for path in (self.adapter, self.checkpoints):
            if path.exists():
                shutil.rmtree(path)
        for path in (self.config, self.prompt, self.manifest, self.metrics, self.report, self.fingerprint):
            path.unlink(missing_ok=True)


def _strict(value):
    """NaN and infinity -> None: JSON has no such numbers, and strict parsers reject Python's `NaN`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return value


def write_json(path: Path, values: dict) -> None:
    """Write through a temporary file so a killed process never leaves half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(_strict(values), indent=2, sort_keys=False, default=str, allow_nan=False)
    temporary.write_text(text + "\n", encoding="utf-8")
    temporary.replace(path)


def append_jsonl(path: Path, values: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_strict(values), default=str, allow_nan=False) + "\n")
