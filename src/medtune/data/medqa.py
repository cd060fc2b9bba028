"""MedQA (USMLE) rows.

- local, the official release's JSONL (4- and 5-option files): ``question``, ``options`` {"A".."D"} or
  {"A".."E"}, ``answer_idx`` (a letter), ``answer`` (the option's text: it must equal ``options[answer_idx]``,
  else the row is refused, because a file whose two answer fields disagree has no trustworthy gold),
  ``meta_info`` ("step1", "step2&3": kept as the subject). No id: one is made from the file and the row.
- Hub ``GBaker/MedQA-USMLE-4-options-hf``: ``id``, ``sent1`` (the question), ``ending0``..``ending3``,
  ``label`` (0-based), as lm-evaluation-harness's medqa_4options task reads it.
"""

from __future__ import annotations

from medtune.data.medmcqa import based_index, lettered_options
from medtune.data.schema import (
    LETTERS,
    DataError,
    MCQExample,
    RawRow,
    check_option_count,
    letter_index,
    optional_text,
    require_values,
    text,
)

HUB_ENDINGS = tuple(f"ending{index}" for index in range(len(LETTERS)))


def is_medqa_row(values: dict) -> bool:
    return ("answer_idx" in values and isinstance(values.get("options"), dict)) or "sent1" in values


def parse_row(row: RawRow, fallback_id: str) -> MCQExample:
    values = require_values(row)
    if "sent1" in values:
        return _parse_hub_row(values, row.where, fallback_id)
    where = row.where
    question = text(values, "question", where, "empty_question")
    options = lettered_options(values.get("options"), "options", where)
    answer = None
    if values.get("answer_idx") is not None:
        answer = letter_index(values["answer_idx"], "answer_idx", len(options), where)
        _check_answer_text(values.get("answer"), options, answer, where)
    return MCQExample(fallback_id, question, options, answer, None, optional_text(values.get("meta_info")))


def _check_answer_text(answer_text, options: tuple[str, ...], answer: int, where: str) -> None:
    if answer_text is None:
        return  # answer_idx alone is enough; only a disagreement between the two is an error
    if str(answer_text).strip() != options[answer]:
        raise DataError(where, "answer", f"{str(answer_text).strip()!r} is not option {LETTERS[answer]} "
                                         f"({options[answer]!r}) that answer_idx names", "answer_mismatch")


def _parse_hub_row(values: dict, where: str, fallback_id: str) -> MCQExample:
    question = text(values, "sent1", where, "empty_question")
    names = [name for name in HUB_ENDINGS if name in values]
    check_option_count(len(names), where, "ending0..")
    options = tuple(text(values, name, where, "empty_option") for name in names)
    label = values.get("label")
    answer = None if label is None else based_index(label, "label", len(options), 0, where)
    return MCQExample(optional_text(values.get("id")) or fallback_id, question, options, answer)
