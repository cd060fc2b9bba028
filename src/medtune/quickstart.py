"""The CPU quickstart: fine-tune SmolLM2-135M-Instruct, then say whether it helped, how well its probabilities are
calibrated, and where the report is -- on at least 300 held-out questions.

Data: MedMCQA from the Hub when it is reachable; otherwise the slice of real MedMCQA shipped with the package
(demo_data/README.md: the rows and the rule that chose them). Any local file with `--data` and `--eval-data`.

`medtune train --eval-data` does the work (the calibration slice, the base and tuned evaluations, their paired
comparison); the quickstart chooses small settings, then reads the run's files and prints what they mean. A
135M model trained for a few minutes on a CPU is not expected to learn medicine, and the printed text never
suggests it did: "no significant difference" is the expected verdict.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from medtune.config import QUICKSTART_MODEL, TrainConfig
from medtune.data import DEFAULT_HUB_DATASET
from medtune.evaluation.after_training import COMPARISON_FILE, compare_with_base
from medtune.modeling import hub_reachable
from medtune.rundir import RunDir, write_json
from medtune.train import train

TRAIN_FILE, HELD_OUT_FILE = "medmcqa-train.jsonl", "medmcqa-heldout.jsonl"
DEMO_FILE = "medmcqa_demo.jsonl"  # questions written for medtune (not MedMCQA): bench/serve_latency.py's requests
# Optimizer steps of 8 rows: what a shared 2-core CPU trains in about a minute. The run shows the pipeline and its
# statistics end to end; it is far too little training to change a model's knowledge, and the text says so.
QUICKSTART_STEPS = 4
HUB_LIMIT, HELD_OUT_LIMIT = 400, 400  # rows read from the Hub (or --data): training, held out
GPU_RECIPE = "configs/qwen3-1.7b-lora.yaml"


def demo_data_path(name: str) -> Path:
    return Path(str(resources.files("medtune") / "demo_data" / name))


def demo_path() -> Path:
    """The written demo questions (not MedMCQA), kept as request examples for the serving benchmark."""
    return demo_data_path(DEMO_FILE)


def _choose_data(data: str | None, eval_data: str | None) -> tuple[dict, str]:
    if data:
        if not eval_data:
            raise ValueError("--data needs --eval-data too: the quickstart reports on held-out questions")
        return {"data": data, "eval_data": eval_data}, f"your data: {data} (held out: {eval_data})"
    if hub_reachable():
        return ({"data": DEFAULT_HUB_DATASET, "eval_data": DEFAULT_HUB_DATASET},
                f"MedMCQA from the Hugging Face Hub ({DEFAULT_HUB_DATASET}: train split, validation held out)")
    return ({"data": str(demo_data_path(TRAIN_FILE)), "eval_data": str(demo_data_path(HELD_OUT_FILE))},
            "the slice of real MedMCQA shipped with medtune (training rows with explanations from its train split; "
            "held out: every 13th question of its validation split; MIT license): the Hub is not reachable")


def quickstart_config(output: Path, sources: dict, shipped: bool, limit: int | None = None,
                      eval_limit: int | None = None, epochs: float | None = None) -> TrainConfig:
    """Small settings: a few optimizer steps (or `epochs` when given), no dev slice (the held-out comparison is
    the measure), the calibration slice by its default rule, and every shipped held-out question."""
    return TrainConfig(
        model=QUICKSTART_MODEL, output=str(output / "run"), **sources, device="cpu", dtype="fp32",
        skip_invalid=True, limit=limit or (None if shipped else HUB_LIMIT),
        eval_limit=eval_limit or (None if shipped else HELD_OUT_LIMIT),
        dev_size=0, eval_every=0, epochs=epochs or 1.0, max_steps=None if epochs else QUICKSTART_STEPS,
        # 8 rows a step in micro-batches of 4: as fast as 8 at once on the CPU, and the peak RSS of the whole
        # quickstart falls from 13.0 to 6.3 GB (README, Quickstart)
        batch_size=4, grad_accum=2, learning_rate=2e-4, max_seq_len=256, save_every=4,
        resume=(output / "run").exists(),  # a killed quickstart continues where it stopped
    )


def quickstart(output: Path, data: str | None = None, eval_data: str | None = None, limit: int | None = None,
               eval_limit: int | None = None, epochs: float | None = None) -> dict:
    sources, description = _choose_data(data, eval_data)
    config = quickstart_config(output, sources, shipped=not data and "medmcqa-train" in sources["data"],
                               limit=limit, eval_limit=eval_limit, epochs=epochs)
    print(f"[medtune] quickstart data: {description}")
    run = RunDir(config.output)
    if run.is_run():
        print(f"[medtune] 1/3 {run.root} is already trained: reusing it (delete it to train again)")
        if not (run.root / "eval" / COMPARISON_FILE).is_file():
            compare_with_base(config, run.root, "cpu", lambda message: print(f"[medtune] {message}"))
    else:
        print("[medtune] 1/3 fine-tuning a LoRA adapter, then scoring the base and the tuned model on the same "
              "held-out questions")
        train(config)
    eval_dir = run.root / "eval"
    comparison = json.loads((eval_dir / COMPARISON_FILE).read_text(encoding="utf-8"))
    tuned = json.loads((eval_dir / "tuned" / "metrics.json").read_text(encoding="utf-8"))
    steps = json.loads(run.manifest.read_text(encoding="utf-8"))["training"]["steps"]
    trained_rows = min(steps * config.batch_size * config.grad_accum,  # the rows its optimizer steps saw
                       json.loads(run.report.read_text(encoding="utf-8"))["data"]["train_rows"])
    sample = _answer_a_question(run.root, config)
    print("[medtune] 3/3 the report")
    report_path = _write_report([run.root, eval_dir / "base", eval_dir / "tuned", eval_dir / COMPARISON_FILE],
                                output / "report.html")

    print()
    print(conclusion(comparison, trained_rows, tuned.get("baselines")))
    print(calibration_text(tuned.get("calibration")))
    print(f"[medtune] run: {run.root}\n[medtune] report: {report_path or 'not written (see above)'}")
    summary = {"data": description, "model": config.model, "run": str(run.root), "trained_rows": trained_rows,
               "comparison": {key: comparison[key] for key in ("n", "accuracy_a", "accuracy_b", "difference",
                                                                "difference_ci95", "mcnemar_p", "verdict")},
               "calibration": tuned.get("calibration"), "report": str(report_path) if report_path else None,
               "sample": sample}
    write_json(output / "quickstart.json", summary)
    return summary


def _answer_a_question(run_dir: Path, config: TrainConfig) -> dict:
    from medtune.answer import Answerer
    from medtune.evaluation.after_training import eval_rows

    sample = eval_rows(config)[0][0]
    answerer = Answerer.from_run(run_dir, "cpu", "auto")
    print(f"[medtune] 2/3 the tuned model answers a held-out question:\n  {sample.question}")
    answer = answerer.answer(sample.question, list(sample.options), explain=True, max_new_tokens=60)
    for letter, option in zip(answer.probs, sample.options):
        print(f"    {letter}. {option:<48.48} {answer.probs[letter]:6.1%}")
    print(f"  model's answer: {answer.answer} (gold {sample.letters[sample.answer]})\n"
          f"  explanation: {answer.explanation}")
    return {"question": sample.question, "options": list(sample.options), "gold": sample.letters[sample.answer],
            **answer.to_dict()}


def _write_report(paths: list[Path], output: Path) -> Path | None:
    try:
        from medtune.report import write_report
    except ImportError as error:
        print(f"[medtune] the HTML report is not available in this medtune ({error}); the run's files are "
              "complete: `medtune compare` and `medtune eval` read them")
        return None
    return write_report(paths, output)


def conclusion(comparison: dict, trained_rows: int | None = None, baselines: dict | None = None) -> str:
    """What the paired comparison means, in words that stay true when the fine-tune changed nothing;
    `baselines` (metrics.json's) put both accuracies beside guessing."""
    low, high = comparison["difference_ci95"]
    n = comparison["n"]
    rows = f"{trained_rows} rows" if trained_rows is not None else "a few rows"
    head = (f"[medtune] did the fine-tune help? Paired comparison on the same {n} held-out questions:\n"
            f"  base {comparison['accuracy_a']:.3f}, tuned {comparison['accuracy_b']:.3f}: "
            f"{100 * comparison['difference']:+.1f} points (95% CI {100 * low:+.1f} to {100 * high:+.1f}), "
            f"McNemar p = {comparison['mcnemar_p']:.3g} (right only before: {comparison['a_only_correct']}, "
            f"right only after: {comparison['b_only_correct']})")
    if baselines:
        head += (f"\n  for scale: random guessing scores {baselines['random']:.3f} here, always answering "
                 f"\"{baselines['majority_letter']}\" {baselines['majority']:.3f}")
    scale = (f"A 135M-parameter model tuned on {rows} for a few minutes on a CPU is not expected to learn "
             "medicine: this run shows the pipeline and its statistics working end to end. To measure a real "
             f"fine-tune, run the same commands with the GPU recipe ({GPU_RECIPE}: Qwen3-1.7B on the full "
             "MedMCQA train split).")
    if comparison["verdict"].startswith("no significant difference"):
        meaning = (f"  no significant difference: on these {n} questions the fine-tune did not measurably change "
                   f"accuracy, and the interval says a true change anywhere from {100 * low:+.1f} to "
                   f"{100 * high:+.1f} points is consistent with them. {scale}")
    elif comparison["difference"] > 0:
        meaning = (f"  the tuned model scored significantly higher on these {n} questions. With this little "
                   "training, check what changed before reading it as medical knowledge: the predicted-letter "
                   f"distribution in eval/tuned/metrics.json shows whether it only shifted which letter it prefers. "
                   f"{scale}")
    else:
        meaning = (f"  the tuned model scored significantly lower on these {n} questions: this short fine-tune "
                   f"made it worse. {scale}")
    return f"{head}\n{meaning}"


def calibration_text(calibration: dict | None) -> str:
    """The tuned model's calibration before and after its temperature, from metrics.json's "calibration"."""
    if not calibration or not calibration.get("raw"):
        return ("[medtune] calibration: this evaluation recorded no calibration figures (metrics.json has no "
                "\"calibration\" field)")
    raw, calibrated = calibration["raw"], calibration.get("calibrated")
    line = (f"[medtune] calibration of the tuned model on the {raw['n']} held-out questions: expected calibration "
            f"error {raw['ece']:.3f} with its raw probabilities")
    if not calibrated:
        return line + "; the run has no temperature (no calibration slice), so none was applied"
    return (line + f", {calibrated['ece']:.3f} after temperature scaling (T = {calibration['temperature']:.2f}, "
            f"fitted on the run's calibration slice, never on these questions); NLL {raw['nll']:.3f} -> "
            f"{calibrated['nll']:.3f}. Lower is better; the chosen answers do not change.")
