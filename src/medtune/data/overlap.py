"""How much a training set overlaps the questions it is scored on, in three strengths.

- **exact**: the same question with the same options (`MCQExample.key()`: lowercased, whitespace collapsed);
- **question**: the same question text, not an exact duplicate: other options, or a difference `key()` sees and
  this does not (case, whitespace and punctuation do not count here, as below);
- **ngram**: the two share at least one 13-gram of words, the test lm-evaluation-harness uses for
  decontamination (`lm_eval/decontamination/janitor.py`, 0.4.13): ASCII letters lowercased, every character of
  `string.punctuation` deleted, then split on whitespace; an n-gram is 13 consecutive words, and a question with
  fewer than 13 words has none. We follow that exactly. Where we differ: the harness compares an evaluation
  document's n-grams with n-grams of a whole pre-training corpus; we compare them with the n-grams of the
  training rows' question text (the context passages included where a row has them, e.g. PubMedQA's abstract,
  as the harness's default query `doc_to_text` does), because the question is what a fine-tuning set repeats.

Each (evaluation row, training row) pair is reported once, in its strongest category (exact > question >
ngram), so the three pair counts add up (an evaluation row may still appear in two categories, through two
training rows). The evaluation side is indexed (hash sets of keys, questions and 13-grams)
and the training side streamed: MedMCQA's 182k training rows never need to be held twice (bench/overlap.py).

A run keeps a `training_fingerprint` of its rows (48-bit hashes of keys, questions and 13-grams, sorted and
packed), so `medtune eval` can warn when the rows it scores are rows the run trained on (`warn_if_trained_on`).
"""

from __future__ import annotations

import base64
import hashlib
import string
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medtune.data import MCQExample, is_local, load_examples
from medtune.tasks import TASKS

NGRAM_N = 13  # lm-evaluation-harness's Janitor default and the n-gram size of its Pile decontamination
CATEGORIES = ("exact", "question", "ngram")
SHOWN_PER_CATEGORY = 10  # pairs printed per category in the text report; --json and to_dict() hold them all
FINGERPRINT_FORMAT = "medtune-training-fingerprint/1"
HASH_BYTES = 6  # per key, question and n-gram in the fingerprint (48-bit blake2b)

# The harness's Janitor.translation_table: only ASCII letters are lowercased (str.lower would also fold
# other scripts), and punctuation is deleted, not replaced by a space ("anti-body" -> "antibody").
_HARNESS_TABLE = str.maketrans(string.ascii_lowercase + string.ascii_uppercase, string.ascii_lowercase * 2,
                               string.punctuation)


# ---------------------------------------------------------------- what is compared


def harness_normalize(text: str) -> str:
    """lm-evaluation-harness's `Janitor.normalize_string`: ASCII lowercase, punctuation deleted."""
    return text.translate(_HARNESS_TABLE)


def ngrams(text: str, n: int = NGRAM_N) -> set[str]:
    """The word n-grams of `text` after the harness's normalisation (its `word_ngrams`), as space-joined strings."""
    return _grams(harness_normalize(text).split(), n)


def _grams(words: list[str], n: int) -> set[str]:
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def features(example: MCQExample, n: int = NGRAM_N) -> tuple[str, str, set[str]]:
    """What one row is compared by: its key, its normalized question text (whitespace collapsed) and the n-grams
    of its question, context passages first where it has them. Each text is normalized once: normalizing
    "context\nquestion" gives the two word lists one after the other."""
    words = harness_normalize(example.question).split()
    context = harness_normalize(example.context).split() if example.context else []
    return example.key(), " ".join(words), _grams(context + words, n)


# ---------------------------------------------------------------- the report


