"""Overlap checks at MedMCQA's size: 182,822 training rows against the 4,183 validation rows.

The full MedMCQA train split is not stored here, so a stand-in of its size is built from the 2,179 valid rows of
train-sample-original.jsonl (the 2,190-row sample, 11 rows invalid):
- copy 0 of each row is the row itself; copies 1, 2, ... have the id suffixed `-k` and the question's words
  shuffled (random.Random(k)), so their key, question text and 13-grams are new and the rows are not duplicates;
  the sample's questions are long, so this has ~4x the 13-grams a row of validation's questions (the JSON
  gives both counts): a harder case than the real split;
- every 1,000th row is replaced by a planted overlap with a validation question of 13 words or more, in turn:
  an exact copy, the same question with its options in reverse order, and the question inside a longer one
  ("In a recent examination: ... Explain.") -- so the run also checks that it finds what it must (183 rows).
Rows are written as a JSONL file and read back through `load_examples` as `medtune data overlap` reads them.

Timed: loading, `find_overlap`, `exclude_overlap`, `training_fingerprint` (with its JSON size) and
`warn_if_trained_on` over the validation rows, then the whole command in a subprocess. Also the real findings on
the stored files: the train sample, validation and test against each other.

    python bench/overlap.py --out bench/results/overlap.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medtune.data import MCQExample, load_examples
from medtune.data.overlap import exclude_overlap, find_overlap, training_fingerprint, warn_if_trained_on

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmcqa"
MEDMCQA_TRAIN_ROWS = 182_822
PLANT_EVERY = 1000


def _row(example: MCQExample, example_id: str, question: str, options: tuple[str, ...]) -> dict:
    return {"id": example_id, "question": question, "options": dict(zip("ABCDE", options)), "answer": "A"}


def _planted(index: int, source: MCQExample) -> dict:
    kind = index % 3
    if kind == 0:
        return _row(source, f"planted-exact-{index}", source.question, source.options)
    if kind == 1:
        return _row(source, f"planted-question-{index}", source.question, source.options[::-1])
    return _row(source, f"planted-ngram-{index}", f"In a recent examination: {source.question} Explain.",
                source.options)


def build_train(sample: list[MCQExample], evaluated: list[MCQExample], rows: int, path: Path) -> int:
    """Write the stand-in training file; returns how many planted rows it holds."""
    long_questions = [e for e in evaluated if len(e.question.split()) >= 13]
    planted = 0
    with open(path, "w", encoding="utf-8") as handle:
        for position in range(rows):
            copy, example = divmod(position, len(sample))
            source = sample[example]
            if position % PLANT_EVERY == PLANT_EVERY - 1:
                row = _planted(planted, long_questions[planted % len(long_questions)])
                planted += 1
            elif copy == 0:
                row = _row(source, source.id, source.question, source.options)
            else:
                words = source.question.split()
                random.Random(copy).shuffle(words)
                row = _row(source, f"{source.id}-{copy}", " ".join(words), source.options)
            handle.write(json.dumps(row) + "\n")
    return planted


def timed(function, *args):
    """(value, {"wall_s", "cpu_s"}): CPU seconds of this process and its children, as well as wall-clock ones,
    because the 2 cores are shared and the wall clock also counts the time other processes held them."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    value = function(*args)
    return value, {"wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(_cpu_seconds() - cpu, 2)}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def real_findings() -> dict:
    """Overlap among the stored MedMCQA files (each pair: training side first)."""
    files = {"train-sample": "train-sample-original.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
    rows = {name: load_examples(str(DATA / file), require_answer=False, skip_invalid=True)[0]
            for name, file in files.items()}
    pairs = [("train-sample", "validation"), ("train-sample", "test"), ("validation", "test")]
    return {f"{train} vs {evaluated}": find_overlap(rows[train], rows[evaluated]).to_dict()
            for train, evaluated in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=MEDMCQA_TRAIN_ROWS)
    parser.add_argument("--out", default="bench/results/overlap.json")
    args = parser.parse_args()
    sample, _ = load_examples(str(DATA / "train-sample-original.jsonl"), skip_invalid=True)
    validation = str(DATA / "validation.jsonl")
    evaluated, _ = load_examples(validation, require_answer=False)
    result: dict = {"rows": args.rows, "sample_rows": len(sample), "eval_rows": len(evaluated),
                    "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as folder:
        train_file = Path(folder) / "train-standin.jsonl"
        result["planted"] = build_train(sample, evaluated, args.rows, train_file)
        (train, _), result["load"] = timed(lambda: load_examples(str(train_file)))
        report, result["find_overlap"] = timed(find_overlap, train, evaluated)
        (kept, _), result["exclude_overlap"] = timed(exclude_overlap, train, evaluated)
        fingerprint, result["fingerprint"] = timed(training_fingerprint, train)
        warning, result["warn_if_trained_on"] = timed(warn_if_trained_on, fingerprint, evaluated)
        command = [sys.executable, "-m", "medtune.cli", "data", "overlap", "--train", str(train_file),
                   "--eval", validation, "--json"]
        _, result["command"] = timed(lambda: subprocess.run(command, stdout=subprocess.DEVNULL, check=True))
    result["counts"] = {k: v for k, v in report.to_dict().items() if k in ("overlapping_eval_rows",
                                                                          "overlapping_train_rows")}
    result["counts"].update(report.counts())
    result["kept_after_exclude"] = len(kept)
    result["fingerprint_json_bytes"] = len(json.dumps(fingerprint))
    result["fingerprint_hashes"] = {name: len(base64.b64decode(fingerprint[name])) // 6
                                    for name in ("keys", "questions", "ngrams")}
    result["warning"] = warning
    result["load_average_after"] = os.getloadavg()[0]
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    # the stand-in's questions are long; the validation rows show the size per row at MedMCQA's own lengths
    validation_fingerprint = training_fingerprint(evaluated)
    result["validation_fingerprint"] = {"rows": len(evaluated), "json_bytes": len(json.dumps(validation_fingerprint)),
                                        "ngrams": len(base64.b64decode(validation_fingerprint["ngrams"])) // 6}
    result["real"] = {pair: {key: found[key] for key in ("train_rows", "eval_rows", "overlapping_eval_rows",
                                                         "overlapping_train_rows", "exact", "question", "ngram")}
                      for pair, found in real_findings().items()}
    assert report.overlapping_train_rows == result["planted"], "every planted row must be found, and nothing else"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "real"}, indent=1))


if __name__ == "__main__":
    main()
