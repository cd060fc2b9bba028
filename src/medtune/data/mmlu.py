"""MMLU's questions, one subject at a time (the six medical ones are tasks; any subject reads the same way).

- local, the released CSVs: **no header**, columns ``question, A, B, C, D, answer letter``, fields may hold newlines
  (so the csv module reads them, never line splitting); the file name ``<subject>_<split>.csv`` gives subject and
  split (the release keeps them in ``data/{dev,val,test}/``). A folder is searched recursively for the file.
- Hub ``cais/mmlu``, config = subject: ``question``, ``choices`` (4), ``answer`` (0-based), ``subject``.

Ids are ``<subject>_<split>-<row>`` (e.g. ``anatomy_test-00003``) for both, so the two copies share ids.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from medtune.data.medmcqa import based_index
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

COLUMNS = ("question", "A", "B", "C", "D", "answer")
SPLITS = ("dev", "val", "test")
_NAME = re.compile(rf"(?P<subject>[a-z][a-z_]*)_(?P<split>{'|'.join(SPLITS)})\.csv")


def name_parts(path: Path) -> tuple[str, str] | None:
    """'clinical_knowledge_test.csv' -> ('clinical_knowledge', 'test'); None for any other name."""
    match = _NAME.fullmatch(path.name)
    return (match["subject"], match["split"]) if match else None


def looks_like_mmlu_csv(path: Path) -> bool:
    """Named <subject>_<split>.csv, and its first record is 6 fields ending in an answer letter (no header)."""
    if name_parts(path) is None:
        return False
    with open(path, encoding="utf-8", newline="") as handle:
        first = next(csv.reader(handle), None)
    return first is not None and len(first) == len(COLUMNS) and first[-1].strip() in LETTERS[:4]


def find_csv(source: Path, subject: str | None, split: str | None) -> tuple[Path, str | None, str]:
    """The CSV holding `subject`'s `split`: (path, subject, split). A file is its own split; when another split
    is asked for, it is looked for beside the file and in the release's sibling folder (data/dev beside data/test)."""
    if source.is_file():
        named_subject, named_split = name_parts(source) or (subject, split or "all")
        if subject is not None and named_subject != subject:
            raise ValueError(f"{source}: holds MMLU subject '{named_subject}' (by its name), not '{subject}'")
        if split is None or split == named_split:
            return source, named_subject, named_split
        if name_parts(source) is None:
            return source, subject, split  # an unnamed file cannot be checked: it is the split asked for
        folders = [source.parent] + ([source.parent.parent / split] if source.parent.name in SPLITS else [])
        for folder in folders:
            if (folder / f"{named_subject}_{split}.csv").exists():
                return folder / f"{named_subject}_{split}.csv", named_subject, split
        raise FileNotFoundError(f"{source}: is the '{named_split}' split; {named_subject}_{split}.csv was not found "
                                f"beside it; pass the folder that holds it")
    if subject is None:
        raise ValueError(f"{source}: a folder of MMLU CSVs holds many subjects; name one with --task mmlu_<subject>")
    split = split or "test"
    found = sorted(source.rglob(f"{subject}_{split}.csv"))
    if len(found) != 1:
        problem = "has no" if not found else f"has {len(found)} copies of"
        raise FileNotFoundError(f"{source}: {problem} {subject}_{split}.csv (searched recursively); the MMLU "
                                f"release keeps it as data/{split}/{subject}_{split}.csv" +
                                (f": {', '.join(map(str, found))}" if found else ""))
    return found[0], subject, split


def read_csv(path: Path, subject: str | None) -> list[RawRow]:
    """Headerless rows; each `where` is the line the record starts on (a field may span lines)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        start = 1
        for record in reader:
            where = f"{path.name}:{start}"
            start = reader.line_num + 1
            if len(record) != len(COLUMNS):
                rows.append(RawRow(where, None, f"expected 6 columns (question, A, B, C, D, answer letter) and no "
                                                f"header, got {len(record)}", "bad_row"))
                continue
            rows.append(RawRow(where, {**dict(zip(COLUMNS, record)), "subject": subject}))
    return rows


def parse_row(row: RawRow, fallback_id: str) -> MCQExample:
    values, where = require_values(row), row.where
    question = text(values, "question", where, "empty_question")
    if "choices" in values:  # cais/mmlu on the Hub
        choices = values["choices"]
        if not isinstance(choices, list):
            raise DataError(where, "choices", "expected a list of strings", "option_count")
        check_option_count(len(choices), where, "choices")
        options = tuple(text({f"choices[{i}]": choice}, f"choices[{i}]", where, "empty_option")
                        for i, choice in enumerate(choices))
        raw = values.get("answer")
        answer = None if raw is None else based_index(raw, "answer", len(options), 0, where)
    else:
        options = tuple(text(values, letter, where, "empty_option") for letter in "ABCD")
        raw = optional_text(values.get("answer"))
        answer = None if raw is None else letter_index(raw, "answer", len(options), where)
    return MCQExample(fallback_id, question, options, answer, None, optional_text(values.get("subject")))