@dataclass
class OverlapReport:
    """Overlap of training rows with evaluation rows.

    `matches[category][eval_id]` lists the training ids that overlap that evaluation row in that category
    (each pair in its strongest category only)."""

    train_rows: int = 0
    eval_rows: int = 0
    matches: dict[str, dict[str, list[str]]] = field(default_factory=lambda: {c: {} for c in CATEGORIES})
    overlapping_train_rows: int = 0  # rows, not ids: ids may repeat across training sources
    overlapping_train_ids: set[str] = field(default_factory=set)
    ngram_n: int = NGRAM_N
    sources: dict[str, list[dict]] = field(default_factory=dict)  # {"train"/"eval": [{source, task, split, rows}]}

    def eval_ids(self) -> set[str]:
        """Evaluation rows that overlap the training rows in any category."""
        return {eval_id for category in CATEGORIES for eval_id in self.matches[category]}

    def counts(self) -> dict[str, dict[str, int]]:
        return {category: {"eval_rows": len(found), "pairs": sum(map(len, found.values()))}
                for category, found in self.matches.items()}

    def to_dict(self) -> dict:
        """Everything, JSON-ready (for `--json` and a run's manifest); id lists sorted so output is stable."""
        return {
            "method": {
                "exact": "MCQExample.key(): question + options, lowercased, whitespace collapsed",
                "question": "same question text (ASCII-lowercased, punctuation deleted, whitespace collapsed), "
                            "not an exact duplicate",
                "ngram": f"shared {self.ngram_n}-gram of question words (context included), normalized as "
                         "lm-evaluation-harness's decontamination Janitor",
                "pairs": "each (eval, train) pair counted once, in its strongest category",
            },
            "ngram_n": self.ngram_n,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "overlapping_eval_rows": len(self.eval_ids()),
            "overlapping_train_rows": self.overlapping_train_rows,
            **{category: {**self.counts()[category],
                          "matches": {eval_id: sorted(ids) for eval_id, ids in sorted(found.items())}}
               for category, found in self.matches.items()},
            "overlapping_train_ids": sorted(self.overlapping_train_ids),
            "sources": self.sources,
        }

    def summary(self, shown: int = SHOWN_PER_CATEGORY) -> str:
        """The printed form: counts per category and the first `shown` evaluation rows of each with their matches."""
        lines = [f"{self.train_rows:,} training rows vs {self.eval_rows:,} evaluation rows: "
                 f"{len(self.eval_ids()):,} evaluation rows overlap, through {self.overlapping_train_rows:,} "
                 "training rows"]
        lines += [f"  {side}: {info['source']}" + (f" ({info['task']}, {info['split']})" if info["task"] else "")
                  + f": {info['rows']:,} rows" + (f", skipped {info['skipped']}" if info.get("skipped") else "")
                  for side, infos in self.sources.items() for info in infos]
        labels = {"exact": "exact duplicates (question + options)",
                  "question": "same question text (case, spacing, punctuation aside), not exact duplicates",
                  "ngram": f"shared {self.ngram_n}-gram of the question, text not the same"}
        for category in CATEGORIES:
            found, count = self.matches[category], self.counts()[category]
            lines.append(f"  {labels[category]}: {count['eval_rows']:,} evaluation rows, {count['pairs']:,} pairs")
            for eval_id, ids in sorted(found.items())[:shown]:
                more = f" (+{len(ids) - 3} more)" if len(ids) > 3 else ""
                lines.append(f"    {eval_id} <- {', '.join(sorted(ids)[:3])}{more}")
            if len(found) > shown:
                lines.append(f"    ... {len(found) - shown:,} more (all of them with --json)")
        return "\n".join(lines)


# ---------------------------------------------------------------- finding it


@dataclass
class _EvalIndex:
    """Hash maps from each evaluation row's key, question text and 13-grams to the evaluation ids that have it."""

    keys: dict[str, list[str]] = field(default_factory=dict)
    questions: dict[str, list[str]] = field(default_factory=dict)
    grams: dict[str, list[str]] = field(default_factory=dict)
    rows: int = 0


def _index(eval_examples: Iterable[MCQExample], n: int) -> _EvalIndex:
    index = _EvalIndex()
    for example in eval_examples:
        index.rows += 1
        key, question, grams = features(example, n)
        index.keys.setdefault(key, []).append(example.id)
        if question:  # a question of punctuation only is no question to match
            index.questions.setdefault(question, []).append(example.id)
        for gram in grams:
            index.grams.setdefault(gram, []).append(example.id)
    return index


def _matches(example: MCQExample, index: _EvalIndex, n: int) -> dict[str, set[str]]:
    """The evaluation ids one training row overlaps, per category, each id in its strongest category only."""
    key, question, grams = features(example, n)
    exact = set(index.keys.get(key, ()))
    same = set(index.questions.get(question, ())) - exact
    shared = {eval_id for gram in grams for eval_id in index.grams.get(gram, ())}
    return {"exact": exact, "question": same, "ngram": shared - exact - same}


