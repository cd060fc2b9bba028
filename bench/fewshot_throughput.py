"""Few-shot scoring throughput, in one process, on the same loaded model and rows:

  medtune           `evaluate` with `--prompt-format harness --num-fewshot K`: the exemplars' KV cache computed
                    once, reused for every batch of questions (`medtune.evaluation.prefix`)
  medtune-uncached  the same with the cache turned off (every prompt read whole): what the cache buys
  medtune-0shot     the same questions without exemplars: 0-shot must stay as fast as before
  lm-eval           lm-evaluation-harness 0.4.13's own MMLU task (`include`d, so its description, prompt and
                    first_n few-shot sampler are the harness's), K-shot, reading the same rows from local files

MMLU is not available offline, so the rows are MedMCQA's (`../shared/data/medmcqa`) recast into MMLU's schema
(question, subject, choices, answer): the scored questions are the first N of `validation.jsonl`, the K exemplars
(MMLU's `dev`) the first K of `train-sample-original.jsonl`. The prompt is the harness's 5-shot MMLU prompt for
`--subject` (its description names the subject) with MedMCQA text; the shape (K solved exemplars, then the
question) is what 5-shot MMLU medical subjects score.

    python bench/fewshot_throughput.py --model $SMOL --limit 200 --num-fewshot 5 --dtype fp32 \
        --out bench/results/fewshot-5shot.json

Needs `pip install lm-eval==0.4.13` (not a medtune dependency).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import non_embedding_parameters, peak_matmul_flops  # noqa: E402

from medtune.data import MCQExample, load_examples  # noqa: E402
from medtune.device import select_attention  # noqa: E402
from medtune.evaluate import choice_logprobs, predicted_options  # noqa: E402
from medtune.evaluation import prefix as prefix_module  # noqa: E402
from medtune.modeling import load_base  # noqa: E402
from medtune.prompts import PromptTemplate  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mmlu_rows(limit: int, k: int, subject: str) -> tuple[list[MCQExample], list[MCQExample]]:
    """(scored questions, exemplars) as MMLU rows of `subject`: MedMCQA validation and train-sample text."""
    scored, _ = load_examples(str(SHARED / "validation.jsonl"), limit=limit)
    shots, _ = load_examples(str(SHARED / "train-sample-original.jsonl"), limit=k)
    recast = [MCQExample(f"test-{i}", e.question, e.options, e.answer, subject=subject) for i, e in enumerate(scored)]
    return recast, [MCQExample(f"dev-{i}", e.question, e.options, e.answer, subject=subject)
                    for i, e in enumerate(shots)]


def run_medtune(model, tokenizer, template, examples, batch_size: int, batch_tokens: int | None,
                cache: bool = True) -> dict:
    """`choice_logprobs` timed alone (as `evaluate` times it); `cache=False` raises the shortest prefix worth
    caching past any prompt, so every prompt is read whole."""
    saved, scoring = prefix_module.MIN_PREFIX_TOKENS, {}
    prefix_module.MIN_PREFIX_TOKENS = saved if cache else 10**12
    try:
        start = time.perf_counter()
        logprobs = choice_logprobs(model, tokenizer, template, examples, batch_size, False, batch_tokens, scoring)
        seconds = time.perf_counter() - start
    finally:
        prefix_module.MIN_PREFIX_TOKENS = saved
    predictions = predicted_options(logprobs, examples)
    return {"seconds": round(seconds, 3), "scoring": scoring, "predictions": predictions,
            "accuracy": sum(p == e.answer for p, e in zip(predictions, examples)) / len(examples),
            "logprobs": [row[: len(e.options)].tolist() for row, e in zip(logprobs, examples)]}


def run_harness(model, tokenizer, examples, exemplars, k: int, subject: str, batch_size: int) -> dict:
    """lm-evaluation-harness's mmlu_<subject> task (included from the installed package) over local JSONL copies
    of the rows, given the already-loaded model so that its time, like medtune's, excludes loading."""
    import lm_eval
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder = Path(tempfile.mkdtemp())
    files = {}
    for split, rows in (("test", examples), ("dev", exemplars)):
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"question": e.question, "subject": subject, "choices": list(e.options),
                                            "answer": e.answer}) + "\n" for e in rows), encoding="utf-8")
        files[split] = str(path)
    include = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / f"mmlu_{subject}.yaml"
    config = {"include": str(include), "task": "bench_mmlu", "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": files}, "training_split": None, "validation_split": None}
    (folder / "bench_mmlu.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=["bench_mmlu"],
        num_fewshot=k, task_manager=TaskManager(include_path=str(folder)), log_samples=True, verbosity="WARNING")
    seconds = time.perf_counter() - start
    samples = sorted(results["samples"]["bench_mmlu"], key=lambda s: s["doc_id"])
    shutil.rmtree(folder)
    logliks = [[r[0] for r in s["filtered_resps"]] for s in samples]
    return {"seconds": round(seconds, 3), "accuracy": results["results"]["bench_mmlu"]["acc,none"],
            "predictions": [max(range(len(ll)), key=ll.__getitem__) for ll in logliks], "logliks": logliks,
            "context_matches": None if not samples else samples[0]["arguments"][0][0]}


