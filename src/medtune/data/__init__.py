"""Medical multiple-choice questions from any supported source -> validated `MCQExample`s.

One reader per source family (medmcqa.py, medqa.py, pubmedqa.py, mmlu.py, columns.py for the user's own
columns), what they share in schema.py, and `load_examples` (sources.py), the one entry point: a local file in a
family's official layout, a folder (PubMedQA, MMLU), a Hub dataset id, or a task's Hub copy.
"""

from medtune.data.dev import DEV_SHARE_PERCENT, dev_slice_size, split_dev
from medtune.data.schema import (
    LETTERS,
    MAX_OPTIONS,
    MIN_OPTIONS,
    DataError,
    LoadReport,
    MCQExample,
    example_from_input,
)
from medtune.data.sources import DEFAULT_HUB_DATASET, LOCAL_SUFFIXES, file_sha256, is_local, load_examples

__all__ = [
    "DEFAULT_HUB_DATASET", "DEV_SHARE_PERCENT", "LETTERS", "LOCAL_SUFFIXES", "MAX_OPTIONS", "MIN_OPTIONS",
    "DataError", "LoadReport", "MCQExample", "dev_slice_size", "example_from_input", "file_sha256", "is_local",
    "load_examples", "split_dev",
]
