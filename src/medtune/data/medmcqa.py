"""MedMCQA rows in any of its three schemas (see ../shared/data/medmcqa/README.md):

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

from medtune.data.schema import (
    LETTERS,
    DataError,
    MCQExample,
    RawRow,
    as_int,
    check_option_count,
    integral,
    letter_index,
    optional_text,
    require_values,
    text,
)


def schema(values: dict, where: str) -> str:
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


def _options(values: dict, kind: str, where: str) -> tuple[str, ...]:
    if kind == "original":
        names = ["opa", "opb", "opc", "opd"] + (["ope"] if values.get("ope") is not None else [])
        return tuple(text(values, name, where, "empty_option") for name in names)
    if kind == "id":
        return lettered_options(values.get("options"), "options", where)
    raw = values.get("choices")
    if not isinstance(raw, list):
        raise DataError(where, "choices", "expected a list of strings", "option_count")
    check_option_count(len(raw), where, "choices")
    options = []
    for index, choice in enumerate(raw):
        prefix = f"{LETTERS[index]}. "
        body = str(choice or "")
        body = body[len(prefix):] if body.startswith(prefix) else body
        if not body.strip():
            raise DataError(where, f"choices[{index}]", "is empty", "empty_option")
        options.append(body.strip())
    return tuple(options)


def lettered_options(raw, name: str, where: str) -> tuple[str, ...]:
    """{"A": ..., "B": ...} -> the option texts in letter order (MedMCQA's id schema and MedQA share it)."""
    if not isinstance(raw, dict):
        raise DataError(where, name, "expected an object {'A': ..., 'B': ...}", "option_count")
    if list(raw) != list(LETTERS[: len(raw)]):
        raise DataError(where, name, f"keys must be A, B, ... in order, got {list(raw)}", "option_count")
    check_option_count(len(raw), where, name)
    return tuple(text(raw, letter, where, "empty_option") for letter in raw)


def _raw_answer(values: dict, kind: str) -> tuple[str, object]:
    name = {"original": "cop", "reduced": "answer", "id": "answer"}[kind]
    return name, values.get(name)


def parse_row(row: RawRow, fallback_id: str, answer_base: int | None) -> MCQExample:
    values, where = require_values(row), row.where
    kind = schema(values, where)
    question = text(values, "question", where, "empty_question")
    options = _options(values, kind, where)
    name, raw = _raw_answer(values, kind)
    answer = _answer_index(raw, name, kind, len(options), answer_base, where)
    return MCQExample(
        optional_text(values.get("id")) or fallback_id, question, options, answer, optional_text(values.get("exp")),
        optional_text(values.get("subject_name")), optional_text(values.get("topic_name")),
    )


def _answer_index(raw, name: str, kind: str, n_options: int, base: int | None, where: str) -> int | None:
    """0-based answer index; None for an unlabeled row (missing, or -1 as in MedMCQA's test split)."""
    if raw is None or integral(raw) == -1:
        return None
    if kind == "id":
        return letter_index(raw, name, n_options, where)
    return based_index(raw, name, n_options, base, where)


def based_index(raw, name: str, n_options: int, base: int | None, where: str) -> int:
    """An integer answer in the given base -> 0-based index; out of range is a row error."""
    index = as_int(raw, name, where) - (base or 0)
    if not 0 <= index < n_options:
        shown = (f"{base}..{base + n_options - 1} ({base}-based)" if base is not None
                 else f"0..{n_options - 1} (0-based) and 1..{n_options} (1-based)")
        raise DataError(where, name, f"{raw!r} is out of range {shown}", "answer_out_of_range")
    return index


def _answer_vote(row: RawRow) -> tuple[int, int] | None:
    """(integer answer, option count) of a row that would otherwise be accepted; None when it cannot vote.

    A row that will be rejected anyway (bad JSON, empty question or option, an answer out of range in both
    bases) must not decide how every other row is read."""
    if row.values is None:
        return None
    try:
        kind = schema(row.values, row.where)
        if kind == "id":
            return None  # letter answers need no base
        text(row.values, "question", row.where, "empty_question")
        n_options = len(_options(row.values, kind, row.where))
    except DataError:
        return None
    value = integral(_raw_answer(row.values, kind)[1])
    if value is None or not 0 <= value <= n_options:  # -1 (unlabeled), not an integer, or out of range
        return None
    return value, n_options


def detect_answer_base(rows: list[RawRow], declared: int | None) -> tuple[int | None, str]:
    """Decide whether integer answers are 0- or 1-based from the rows that will be accepted."""
    if declared is not None:
        return declared, f"{declared}-based, as declared by the user"
    votes = [vote for vote in map(_answer_vote, rows) if vote is not None]
    if not votes:
        return None, "answers are letters (or absent): no integer base needed"
    return base_from_votes(votes, rows[0].where.split(":")[0], "cop/answer",
                           ("0-based (Hugging Face convention)", "1-based (original MedMCQA release)"))


def base_from_votes(votes: list[tuple[int, int]], where: str, field_name: str,
                    names: tuple[str, str] = ("0-based", "1-based")) -> tuple[int, str]:
    """(value, option count) votes -> (base, reason). A 0 fits only 0-based; a value equal to its row's option
    count (4 of 4, 5 of 5) fits only 1-based. A 4 in five-option data is the letter E when 0-based, so it proves
    nothing there."""
    zeros = sum(value == 0 for value, _ in votes)
    proofs = [(value, n_options) for value, n_options in votes if value == n_options]
    if zeros and proofs:
        raise DataError(
            where, field_name,
            f"holds both a 0 ({zeros} row(s)) and a 1-based-only value ({len(proofs)} row(s) whose answer equals "
            "its option count); declare the base with --answer-base 0 or 1", "ambiguous_answer_base",
        )
    if zeros:
        return 0, f"{names[0]}: the value 0 occurs ({zeros} rows)"
    if proofs:
        value, n_options = max(proofs)
        count = proofs.count((value, n_options))
        return 1, (f"{names[1]}: the value {value} occurs in {count} row(s) with "
                   f"{n_options} options, and 0 never does")
    raise DataError(
        where, field_name,
        f"values {sorted({value for value, _ in votes})} fit both 0-based and 1-based answers; declare the base "
        "with --answer-base 0 or 1", "ambiguous_answer_base",
    )
