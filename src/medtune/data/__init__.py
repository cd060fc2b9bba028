"""Medical multiple-choice rows of any supported schema -> validated `MCQExample`s.

Supported schemas (see ../shared/data/medmcqa/README.md):

- original: ``id, question, opa..opd[, ope], cop, choice_type, exp, subject_name, topic_name``
- reduced:  ``question, choices ["A. ...", ...], answer`` (no id; one is made from file and line)
- id:       ``id, question, options {"A": ..., ...}, answer "A"``

``cop`` (original) and the integer ``answer`` (reduced) are 0-based on the Hugging Face Hub and 1-based in
the original MedMCQA release. The base is read off the rows that will be accepted: a 0 means 0-based; a value
equal to the row's option count (4 with four options, 5 with five) means 1-based. A file that shows neither,
or both, is refused unless the caller names the base. Integral floats (``2.0``, ``"2.0"``) count as integers:
pandas writes an integer column that holds a null as floats to CSV and Parquet.
"""

from __future__ import annotations

import csv
import hashlib
import json
import numbers
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCDE"
MIN_OPTIONS, MAX_OPTIONS = 2, 5
DEFAULT_HUB_DATASET = "openlifescienceai/medmcqa"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# The dev slice watches training (periodic accuracy, early stopping); it is never reported. Capping it at a tenth
# of the rows keeps a small run a training run: `train --limit 64` with dev_size 64 used to train on one row.
DEV_SHARE_PERCENT = 10


class DataError(ValueError):
    """A row that cannot become an `MCQExample`; the message names file, line and field."""

    def __init__(self, where: str, field_name: str, problem: str, reason: str):
        super().__init__(f"{where}: field '{field_name}': {problem}")
        self.reason = reason  # short key used to count skipped rows, e.g. "empty_option"


@dataclass(frozen=True)
class MCQExample:
    """One question. `answer` is the 0-based index into `options`, or None when the row is unlabeled."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: int | None = None
    explanation: str | None = None
    subject: str | None = None
    topic: str | None = None
    context: str | None = None  # passages the question is asked about (PubMedQA's abstract), shown before it

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    def key(self) -> str:
        """Normalized question + options: two rows with the same key are the same question."""
        text = " | ".join((self.question, *self.options)).lower()
        return re.sub(r"\s+", " ", text).strip()


@dataclass
class LoadReport:
    """What loading a source did: counts, skipped rows by reason, the answer base and why."""

    source: str
    rows_read: int = 0
    rows_loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    answer_base: int | None = None
    answer_base_reason: str = ""
    sha256: str | None = None  # local files
    revision: str | None = None  # Hub datasets: the commit the Hub resolved
    fingerprint: str | None = None  # Hub datasets: `datasets`' hash of the loaded split

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _RawRow:
    where: str  # "file.jsonl:17" -- used verbatim in error messages
    values: dict | None  # None when the line itself could not be parsed
    error: str = ""


# ---------------------------------------------------------------- reading sources


def is_local(source: str) -> bool:
    return Path(source).exists() or source.endswith(LOCAL_SUFFIXES)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_local(path: Path) -> Iterator[_RawRow]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file")
    name = path.name
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    values = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield _RawRow(f"{name}:{number}", None, f"not valid JSON ({exc.msg})")
                    continue
                yield _RawRow(f"{name}:{number}", values if isinstance(values, dict) else None, "not an object")
    elif path.suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            try:
                document = json.load(handle)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}:{exc.lineno}", "(file)", f"not valid JSON ({exc.msg})", "bad_json") from exc
        rows = document.get("data", document) if isinstance(document, dict) else document
        if not isinstance(rows, list):
            raise DataError(name, "(file)", "expected a JSON list of rows (or {'data': [...]})", "bad_json")
        for number, values in enumerate(rows, start=1):
            yield _RawRow(f"{name}:item {number}", values if isinstance(values, dict) else None, "not an object")
    elif path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for values in reader:
                yield _RawRow(f"{name}:{reader.line_num}", _decode_csv_cells(values))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with `datasets`

        for number, values in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield _RawRow(f"{name}:row {number}", values)
    else:
        raise ValueError(f"{path}: unsupported data file type; use one of {', '.join(LOCAL_SUFFIXES)}")


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


def _read_hub(dataset_id: str, split: str) -> tuple[list[_RawRow], dict]:
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
    dataset = load_dataset(dataset_id, split=split)
    try:
        revision = HfApi().dataset_info(dataset_id).sha
    except Exception:  # the rows loaded; a failed metadata call must not stop the run, and None says it failed
        revision = None
    rows = [_RawRow(f"{dataset_id}[{split}]:row {number}", values) for number, values in enumerate(dataset, start=1)]
    return rows, {"revision": revision, "fingerprint": getattr(dataset, "_fingerprint", None)}


# ---------------------------------------------------------------- parsing rows


def _text(values: dict, name: str, where: str, reason: str = "empty_field") -> str:
    value = values.get(name)
    if value is None or not str(value).strip():
        raise DataError(where, name, "is empty or missing", reason)
    return str(value).strip()


def _optional_text(value) -> str | None:
    return str(value).strip() if value is not None and str(value).strip() else None


def _integral(value) -> int | None:
    """An integer given as int, integral float (2.0) or text ("2", "2.0"); None for anything else (2.5, "two",
    True): pandas writes an integer column that has a null as floats, so 2.0 is the integer 2."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return int(value) if float(value).is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.0*)?\s*", value):
        return int(value.strip().split(".")[0])
    return None