def _record(report: OverlapReport, example: MCQExample, found: dict[str, set[str]]) -> bool:
    """Add one training row's matches to the report; True when it overlaps anything."""
    report.train_rows += 1
    for category, eval_ids in found.items():
        for eval_id in eval_ids:
            report.matches[category].setdefault(eval_id, []).append(example.id)
    overlaps = any(found.values())
    if overlaps:
        report.overlapping_train_rows += 1
        report.overlapping_train_ids.add(example.id)
    return overlaps


def find_overlap(
    train_examples: Iterable[MCQExample], eval_examples: Iterable[MCQExample], n: int = NGRAM_N
) -> OverlapReport:
    """Compare every training row with every evaluation row (through the index: time linear in both sizes).

    `train_examples` may be a generator: it is read once, row by row."""
    index = _index(eval_examples, n)
    report = OverlapReport(eval_rows=index.rows, ngram_n=n)
    for example in train_examples:
        _record(report, example, _matches(example, index, n))
    return report


def exclude_overlap(
    train_examples: Iterable[MCQExample], eval_examples: Iterable[MCQExample], n: int = NGRAM_N
) -> tuple[list[MCQExample], OverlapReport]:
    """The training rows that overlap no evaluation row (in any category), and the report of what was dropped.

    Rows are kept or dropped by position, not id, so ids repeated across training sources cannot drop a clean
    row. The report's `overlapping_train_rows` is the number dropped."""
    index = _index(eval_examples, n)
    report = OverlapReport(eval_rows=index.rows, ngram_n=n)
    kept = [example for example in train_examples if not _record(report, example, _matches(example, index, n))]
    return kept, report


# ---------------------------------------------------------------- sources named on the command line


def parse_source(spec: str) -> tuple[str | None, str]:
    """`TASK=PATH` -> (task, path); a plain path or Hub dataset id -> (None, spec). `mmlu=FOLDER` -> ("mmlu", ...)."""
    name, sep, path = spec.partition("=")
    if sep and (name in TASKS or name == "mmlu"):
        if not path:
            raise ValueError(f"{spec!r} names task {name} but no file; give {name}=PATH")
        return name, path
    return None, spec


def _task_names(task: str | None) -> list[str | None]:
    return [name for name in TASKS if name.startswith("mmlu_")] if task == "mmlu" else [task]


def _split(task: str | None, source: str, side: str) -> str | None:
    """The split to read: training rows from "train"; evaluation rows from the task's scored split (None lets
    the reader take it), or a Hub dataset's "validation". A plain file is one split and needs none."""
    if side == "train":
        return "train" if task or not is_local(source) else None
    return None if task or is_local(source) else "validation"


def load_side(specs: list[str], side: str, skip_invalid: bool = False) -> tuple[list[MCQExample], list[dict]]:
    """The rows of every source on one side ("train" or "eval"), and what was read from each.

    With several sources, ids become `LABEL:id` (LABEL = the task, or the file name) so equal ids from two
    files stay apart. Unlabelled rows count too: a test question without its answer can still be memorised."""
    loaded = []
    for spec in specs:
        task, source = parse_source(spec)
        for name in _task_names(task):
            examples, read = load_examples(source, task=name, split=_split(name, source, side),
                                           require_answer=False, skip_invalid=skip_invalid)
            label = name or Path(source).name
            loaded.append((label, examples, {"source": source, "task": name, "split": read.split,
                                             "rows": len(examples), "skipped": read.skipped}))
    if len(loaded) > 1:
        loaded = [(label, [replace(e, id=f"{label}:{e.id}") for e in examples], info)
                  for label, examples, info in loaded]
    return [e for _, examples, _ in loaded for e in examples], [info for _, _, info in loaded]


def overlap_of_sources(train_specs: list[str], eval_specs: list[str], skip_invalid: bool = False) -> OverlapReport:
    """`medtune data overlap`: load both sides (each `TASK=PATH`, a file or a Hub id) and compare them."""
    train, train_info = load_side(train_specs, "train", skip_invalid)
    evaluated, eval_info = load_side(eval_specs, "eval", skip_invalid)
    report = find_overlap(train, evaluated)
    report.sources = {"train": train_info, "eval": eval_info}
    return report


# ---------------------------------------------------------------- what a run remembers of its training rows


