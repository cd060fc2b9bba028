"""Consumers checked, not assumed: lm-evaluation-harness 0.4.13 loads an adapter `medtune export` wrote, the way its
users do (`--model hf --model_args pretrained=BASE,peft=ADAPTER`), and chooses the same letters as
`medtune eval --prompt-format harness` on the same rows.

The rows are real MedMCQA validation rows (../shared/data/medmcqa) in the Hub's schema; the task YAML `include`s
the installed medmcqa task (its doc_to_text and choices are the harness's) and reads the local file
(tests/test_harness_agreement.py's approach). The model is the tiny random Qwen3 run (real Qwen3 tokenizer): what
is checked is that the adapter loads and scores alike, not accuracy. The harness resizes the embedding to the
tokenizer's length (151,669 of 151,936 rows) before attaching an adapter; only never-used rows go, so the letters'
log-likelihoods, normalized over the options, do not change.

vLLM cannot run here; what it needs of an adapter is checked statically (tests/test_export.py, vllm_check).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from medtune.cli import main

MEDMCQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"
ROWS = 8


def _task(folder: Path) -> str:
    """A local copy of the harness's medmcqa task over the first ROWS validation rows with an answer."""
    import lm_eval

    with open(MEDMCQA / "dev-original-partial.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][:ROWS]
    data = folder / "medmcqa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    include = Path(lm_eval.__file__).parent / "tasks" / "medmcqa" / "medmcqa.yaml"
    config = {"include": str(include), "task": "fx_consumer_medmcqa", "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"validation": str(data)}}, "training_split": None,
              "validation_split": None, "test_split": "validation"}
    (folder / "fx_consumer_medmcqa.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(data)


def test_lm_evaluation_harness_loads_the_exported_adapter_and_chooses_medtune_s_letters(tiny_run, tiny_qwen3,
                                                                                          tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    adapter = tmp_path / "adapter"
    assert main(["export", str(tiny_run), "--output", str(adapter), "--base-model", "example-org/tiny-qwen3"]) == 0
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = _task(tasks)

    # medtune's side: the run itself, scored with the harness prompt (and the base alone, to know the adapter shows)
    ours = _medtune_eval(tmp_path / "eval", data, str(tiny_run))
    base = _medtune_eval(tmp_path / "eval-base", data, "--model", str(tiny_qwen3))

    # the harness's side: the exported adapter folder on the base, as its command line loads them
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_qwen3},peft={adapter},dtype=float32", tasks=["fx_consumer_medmcqa"],
        task_manager=TaskManager(include_path=str(tasks)), batch_size=8, device="cpu", log_samples=True,
        verbosity="WARNING")
    samples = sorted(results["samples"]["fx_consumer_medmcqa"], key=lambda sample: sample["doc_id"])
    theirs = [_normalized([ll for ll, _ in sample["filtered_resps"]]) for sample in samples]
    assert len(ours) == len(theirs) == ROWS
    assert [_letter(p) for p in theirs] == [row["pred"] for row in ours]
    assert _largest_difference(theirs, ours) < 1e-4  # the same probabilities (medtune rounds to 6 decimals)
    assert _largest_difference(theirs, base) > 1e-3  # ... which the base alone does not give: the adapter loaded


def _medtune_eval(output: Path, data: str, *model) -> list[dict]:
    assert main(["eval", *model, "--prompt-format", "harness", "--data", data, "--task", "medmcqa",
                 "--output", str(output), "--device", "cpu"]) == 0
    with open(output / "predictions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _normalized(loglikelihoods: list[float]) -> list[float]:
    """The harness's per-choice log-likelihoods as probabilities over the choices (what medtune reports)."""
    top = max(loglikelihoods)
    weights = [math.exp(ll - top) for ll in loglikelihoods]
    return [w / sum(weights) for w in weights]


def _letter(probabilities: list[float]) -> str:
    return "ABCD"[max(range(len(probabilities)), key=probabilities.__getitem__)]


def _largest_difference(theirs: list[list[float]], rows: list[dict]) -> float:
    return max(abs(p - row["probs"][letter]) for ps, row in zip(theirs, rows) for p, letter in zip(ps, "ABCD"))
