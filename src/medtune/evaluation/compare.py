"""Did it help? Two evaluations of the same questions, compared question by question.

A paired comparison uses what two unpaired accuracies throw away: on the same questions, most answers are right
(or wrong) under both models, and only the discordant questions carry evidence. Two statistics, both standard:

- McNemar's exact test: under "no difference" each discordant question is equally likely to favour either model,
  so the count favouring B is Binomial(discordant, 1/2); the p-value is two-sided.
- A paired bootstrap of the accuracy difference: questions are resampled with replacement (10,000 times, seeded)
  and the interval is the 2.5th and 97.5th percentile of the resampled differences.

The difference of two accuracies on one resample depends only on how many resampled questions favour A, favour B
or neither, so each resample is drawn as one multinomial count of those three kinds: the same distribution as
resampling question indices, at a cost independent of the number of questions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 10_000
SEED = 0
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a
    difference_ci95: tuple[float, float]
    mcnemar_p: float
    a_only_correct: int
    b_only_correct: int
    verdict: str

    def to_dict(self) -> dict:
        return {**asdict(self), "difference_ci95": list(self.difference_ci95)}


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: 2 x P(X <= min) for X ~ Binomial(a_only + b_only, 1/2), capped at 1."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def bootstrap_difference_ci(strata: list[tuple[int, int, int]], resamples: int = RESAMPLES,
                            seed: int = SEED, weights: list[float] | None = None) -> tuple[float, float]:
    """95% percentile interval of a paired accuracy difference (B minus A).

    `strata` holds (a_only, b_only, n) per group of questions; each group is resampled on its own (a stratified
    bootstrap), and the difference is the `weights`-weighted sum of the groups' differences (default: one group,
    weight 1; pass 1/k each for the mean of k tasks)."""
    rng = np.random.default_rng(seed)
    weights = weights or [1.0] * len(strata)
    total = np.zeros(resamples)
    for (a_only, b_only, n), weight in zip(strata, weights):
        counts = rng.multinomial(n, [a_only / n, b_only / n, 1 - (a_only + b_only) / n], size=resamples)
        total += weight * (counts[:, 1] - counts[:, 0]) / n
    low, high = np.quantile(total, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


def compare_outcomes(correct_a: list[bool], correct_b: list[bool], names: tuple[str, str] = ("A", "B")) -> Comparison:
    """The paired comparison of two models' right/wrong outcomes on the same questions, in the same order."""
    n = len(correct_a)
    if n == 0 or n != len(correct_b):
        raise ValueError("a paired comparison needs the same, non-empty list of questions on both sides")
    a_only = sum(a and not b for a, b in zip(correct_a, correct_b))
    b_only = sum(b and not a for a, b in zip(correct_a, correct_b))
    accuracy_a, accuracy_b = sum(correct_a) / n, sum(correct_b) / n
    ci = bootstrap_difference_ci([(a_only, b_only, n)])
    p = mcnemar_exact_p(a_only, b_only)
    return Comparison(n, accuracy_a, accuracy_b, accuracy_b - accuracy_a, ci, p, a_only, b_only,
                      verdict(accuracy_b - accuracy_a, ci, p, names))


def verdict(difference: float, ci: tuple[float, float], p: float | None, names: tuple[str, str]) -> str:
    """One line a reader can act on; 'no significant difference' whenever the test (or the interval) says so."""
    a, b = names
    interval = f"95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} points"
    test = f", McNemar p = {p:.3g}" if p is not None else ""
    significant = (p is None or p < ALPHA) and not ci[0] <= 0 <= ci[1]
    if not significant:
        return f"no significant difference between {a} and {b}: {100 * difference:+.1f} points ({interval}{test})"
    better, worse = (b, a) if difference > 0 else (a, b)
    return f"{better} is better than {worse} by {100 * abs(difference):.1f} points ({interval}{test})"


# ---------------------------------------------------------------- evaluation folders


