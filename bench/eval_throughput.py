"""Evaluation throughput and agreement, in one process, on the first N MedMCQA validation questions:

  medtune        `evaluate` with `--prompt-format harness`: one batched forward per question, last position only
  generative     the public project's method: greedy 8 new tokens, batch 1, first A-D character of the text
  lm-eval        EleutherAI lm-evaluation-harness 0.4.13, its MedMCQA prompt, pointed at a local copy of the rows

    python bench/eval_throughput.py --model MODEL --limit 500 --dtype bf16 --out bench/results/eval-500.json

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

from medtune.data import LETTERS, load_examples  # noqa: E402
from medtune.device import select_attention  # noqa: E402
from medtune.evaluate import evaluate  # noqa: E402
from medtune.modeling import load_base  # noqa: E402
from medtune.prompts import PromptTemplate  # noqa: E402
from medtune.tokenization import encode_prompt  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run_medtune(model, tokenizer, examples, batch_size: int) -> dict:
    metrics, predictions = evaluate(model, tokenizer, PromptTemplate(format="harness"), examples, batch_size,
                                    progress=False)
    return {"seconds": metrics["seconds"], "accuracy": metrics["accuracy"],
            "predictions": [LETTERS.index(p["pred"]) for p in predictions]}


@torch.no_grad()
def run_generative(model, tokenizer, examples, new_tokens: int = 8) -> dict:
    """Greedy generation one question at a time; the first A-D character anywhere in the text is the answer
    (so "Answer: C" reads as A, as in the original scripts). No A-D character at all counts as wrong."""
    template, predictions = PromptTemplate(format="harness"), []
    start = time.perf_counter()
    for example in examples:
        ids = tokenizer(template.prompt(example), return_tensors="pt", add_special_tokens=False)
        output = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        text = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        letter = next((c for c in text if c in "ABCD"), None)
        predictions.append(LETTERS.index(letter) if letter else None)
    seconds = time.perf_counter() - start
    correct = sum(p == e.answer for p, e in zip(predictions, examples))
    return {"seconds": round(seconds, 3), "accuracy": correct / len(examples), "predictions": predictions,
            "no_letter": sum(p is None for p in predictions)}


def run_harness(model, tokenizer, examples, batch_size: int) -> dict:
    """lm-evaluation-harness on a local JSONL copy of the same rows (original schema, 0-based cop), given the
    already-loaded model so that its time, like medtune's, excludes loading."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder = Path(tempfile.mkdtemp())
    rows = [{"question": e.question, "opa": e.options[0], "opb": e.options[1], "opc": e.options[2],
             "opd": e.options[3], "cop": e.answer} for e in examples]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(Path(lm_eval.__file__).parent / "tasks" / "medmcqa" / "utils_medmcqa.py", folder)
    (folder / "medmcqa_local.yaml").write_text(
        "task: medmcqa_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {folder / 'rows.jsonl'}\noutput_type: multiple_choice\nvalidation_split: validation\n"
        "test_split: validation\ndoc_to_text: !function utils_medmcqa.doc_to_text\ndoc_to_target: cop\n"
        "doc_to_choice: ['A','B','C','D']\nmetric_list:\n  - metric: acc\n"
    )
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=["medmcqa_local"],
        task_manager=TaskManager(include_path=str(folder)), log_samples=True,
    )
    seconds = time.perf_counter() - start
    samples = sorted(results["samples"]["medmcqa_local"], key=lambda s: s["doc_id"])
    predictions = [max(range(4), key=lambda j: s["filtered_resps"][j][0]) for s in samples]
    shutil.rmtree(folder)
    return {"seconds": round(seconds, 3), "accuracy": results["results"]["medmcqa_local"]["acc,none"],
            "predictions": predictions,
            "logliks": [[s["filtered_resps"][j][0] for j in range(4)] for s in samples]}


def _agreement(ours: list[int], theirs: dict) -> dict:
    """Share of questions where both pick the same option; near-ties (|Δ loglik| < 1e-4) reported apart."""
    ties = [i for i, ll in enumerate(theirs["logliks"]) if sorted(ll)[-1] - sorted(ll)[-2] < 1e-4]
    same = [i for i, (a, b) in enumerate(zip(ours, theirs["predictions"])) if a == b]
    rest = [i for i in range(len(ours)) if i not in ties]
    return {"agree": len(same), "n": len(ours), "ties": len(ties),
            "agree_excluding_ties": sum(ours[i] == theirs["predictions"][i] for i in rest) / max(1, len(rest))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF model folder")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--generative-limit", type=int, default=None,
                        help="questions for the slow generative method (default: all; its rate is per question)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    examples, _ = load_examples(str(SHARED / "validation.jsonl"), limit=args.limit)
    torch_dtype = DTYPES[args.dtype]
    # medtune's attention choice for the CPU (eager); the three systems share this one loaded model
    model, tokenizer, _ = load_base(args.model, args.dtype, attention=select_attention("auto", "cpu").value)
    peak = peak_matmul_flops(torch_dtype)
    prompt_tokens = sum(len(encode_prompt(tokenizer, PromptTemplate(format="harness"), e)) for e in examples)
    n_params = non_embedding_parameters(model)

    ours = run_medtune(model, tokenizer, examples, args.batch_size)
    generative = run_generative(model, tokenizer, examples[: args.generative_limit])
    harness = run_harness(model, tokenizer, examples, args.batch_size)
    n_generative = len(examples[: args.generative_limit])
    rates = {"medtune": len(examples) / ours["seconds"], "generative": n_generative / generative["seconds"],
             "lm-eval-harness": len(examples) / harness["seconds"]}
    summary = {
        "model": args.model, "dtype": args.dtype, "n": len(examples), "generative_n": n_generative,
        "peak_matmul_flops": peak, "prompt_tokens": prompt_tokens, "non_embedding_params": n_params,
        "questions_per_second": {k: round(v, 2) for k, v in rates.items()},
        "accuracy": {"medtune": ours["accuracy"], "generative": generative["accuracy"],
                     "lm-eval-harness": harness["accuracy"]},
        "generative_no_letter": generative["no_letter"],
        "agreement_with_harness": _agreement(ours["predictions"], harness),
        # model FLOPs of scoring: 2 x non-embedding parameters x prompt tokens (the head runs on one position)
        "medtune_mfu": round(2 * n_params * prompt_tokens / ours["seconds"] / peak, 4),
        "speedup_vs_harness": round(rates["medtune"] / rates["lm-eval-harness"], 2),
        "speedup_vs_generative": round(rates["medtune"] / rates["generative"], 2),
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
