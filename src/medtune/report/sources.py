"""What `medtune report` reads: each PATH is recognised by its shape, never by its name.

    run folder          manifest.json (+ metrics.jsonl, config.yaml, report.json, calibration.json,
                        eval/base, eval/tuned, eval/comparison.json when training evaluated before and after)
    evaluation folder   metrics.json (+ predictions.jsonl)
    suite folder        suite.json + one evaluation folder per task
    comparison file     a JSON file written by `medtune compare --json` (or a run's eval/comparison.json)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Evaluation:
    name: str
    path: Path
    metrics: dict


@dataclass
class Comparison:
    name: str
    path: Path
    result: dict


@dataclass
class Suite:
    name: str
    path: Path
    summary: dict
    tasks: list[Evaluation] = field(default_factory=list)


@dataclass
class Run:
    name: str
    path: Path
    manifest: dict
    log: list[dict]
    report: dict
    calibration: dict | None
    evaluations: list[Evaluation] = field(default_factory=list)
    comparison: Comparison | None = None


Source = Run | Evaluation | Suite | Comparison


def read_sources(paths: list[str | Path]) -> list[Source]:
    """Every PATH read as the kind of result it holds, in the order given."""
    if not paths:
        raise ValueError("medtune report needs at least one PATH: a run, evaluation or suite folder, or a "
                         "comparison JSON file")
    sources = [read_source(Path(path)) for path in paths]
    inside = {part.path.resolve() for source in sources if isinstance(source, Run)
              for part in [*source.evaluations, *([source.comparison] if source.comparison else [])]}
    # a run's own evaluations and comparison, given again beside it, are shown once: in the run's section
    return [source for source in sources if isinstance(source, Run) or source.path.resolve() not in inside]


def read_source(path: Path) -> Source:
    if path.is_file():
        return read_comparison(path, path.name)
    if (path / "manifest.json").is_file():
        return read_run(path)
    if (path / "suite.json").is_file():
        return read_suite(path)
    if (path / "metrics.json").is_file():
        return read_evaluation(path, path.name)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a run, evaluation or suite folder, or a comparison "
                                "JSON file")
    raise ValueError(f"{path} is not a run (manifest.json), evaluation (metrics.json) or suite (suite.json) folder; "
                     "give the folder `medtune train` or `medtune eval` wrote")


def read_json(path: Path) -> dict:
    """A JSON object from `path`, naming the file when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-create it with the command that wrote it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object; give a medtune output file")
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a training log; a line cut short by a killed process is left out, not fatal."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [row for row in rows if isinstance(row, dict)]


def read_run(path: Path) -> Run:
    calibration = path / "calibration.json"
    run = Run(name=path.name, path=path, manifest=read_json(path / "manifest.json"),
              log=read_jsonl(path / "metrics.jsonl"),
              report=read_json(path / "report.json") if (path / "report.json").is_file() else {},
              calibration=read_json(calibration) if calibration.is_file() else None)
    for side in ("base", "tuned"):
        if (path / "eval" / side / "metrics.json").is_file():
            run.evaluations.append(read_evaluation(path / "eval" / side, f"{path.name}: {side} model"))
    if (path / "eval" / "comparison.json").is_file():
        run.comparison = read_comparison(path / "eval" / "comparison.json", f"{path.name}: base vs tuned")
    return run


def read_evaluation(path: Path, name: str) -> Evaluation:
    metrics = read_json(path / "metrics.json")
    for key in ("n", "accuracy"):
        if key not in metrics:
            raise ValueError(f"{path / 'metrics.json'} has no {key!r}: it is not a `medtune eval` result")
    return Evaluation(name=name, path=path, metrics=metrics)


def read_suite(path: Path) -> Suite:
    summary = read_json(path / "suite.json")
    if not isinstance(summary.get("tasks"), dict):
        raise ValueError(f"{path / 'suite.json'} has no 'tasks' table: it is not a `medtune eval --suite` result")
    tasks = [read_evaluation(path / task, f"{path.name}: {task}") for task in summary["tasks"]
             if (path / task / "metrics.json").is_file()]
    return Suite(name=path.name, path=path, summary=summary, tasks=tasks)


def read_comparison(path: Path, name: str) -> Comparison:
    result = read_json(path)
    if "verdict" not in result and "tasks" not in result:
        raise ValueError(f"{path} is not a comparison (no 'verdict' or 'tasks'); write one with "
                         "`medtune compare EVAL_A EVAL_B --json > FILE`")
    return Comparison(name=name, path=path, result=result)