def _as_int(value, name: str, where: str) -> int:
    number = _integral(value)
    if number is None:
        raise DataError(where, name, f"expected an integer, got {value!r}", "answer_not_integer")
    return number


def _schema(values: dict, where: str) -> str:
    if "opa" in values:
        return "original"
    if "choices" in values:
        return "reduced"
    if "options" in values:
        return "id"
    raise DataError(
        where, "(row)", "unknown schema: expected 'opa'..'opd' (original), 'choices' (reduced) or 'options' (id)",
        "unknown_schema",
    )


def _options(values: dict, schema: str, where: str) -> tuple[str, ...]:
    if schema == "original":
        names = ["opa", "opb", "opc", "opd"] + (["ope"] if values.get("ope") is not None else [])
        return tuple(_text(values, name, where, "empty_option") for name in names)
    if schema == "id":
        raw = values.get("options")
        if not isinstance(raw, dict):
            raise DataError(where, "options", "expected an object {'A': ..., 'B': ...}", "option_count")
        if list(raw) != list(LETTERS[: len(raw)]):
            raise DataError(where, "options", f"keys must be A, B, ... in order, got {list(raw)}", "option_count")
        _check_option_count(len(raw), where, "options")
        return tuple(_text(raw, letter, where, "empty_option") for letter in raw)
    raw = values.get("choices")
    if not isinstance(raw, list):
        raise DataError(where, "choices", "expected a list of strings", "option_count")
    _check_option_count(len(raw), where, "choices")
    options = []
    for index, choice in enumerate(raw):
        prefix = f"{LETTERS[index]}. "
        text = str(choice or "")
        body = text[len(prefix):] if text.startswith(prefix) else text
        if not body.strip():
            raise DataError(where, f"choices[{index}]", "is empty", "empty_option")
        options.append(body.strip())
    return tuple(options)


def _check_option_count(count: int, where: str, name: str) -> None:
    if not MIN_OPTIONS <= count <= MAX_OPTIONS:
        raise DataError(where, name, f"has {count} options; expected {MIN_OPTIONS} to {MAX_OPTIONS}", "option_count")


def _raw_answer(values: dict, schema: str) -> tuple[str, object]:
    name = {"original": "cop", "reduced": "answer", "id": "answer"}[schema]
    return name, values.get(name)


def _parse_row(row: _RawRow, answer_base: int | None, fallback_id: str) -> MCQExample:
    if row.values is None:
        raise DataError(row.where, "(row)", row.error or "not a JSON object", "bad_json")
    values, where = row.values, row.where
    schema = _schema(values, where)
    question = _text(values, "question", where, "empty_question")
    options = _options(values, schema, where)
    name, raw = _raw_answer(values, schema)
    answer = _answer_index(raw, name, schema, len(options), answer_base, where)
    example_id = _optional_text(values.get("id")) or fallback_id
    explanation = _optional_text(values.get("exp"))
    return MCQExample(
        example_id, question, options, answer, explanation,
        _optional_text(values.get("subject_name")), _optional_text(values.get("topic_name")),
    )


def _answer_index(raw, name: str, schema: str, n_options: int, base: int | None, where: str) -> int | None:
    """0-based answer index; None for an unlabeled row (missing, or -1 as in MedMCQA's test split)."""
    if raw is None or _integral(raw) == -1:
        return None
    if schema == "id":
        letter = str(raw).strip()
        if len(letter) != 1 or letter not in LETTERS[:n_options]:
            raise DataError(where, name, f"expected one of {LETTERS[:n_options]}, got {raw!r}", "answer_out_of_range")
        return LETTERS.index(letter)
    index = _as_int(raw, name, where) - (base or 0)
    if not 0 <= index < n_options:
        shown = (f"{base}..{base + n_options - 1} ({base}-based)" if base is not None
                 else f"0..{n_options - 1} (0-based) and 1..{n_options} (1-based)")
        raise DataError(where, name, f"{raw!r} is out of range {shown}", "answer_out_of_range")
    return index


def _answer_vote(row: _RawRow) -> tuple[int, int] | None:
    """(integer answer, option count) of a row that would otherwise be accepted; None when it cannot vote.

    A row that will be rejected anyway (bad JSON, empty question or option, an answer out of range in both
    bases) must not decide how every other row is read."""
    if row.values is None:
        return None
    try:
        schema = _schema(row.values, row.where)
        if schema == "id":
            return None  # letter answers need no base
        _text(row.values, "question", row.where, "empty_question")
        n_options = len(_options(row.values, schema, row.where))
    except DataError:
        return None
    value = _integral(_raw_answer(row.values, schema)[1])
    if value is None or not 0 <= value <= n_options:  # -1 (unlabeled), not an integer, or out of range
        return None
    return value, n_options


