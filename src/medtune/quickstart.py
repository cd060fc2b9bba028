"""The CPU quickstart: evaluate SmolLM2-135M-Instruct, fine-tune it, evaluate again, answer a question.

Data: MedMCQA from the Hub when it is reachable; otherwise the demo set shipped with the package
(questions written for this demo, labelled as such -- not a benchmark). Any local file with `--data`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from medtune.answer import Answerer
from medtune.config import QUICKSTART_MODEL, TrainConfig
from medtune.data import DEFAULT_HUB_DATASET, load_examples
from medtune.evaluate import evaluate_to_dir
from medtune.modeling import hub_reachable
from medtune.rundir import RunDir, write_json
from medtune.train import train

DEMO_FILE = "medmcqa_demo.jsonl"


def demo_path() -> Path:
    return Path(str(resources.files("medtune") / "demo_data" / DEMO_FILE))


def _split_demo(folder: Path) -> tuple[str, str]:
    """Every third demo row is held out (20 of 60), the rest (40) are training rows, of which `quickstart`
    keeps 4 as the dev slice (a tenth: `data.DEV_SHARE_PERCENT`; 36 are trained on); written as two JSONL files."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = demo_path().read_text(encoding="utf-8").splitlines(keepends=True)
    train_file, held_out_file = folder / "demo-train.jsonl", folder / "demo-heldout.jsonl"
    train_file.write_text("".join(line for i, line in enumerate(lines) if i % 3 != 2), encoding="utf-8")
    held_out_file.write_text("".join(line for i, line in enumerate(lines) if i % 3 == 2), encoding="utf-8")
    return str(train_file), str(held_out_file)


def _choose_data(output: Path, data: str | None, eval_data: str | None) -> tuple[dict, str]:
    if data:
        if not eval_data:
            raise ValueError("--data needs --eval-data too: the quickstart reports on held-out questions")
        return {"data": data, "eval_data": eval_data}, f"your data: {data} (held out: {eval_data})"
    if hub_reachable():
        return ({"data": DEFAULT_HUB_DATASET, "eval_data": DEFAULT_HUB_DATASET},
                f"MedMCQA from the Hugging Face Hub ({DEFAULT_HUB_DATASET}: train split, validation held out)")
    train_file, held_out_file = _split_demo(output / "data")
    return ({"data": train_file, "eval_data": held_out_file},
            "the medtune DEMO set (60 questions written for this demo; NOT a benchmark): the Hub is not reachable")


def quickstart(output: Path, data: str | None = None, eval_data: str | None = None, limit: int | None = None,
               eval_limit: int | None = None, epochs: float | None = None) -> dict:
    sources, description = _choose_data(output, data, eval_data)
    demo = "demo-train" in sources["data"]
    print(f"[medtune] quickstart data: {description}")
    config = TrainConfig(
        model=QUICKSTART_MODEL, output=str(output / "run"), **sources, device="cpu", dtype="fp32",
        skip_invalid=True, limit=limit or (None if demo else 400), eval_limit=eval_limit or 200,
        dev_size=4 if demo else 32, epochs=epochs or (3.0 if demo else 1.0),
        batch_size=8, grad_accum=1, learning_rate=2e-4, max_seq_len=384, eval_every=5 if demo else 10,
        save_every=10, resume=(output / "run").exists(),  # a killed quickstart continues where it stopped
    )
    held_out, _ = load_examples(config.eval_data, split=config.eval_split, skip_invalid=True, limit=config.eval_limit)

    print(f"[medtune] 1/4 evaluating the base model on {len(held_out)} held-out questions")
    # dtype "auto": the one rule eval, ask and serve follow (answer._inference_dtype), so `medtune eval` of this
    # run reproduces the quickstart's figures; the eval folders are the quickstart's own, rewritten on a re-run.
    before = evaluate_to_dir(Answerer.from_model(config.model, "cpu", "auto"), held_out, output / "eval-before",
                             overwrite=True)
    run = RunDir(config.output)
    if run.is_run():
        print(f"[medtune] 2/4 {run.root} is already trained: reusing it (delete it to train again)")
    else:
        print("[medtune] 2/4 fine-tuning a LoRA adapter")
        train(config)
    print("[medtune] 3/4 evaluating the fine-tuned model on the same questions")
    answerer = Answerer.from_run(run.root, "cpu", "auto")
    after = evaluate_to_dir(answerer, held_out, output / "eval-after", overwrite=True)
    sample = held_out[0]
    print(f"[medtune] 4/4 answering a held-out question:\n  {sample.question}")
    answer = answerer.answer(sample.question, list(sample.options), explain=True, max_new_tokens=80)
    for letter, option in zip(answer.probs, sample.options):
        print(f"    {letter}. {option:<48.48} {answer.probs[letter]:6.1%}")
    print(f"  model's answer: {answer.answer} (gold {sample.letters[sample.answer]})\n"
          f"  explanation: {answer.explanation}")

    report = {"data": description, "model": config.model, "run": str(run.root),
              "before": _headline(before), "after": _headline(after),
              "sample": {"question": sample.question, "options": list(sample.options),
                         "gold": sample.letters[sample.answer], **answer.to_dict()}}
    write_json(output / "report.json", report)
    print(f"\n[medtune] accuracy before {_line(before)}\n[medtune] accuracy after  {_line(after)}")
    print(f"[medtune] run directory: {run.root}\n[medtune] report: {output / 'report.json'}")
    return json.loads((output / "report.json").read_text())


def _headline(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("n", "accuracy", "ci95", "baselines")}


def _line(metrics: dict) -> str:
    low, high = metrics["ci95"]
    return f"{metrics['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}, n={metrics['n']})"
