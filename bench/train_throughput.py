"""Training throughput: medtune vs the public project's recipe (HF Trainer), same model, data, epochs.

Each system trains in its own subprocess (so peak memory is its own), one after the other in one run:

    python bench/train_throughput.py --model MODEL --questions 160 --dtype fp32 --out bench/results/train-fp32.json

The seed-style recipe, as written: Trainer, LoRA r=8/alpha 16/dropout 0.05 on q_proj+v_proj, labels equal to
the whole input (no masking), max length 256 with truncation, DataCollatorForSeq2Seq padding to a multiple of
8, batch 4 x accumulation 4, gradient checkpointing on, adamw_torch, lr 2e-4 cosine with 5% warmup.
medtune runs the same LoRA settings, the same effective batch (16) and max length, with its own loop: loss on
answer + explanation only, the output projection on supervised positions only, length-sorted micro-batches,
no gradient checkpointing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmcqa"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ("q_proj", "v_proj")}


def _examples(args):
    from medtune.data import load_examples

    train, _ = load_examples(str(SHARED / "train-sample-original.jsonl"), skip_invalid=True, limit=args.questions)
    held_out, _ = load_examples(str(SHARED / "validation.jsonl"), limit=args.heldout)
    return train, held_out


def _seed_text(example) -> str:
    """The recipe's training text: its prompt (the harness MedMCQA layout), answer, explanation."""
    from medtune.prompts import PromptTemplate

    template = PromptTemplate(format="harness")
    return template.prompt(example) + template.target(example)


def run_seed(args) -> dict:
    import datasets
    import torch
    from common import answer_token_loss, non_embedding_parameters, peak_rss_bytes
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from medtune.prompts import PromptTemplate

    torch.manual_seed(42)
    train, held_out = _examples(args)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.enable_input_require_grads()  # what the recipe needs for checkpointing with frozen embeddings
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=list(LORA["targets"]), task_type="CAUSAL_LM"))

    def tokenize(row):
        encoded = tokenizer(row["text"] + tokenizer.eos_token, max_length=256, truncation=True)
        encoded["labels"] = list(encoded["input_ids"])
        return encoded

    rows = datasets.Dataset.from_list([{"text": _seed_text(e)} for e in train]).map(tokenize, remove_columns=["text"])
    tokens = sum(len(ids) for ids in rows["input_ids"])
    with tempfile.TemporaryDirectory() as scratch:
        settings = TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=4, gradient_accumulation_steps=4,
            gradient_checkpointing=True, optim="adamw_torch", learning_rate=2e-4, lr_scheduler_type="cosine",
            warmup_steps=0.05,  # a float below 1 is a ratio in transformers 5 (warmup_ratio was removed)
            num_train_epochs=args.epochs, logging_steps=1, save_strategy="no", report_to=[],
            bf16=args.dtype == "bf16", use_cpu=True, seed=42, disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=settings, train_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        loss, accuracy = answer_token_loss(model, tokenizer, PromptTemplate(format="harness"), held_out)
    return _result("seed-style HF Trainer", train, tokens, seconds, loss, accuracy, peak_rss_bytes(),
                   non_embedding_parameters(model.get_base_model()), args, tokenizer)


def run_medtune(args) -> dict:
    import torch
    from common import answer_token_loss, non_embedding_parameters, peak_rss_bytes

    from medtune.answer import Answerer
    from medtune.config import TrainConfig
    from medtune.train import train as medtune_train

    train, held_out = _examples(args)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "train.jsonl"
        source = (SHARED / "train-sample-original.jsonl").read_text().splitlines()
        wanted = {e.id for e in train}
        data.write_text("".join(line + "\n" for line in source if json.loads(line)["id"] in wanted))
        config = TrainConfig(
            model=args.model, data=str(data), output=str(Path(scratch) / "run"), epochs=args.epochs,
            batch_size=args.batch_size, grad_accum=16 // args.batch_size, max_seq_len=256, learning_rate=2e-4,
            warmup_ratio=0.05, lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            lora_target_modules=LORA["targets"], dev_size=0, eval_every=0, save_every=0, device="cpu",
            dtype=args.dtype, skip_invalid=True, prompt_format=args.prompt_format,
            gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
        )
        start = time.perf_counter()
        run = medtune_train(config, progress=False)
        seconds = time.perf_counter() - start
        manifest = json.loads(run.manifest.read_text())
        answerer = Answerer.from_run(run.root, device="cpu", dtype="fp32")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss, accuracy = answer_token_loss(answerer.model, answerer.tokenizer, answerer.template, held_out)
        base = answerer.model  # the adapter folded in (Answerer.from_run): the base architecture
    # Time spent loading the model and data is inside `seconds` for medtune and outside it for Trainer:
    # subtract medtune's own measured training-loop time instead.
    loop_seconds = manifest["training"]["seconds"]
    return _result("medtune", train, manifest["training"]["tokens_seen"], loop_seconds, loss, accuracy,
                   peak_rss_bytes(), non_embedding_parameters(base), args, answerer.tokenizer,
                   wall_seconds=round(seconds, 2), attention=manifest["attention"],
                   gradient_checkpointing=args.gradient_checkpointing, compile=args.compile)