def _detect_answer_base(rows: list[_RawRow], declared: int | None) -> tuple[int | None, str]:
    """Decide whether integer answers are 0- or 1-based from the rows that will be accepted.

    A 0 fits only 0-based; a value equal to its row's option count (4 of 4, 5 of 5) fits only 1-based. A 4 in
    five-option data is the letter E when 0-based, so it proves nothing there."""
    if declared is not None:
        return declared, f"{declared}-based, as declared by the user"
    votes = [vote for vote in map(_answer_vote, rows) if vote is not None]
    if not votes:
        return None, "answers are letters (or absent): no integer base needed"
    zeros = sum(value == 0 for value, _ in votes)
    proofs = [(value, n_options) for value, n_options in votes if value == n_options]
    where = rows[0].where.split(":")[0]
    if zeros and proofs:
        raise DataError(
            where, "cop/answer",
            f"holds both a 0 ({zeros} row(s)) and a 1-based-only value ({len(proofs)} row(s) whose answer equals "
            "its option count); declare the base with --answer-base 0 or 1", "ambiguous_answer_base",
        )
    if zeros:
        return 0, f"0-based (Hugging Face convention): the value 0 occurs ({zeros} rows)"
    if proofs:
        value, n_options = max(proofs)
        count = proofs.count((value, n_options))
        return 1, (f"1-based (original MedMCQA release): the value {value} occurs in {count} row(s) with "
                   f"{n_options} options, and 0 never does")
    raise DataError(
        where, "cop/answer",
        f"values {sorted({value for value, _ in votes})} fit both 0-based and 1-based answers; declare the base "
        "with --answer-base 0 or 1", "ambiguous_answer_base",
    )


# ---------------------------------------------------------------- public API


def load_examples(
    source: str,
    *,
    split: str = "train",
    answer_base: int | None = None,
    skip_invalid: bool = False,
    require_answer: bool = True,
    limit: int | None = None,
) -> tuple[list[MCQExample], LoadReport]:
    """Read and validate every row of `source` (a local file or a Hub dataset id).

    Raises `DataError` on the first invalid row unless `skip_invalid`, in which case the row is
    dropped and counted by reason in the report. `limit` keeps the first N valid rows.
    """
    local = is_local(source)
    rows, hub = (list(_read_local(Path(source))), {}) if local else _read_hub(source, split)
    report = LoadReport(source=str(source), rows_read=len(rows), sha256=file_sha256(source) if local else None,
                        **hub)
    if rows:
        report.answer_base, report.answer_base_reason = _detect_answer_base(rows, answer_base)
    stem = Path(source).stem if local else split
    examples: list[MCQExample] = []
    seen_ids: dict[str, str] = {}
    skipped: Counter = Counter()
    for position, row in enumerate(rows, start=1):
        try:
            example = _parse_row(row, report.answer_base, f"{stem}-{position:05d}")
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
    report.skipped = dict(skipped)
    report.rows_loaded = len(examples)
    return examples, report


def dev_slice_size(rows: int, dev_size: int) -> int:
    """Rows the dev slice may take from `rows` training rows: `dev_size`, capped at DEV_SHARE_PERCENT of them.

    64 rows with dev_size 64 -> 6 (58 train); 2,190 rows with dev_size 256 -> 219; under 10 rows -> 0."""
    return max(0, min(dev_size, rows * DEV_SHARE_PERCENT // 100))


def split_dev(
    examples: list[MCQExample], dev_size: int, seed: int, exclude: set[str] = frozenset()
) -> tuple[list[MCQExample], list[MCQExample]]:
    """Carve a dev slice (for periodic evaluation / early stopping) out of the training rows.

    The slice holds `dev_slice_size(len(examples), dev_size)` rows, fewer when not enough rows are eligible.
    Rows whose `key()` is in `exclude` (the reported evaluation rows) never enter the dev slice, so the
    dev slice cannot overlap what is reported. Returns (train, dev); the order of `train` is kept.
    """
    candidates = [i for i, example in enumerate(examples) if example.key() not in exclude]
    size = min(dev_slice_size(len(examples), dev_size), len(candidates))
    chosen = set(random.Random(seed).sample(candidates, size))
    train = [example for i, example in enumerate(examples) if i not in chosen]
    dev = [examples[i] for i in sorted(chosen)]
    return train, dev


def example_from_input(question: str, options: list[str], where: str = "input") -> MCQExample:
    """An unlabeled example from user input (CLI, API), validated like a data row."""
    if not isinstance(question, str) or not question.strip():
        raise DataError(where, "question", "is empty", "empty_question")
    _check_option_count(len(options), where, "options")
    cleaned = []
    for index, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise DataError(where, f"options[{index}]", "is empty", "empty_option")
        cleaned.append(option.strip())
    if len(set(cleaned)) != len(cleaned):
        raise DataError(where, "options", "contains the same option twice", "duplicate_option")
    return MCQExample(id=where, question=question.strip(), options=tuple(cleaned))