def _hash48(text: str) -> int:
    """A stable 48-bit hash (Python's hash() changes between processes). 6 bytes, not 8, keep the fingerprint a
    quarter smaller while a false match stays negligible: ~10^6 training n-grams against ~10^5 evaluated ones
    give 10^11 / 2^48, about 4e-4 false matches expected over a whole evaluation."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).digest(), "big")


def _pack(hashes: Iterable[int]) -> str:
    """Sorted, de-duplicated hashes as base64 of their 6 big-endian bytes each (8 base64 characters a hash)."""
    values = np.unique(np.fromiter(hashes, dtype=np.uint64))
    return base64.b64encode(values.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - HASH_BYTES :].tobytes()
                            ).decode("ascii")


def _unpack(packed: str) -> np.ndarray:
    """The sorted hashes as uint64 [n] (each padded back to 8 bytes)."""
    raw = np.frombuffer(base64.b64decode(packed), dtype=np.uint8).reshape(-1, HASH_BYTES)
    padded = np.zeros((len(raw), 8), dtype=np.uint8)
    padded[:, 8 - HASH_BYTES :] = raw
    return padded.view(">u8").ravel().astype(np.uint64)


def _member(sorted_values: np.ndarray, hashes: list[int]) -> bool:
    """Whether any of `hashes` is in `sorted_values` (binary search: no copy or re-sort of the big array)."""
    if not hashes or not len(sorted_values):
        return False
    probe = np.array(hashes, dtype=np.uint64)
    at = np.searchsorted(sorted_values, probe).clip(max=len(sorted_values) - 1)
    return bool((sorted_values[at] == probe).any())


def training_fingerprint(examples: Iterable[MCQExample], n: int = NGRAM_N) -> dict:
    """A compact, JSON-ready record of the training rows, enough to tell later whether a row was trained on.

    Holds 48-bit hashes of each row's key, question text and 13-grams (not the text). Size: 8 base64 characters
    per distinct key, question and n-gram (bench/README.md gives it for 182,822 rows)."""
    keys, questions, grams, rows = [], [], [], 0
    for example in examples:
        rows += 1
        key, question, example_grams = features(example, n)
        keys.append(_hash48(key))
        questions.append(_hash48(question))
        grams.extend(map(_hash48, example_grams))
    return {"format": FINGERPRINT_FORMAT, "hash": "blake2b-48", "ngram_n": n, "rows": rows,
            "keys": _pack(keys), "questions": _pack(questions), "ngrams": _pack(grams)}


def _check_fingerprint(fingerprint: dict) -> None:
    if fingerprint.get("format") != FINGERPRINT_FORMAT:
        raise ValueError(f"the training fingerprint has format {fingerprint.get('format')!r}, not "
                         f"{FINGERPRINT_FORMAT!r}; it was written by another medtune version, so it cannot be read")


def trained_on(fingerprint: dict, examples: Iterable[MCQExample]) -> dict[str, list[str]]:
    """Ids of `examples` that match the fingerprinted training rows, per category (each id in its strongest)."""
    _check_fingerprint(fingerprint)
    n = fingerprint["ngram_n"]
    seen = {name: _unpack(fingerprint[name]) for name in ("keys", "questions", "ngrams")}
    found: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for example in examples:
        key, question, grams = features(example, n)
        if _member(seen["keys"], [_hash48(key)]):
            found["exact"].append(example.id)
        elif question and _member(seen["questions"], [_hash48(question)]):
            found["question"].append(example.id)
        elif _member(seen["ngrams"], [_hash48(gram) for gram in grams]):
            found["ngram"].append(example.id)
    return found


def warn_if_trained_on(fingerprint: dict, examples: Iterable[MCQExample]) -> str | None:
    """One sentence when some evaluated rows overlap the rows the run trained on; None when none do."""
    examples = list(examples)
    found = trained_on(fingerprint, examples)
    total = sum(map(len, found.values()))
    if not total:
        return None
    return (f"{total:,} of {len(examples):,} evaluated questions overlap the rows this run trained on "
            f"({len(found['exact']):,} exact duplicates, {len(found['question']):,} with the same question and "
            f"other options, {len(found['ngram']):,} sharing a {fingerprint['ngram_n']}-gram): their accuracy "
            "measures memory as much as skill; 'medtune data overlap' lists them")
