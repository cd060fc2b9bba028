"""PubMedQA's labeled set (PQA-L) as three-option questions: yes / no / maybe, in that order.

- local, the official repository's ``ori_pqal.json``: one JSON object keyed by PMID, each entry with ``QUESTION``,
  ``CONTEXTS`` (the abstract's passages), ``LABELS``, ``MESHES``, ``final_decision``, ``LONG_ANSWER``. When
  ``test_ground_truth.json`` ({PMID: label}) lies beside it, split ``test`` is exactly its PMIDs and ``train`` the
  others; else the file is one split, ``all``.
- Hub ``bigbio/pubmed_qa`` (``pubmed_qa_labeled_fold0_source``): the same upper-case fields per row, but no PMID
  (the loading script yields it as the example key, not a field), so ids are made from split and row.
- Hub ``qiaojin/PubMedQA`` (``pqa_labeled``): ``pubid``, ``question``, ``context.contexts``, ``long_answer``,
  ``final_decision``.

The abstract becomes `MCQExample.context` (passages joined by "\\n", as the harness joins them) and ``LONG_ANSWER``
the explanation a model is trained to give.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medtune.data.schema import DataError, MCQExample, RawRow, optional_text, require_values, text

OPTIONS = ("yes", "no", "maybe")
PQAL_FILE, GROUND_TRUTH_FILE = "ori_pqal.json", "test_ground_truth.json"


def is_pqal_document(document) -> bool:
    """A JSON object keyed by PMID whose entries hold QUESTION and CONTEXTS (ori_pqal.json, ori_pqau.json)."""
    if not isinstance(document, dict) or not document:
        return False
    key, entry = next(iter(document.items()))
    return str(key).isdigit() and isinstance(entry, dict) and {"QUESTION", "CONTEXTS"} <= set(entry)


def is_pubmedqa_row(values: dict) -> bool:
    return {"QUESTION", "CONTEXTS"} <= set(values) or {"pubid", "context"} <= set(values)


def pqal_path(source: Path) -> Path:
    """The ori_pqal.json a source names: the file itself, or the one inside a folder."""
    path = source / PQAL_FILE if source.is_dir() else source
    if not path.exists():
        raise FileNotFoundError(f"{source}: no {PQAL_FILE} here; a PubMedQA folder holds the official repository's "
                                f"{PQAL_FILE} (and optionally {GROUND_TRUTH_FILE})")
    return path


def read_pqal(path: Path, document: dict, split: str | None, default_split: str) -> tuple[list[RawRow], str]:
    """The rows of one split of ori_pqal.json: `split` if given, else `default_split` where it exists, else `all`."""
    truth_path = path.parent / GROUND_TRUTH_FILE
    truth = json.loads(truth_path.read_text(encoding="utf-8")) if truth_path.exists() else None
    available = ("test", "train") if truth is not None else ("all",)
    chosen = split or (default_split if default_split in available else available[0])
    if chosen not in available and truth is not None:
        raise ValueError(f"{path}: has splits test and train (separated by the {GROUND_TRUTH_FILE} beside it), "
                         f"not '{chosen}'")
    if chosen not in available:
        raise ValueError(f"{path}: is one split, 'all' (no {GROUND_TRUTH_FILE} beside it separates test from "
                         f"train), not '{chosen}'; ask for split all, or put {GROUND_TRUTH_FILE} beside it")
    if truth is not None:
        missing = [pmid for pmid in truth if pmid not in document]
        if missing:
            raise ValueError(f"{truth_path}: names {len(missing)} PMID(s) that {path.name} lacks (e.g. {missing[0]}); "
                             "use the two files of the same release")
    lines = _pmid_lines(path.read_text(encoding="utf-8"))
    rows = []
    for pmid, entry in document.items():
        if chosen != "all" and (pmid in truth) != (chosen == "test"):
            continue
        values = {"pubid": pmid, **entry} if isinstance(entry, dict) else None
        if values is not None and truth is not None and pmid in truth:
            values["test_ground_truth"] = truth[pmid]
        rows.append(RawRow(f"{path.name}:{lines.get(pmid, '?')} (PMID {pmid})", values, "not an object"))
    return rows, chosen


def _pmid_lines(document_text: str) -> dict[str, int]:
    """PMID -> the line its entry starts on, so an error points into the file. Quotes inside JSON strings are
    escaped, so `"123": {` only matches a key."""
    lines, line, position = {}, 1, 0
    for match in re.finditer(r'"(\d+)"\s*:\s*\{', document_text):
        line += document_text.count("\n", position, match.start())
        position = match.start()
        lines.setdefault(match.group(1), line)
    return lines


def parse_row(row: RawRow, fallback_id: str) -> MCQExample:
    values, where = require_values(row), row.where
    upper = "QUESTION" in values  # ori_pqal.json and bigbio's source schema; qiaojin's is lower-case
    question = text(values, "QUESTION" if upper else "question", where, "empty_question")
    contexts = values.get("CONTEXTS") if upper else (values.get("context") or {}).get("contexts")
    name = "CONTEXTS" if upper else "context.contexts"
    if not isinstance(contexts, list) or not any(str(passage or "").strip() for passage in contexts):
        raise DataError(where, name, "expected a non-empty list of abstract passages", "empty_context")
    answer = _answer(values.get("final_decision"), values.get("test_ground_truth"), where)
    explanation = optional_text(values.get("LONG_ANSWER" if upper else "long_answer"))
    example_id = optional_text(values.get("pubid")) or fallback_id
    return MCQExample(example_id, question, OPTIONS, answer, explanation,
                      context="\n".join(str(passage) for passage in contexts))


def _answer(decision, ground_truth, where: str) -> int | None:
    if decision is None:
        return None  # PQA-U rows carry no decision
    label = str(decision).strip().lower()
    if label not in OPTIONS:
        raise DataError(where, "final_decision", f"expected yes, no or maybe, got {decision!r}",
                        "answer_out_of_range")
    if ground_truth is not None and str(ground_truth).strip().lower() != label:
        raise DataError(where, "final_decision", f"{label!r} disagrees with {GROUND_TRUTH_FILE} "
                                                 f"({ground_truth!r})", "answer_mismatch")
    return OPTIONS.index(label)
