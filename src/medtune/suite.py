"""`medtune eval --suite medical`: every task of a benchmark suite scored by one model, in one command.

The steps, in the order `run_suite` takes them:

    parse_sources     "TASK=PATH" flags -> {task: path}; "mmlu=FOLDER" names the six MMLU subjects at once
    load_suite        each task's rows (a --source file, else the task's Hub id); a task that cannot be read is
                      skipped with the reason, never dropped in silence
    (the model is loaded only now: reading the data takes seconds, a model minutes, so a bad --source fails fast)
    score_task        one task scored exactly as `medtune eval` scores it -> DIR/<task>/{metrics.json,predictions.jsonl}
    suite_summary     DIR/suite.json: per-task n, accuracy, ci95, baselines; the weighted and macro averages;
                      the skipped tasks; the questions shared by several tasks (the averages count them twice);
                      "throughput": per-task questions/s and MFU (`task_throughput`)
    format_table      the printed table
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from medtune.data import MCQExample
from medtune.evaluate import check_output, evaluate_to_dir
from medtune.rundir import write_json
from medtune.tasks import SUITES, get_task

MMLU_GROUP = "mmlu"  # `--source mmlu=FOLDER`: the released CSVs of every MMLU subject lie in one folder


# ---------------------------------------------------------------- sources


def parse_sources(pairs: list[str] | None, suite: str) -> dict[str, str]:
    """`--source TASK=PATH` flags -> {task: path}; `mmlu=FOLDER` sets every MMLU task of the suite.

    A later flag for the same task wins (so `--source mmlu=F --source mmlu_anatomy=G` reads anatomy from G)."""
    tasks = suite_tasks(suite)
    sources: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--source {pair!r} is not TASK=PATH; e.g. --source medmcqa=validation.jsonl")
        names = [task for task in tasks if task.startswith(f"{MMLU_GROUP}_")] if name == MMLU_GROUP else [name]
        if not names or names[0] not in tasks:
            raise ValueError(f"--source {pair!r}: {name!r} is not a task of the {suite} suite; its tasks are "
                             f"{', '.join(tasks)} (or {MMLU_GROUP}=FOLDER for all MMLU subjects)")
        if not Path(path).exists():
            raise FileNotFoundError(f"--source {pair!r}: {path} does not exist; give the file (or folder) that "
                                    f"holds {name}'s questions")
        sources.update(dict.fromkeys(names, path))
    return sources


def suite_tasks(suite: str) -> tuple[str, ...]:
    try:
        return SUITES[suite]
    except KeyError:
        raise ValueError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}") from None


def source_label(task_name: str, path: str | None) -> str:
    """Where a task's rows come from, as suite.json and the table state it."""
    if path is not None:
        return path
    task = get_task(task_name)
    config = f" ({task.hub_config})" if task.hub_config else ""
    return f"{task.hub_id}{config}, split {task.split}" if task.hub_id else "no Hub copy"


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class TaskRows:
    """One task's scored rows, what loading them did (`LoadReport.to_dict()`), and its few-shot exemplars."""

    examples: list[MCQExample]
    data: dict
    fewshot: tuple[list[MCQExample], str | None] = ([], None)  # (exemplars, the split they came from)


def load_task(task_name: str, path: str | None, limit: int | None, num_fewshot: int = 0, **options) -> TaskRows:
    """The scored split of one task, from `path` (the task's own reader) or, without one, its Hub id; with
    `num_fewshot`, the first K rows of its few-shot split of the same source (`evaluate.load_fewshot`)."""
    from medtune.data import load_examples
    from medtune.evaluate import load_fewshot

    task = get_task(task_name)
    if path is None and task.hub_id is None:
        raise FileNotFoundError(f"{task_name} has no Hub copy in this layout")
    examples, report = load_examples(path, task=task_name, split=task.split, limit=limit, **options)
    if not examples:
        raise ValueError(f"{source_label(task_name, path)} holds no labelled {task.split} questions")
    fewshot = load_fewshot(path, task_name, num_fewshot, examples, **options) if num_fewshot else ([], None)
    return TaskRows(examples, report.to_dict(), fewshot)


def skip_reason(task_name: str, path: str | None, error: Exception) -> str:
    """One line saying why a task was not scored and, for a Hub source, how to score it anyway."""
    reason = " ".join(str(error).split()) or type(error).__name__
    if path is None:
        reason = f"{reason.rstrip('.')}; to score it offline, give --source {task_name}=PATH (a local copy)"
    return reason


