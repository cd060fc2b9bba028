"""Peak RSS of a short bench-style `medtune train` run on the CPU, and the RSS at each phase of it.

Training section 1's medtune setting (LoRA r8 on q_proj/v_proj, max length 256, bf16, harness prompt) on
`--rows` rows for `--steps` optimizer steps of 16 rows, printing the current and peak RSS after the imports, the
memory plan, the model load and LoRA, and at the end. Run it with several step counts to see glibc keep freed
activation memory as the steps go by:

    for steps in 1 4 10 20 40; do python bench/heap_growth.py --batch 4 --rows $((steps*16)) --steps $steps; done

Each run is its own process, so each peak is its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"
SMOL = Path("~/.cache/medtune/SmolLM2-135M-Instruct-from-gguf").expanduser()


def rss_mib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in MiB."""
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return round(current / 2**20), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def report(phase: str) -> None:
    current, peak = rss_mib()
    print(f"{phase:<16} rss {current:>6} MiB   peak {peak:>6} MiB", flush=True)


def _wrap(module, name: str, before: str | None, after: str) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        if before:
            report(before)
        result = original(*args, **kwargs)
        report(after)
        return result

    setattr(module, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SMOL))
    parser.add_argument("--batch", type=int, default=4, help="micro-batch (x accumulation = 16 rows a step)")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    report("start")
    import medtune.train  # noqa: F401  (the module, not the function the package exports under that name)
    from medtune.config import TrainConfig

    trainer = sys.modules["medtune.train"]
    report("imports")
    _wrap(trainer, "_choose_memory", None, "memory plan")
    _wrap(trainer, "load_base", None, "model loaded")
    _wrap(trainer, "add_lora", None, "LoRA added")
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(
            model=args.model, data=str(SHARED / "train-sample-original.jsonl"), limit=args.rows,
            output=str(Path(scratch) / "run"), batch_size=args.batch, grad_accum=16 // args.batch, max_seq_len=256,
            lora_r=8, lora_alpha=16, lora_target_modules=("q_proj", "v_proj"), dev_size=0, calibration_size=0,
            eval_every=0, save_every=0, device="cpu", dtype="bf16", skip_invalid=True, prompt_format="harness",
            gradient_checkpointing=False, max_steps=args.steps)
        trainer.train(config, progress=False)
    report(f"after {args.steps} steps")


if __name__ == "__main__":
    main()
