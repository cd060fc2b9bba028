"""Slices carved out of the training rows, never trained on and never reported:

- the dev slice, to watch training (periodic accuracy, early stopping);
- the calibration slice, to fit the temperature of the finished model (evaluation/calibration.py).

Neither overlaps the other, the rows trained on, or the reported evaluation rows."""

from __future__ import annotations

import random

from medtune.data.schema import MCQExample

# Capping the dev slice at a tenth of the rows keeps a small run a training run: `train --limit 64` with dev_size
# 64 used to train on one row. The calibration slice takes at most another tenth.
DEV_SHARE_PERCENT = 10
CALIBRATION_SHARE_PERCENT = 10
# Below 30 questions the fitted temperature turns on a handful of answers; a smaller run takes no calibration
# slice (so runs under 300 rows train on every row but the dev slice) and can be calibrated later on other data.
MIN_CALIBRATION_ROWS = 30


def dev_slice_size(rows: int, dev_size: int) -> int:
    """Rows the dev slice may take from `rows` training rows: `dev_size`, capped at DEV_SHARE_PERCENT of them.

    64 rows with dev_size 64 -> 6 (58 train); 2,190 rows with dev_size 256 -> 219; under 10 rows -> 0."""
    return max(0, min(dev_size, rows * DEV_SHARE_PERCENT // 100))


def calibration_slice_size(rows: int, calibration_size: int) -> int:
    """Rows the calibration slice may take from `rows` training rows: `calibration_size`, capped at
    CALIBRATION_SHARE_PERCENT of them, and none when that leaves fewer than MIN_CALIBRATION_ROWS.

    2,000 rows with calibration_size 256 -> 200; 355 rows -> 35; 299 rows -> 0 (29 would be too few)."""
    size = max(0, min(calibration_size, rows * CALIBRATION_SHARE_PERCENT // 100))
    return size if size >= MIN_CALIBRATION_ROWS else 0


def _carve(examples: list[MCQExample], size: int, rng: random.Random,
           exclude: set[str]) -> tuple[list[MCQExample], list[MCQExample]]:
    """(rest, slice): `size` rows drawn by `rng` among those whose `key()` is not in `exclude`, fewer when not
    enough are eligible; both keep the order of `examples`."""
    candidates = [i for i, example in enumerate(examples) if example.key() not in exclude]
    chosen = set(rng.sample(candidates, min(size, len(candidates))))
    rest = [example for i, example in enumerate(examples) if i not in chosen]
    return rest, [examples[i] for i in sorted(chosen)]


def split_dev(
    examples: list[MCQExample], dev_size: int, seed: int, exclude: set[str] = frozenset()
) -> tuple[list[MCQExample], list[MCQExample]]:
    """Carve a dev slice (for periodic evaluation / early stopping) out of the training rows.

    The slice holds `dev_slice_size(len(examples), dev_size)` rows, fewer when not enough rows are eligible.
    Rows whose `key()` is in `exclude` (the reported evaluation rows) never enter the dev slice, so the
    dev slice cannot overlap what is reported. Returns (train, dev); the order of `train` is kept.
    """
    return _carve(examples, dev_slice_size(len(examples), dev_size), random.Random(seed), exclude)


def split_calibration(
    examples: list[MCQExample], calibration_size: int, seed: int, total_rows: int, exclude: set[str] = frozenset()
) -> tuple[list[MCQExample], list[MCQExample]]:
    """Carve the calibration slice out of the rows left after the dev slice (`examples`), so it overlaps neither
    the dev slice nor the rows trained on; sized by `calibration_slice_size(total_rows, calibration_size)`, where
    `total_rows` counts the rows before the dev slice was taken. Rows whose `key()` is in `exclude` (the reported
    evaluation rows) never enter it. Returns (train, calibration); the order of `train` is kept."""
    # its own seeded stream: the draw does not repeat the dev slice's positions
    return _carve(examples, calibration_slice_size(total_rows, calibration_size), random.Random(seed + 1), exclude)
