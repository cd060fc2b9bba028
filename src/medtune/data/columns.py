"""The user's own question bank: any CSV / JSONL / JSON / Parquet, its columns named by a mapping.

``question=stem,options=opt1|opt2|opt3|opt4,answer=key,explanation=rationale,subject=area`` (or the same as a
dict). ``options`` names several columns (``|``-separated; trailing empty ones are dropped, so a bank may mix four-
and five-option rows) or one list column. Also accepted: ``id``, ``topic``, ``context`` and ``answer_form``.

The answer may be a letter, a 0- or 1-based index or the option text. The form is read off the rows that will be
accepted, like the MedMCQA base: the form every labeled row fits is used and stated; a file whose answers fit two
forms (options that are themselves numbers or letters) must declare it (``answer_form=...``, or ``--answer-base``
for an index), and a file that mixes forms is refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from medtune.data.medmcqa import base_from_votes, based_index
from medtune.data.schema import (
    LETTERS,
    DataError,
    MCQExample,
    RawRow,
    check_option_count,
    integral,
    letter_index,
    optional_text,
    require_values,
    text,
)

KEYS = ("question", "options", "answer", "explanation", "subject", "topic", "id", "context", "answer_form")
FORMS = ("letter", "index", "text")


@dataclass(frozen=True)
class AnswerReading:
    """How a file's answer column is read: `form` is letter, index or text (None: no labeled rows)."""

    form: str | None
    base: int | None
    reason: str


