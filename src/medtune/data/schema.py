"""What every reader produces: `MCQExample`, the `DataError` a bad row raises, the `LoadReport` of a load, and the
validation helpers the readers share (so every family refuses an empty option or a bad integer the same way)."""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field

LETTERS = "ABCDE"
MIN_OPTIONS, MAX_OPTIONS = 2, 5


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
    """What loading a source did: which reader and why, counts, skipped rows by reason, how answers were read."""

    source: str
    task: str | None = None  # the task named by the caller (None: the layout was detected)
    layout: str | None = None  # the reader: medmcqa, medqa, pubmedqa, mmlu or columns
    layout_reason: str = ""
    split: str | None = None  # the split read; "all" for a file that is one split
    rows_read: int = 0
    rows_loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    answer_form: str | None = None  # --columns: "letter", "index" or "text"
    answer_base: int | None = None
    answer_base_reason: str = ""
    sha256: str | None = None  # local files: the file the rows came from
    revision: str | None = None  # Hub datasets: the commit the Hub resolved
    fingerprint: str | None = None  # Hub datasets: `datasets`' hash of the loaded split

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RawRow:
    where: str  # "file.jsonl:17" -- used verbatim in error messages
    values: dict | None  # None when the line itself could not be parsed
    error: str = ""
    reason: str = "bad_json"  # how a row that could not be parsed is counted by --skip-invalid


# ---------------------------------------------------------------- validation shared by the readers


def require_values(row: RawRow) -> dict:
    if row.values is None:
        raise DataError(row.where, "(row)", row.error or "not a JSON object", row.reason)
    return row.values


def text(values: dict, name: str, where: str, reason: str = "empty_field") -> str:
    value = values.get(name)
    if value is None or not str(value).strip():
        raise DataError(where, name, "is empty or missing", reason)
    return str(value).strip()


def optional_text(value) -> str | None:
    return str(value).strip() if value is not None and str(value).strip() else None


def integral(value) -> int | None:
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


def as_int(value, name: str, where: str) -> int:
    number = integral(value)
    if number is None:
        raise DataError(where, name, f"expected an integer, got {value!r}", "answer_not_integer")
    return number


def check_option_count(count: int, where: str, name: str) -> None:
    if not MIN_OPTIONS <= count <= MAX_OPTIONS:
        raise DataError(where, name, f"has {count} options; expected {MIN_OPTIONS} to {MAX_OPTIONS}", "option_count")


def letter_index(raw, name: str, n_options: int, where: str) -> int:
    """'C' -> 2; anything that is not one of the first `n_options` letters is a row error."""
    letter = str(raw).strip()
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise DataError(where, name, f"expected one of {LETTERS[:n_options]}, got {raw!r}", "answer_out_of_range")
    return LETTERS.index(letter)


def example_from_input(question: str, options: list[str], where: str = "input") -> MCQExample:
    """An unlabeled example from user input (CLI, API), validated like a data row."""
    if not isinstance(question, str) or not question.strip():
        raise DataError(where, "question", "is empty", "empty_question")
    check_option_count(len(options), where, "options")
    cleaned = []
    for index, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise DataError(where, f"options[{index}]", "is empty", "empty_option")
        cleaned.append(option.strip())
    if len(set(cleaned)) != len(cleaned):
        raise DataError(where, "options", "contains the same option twice", "duplicate_option")
    return MCQExample(id=where, question=question.strip(), options=tuple(cleaned))