def load_suite(tasks: tuple[str, ...], sources: dict[str, str], limit: int | None, num_fewshot: int = 0,
               report=print, **options) -> tuple[dict[str, TaskRows], dict[str, str]]:
    """({task: its rows}, {task: skip reason}) for every task, in suite order.

    A task whose rows cannot be read -- the Hub unreachable, a folder without that subject's file, a file in
    another layout -- is skipped with the reason rather than stopping the other tasks (the table and suite.json
    give the reason). `options` go to `load_examples` (skip_invalid, answer_base)."""
    loaded, skipped = {}, {}
    for name in tasks:
        path = sources.get(name)
        try:
            loaded[name] = load_task(name, path, limit, num_fewshot, **options)
        except (OSError, ValueError) as error:  # ConnectionError is an OSError; DataError a ValueError
            skipped[name] = skip_reason(name, path, error)
            report(f"{name}: skipped (the reason is in the table below)")
            continue
        report(f"{name}: {len(loaded[name].examples)} questions from {source_label(name, path)}")
    return loaded, skipped


def warn_if_trained_on(run_dir: str | None, loaded: dict[str, TaskRows]) -> None:
    """A warning per task whose rows overlap the rows the run trained on (its training fingerprint)."""
    from medtune.rundir import RunDir

    path = RunDir(run_dir).fingerprint if run_dir else None
    if path is None or not path.exists():  # a --model, or a run made before runs kept a fingerprint
        return
    from medtune.data.overlap import warn_if_trained_on as overlap_warning

    fingerprint = json.loads(path.read_text(encoding="utf-8"))
    for name, rows in loaded.items():
        warning = overlap_warning(fingerprint, rows.examples)
        if warning:
            print(f"medtune eval: warning: {name}: {warning}", file=sys.stderr)


# ---------------------------------------------------------------- scoring


def task_template(template, task_name: str, fewshot: tuple[list[MCQExample], str | None]):
    """The prompt a task is scored with: in the harness format, lm-evaluation-harness's own text for that task
    (each benchmark has its own); chat and plain read the same for every task. Exemplars come first."""
    exemplars, split = fewshot
    template = template.for_task(task_name)
    return template.with_fewshot(exemplars, split) if exemplars else template


def score_task(answerer, task_name: str, rows: TaskRows, output: Path, batch_size: int, overwrite: bool,
               permutations: str | None = None, batch_tokens: int | None = None) -> dict:
    """Score one task as `medtune eval --data` does (`evaluate_to_dir`), with that task's prompt. With
    `permutations`, a task whose prompt gives the option order no meaning (harness PubMedQA) is scored without
    them, and a line says why, rather than stopping the suite."""
    from medtune.answer import Answerer
    from medtune.evaluation.robustness import unpermutable

    template = task_template(answerer.template, task_name, rows.fewshot)
    description = {**answerer.description, "prompt_format": template.format, "task": task_name}
    for_task = Answerer(answerer.model, answerer.tokenizer, template, description)
    if permutations not in (None, "none") and unpermutable(template):
        print(f"{task_name}: scored without --permutations: {unpermutable(template)}")
        permutations = None
    return evaluate_to_dir(for_task, rows.examples, output / task_name, batch_size, data=rows.data,
                           overwrite=overwrite, permutations=permutations, batch_tokens=batch_tokens)


# ---------------------------------------------------------------- throughput