def parse_spec(spec: str | dict) -> dict:
    """'question=stem,options=a|b|c,answer=key' -> {"question": "stem", "options": ("a", "b", "c"), ...}."""
    pairs = dict(spec) if isinstance(spec, dict) else dict(_pair(item) for item in spec.split(",") if item.strip())
    unknown = sorted(set(pairs) - set(KEYS))
    if unknown:
        raise ValueError(f"--columns: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    missing = [key for key in ("question", "options") if not pairs.get(key)]
    if missing:
        raise ValueError(f"--columns must name {' and '.join(f'{key}=COLUMN' for key in missing)} "
                         "(e.g. question=stem,options=opt1|opt2|opt3|opt4,answer=key)")
    options = pairs["options"]
    pairs["options"] = tuple(options) if isinstance(options, (list, tuple)) else tuple(str(options).split("|"))
    if pairs.get("answer_form") not in (None, *FORMS):
        raise ValueError(f"--columns: answer_form must be one of {', '.join(FORMS)}, not {pairs['answer_form']!r}")
    return pairs


def _pair(item: str) -> tuple[str, str]:
    key, equals, value = item.partition("=")
    if not equals or not key.strip() or not value.strip():
        raise ValueError(f"--columns: {item.strip()!r} is not KEY=COLUMN (e.g. question=stem)")
    return key.strip(), value.strip()


def check_columns(rows: list[RawRow], mapping: dict, file_name: str) -> None:
    """Every column the mapping names must exist in the file; else one sentence listing the file's columns."""
    present = {name for row in rows if row.values for name in row.values}
    named = [mapping[key] for key in KEYS if key not in ("options", "answer_form") and mapping.get(key)]
    missing = [name for name in (*named, *mapping["options"]) if name not in present]
    if missing:
        raise ValueError(f"{file_name}: --columns names {', '.join(repr(name) for name in missing)}, which the file "
                         f"does not have; its columns are: {', '.join(sorted(present)) or '(none)'}")


def _options(values: dict, mapping: dict, where: str) -> tuple[str, ...]:
    names = mapping["options"]
    if len(names) == 1:  # one list column
        raw = values.get(names[0])
        if not isinstance(raw, (list, tuple)):
            raise DataError(where, names[0], "expected a list of options (or name several columns with |)",
                            "option_count")
        cells = {f"{names[0]}[{index}]": cell for index, cell in enumerate(raw)}
    else:
        cells = {name: values.get(name) for name in names}
    keys = list(cells)
    while keys and optional_text(cells[keys[-1]]) is None:  # a bank may mix 4- and 5-option rows
        keys.pop()
    check_option_count(len(keys), where, "|".join(names))
    return tuple(text(cells, key, where, "empty_option") for key in keys)


def _forms(raw, options: tuple[str, ...]) -> set[str]:
    """The answer forms a value fits for a row with these options."""
    forms = set()
    if isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS[: len(options)]:
        forms.add("letter")
    value = integral(raw)
    if value is not None and 0 <= value <= len(options):
        forms.add("index")
    if str(raw).strip() in options:
        forms.add("text")
    return forms


def _vote(row: RawRow, mapping: dict) -> tuple[set[str], int, int | None] | None:
    """(forms, option count, integer value) of a labeled row that would otherwise be accepted."""
    if row.values is None or row.values.get(mapping.get("answer") or "") is None:
        return None
    try:
        text(row.values, mapping["question"], row.where, "empty_question")
        options = _options(row.values, mapping, row.where)
    except DataError:
        return None
    raw = row.values[mapping["answer"]]
    forms = _forms(raw, options)
    return (forms, len(options), integral(raw)) if forms else None


def detect_answer(rows: list[RawRow], mapping: dict, declared_base: int | None) -> AnswerReading:
    """Read the answer form (and an index's base) off the rows that will be accepted; refuse what is ambiguous."""
    column = mapping.get("answer")
    votes = [vote for vote in (_vote(row, mapping) for row in rows) if vote is not None]
    file_name = rows[0].where.split(":")[0] if rows else "(empty)"
    form = mapping.get("answer_form")
    if form is None and not votes:
        return AnswerReading(None, None, "no labeled rows: no answer form to read")
    how = "as declared by the user"
    if form is None:
        form = _form_from_votes(votes, column, file_name, declared_base is not None)
        how = f"read off {len(votes)} labeled row(s)"
    if form != "index":
        what = {"letter": "letters A..E", "text": "the option text"}[form]
        return AnswerReading(form, None, f"'{column}' holds {what}, {how}")
    if declared_base is not None:
        return AnswerReading(form, declared_base, f"'{column}' holds a {declared_base}-based index, {how}")
    index_votes = [(value, n_options) for forms, n_options, value in votes if "index" in forms]
    base, reason = base_from_votes(index_votes, file_name, column)
    return AnswerReading(form, base, f"'{column}' holds an index, {reason}")


def _form_from_votes(votes: list, column: str, file_name: str, base_declared: bool) -> str:
    """The one form every vote fits; a declared --answer-base settles a tie in favour of an index (it says the
    answers are numbers), and is ignored for a file of letters or texts (a recipe may set it for MedMCQA)."""
    shared = set(FORMS).intersection(*(forms for forms, _, _ in votes))
    if len(shared) == 1:
        return shared.pop()
    if base_declared and "index" in shared:
        return "index"
    if shared:
        raise DataError(file_name, column, f"every answer fits {' and '.join(sorted(shared))} (the options look "
                                           f"like answers); declare it with answer_form={'|'.join(sorted(shared))} "
                                           "in --columns" + (" or --answer-base 0|1" if "index" in shared else ""),
                        "ambiguous_answer_form")
    counts = Counter(form for forms, _, _ in votes if len(forms) == 1 for form in forms)
    found = ", ".join(f"{count} as {form}" for form, count in sorted(counts.items()))
    raise DataError(file_name, column, f"mixes answer forms ({found}); give every answer one form: a letter, an "
                                       "index or the option text", "mixed_answer_form")


def parse_row(row: RawRow, fallback_id: str, mapping: dict, reading: AnswerReading) -> MCQExample:
    values, where = require_values(row), row.where
    question = text(values, mapping["question"], where, "empty_question")
    options = _options(values, mapping, where)
    column = mapping.get("answer")
    raw = values.get(column) if column else None
    answer = None if raw is None or reading.form is None else _answer(raw, column, options, reading, where)

    def optional(key: str) -> str | None:
        return optional_text(values.get(mapping[key])) if mapping.get(key) else None

    return MCQExample(optional("id") or fallback_id, question, options, answer, optional("explanation"),
                      optional("subject"), optional("topic"), optional("context"))


def _answer(raw, column: str, options: tuple[str, ...], reading: AnswerReading, where: str) -> int:
    if reading.form == "letter":
        return letter_index(str(raw).strip().upper(), column, len(options), where)
    if reading.form == "index":
        return based_index(raw, column, len(options), reading.base, where)
    if str(raw).strip() not in options:
        raise DataError(where, column, f"{str(raw).strip()!r} is not one of the row's options", "answer_out_of_range")
    return options.index(str(raw).strip())
