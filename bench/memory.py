"""Estimated vs measured peak training memory on the CPU: `medtune plan --from-run` against real runs.

Each row trains with `medtune train` in a child process for a few steps and reads that child's peak
resident set size from the kernel (os.wait4's rusage.ru_maxrss: the high-water mark over the whole
process, model loading included). The estimate is plan.input_from_run(RUN_DIR): exactly the run's
settings, with the padded sequence length and supervised share of its longest batch (from its metrics,
or replayed from the trainer's batching while the trainer does not log them).

    python bench/memory.py                      # all rows; 5-10 minutes on 2 cores
    python bench/memory.py --only smollm2 --json results.json

No GPU figures here: this machine has none. On a GPU the comparable measure is
torch.cuda.max_memory_allocated() plus the CUDA context (see README-memory.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "medmcqa" / "train-sample-original.jsonl"
QWEN3_TOKENIZER = SHARED / "models" / "qwen3-tokenizer"
# (model, dtype, batch size): SmolLM2-135M-Instruct and the tests' 2-layer random Qwen3.
ROWS = [("smollm2", "fp32", 4), ("smollm2", "fp32", 8), ("smollm2", "bf16", 4), ("smollm2", "bf16", 8),
        ("tiny-qwen3", "fp32", 4), ("tiny-qwen3", "bf16", 8)]
SETTINGS = ["max_seq_len=256", "grad_accum=1", "eval_every=0", "save_every=0", "dev_size=4"]


def tiny_qwen3(folder: Path) -> Path:
    """The tests' tiny random Qwen3 (tests/conftest.py), saved once under `folder`."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, initializer_range=0.1)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(QWEN3_TOKENIZER).save_pretrained(folder)
    return folder


def model_folder(name: str, scratch: Path) -> Path:
    if name == "smollm2":
        from medtune.modeling import smollm2_from_wheel

        return smollm2_from_wheel()
    return tiny_qwen3(scratch / "tiny-qwen3")


def train_command(model: Path, run: Path, dtype: str, batch: int, steps: int, limit: int) -> list[str]:
    return [sys.executable, "-m", "medtune.cli", "train", "--model", str(model), "--data", str(DATA),
            "--output", str(run), "--max-steps", str(steps), "--limit", str(limit), "--skip-invalid",
            "--device", "cpu", "--dtype", dtype, "--quiet", *SETTINGS, f"batch_size={batch}"]


def peak_rss(command: list[str], log: Path) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of `command` run as a child process."""
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {log}")
    return usage.ru_maxrss * 1024, time.perf_counter() - started  # Linux reports kibibytes


def replayed_lengths(run: Path) -> dict:
    """The longest batch's padded length and supervised share, by replaying the trainer's batching.

    For runs whose metrics.jsonl lacks "padded_length" (see README-memory.md); one process and
    grad_accum=1 only, where a step's rows are one micro-batch padded to its longest row.
    """
    from medtune.config import load_config
    from medtune.modeling import load_tokenizer
    from medtune.prompts import PromptTemplate
    from medtune.tokenization import IGNORE
    from medtune.train import _load_data, step_batch

    config = load_config(str(run / "config.yaml"))
    assert config.grad_accum == 1, "replay assumes one micro-batch per step"
    data = _load_data(config, load_tokenizer(config.model), PromptTemplate.load(run / "prompt.yaml"),
                      lambda message: None)
    steps = json.loads((run / "manifest.json").read_text())["training"]["steps"]
    batches = [[data.encoded[i] for i in step_batch(step, len(data.encoded), config.batch_size, config.seed)]
               for step in range(steps)]
    longest = max(batches, key=lambda rows: max(len(row.input_ids) for row in rows))
    padded = max(len(row.input_ids) for row in longest)
    supervised = sum(label != IGNORE for row in longest for label in row.labels[1:])
    return {"seq_len": padded, "supervised_fraction": supervised / (config.batch_size * padded)}


def estimate(run: Path) -> dict:
    """The planner's breakdown for exactly this run (`medtune plan --from-run RUN --json`)."""
    from dataclasses import replace

    from medtune.plan import estimate as plan_estimate
    from medtune.plan import input_from_run

    setting = input_from_run(run)
    if '"padded_length"' not in (run / "metrics.jsonl").read_text():
        setting = replace(setting, **replayed_lengths(run))
    return plan_estimate(setting).to_dict()


def measure(name: str, dtype: str, batch: int, scratch: Path, steps: int, limit: int) -> dict:
    run = scratch / f"{name}-{dtype}-b{batch}"
    command = train_command(model_folder(name, scratch), run, dtype, batch, steps, limit)
    saved = scratch / f"{run.name}.peak.json"  # re-estimate a finished run without training it again
    if saved.exists():
        measured, seconds = json.loads(saved.read_text())
    else:
        measured, seconds = peak_rss(command, scratch / f"{run.name}.log")
        saved.write_text(json.dumps([measured, seconds]))
    plan = estimate(run)
    return {"model": name, "dtype": dtype, "batch_size": batch, "seq_len": plan["seq_len"],
            "supervised_fraction": plan["supervised_fraction"], "estimated_bytes": plan["total_bytes"],
            "measured_bytes": measured, "error": plan["total_bytes"] / measured - 1,
            "breakdown": plan["breakdown"], "seconds": round(seconds, 1), "command": command}


def table(results: list[dict]) -> str:
    mib = 2**20
    lines = ["| model | dtype | batch | padded len | supervised | estimated MiB | measured MiB | error |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dtype']} | {r['batch_size']} | {r['seq_len']} | "
              f"{r['supervised_fraction']:.2f} | {r['estimated_bytes'] / mib:,.0f} | "
              f"{r['measured_bytes'] / mib:,.0f} | {100 * r['error']:+.1f}% |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only rows whose model name contains this")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    parser.add_argument("--limit", type=int, default=48, help="training rows loaded (default 48)")
    parser.add_argument("--scratch", help="folder for runs and logs (default: a temporary folder); a run "
                                           "already measured there is re-estimated, not trained again")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="medtune-memory-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    for name, dtype, batch in ROWS:
        if args.only and args.only not in name:
            continue
        results.append(measure(name, dtype, batch, scratch, args.steps, args.limit))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(abs(r["error"]) <= 0.15 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
