"""Training on several sources at once: each read by its own reader, and each epoch's rows drawn by weight.

A mixture is `TrainConfig.data` given as a list of `DataSource` entries (one source is the one-entry case).
Without weights an epoch is every row once, in a seeded shuffle, exactly as with one source. With weights an
epoch still draws as many rows as all sources hold together (N), and source k gives round(N * w_k / sum(w))
of them: a source smaller than its share is repeated (whole seeded passes, then part of one), a larger one is
subsampled, with a new draw every epoch, so every row is eventually seen and any step can be recomputed from
the seed (which is how `--resume` finds the same batches).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch

from medtune.config import DataSource, TrainConfig, parse_source
from medtune.data import MCQExample, is_local, load_examples
from medtune.data.overlap import exclude_overlap, find_overlap


@dataclass
class TrainingRows:
    """Training examples and, for each, the index of the source it came from."""

    examples: list[MCQExample]
    source_of: list[int]

    def keep(self, kept: list[MCQExample]) -> TrainingRows:
        """The rows of `kept` (a subset of these examples, in order), with their sources: matched by identity,
        since ids and even questions may repeat across sources."""
        wanted = {id(example) for example in kept}
        pairs = [(e, k) for e, k in zip(self.examples, self.source_of) if id(e) in wanted]
        return TrainingRows([e for e, _ in pairs], [k for _, k in pairs])

    def counts(self, n_sources: int) -> list[int]:
        found = Counter(self.source_of)
        return [found[k] for k in range(n_sources)]


def load_source(entry: DataSource, config: TrainConfig, split: str | None, limit: int | None):
    """(examples, LoadReport) of one source, through the reader its task names (or the detected one)."""
    return load_examples(entry.source, task=entry.task, columns=entry.columns, split=split,
                         answer_base=config.answer_base, skip_invalid=config.skip_invalid, limit=limit)


def load_sources(config: TrainConfig, log) -> tuple[TrainingRows, list[dict]]:
    """Every training source, read and validated; `limit` applies to each source. Returns the rows with their
    sources and one report dict per source (its LoadReport plus task and weight)."""
    rows, reports = TrainingRows([], []), []
    for index, entry in enumerate(config.sources()):
        # train_split for local sources too: PubMedQA beside test_ground_truth.json has `train` and `test`, and
        # a file without it (one split, `all`, the test questions included) is refused until asked for by name
        examples, report = load_source(entry, config, entry.split or config.train_split, config.limit)
        if not examples:
            raise ValueError(f"training source {entry.source} has no valid rows to train on; check the file, "
                             "or drop it from data")
        log(f"training data: {entry.source}: {report.rows_loaded} rows"
            + (f" ({report.answer_base_reason})" if report.answer_base_reason else "")
            + (f"; skipped {report.skipped}" if report.skipped else ""))
        rows.examples += examples
        rows.source_of += [index] * len(examples)
        reports.append(report.to_dict() | {"weight": entry.weight})
    return rows, reports


def combined_report(reports: list[dict]) -> dict:
    """The mixture's `train` report: the sources' counts added up (one source: its own report)."""
    if len(reports) == 1:
        return reports[0]
    skipped: Counter = Counter()
    for report in reports:
        skipped.update(report["skipped"])
    return {"source": [report["source"] for report in reports],
            "rows_read": sum(report["rows_read"] for report in reports),
            "rows_loaded": sum(report["rows_loaded"] for report in reports), "skipped": dict(skipped)}


def draw_counts(n: int, weights: tuple[float, ...]) -> list[int]:
    """Rows per source in an epoch of `n` rows: n * w_k / sum(w), rounded so they add up to `n` exactly
    (largest remainders get the leftover rows)."""
    exact = [n * weight / sum(weights) for weight in weights]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda k: counts[k] - exact[k])
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


def epoch_order(epoch: int, source_of: list[int], weights: tuple[float, ...], seed: int) -> list[int]:
    """Row indices of one weighted epoch (len(source_of) of them), in a seeded shuffle."""
    generator = torch.Generator().manual_seed(seed + epoch)
    picked: list[int] = []
    for k, count in enumerate(draw_counts(len(source_of), weights)):
        rows = [i for i, source in enumerate(source_of) if source == k]
        passes = [torch.randperm(len(rows), generator=generator) for _ in range(math.ceil(count / len(rows)))]
        picked += [rows[i] for i in torch.cat(passes)[:count].tolist()] if passes else []
    return [picked[i] for i in torch.randperm(len(picked), generator=generator).tolist()]


def mixture_weights(config: TrainConfig) -> tuple[float, ...] | None:
    """The sources' weights, or None when the run draws every row once per epoch."""
    weights = tuple(entry.weight for entry in config.sources())
    return None if None in weights else weights


def source_summaries(reports: list[dict], trained: TrainingRows, weights: tuple[float, ...] | None) -> list[dict]:
    """What the manifest keeps of each source: where it came from, its hash, its reader, its rows and its share
    of each epoch's rows (by weight, or by its row count when unweighted)."""
    counts = trained.counts(len(reports))
    total = sum(counts)
    draws = draw_counts(total, weights) if weights else counts
    keys = ("source", "task", "layout", "split", "sha256", "revision", "fingerprint", "rows_read", "rows_loaded",
            "skipped", "weight")
    return [{key: report[key] for key in keys if report.get(key) is not None}
            | {"trained_rows": count, "share": round(draw / total, 6) if total else 0.0}
            for report, count, draw in zip(reports, counts, draws)]


def check_against_eval(config: TrainConfig, rows: TrainingRows, log) -> tuple[TrainingRows, dict, set[str]]:
    """Check the training rows against the evaluation data: the overlap report (and, with exclude_overlap, the
    rows without overlap), and the evaluation keys the dev slice must avoid."""
    if not config.eval_data:
        return rows, {}, set()
    entry = parse_source(config.eval_data)
    # as `medtune eval` reads it: a task's scored split (PubMedQA: `test`), a local file whole, and eval_split
    # for a Hub id named without a task
    split = None if is_local(entry.source) or entry.task else config.eval_split
    evaluation, eval_report = load_source(entry, config, split, config.eval_limit)
    if config.exclude_overlap:
        kept, overlap = exclude_overlap(rows.examples, evaluation)
        rows = rows.keep(kept)
    else:
        overlap = find_overlap(rows.examples, evaluation)
    found = overlap.overlapping_train_rows
    if found:
        log(f"{'dropped' if config.exclude_overlap else 'warning:'} {found} training rows that overlap the "
            f"evaluation data ({len(overlap.eval_ids())} of its {overlap.eval_rows} rows)"
            + ("" if config.exclude_overlap else "; exclude_overlap=true drops them"))
    reports = {"eval": eval_report.to_dict(), "overlap": overlap.to_dict(),
               "excluded_overlap": found if config.exclude_overlap else 0}
    return rows, reports, {example.key() for example in evaluation}


def _data_summary(report: dict) -> dict:
    """What the manifest keeps of a data report: where it came from, its hash and its counts."""
    keys = ("source", "task", "layout", "split", "sha256", "revision", "fingerprint", "rows_read", "rows_loaded",
            "skipped", "answer_base")
    return {key: report[key] for key in keys if key in report}


def manifest_data(reports: dict) -> dict:
    """The manifest's data section: the training and evaluation sources, each mixture source with its share,
    the overlap with the evaluation data, and the rows trained on."""
    kept = ("sources", "overlap", "excluded_overlap", "context_truncated", "train_rows", "dev_rows")
    return ({name: _data_summary(reports[name]) for name in ("train", "eval") if name in reports}
            | {name: reports[name] for name in kept if name in reports})