def agreement(ours: dict, theirs: dict) -> dict:
    """Same predicted option, and the largest |medtune log-prob - harness log-likelihood normalized over the
    question's options|."""
    same = sum(a == b for a, b in zip(ours["predictions"], theirs["predictions"]))
    worst = max((torch.tensor(mine, dtype=torch.float64) - torch.log_softmax(torch.tensor(ll, dtype=torch.float64),
                                                                               dim=0)).abs().max().item()
                for mine, ll in zip(ours["logprobs"], theirs["logliks"]))
    return {"agree": same, "n": len(ours["predictions"]), "max_abs_logprob_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model folder")
    parser.add_argument("--limit", type=int, default=200, help="scored questions")
    parser.add_argument("--num-fewshot", type=int, default=5)
    parser.add_argument("--subject", default="anatomy", help="the MMLU subject whose harness prompt is used")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--batch-size", type=int, default=16, help="both systems' batch size")
    parser.add_argument("--batch-tokens", type=int, help="medtune's token budget per pass (default: its own)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    examples, exemplars = mmlu_rows(args.limit, args.num_fewshot, args.subject)
    model, tokenizer, _ = load_base(args.model, args.dtype, attention=select_attention("auto", "cpu").value)
    peak = peak_matmul_flops(DTYPES[args.dtype])
    n_params = non_embedding_parameters(model)
    zero_shot = PromptTemplate(format="harness").for_task(f"mmlu_{args.subject}")
    k_shot = zero_shot.with_fewshot(exemplars, "dev")

    runs = {"medtune": run_medtune(model, tokenizer, k_shot, examples, args.batch_size, args.batch_tokens),
            "medtune-uncached": run_medtune(model, tokenizer, k_shot, examples, args.batch_size, args.batch_tokens,
                                            cache=False),
            "medtune-0shot": run_medtune(model, tokenizer, zero_shot, examples, args.batch_size, args.batch_tokens)}
    harness = run_harness(model, tokenizer, examples, exemplars, args.num_fewshot, args.subject, args.batch_size)
    rates = {name: len(examples) / run["seconds"] for name, run in {**runs, "lm-eval": harness}.items()}
    summary = {
        "model": args.model, "dtype": args.dtype, "n": len(examples), "num_fewshot": args.num_fewshot,
        "rows": "MedMCQA validation (scored) and train-sample (exemplars) recast as MMLU "
                f"{args.subject} rows: MMLU is not available offline",
        "peak_matmul_flops": peak, "non_embedding_params": n_params,
        "questions_per_second": {name: round(rate, 2) for name, rate in rates.items()},
        "scoring": {name: run["scoring"] for name, run in runs.items()},
        "accuracy": {**{name: run["accuracy"] for name, run in runs.items()}, "lm-eval": harness["accuracy"]},
        "same_prompt_text": harness["context_matches"] == k_shot.prompt(examples[0]),
        "agreement_with_harness": agreement(runs["medtune"], harness),
        # 2 x non-embedding parameters x the tokens the model ran (the cached prefix counted once)
        "medtune_mfu": round(2 * n_params * runs["medtune"]["scoring"]["computed_tokens"]
                             / runs["medtune"]["seconds"] / peak, 4),
        "speedup_vs_harness": round(rates["medtune"] / rates["lm-eval"], 2),
        "speedup_vs_uncached": round(rates["medtune"] / rates["medtune-uncached"], 2),
        "target": "medtune K-shot >= 2x lm-eval K-shot questions/s",
    }
    summary["target_met"] = summary["speedup_vs_harness"] >= 2
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
