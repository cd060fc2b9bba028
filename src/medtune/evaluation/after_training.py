"""What `medtune train` does once the adapter is trained: fit the temperature on the calibration slice, and, with
`eval_data`, answer "did the fine-tune help?" by scoring the base model and the tuned run on the same held-out
questions and comparing them question by question (evaluation/compare.py).

The run folder then holds RUN_DIR/calibration.json, RUN_DIR/eval/base/ and RUN_DIR/eval/tuned/ (ordinary eval
folders) and RUN_DIR/eval/comparison.json.
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import torch

from medtune.config import TrainConfig, parse_source
from medtune.data import MCQExample, is_local
from medtune.evaluate import choice_logprobs
from medtune.evaluation.calibration import write_calibration

COMPARISON_FILE = "comparison.json"
FITTED_ON = "calibration slice"


def calibrate_on_slice(model, tokenizer, template, examples: list[MCQExample], run_dir: Path, data: dict,
                       write: bool, log) -> dict | None:
    """Fit the temperature on the calibration slice with the trained model as it is in memory, and write
    RUN_DIR/calibration.json; returns the record (None without a slice, or when `write` is False).

    Every process must call this: under FSDP each holds a shard of the layers, so a forward pass needs them all.
    Only the main process (`write`) writes. `data` names where the slice's rows came from ({"source", "sha256"})."""
    if not examples:
        return None
    logprobs = choice_logprobs(model, tokenizer, template, examples, batch_size=16)
    if not write:
        return None
    record = write_calibration(run_dir, logprobs, [e.answer for e in examples], source=data["source"],
                               sha256=data.get("sha256"), ids=[e.id for e in examples], fitted_on=FITTED_ON)
    log(f"calibration: temperature T = {record['temperature']:.3f} fitted on the {record['n']} questions of the "
        f"calibration slice; their mean NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f} nats "
        f"({Path(run_dir) / 'calibration.json'})")
    return record


def slice_source(sources: list[dict], source_of: list[int]) -> dict:
    """{"source", "sha256"} of the rows of a slice, from the training sources' reports and each row's source:
    one source's file hash (None for a Hub dataset); a slice drawn from several sources names them all, and has
    no single hash."""
    used = sorted(set(source_of))
    if len(used) == 1:
        report = sources[used[0]]
        return {"source": str(report["source"]), "sha256": report.get("sha256")}
    return {"source": "; ".join(str(sources[k]["source"]) for k in used), "sha256": None}


def eval_rows(config: TrainConfig):
    """(examples, LoadReport) of `eval_data`, read as training read it (mixture.check_against_eval): a task's
    scored split, a local file whole, eval_split for a Hub id named without a task; `eval_limit` rows."""
    from medtune.mixture import load_source

    entry = parse_source(config.eval_data)
    split = None if is_local(entry.source) or entry.task else config.eval_split
    return load_source(entry, config, split, config.eval_limit)


def compare_with_base(config: TrainConfig, run_dir: Path, device: str, log) -> dict | None:
    """With `eval_data` and `compare_base`: score the base model and the tuned run on the same eval rows into
    RUN_DIR/eval/base/ and RUN_DIR/eval/tuned/, and write their paired comparison to RUN_DIR/eval/comparison.json.
    Returns the comparison (None when not asked). Main process only.

    The run is loaded once, as `medtune eval RUN_DIR` loads it (Answerer.from_run: its dtype rule, quantization and
    saved prompt), and the base is that same model with the LoRA adapter disabled: the same weights, revision,
    dtype and prompt as the tuned side, so the two differ only by the adapter, and one model is in memory."""
    from medtune.answer import Answerer
    from medtune.evaluate import evaluate_to_dir
    from medtune.evaluation.compare import compare_evaluations
    from medtune.modeling import fold_adapter
    from medtune.rundir import write_json

    if not (config.eval_data and config.compare_base):
        return None
    examples, report = eval_rows(config)
    folder = Path(run_dir) / "eval"
    log(f"did it help? scoring the base model and the tuned run on the same {len(examples)} questions of "
        f"{report.source} (compare_base=false skips this)")
    # Loaded unfolded, so the base side can disable the adapter; then folded for the tuned side, as eval folds it
    # (a fold cannot be undone in place, and merge_adapter/unmerge would keep the slower LoRA wrappers).
    tuned = Answerer.from_run(run_dir, device, "auto", attention=config.attention,
                              trust_remote_code=config.trust_remote_code, fold=False)
    with tuned.model.disable_adapter():
        evaluate_to_dir(base_of(tuned), examples, folder / "base", data=report.to_dict(), overwrite=True)
    tuned.model, tuned.description["adapter_folded"] = fold_adapter(tuned.model)
    evaluate_to_dir(tuned, examples, folder / "tuned", data=report.to_dict(), overwrite=True)
    del tuned
    _free_memory()
    comparison = compare_evaluations(folder / "base", folder / "tuned", warn=log)
    write_json(folder / COMPARISON_FILE, comparison)
    low, high = comparison["difference_ci95"]
    log(f"base {comparison['accuracy_a']:.3f} vs tuned {comparison['accuracy_b']:.3f} on {comparison['n']} "
        f"questions: {100 * comparison['difference']:+.1f} points (95% CI {100 * low:+.1f} to {100 * high:+.1f}), "
        f"McNemar p = {comparison['mcnemar_p']:.3g}\n[medtune] verdict: {comparison['verdict']}\n"
        f"[medtune] comparison: {folder / COMPARISON_FILE}")
    return comparison


def base_of(tuned):
    """The base side of the comparison: the tuned Answerer's model (to be used with its adapter disabled),
    described as the base, and without the run's temperature (it was fitted for the tuned model)."""
    base = copy.copy(tuned)
    dropped = ("temperature", "calibration", "adapter_folded")
    kept = {key: value for key, value in tuned.description.items() if key not in dropped}
    base.description = {**kept, "adapter": None,
                        "adapter_disabled": "the run's base model: loaded with the run, scored with the LoRA "
                                            "adapter disabled"}
    base.temperature = None
    return base


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
