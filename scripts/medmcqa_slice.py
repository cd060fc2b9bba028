"""Make the MedMCQA slice shipped in src/medtune/demo_data/ from the stored MedMCQA files, by a fixed rule.

    python scripts/medmcqa_slice.py [MEDMCQA_FOLDER]   # default /work/shared/data/medmcqa

The rule (chosen by position, never by what scores well; see src/medtune/demo_data/README.md):
- training: every TRAIN_EVERY-th line of train-sample-original.jsonl (0-based lines 0, 6, 12, ...), kept when
  medtune's reader accepts the row and it has a non-empty explanation (`exp`);
- held out: every HELD_OUT_EVERY-th line of dev-ids-mirage.jsonl (the official validation split in the Hub's
  order, with MedMCQA's ids; 0-based lines 0, 13, 26, ...), kept when medtune's reader accepts the row.
Lines are copied unchanged.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from medtune.data import load_examples

TRAIN_EVERY, HELD_OUT_EVERY = 6, 13
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "medtune" / "demo_data"


def accepted(lines: list[str]) -> set[str]:
    """Ids of the lines medtune's reader accepts (invalid rows skipped, as `--skip-invalid` does)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        path.write_text("".join(lines), encoding="utf-8")
        examples, _ = load_examples(str(path), skip_invalid=True)
    return {example.id for example in examples}


def every(path: Path, k: int) -> list[str]:
    return [line for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True)) if i % k == 0]


def main(folder: Path) -> None:
    train = [line for line in every(folder / "train-sample-original.jsonl", TRAIN_EVERY)
             if (json.loads(line).get("exp") or "").strip()]
    held_out = every(folder / "dev-ids-mirage.jsonl", HELD_OUT_EVERY)
    for name, lines in (("medmcqa-train.jsonl", train), ("medmcqa-heldout.jsonl", held_out)):
        valid = accepted(lines)
        kept = [line for line in lines if json.loads(line)["id"] in valid]
        (OUTPUT / name).write_text("".join(kept), encoding="utf-8")
        print(f"{name}: {len(kept)} rows ({len(lines) - len(kept)} refused by the reader)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/medmcqa"))
