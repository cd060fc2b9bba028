"""The dev slice: rows carved out of the training data to watch training (periodic accuracy, early stopping).
It is never reported, and never overlaps the rows that are."""

from __future__ import annotations

import random

from medtune.data.schema import MCQExample

# Capping the dev slice at a tenth of the rows keeps a small run a training run: `train --limit 64` with dev_size
# 64 used to train on one row.
DEV_SHARE_PERCENT = 10


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
