"""Where rows come from and which reader parses them: local files in each family's official layout, Hub datasets,
and `load_examples`, the one entry point every command reads questions through.

The reader is the task's (`--task`), the user's mapping (`--columns`), or detected from the file's shape; the
choice and the reason are stated in the `LoadReport`, so a run records how its data was read.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from medtune.data import columns, medmcqa, medqa, mmlu, pubmedqa
from medtune.data.schema import DataError, LoadReport, MCQExample, RawRow
from medtune.tasks import TASKS, Task, get_task

DEFAULT_HUB_DATASET = "openlifescienceai/medmcqa"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
NO_LAYOUT = ("matches no known layout; expected MedMCQA rows (opa..opd + cop, choices + answer, or options + letter "
             "answer), MedQA JSONL (question, options, answer_idx), PubMedQA's ori_pqal.json (an object keyed by "
             "PMID with QUESTION and CONTEXTS), an MMLU CSV named <subject>_<split>.csv (no header: question, A, B, "
             "C, D, answer letter), or your own columns named with --columns")


@dataclass
class _Read:
    """Rows of one split, and how they were chosen."""

    rows: list[RawRow]
    layout: str
    reason: str
    split: str
    stem: str  # ids of rows that carry none: f"{stem}-{row:05d}"
    file: Path | None = None  # the local file read (hashed into the report)
    hub: dict | None = None  # Hub revision and fingerprint


def is_local(source: str) -> bool:
    return Path(source).exists() or source.endswith(LOCAL_SUFFIXES)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- rows of a plain file (one object per row)


def _read_rows(path: Path, document=None) -> list[RawRow]:
    """JSONL / JSON / CSV with a header / Parquet -> rows; `document` is a .json file already parsed."""
    name = path.name
    if path.suffix == ".jsonl":
        return list(_jsonl_rows(path))
    if path.suffix == ".json":
        return _json_rows(_load_json(path) if document is None else document, name)
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            return [RawRow(f"{name}:{reader.line_num}", _decode_csv_cells(values)) for values in reader]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with `datasets`

        return [RawRow(f"{name}:row {number}", values)
                for number, values in enumerate(pq.read_table(path).to_pylist(), start=1)]
    raise ValueError(f"{path}: unsupported data file type; use one of {', '.join(LOCAL_SUFFIXES)}")


def _jsonl_rows(path: Path):
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRow(f"{path.name}:{number}", None, f"not valid JSON ({exc.msg})")
                continue
            yield RawRow(f"{path.name}:{number}", values if isinstance(values, dict) else None, "not an object")


def _load_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name}:{exc.lineno}", "(file)", f"not valid JSON ({exc.msg})", "bad_json") from exc


def _json_rows(document, name: str) -> list[RawRow]:
    rows = document.get("data", document) if isinstance(document, dict) else document
    if not isinstance(rows, list):
        raise DataError(name, "(file)", "expected a JSON list of rows (or {'data': [...]})", "bad_json")
    return [RawRow(f"{name}:item {number}", values if isinstance(values, dict) else None, "not an object")
            for number, values in enumerate(rows, start=1)]


def _decode_csv_cells(values: dict) -> dict:
    """CSV has no lists or nulls: JSON-looking cells ("[...]", "{...}") are decoded, empty cells become None."""
    decoded = {}
    for key, cell in values.items():
        if cell is None or cell == "":
            decoded[key] = None
        elif cell[:1] in "[{":
            try:
                decoded[key] = json.loads(cell)
            except json.JSONDecodeError:
                decoded[key] = cell
        else:
            decoded[key] = cell
    return decoded


def _row_layout(rows: list[RawRow]) -> tuple[str, str] | None:
    """The family a file of plain rows belongs to, from the first row that parsed, with the reason."""
    values = next((row.values for row in rows if row.values is not None), None)
    if values is None:
        return None
    if medqa.is_medqa_row(values):
        return "medqa", "its rows hold 'options' and 'answer_idx' (MedQA)" if "sent1" not in values else \
            "its rows hold 'sent1' and 'ending0'.. (MedQA, GBaker's Hub schema)"
    if pubmedqa.is_pubmedqa_row(values):
        return "pubmedqa", "its rows hold a PubMedQA question with its abstract (QUESTION/CONTEXTS or pubid/context)"
    if "opa" in values or "choices" in values or "options" in values:
        return "medmcqa", f"its rows hold MedMCQA's {medmcqa.schema(values, '')} schema"
    return None


# ---------------------------------------------------------------- local sources


def _read_local(path: Path, task: Task | None, mapping: dict | None, split: str | None) -> _Read:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file")
    if mapping is not None:
        if path.is_dir():
            raise ValueError(f"{path}: --columns reads one file (CSV, JSONL, JSON or Parquet), not a folder")
        rows = _read_rows(path)
        columns.check_columns(rows, mapping, path.name)
        return _Read(rows, "columns", "--columns maps the file's own columns", "all", path.stem, path)
    if task is not None:
        return _read_layout(path, task.layout, f"--task {task.name}", task, split)
    return _detect_local(path, split)


def _detect_local(path: Path, split: str | None) -> _Read:
    """The rows of a local source whose reader is chosen by its shape, with the reason."""
    if path.is_dir():
        if (path / pubmedqa.PQAL_FILE).exists():
            return _read_layout(path, "pubmedqa", f"the folder holds {pubmedqa.PQAL_FILE} (PubMedQA)", None, split)
        if any(mmlu.name_parts(found) for found in path.rglob("*.csv")):
            return _read_layout(path, "mmlu", "the folder holds CSVs named <subject>_<split>.csv (MMLU)", None, split)
        raise ValueError(f"{path}: a folder that {NO_LAYOUT}")
    if path.suffix == ".csv" and mmlu.looks_like_mmlu_csv(path):
        return _read_layout(path, "mmlu", "a headerless 6-column CSV named <subject>_<split>.csv (MMLU)", None, split)
    document = _load_json(path) if path.suffix == ".json" else None
    if pubmedqa.is_pqal_document(document):
        reason = "a JSON object keyed by PMID whose entries hold QUESTION and CONTEXTS (PubMedQA)"
        return _read_layout(path, "pubmedqa", reason, None, split, document)
    rows = _read_rows(path, document)
    found = _row_layout(rows)
    if found is None:
        raise ValueError(f"{path}: {NO_LAYOUT}")
    return _Read(rows, *found, "all", path.stem, path)  # MedMCQA, MedQA and PubMedQA rows: one split per file


def _read_layout(path: Path, layout: str, reason: str, task: Task | None, split: str | None,
                 document=None) -> _Read:
    if layout == "mmlu":
        found, subject, chosen = mmlu.find_csv(path, task.subject if task else None, split)
        return _Read(mmlu.read_csv(found, subject), layout, reason, chosen, found.stem, found)
    if layout == "pubmedqa" and (path.is_dir() or path.suffix == ".json"):
        file = pubmedqa.pqal_path(path)
        document = _load_json(file) if document is None or file != path else document
        if not pubmedqa.is_pqal_document(document):  # a JSON list of rows in a Hub schema: one split
            return _Read(_json_rows(document, file.name), layout, reason, "all", file.stem, file)
        rows, chosen = pubmedqa.read_pqal(file, document, split, task.split if task else "test")
        return _Read(rows, layout, reason, chosen, file.stem, file)
    # MedMCQA, MedQA and plain rows of PubMedQA are files of one split each
    return _Read(_read_rows(path, document), layout, reason, "all", path.stem, path)


# ---------------------------------------------------------------- Hub sources


def _read_hub(dataset_id: str, split: str, config: str | None = None) -> tuple[list[RawRow], dict]:
    """The split's rows, and what identifies them: the dataset's resolved Hub commit and `datasets`' fingerprint
    of the loaded split (a hash of its files and processing), so a run records exactly what it read."""
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from medtune.modeling import hub_reachable

    if not hub_reachable():
        raise ConnectionError(
            f"cannot load dataset '{dataset_id}': the Hugging Face Hub is not reachable (or HF_HUB_OFFLINE is set) "
            "and it is not a local file. Pass a local JSONL/JSON/Parquet/CSV file instead."
        )
    dataset = load_dataset(dataset_id, config, split=split)
    try:
        revision = HfApi().dataset_info(dataset_id).sha
    except Exception:  # the rows loaded; a failed metadata call must not stop the run, and None says it failed
        revision = None
    label = f"{dataset_id}[{config + ':' if config else ''}{split}]"
    rows = [RawRow(f"{label}:row {number}", values) for number, values in enumerate(dataset, start=1)]
    return rows, {"revision": revision, "fingerprint": getattr(dataset, "_fingerprint", None)}


def _read_hub_source(source: str, task: Task | None, split: str | None) -> _Read:
    """`source` is a Hub id, optionally `id:config` (e.g. qiaojin/PubMedQA:pqa_labeled)."""
    dataset_id, _, config = source.partition(":")
    if not config and task is not None and dataset_id == task.hub_id:
        config = task.hub_config
    split = split or (task.split if task else "train")
    rows, hub = _read_hub(dataset_id, split, config or None)
    layout, reason = _hub_layout(dataset_id, task, rows)
    return _Read(rows, layout, reason, split, f"{config}_{split}" if config else split, hub=hub)


def _hub_layout(dataset_id: str, task: Task | None, rows: list[RawRow]) -> tuple[str, str]:
    if task is not None:
        return task.layout, f"--task {task.name}"
    # cais/mmlu's (question, choices, answer) looks like MedMCQA's reduced schema: the id decides first
    known = sorted({t.layout for t in TASKS.values() if t.hub_id == dataset_id})
    if len(known) == 1:
        return known[0], f"the Hub id {dataset_id} is the source of the {known[0]} task(s)"
    found = _row_layout(rows)
    if found is None:
        raise ValueError(f"{dataset_id}: {NO_LAYOUT}")
    return found


# ---------------------------------------------------------------- parsing and validation


def _parser(read: _Read, answer_base: int | None, mapping: dict | None,
            report: LoadReport) -> Callable[[RawRow, str], MCQExample]:
    """The row parser of the chosen layout, after reading how the file states its answers."""
    if read.layout == "columns":
        reading = columns.detect_answer(read.rows, mapping, answer_base)
        report.answer_form, report.answer_base, report.answer_base_reason = reading.form, reading.base, reading.reason
        return partial(columns.parse_row, mapping=mapping, reading=reading)
    if read.layout == "medmcqa":
        if read.rows:
            report.answer_base, report.answer_base_reason = medmcqa.detect_answer_base(read.rows, answer_base)
        return partial(medmcqa.parse_row, answer_base=report.answer_base)
    hub = read.hub is not None
    report.answer_base = 0 if hub and read.layout in ("medqa", "mmlu") else None
    report.answer_base_reason = {
        "medqa": "0-based 'label' (GBaker's Hub schema)" if hub else "letters in 'answer_idx'",
        "mmlu": "0-based 'answer' (cais/mmlu)" if hub else "letters in the sixth column",
        "pubmedqa": "'final_decision' words, options yes, no, maybe in that order",
    }[read.layout]
    return {"medqa": medqa.parse_row, "pubmedqa": pubmedqa.parse_row, "mmlu": mmlu.parse_row}[read.layout]


def load_examples(
    source: str | None,
    *,
    task: str | None = None,
    columns: str | dict | None = None,
    split: str | None = None,
    answer_base: int | None = None,
    skip_invalid: bool = False,
    require_answer: bool = True,
    limit: int | None = None,
) -> tuple[list[MCQExample], LoadReport]:
    """Read and validate every row of `source`: a local file or folder, a Hub dataset id (`id` or `id:config`),
    or None to read `task`'s Hub copy.

    `task` (a name in `medtune.tasks.TASKS`) picks the reader and the default split; `columns` maps a file's own
    column names (see `medtune.data.columns`); otherwise the reader is detected from the file's shape. Raises
    `DataError` on the first invalid row unless `skip_invalid`, in which case the row is dropped and counted by
    reason in the report. `limit` keeps the first N valid rows.
    """
    chosen_task = get_task(task) if task else None
    mapping = _mapping(columns, source)
    if source is None:
        source = _task_hub_id(chosen_task)
    if is_local(source):
        read = _read_local(Path(source), chosen_task, mapping, split)
    else:
        read = _read_hub_source(source, chosen_task, split)
    report = LoadReport(source=str(source), task=task, layout=read.layout, layout_reason=read.reason,
                        split=read.split, rows_read=len(read.rows),
                        sha256=file_sha256(read.file) if read.file else None, **(read.hub or {}))
    parse = _parser(read, answer_base, mapping, report)
    examples, skipped = _validate(read, parse, skip_invalid, require_answer, limit)
    report.skipped, report.rows_loaded = skipped, len(examples)
    return examples, report


def _mapping(spec: str | dict | None, source: str | None) -> dict | None:
    if spec is None:
        return None
    if source is None:
        raise ValueError("--columns maps a local file's columns; give the file as the data source")
    return columns.parse_spec(spec)


def _task_hub_id(task: Task | None) -> str:
    if task is None:
        raise ValueError("no data source: give a local file or a Hub dataset id, or a task (e.g. --task medmcqa)")
    if task.hub_id is None:
        raise ValueError(f"task {task.name} has no Hub copy; pass its local file (the official release's layout)")
    return task.hub_id


def _validate(read: _Read, parse, skip_invalid: bool, require_answer: bool,
              limit: int | None) -> tuple[list[MCQExample], dict[str, int]]:
    examples: list[MCQExample] = []
    seen_ids: dict[str, str] = {}
    skipped: Counter = Counter()
    for position, row in enumerate(read.rows, start=1):
        try:
            example = parse(row, f"{read.stem}-{position:05d}")
            if require_answer and example.answer is None:
                raise DataError(row.where, "answer", "has no answer (unlabeled row)", "missing_answer")
            if example.id in seen_ids:
                raise DataError(row.where, "id", f"duplicate id {example.id!r} (first at {seen_ids[example.id]})",
                                "duplicate_id")
        except DataError as error:
            if not skip_invalid:
                raise
            skipped[error.reason] += 1
            continue
        seen_ids[example.id] = row.where
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    return examples, dict(skipped)