def run_trl(args) -> dict:
    """TRL's SFTTrainer + PEFT (bench/trl_peer.py), in `args.worker`'s mode: TRL's defaults, or this file's
    medtune worker's settings exactly (keep `equal_settings` below in step with run_medtune)."""
    from trl_peer import DEFAULTS, equal_settings, train_trl

    train, held_out = _examples(args)
    settings = DEFAULTS if args.worker == "trl-defaults" else equal_settings(
        LORA, max_length=256, batch_size=args.batch_size, grad_accum=16 // args.batch_size, learning_rate=2e-4,
        warmup_ratio=0.05, gradient_checkpointing=args.gradient_checkpointing)
    m, tokenizer = train_trl(args, args.worker, settings, train, held_out)
    name = "TRL SFTTrainer (defaults)" if args.worker == "trl-defaults" else "TRL SFTTrainer (equal settings)"
    return _result(name, train, m["tokens"], m["seconds"], m["loss"], m["accuracy"], m["rss"], m["n_params"], args,
                   tokenizer, **m["extra"])


def _result(name, train, tokens, seconds, loss, accuracy, rss, n_params, args, tokenizer, **extra) -> dict:
    from medtune.prompts import PromptTemplate

    # Supervised tokens: the answer + explanation tokens of the questions trained on, the same count for both.
    target = PromptTemplate(format="harness").target
    supervised = args.epochs * sum(len(tokenizer.encode(target(e), add_special_tokens=False)) for e in train)
    return {"system": name, "questions": len(train) * args.epochs, "seconds": round(seconds, 2),
            "questions_per_second": round(len(train) * args.epochs / seconds, 3),
            "tokens_processed": tokens, "tokens_per_second": round(tokens / seconds, 1),
            "heldout_answer_token_loss": round(loss, 4), "heldout_accuracy": round(accuracy, 4),
            "heldout_n": args.heldout, "peak_rss_mib": round(rss / 2**20), "non_embedding_params": n_params,
            "supervised_tokens": supervised, "supervised_tokens_per_second": round(supervised / seconds, 1),
            "dtype": args.dtype, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF folder of the model (e.g. the cached SmolLM2 folder)")
    parser.add_argument("--questions", type=int, default=160)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=4, help="medtune micro-batch (x accumulation = 16)")
    parser.add_argument("--prompt-format", default="harness", choices=["harness", "auto"],
                        help="medtune's prompt: 'harness' is the seed recipe's text exactly, so only the training "
                             "loops differ; 'auto' is medtune's default chat template")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="medtune with checkpointing too (the recipe always has it): memory for speed")
    parser.add_argument("--compile", action="store_true",
                        help="medtune with compile=true (torch.compile per decoder layer; compile time included)")
    parser.add_argument("--peer", choices=["trl"], action="append", default=[],
                        help="also train with TRL's SFTTrainer + PEFT (bench/trl_peer.py), in --trl-mode")
    parser.add_argument("--trl-mode", choices=["both", "defaults", "equal"], default="both",
                        help="with --peer trl: TRL's defaults, medtune's settings exactly, or both (default)")
    parser.add_argument("--worker", choices=["seed", "medtune", "trl-defaults", "trl-equal"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.worker:
        from common import write_result

        run = {"seed": run_seed, "medtune": run_medtune}.get(args.worker, run_trl)
        write_result(args.out, run(args))
        return
    import torch
    from common import peak_matmul_flops

    results = []
    trl_modes = ["defaults", "equal"] if args.trl_mode == "both" else [args.trl_mode]
    peers = [f"trl-{mode}" for mode in trl_modes] if "trl" in args.peer else []
    for worker in ("seed", "medtune", *peers):
        part = f"{args.out}.{worker}.json"
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", worker, "--out", part], check=True)
        results.append(json.loads(Path(part).read_text()))
    peak = peak_matmul_flops(torch.float32 if args.dtype == "fp32" else torch.bfloat16)
    summary = {"peak_matmul_flops": peak, "results": results}
    for result in results:
        # LoRA model FLOPs per processed token: forward 2N + input-gradient backward 2N (frozen weights get no
        # weight gradient); recomputation under checkpointing is not model work.
        result["mfu"] = round(4 * result["non_embedding_params"] * result["tokens_per_second"] / peak, 4)
    seed, ours = results[:2]
    summary["speedup_questions_per_second"] = round(ours["questions_per_second"] / seed["questions_per_second"], 2)
    for peer in results[2:]:  # medtune against each TRL mode: questions/s and peak memory ratios
        summary[f"vs_{peer['mode']}"] = {
            "speedup_questions_per_second": round(ours["questions_per_second"] / peer["questions_per_second"], 2),
            "peak_rss_ratio": round(ours["peak_rss_mib"] / peer["peak_rss_mib"], 2),
            "heldout_loss_difference": round(ours["heldout_answer_token_loss"] - peer["heldout_answer_token_loss"], 4)}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
