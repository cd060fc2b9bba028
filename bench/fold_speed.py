"""A run scores at its base model's speed: the base, the run with its adapter folded in (what eval, ask and serve
load), and the run with its adapter left unmerged (PEFT's layers), on the same questions in one process.

    python bench/fold_speed.py --run /tmp/smol-run --limit 200 --out bench/results/fold-speed-fp32.json

The three models are loaded side by side in the same dtype (eval's `--dtype auto`: fp32 on the CPU) and read
the run's prompt. Each is scored `--repeats` times, in turn, on the same MedMCQA validation questions with the
scoring `medtune eval` uses (`choice_logprobs`, batch 16); a model's questions/s is its best repeat, so a
moment of noise on a shared machine does not decide the ratio. Also recorded: the largest difference between
the folded and unmerged option probabilities, and whether the two choose the same letters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from medtune.answer import Answerer  # noqa: E402
from medtune.data import load_examples  # noqa: E402
from medtune.evaluate import choice_logprobs  # noqa: E402
from medtune.rundir import RunDir  # noqa: E402

VALIDATION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa" / "validation.jsonl"


def _timed(answerer: Answerer, examples) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    logprobs = choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, examples, 16, progress=False)
    return time.perf_counter() - start, logprobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `medtune train` run folder")
    parser.add_argument("--data", default=str(VALIDATION))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    examples, _ = load_examples(args.data, limit=args.limit)
    folded = Answerer.from_run(args.run, device="cpu", dtype=args.dtype, use_calibration=False)
    unmerged = Answerer.from_run(args.run, device="cpu", dtype=args.dtype, use_calibration=False, fold=False)
    run = RunDir(args.run)
    base_id, config = run.read_manifest()["base_model"]["id"], yaml.safe_load(run.config.read_text())
    loaded = Answerer.from_model(base_id, device="cpu", dtype=args.dtype)
    base = Answerer(loaded.model, loaded.tokenizer, folded.template, loaded.description)  # the run's prompt
    systems = {"base": base, "run, adapter folded": folded, "run, adapter unmerged": unmerged}

    seconds = {name: [] for name in systems}
    logprobs = {}
    for _ in range(args.repeats):
        for name, answerer in systems.items():
            took, logprobs[name] = _timed(answerer, examples)
            seconds[name].append(round(took, 3))
    speed = {name: round(len(examples) / min(times), 2) for name, times in seconds.items()}
    folded_probs, unmerged_probs = logprobs["run, adapter folded"].exp(), logprobs["run, adapter unmerged"].exp()
    result = {
        "run": args.run, "base_model": base_id, "n": len(examples), "dtype": folded.description["dtype"],
        "threads": torch.get_num_threads(), "adapter_folded": folded.description["adapter_folded"],
        "lora": {key: config.get(key) for key in ("lora_r", "lora_target_modules")},
        "seconds": seconds, "questions_per_second": speed,
        "folded_vs_base": round(speed["run, adapter folded"] / speed["base"], 3),
        "unmerged_vs_base": round(speed["run, adapter unmerged"] / speed["base"], 3),
        "max_abs_probability_difference_folded_vs_unmerged": float((folded_probs - unmerged_probs).abs().max()),
        "same_letters_folded_vs_unmerged": bool(torch.equal(folded_probs.argmax(-1), unmerged_probs.argmax(-1))),
        "base_differs_from_run": float((logprobs["base"].exp() - folded_probs).abs().max()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