def measured_peak_flops(device_type: str, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The best FLOP/s of a square matmul in `dtype` on this device: MFU's denominator, measured rather than read
    off a datasheet, so a CPU shared with other work is judged by what it can do now. A suite measures it before
    and after scoring and keeps the better (`_model_peak`): one short window read 107-111 GFLOP/s after a
    minute of scoring on a CPU that sustains 186-191 in fp32, which put the suite's MFU above 100%."""
    size = 4096 if device_type == "cuda" else 2048
    a = torch.randn(size, size, dtype=dtype, device=device_type)
    b = torch.randn(size, size, dtype=dtype, device=device_type)
    sync = getattr(getattr(torch, device_type, None), "synchronize", lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def _model_peak(model) -> tuple[float, str]:
    """(measured peak FLOP/s, dtype name) for the model's device and weight dtype."""
    parameter = next(model.parameters())
    dtype = parameter.dtype if parameter.dtype.is_floating_point else torch.float32
    return measured_peak_flops(parameter.device.type, dtype), str(dtype).removeprefix("torch.")


def non_embedding_parameters(model) -> int:
    """Parameters in every token's matmuls: all but the input embedding (a tied head runs on the scored
    positions only, so it is not counted either)."""
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def task_throughput(metrics: dict, parameters: int, peak: float | None) -> dict:
    """A task's scoring speed: questions/s, the tokens read and computed (a cached few-shot prefix is computed
    once) and MFU = 2 x non-embedding parameters x computed tokens / seconds / the measured peak."""
    scoring, seconds = metrics.get("scoring") or {}, metrics.get("seconds")
    computed = scoring.get("computed_tokens")
    mfu = round(2 * parameters * computed / seconds / peak, 4) if seconds and computed and peak else None
    return {"questions_per_second": metrics.get("questions_per_second"), "seconds": seconds,
            "prompt_tokens": scoring.get("prompt_tokens"), "computed_tokens": computed,
            "cached_prefix_tokens": scoring.get("cached_prefix_tokens"), "mfu": mfu}


def suite_throughput(model, results: dict[str, dict], peak_before: float) -> dict:
    """{"peak_flops", "non_embedding_parameters", "tasks": {task: `task_throughput`}} for suite.json; the peak is
    the better of `peak_before` (measured before scoring) and one measured now."""
    after, dtype = _model_peak(model)
    peak, parameters = max(peak_before, after), non_embedding_parameters(model)
    return {"peak_flops": peak, "peak_flops_before_after": [peak_before, after], "peak_dtype": dtype,
            "non_embedding_parameters": parameters,
            "tasks": {name: task_throughput(metrics, parameters, peak) for name, metrics in results.items()}}


# ---------------------------------------------------------------- the summary


def averages(results: dict[str, dict]) -> dict:
    """The weighted average (all scored questions pooled: lm-evaluation-harness's group score, each question
    counts once per task it is in) and the macro average (each task counts once, whatever its size)."""
    if not results:
        return {"weighted": None, "macro": None}
    total = sum(metrics["n"] for metrics in results.values())
    weighted = sum(metrics["accuracy"] * metrics["n"] for metrics in results.values()) / total
    macro = sum(metrics["accuracy"] for metrics in results.values()) / len(results)
    return {"weighted": weighted, "macro": macro}


def cross_task_duplicates(examples: dict[str, list[MCQExample]]) -> dict:
    """Questions (same `MCQExample.key()`: normalized question + options) scored in more than one task.

    MMLU's clinical_knowledge and college_medicine share items, so the averages count them twice.
    `questions`: distinct shared questions; `extra_scorings`: scorings beyond each one's first;
    `pairs`: shared questions per pair of tasks; `items`: {task: [ids]} per shared question."""
    where: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for task, rows in examples.items():
        for example in rows:
            where[example.key()][task].append(example.id)
    items = [dict(tasks) for tasks in where.values() if len(tasks) > 1]
    pairs: dict[str, int] = defaultdict(int)
    for tasks in items:
        names = list(tasks)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                pairs[f"{first} & {second}"] += 1
    return {"questions": len(items), "extra_scorings": sum(len(tasks) - 1 for tasks in items),
            "pairs": dict(pairs), "items": items}


def suite_summary(suite: str, results: dict[str, dict], skipped: dict[str, str], duplicates: dict,
                  extra: dict) -> dict:
    """suite.json: the issue's four keys (tasks, average, skipped) first, then what a reader needs to trust them."""
    tasks = {name: {key: metrics[key] for key in ("n", "accuracy", "ci95", "baselines")}
             for name, metrics in results.items()}
    return {"tasks": tasks, "average": averages(results), "skipped": skipped, "suite": suite,
            "n": sum(metrics["n"] for metrics in results.values()), "duplicates": duplicates, **extra}


def format_table(summary: dict) -> str:
    """The suite as a fixed-width table: one row per task, the two averages, then skips and shared questions."""
    lines = [f"{'task':<28} {'n':>6} {'accuracy':>8}  {'95% CI':<13} {'random':>6} {'majority':>8} "
             f"{'q/s':>8} {'MFU':>6}"]
    speeds = (summary.get("throughput") or {}).get("tasks", {})
    for name, row in summary["tasks"].items():
        low, high = row["ci95"]
        baselines, speed = row["baselines"], speeds.get(name, {})
        rate, mfu = speed.get("questions_per_second"), speed.get("mfu")
        lines.append(f"{name:<28} {row['n']:>6} {row['accuracy']:>8.3f}  {low:.3f}-{high:.3f}   "
                     f"{baselines['random']:>6.3f} {baselines['majority']:>8.3f} "
                     f"{rate if rate is not None else '-':>8} {f'{mfu:.1%}' if mfu is not None else '-':>6}")
    average = summary["average"]
    if average["weighted"] is not None:
        lines.append(f"{'average, weighted by n':<28} {summary['n']:>6} {average['weighted']:>8.3f}")
        lines.append(f"{'average, macro (per task)':<28} {len(summary['tasks']):>6} {average['macro']:>8.3f}")
    for name, reason in summary["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    duplicates = summary["duplicates"]
    if duplicates["questions"]:
        pairs = ", ".join(f"{pair} ({count})" for pair, count in duplicates["pairs"].items())
        lines.append(f"{duplicates['questions']} questions appear in more than one task ({pairs}); the averages "
                     f"count them {duplicates['extra_scorings']} extra times")
    return "\n".join(lines)


# ---------------------------------------------------------------- the command


def check_suite_output(output: Path, tasks: tuple[str, ...], overwrite: bool) -> None:
    """Refuse, before any loading, to write over an earlier suite (or any of its task folders)."""
    if not overwrite and (output / "suite.json").exists():
        raise FileExistsError(f"{output} already holds a suite evaluation (suite.json); choose another --output "
                              "or pass --overwrite to replace it")
    for name in tasks:
        check_output(output / name, overwrite)


def run_suite(load_answerer: Callable, suite: str, output: Path, sources: list[str] | None = None,
              limit_per_task: int | None = None, batch_size: int = 16, overwrite: bool = False,
              num_fewshot: int = 0, run_dir: str | None = None, permutations: str | None = None,
              batch_tokens: int | None = None, **load_options) -> dict:
    """Score every task of `suite`; write DIR/<task>/ and DIR/suite.json; print the table; return the summary.

    `load_answerer()` returns the `Answerer`; it is called after the data is read (seconds) so a bad source
    fails before the model loads (minutes). `run_dir`: the run being scored, to warn about rows it trained on.
    `load_options` go to `load_examples` (skip_invalid, answer_base). `permutations`: see `score_task`;
    `batch_tokens`: the token budget per forward pass (`evaluate.choice_logprobs`)."""
    tasks = suite_tasks(suite)
    paths = parse_sources(sources, suite)
    check_suite_output(output, tasks, overwrite)
    loaded, skipped = load_suite(tasks, paths, limit_per_task, num_fewshot, **load_options)
    warn_if_trained_on(run_dir, loaded)
    answerer = load_answerer()
    peak_before, _ = _model_peak(answerer.model)
    started = time.perf_counter()
    results = {name: score_task(answerer, name, rows, output, batch_size, overwrite, permutations, batch_tokens)
               for name, rows in loaded.items()}
    seconds = time.perf_counter() - started
    scored = sum(metrics["n"] for metrics in results.values())
    extra = {"sources": {name: source_label(name, paths.get(name)) for name in tasks},
             "limit_per_task": limit_per_task, "num_fewshot": num_fewshot,
             "prompt": prompt_note(answerer.template, num_fewshot),
             "model": answerer.description, "seconds": round(seconds, 3),
             "questions_per_second": round(scored / seconds, 2) if seconds else None,
             "throughput": suite_throughput(answerer.model, results, peak_before)}
    duplicates = cross_task_duplicates({name: rows.examples for name, rows in loaded.items()})
    summary = suite_summary(suite, results, skipped, duplicates, extra)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "suite.json", summary)
    print(format_table(summary))
    print(f"-> {output / 'suite.json'}")
    return summary


def prompt_note(template, num_fewshot: int = 0) -> str:
    """What prompt the suite's figures come from: never a mix of the harness's and the run's own."""
    if template.format == "harness":
        return f"harness: each task's own lm-evaluation-harness prompt, {num_fewshot}-shot"
    return f"{template.format}: the run's (or model's) own prompt, the same for every task"