def read_outcomes(folder: Path) -> dict[str, dict]:
    """id -> prediction record, from an eval folder's predictions.jsonl, naming the file on any problem."""
    path = Path(folder) / "predictions.jsonl"
    if not path.is_file():
        raise ValueError(f"{folder} is not an evaluation folder: {path.name} is missing (run `medtune eval` first)")
    records: dict[str, dict] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                key, gold = str(record["id"]), record["gold"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a prediction record with 'id' and 'gold' ({error})") from None
            if key in records:
                raise ValueError(f"{path}:{number}: field 'id': {key!r} occurs twice")
            records[key] = {"gold": gold, "pred": record.get("pred"), "subject": record.get("subject")}
    return records


def compare_evaluations(folder_a: Path, folder_b: Path, warn=print) -> dict:
    """Compare two eval folders on the questions both scored (matched by id)."""
    keys, records, right_a, right_b = _paired_outcomes(folder_a, folder_b, warn)
    result = compare_outcomes(right_a, right_b, (str(folder_a), str(folder_b))).to_dict()
    result["per_subject"] = _per_subject(keys, records, right_a, right_b)
    result["method"] = _method()
    return result


def _paired_outcomes(folder_a: Path, folder_b: Path, warn) -> tuple[list[str], dict, list[bool], list[bool]]:
    """(shared ids, A's records, A right?, B right?) for the questions both folders scored, in A's order."""
    a, b = read_outcomes(folder_a), read_outcomes(folder_b)
    shared = [key for key in a if key in b]
    if not shared:
        raise ValueError(f"{folder_a} and {folder_b} share no question id: they did not score the same questions")
    if len(shared) != len(a) or len(shared) != len(b):
        warn(f"warning: comparing the {len(shared)} questions both scored; {len(a) - len(shared)} only in "
             f"{folder_a}, {len(b) - len(shared)} only in {folder_b}")
    mismatched = [key for key in shared if a[key]["gold"] != b[key]["gold"]]
    if mismatched:
        raise ValueError(f"question {mismatched[0]!r} has gold {a[mismatched[0]]['gold']!r} in {folder_a} and "
                         f"{b[mismatched[0]]['gold']!r} in {folder_b}: these are different questions")
    right_a = [a[key]["pred"] == a[key]["gold"] for key in shared]
    right_b = [b[key]["pred"] == b[key]["gold"] for key in shared]
    return shared, a, right_a, right_b


def _per_subject(keys: list[str], records: dict, right_a: list[bool], right_b: list[bool]) -> dict:
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if records[key]["subject"]:
            groups.setdefault(records[key]["subject"], []).append(index)
    return {subject: {"n": len(rows), "accuracy_a": sum(right_a[i] for i in rows) / len(rows),
                      "accuracy_b": sum(right_b[i] for i in rows) / len(rows),
                      "difference": sum(right_b[i] - right_a[i] for i in rows) / len(rows)}
            for subject, rows in sorted(groups.items())}


def _method() -> dict:
    return {"bootstrap": f"paired, {RESAMPLES} resamples, seed {SEED}, percentile interval",
            "test": "McNemar exact (two-sided binomial on the discordant questions)", "alpha": ALPHA}


# ---------------------------------------------------------------- suite folders


def is_suite(folder: Path) -> bool:
    return (Path(folder) / "suite.json").is_file()


def compare_suites(folder_a: Path, folder_b: Path, warn=print) -> dict:
    """Per task (the tasks both suites scored), and on the two averages: `weighted` pools every shared question
    (the suite's weighted average), `macro` is the mean of the per-task differences (a bootstrap stratified by
    task; no single McNemar test applies to a mean of tasks)."""
    tasks_a = json.loads((Path(folder_a) / "suite.json").read_text())["tasks"]
    tasks_b = json.loads((Path(folder_b) / "suite.json").read_text())["tasks"]
    shared = [task for task in tasks_a if task in tasks_b]
    if not shared:
        raise ValueError(f"{folder_a} and {folder_b} share no task")
    per_task, pooled_a, pooled_b, strata = {}, [], [], []
    for task in shared:
        _, _, right_a, right_b = _paired_outcomes(Path(folder_a) / task, Path(folder_b) / task, warn)
        per_task[task] = result = compare_evaluations(Path(folder_a) / task, Path(folder_b) / task, lambda _: None)
        pooled_a += right_a
        pooled_b += right_b
        strata.append((result["a_only_correct"], result["b_only_correct"], result["n"]))
    names = (str(folder_a), str(folder_b))
    weighted = compare_outcomes(pooled_a, pooled_b, names).to_dict()
    macro_difference = sum(per_task[task]["difference"] for task in shared) / len(shared)
    macro_ci = bootstrap_difference_ci(strata, weights=[1 / len(shared)] * len(shared))
    macro = {"difference": macro_difference, "difference_ci95": list(macro_ci),
             "verdict": verdict(macro_difference, macro_ci, None, names)}
    return {"tasks": per_task, "average": {"weighted": weighted, "macro": macro},
            "only_in_one": sorted(set(tasks_a) ^ set(tasks_b)), "method": _method()}


def compare(folder_a: str | Path, folder_b: str | Path, warn=print) -> dict:
    """`medtune compare`: two eval folders, or two suite folders."""
    folder_a, folder_b = Path(folder_a), Path(folder_b)
    for folder in (folder_a, folder_b):
        if not folder.is_dir():
            raise ValueError(f"{folder} does not exist: give two `medtune eval` output folders")
    if is_suite(folder_a) != is_suite(folder_b):
        raise ValueError("give two eval folders or two suite folders, not one of each")
    return compare_suites(folder_a, folder_b, warn) if is_suite(folder_a) else compare_evaluations(
        folder_a, folder_b, warn)


def format_comparison(result: dict) -> str:
    """The printed form: one line per task (suites), then the verdict."""
    def line(name: str, r: dict) -> str:
        low, high = r["difference_ci95"]
        return (f"{name:<28} n={r['n']:<6} A {r['accuracy_a']:.3f}  B {r['accuracy_b']:.3f}  "
                f"diff {100 * r['difference']:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]  "
                f"McNemar p={r['mcnemar_p']:.3g}  (A only {r['a_only_correct']}, B only {r['b_only_correct']})")

    if "tasks" not in result:
        return f"{line('all questions', result)}\n{result['verdict']}"
    lines = [line(task, r) for task, r in result["tasks"].items()]
    lines.append(line("average (weighted)", result["average"]["weighted"]))
    macro = result["average"]["macro"]
    low, high = macro["difference_ci95"]
    lines.append(f"{'average (macro)':<28} diff {100 * macro['difference']:+.1f} pts [{100 * low:+.1f}, "
                 f"{100 * high:+.1f}]")
    lines.append(f"weighted: {result['average']['weighted']['verdict']}")
    lines.append(f"macro: {macro['verdict']}")
    return "\n".join(lines)
