"""Calibration, abstention and option-order robustness of a base model and a tuned run, on the same questions.

For the base model and for the run: accuracy with its 95% CI, ECE (15 equal-width bins) on the raw
probabilities and, for a run with calibration.json, after temperature scaling; AURC; and, under every cyclic
shift of the options, consistency, accuracy per shift and the permutation-averaged (PriDe) accuracy.

    python bench/calibration.py --run /tmp/qs/run --out bench/results/calibration-smollm2.json

The run's base model is read from its manifest; the questions default to the held-out MedMCQA validation
slice shipped with the package (322 rows, every 13th validation row), which the quickstart's run never saw.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from medtune.answer import Answerer
from medtune.data import load_examples
from medtune.evaluate import evaluate_to_dir
from medtune.quickstart import HELD_OUT_FILE, demo_data_path


def summary(metrics: dict) -> dict:
    calibration, robustness = metrics["calibration"], metrics.get("robustness", {})
    return {
        "n": metrics["n"], "accuracy": metrics["accuracy"], "ci95": metrics["ci95"],
        "predicted_distribution": metrics["predicted_distribution"],
        "ece_raw": calibration["raw"]["ece"], "temperature": calibration["temperature"],
        "ece_calibrated": (calibration["calibrated"] or {}).get("ece"),
        "nll_raw": calibration["raw"]["nll"], "nll_calibrated": (calibration["calibrated"] or {}).get("nll"),
        "aurc": metrics["selective"]["aurc"], "selective_confidence": metrics["selective"]["confidence"],
        "consistency": robustness.get("consistency"), "accuracy_per_shift": robustness.get("accuracy_per_shift"),
        "permutation_averaged_accuracy": robustness.get("permutation_averaged_accuracy"),
        "seconds": metrics["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `medtune train` run (e.g. the quickstart's)")
    parser.add_argument("--data", default=None, help="labelled questions (default: the shipped held-out slice)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = args.data or str(demo_data_path(HELD_OUT_FILE))
    examples, _ = load_examples(data, limit=args.limit)
    tuned = Answerer.from_run(args.run, "cpu", "auto")
    base = Answerer.from_model(tuned.description["base_model"], "cpu", "auto")
    results = {"data": data, "run": args.run, "model": tuned.description["base_model"]}
    with tempfile.TemporaryDirectory() as scratch:
        for name, answerer in (("base", base), ("tuned", tuned)):
            metrics = evaluate_to_dir(answerer, examples, Path(scratch) / name, permutations="cyclic")
            results[name] = summary(metrics)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
