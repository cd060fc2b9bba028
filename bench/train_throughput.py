"""Training throughput: medtune vs the public project's recipe (HF Trainer), same model, data, epochs.

Each system trains in its own subprocess (so peak memory is its own), one after the other in one run:

    python bench/train_throughput.py --model MODEL --questions 160 --dtype fp32 --out bench/results/train-fp32.json

The seed-style recipe, as written: Trainer, LoRA r=8/alpha 16/dropout 0.05 on q_proj+v_proj, labels equal to
the whole input (no masking), max length 256 with truncation, DataCollatorForSeq2Seq padding to a multiple of
8, batch 4 x accumulation 4, gradient checkpointing on, adamw_torch, lr 2e-4 cosine with 5% warmup.
medtune runs the same LoRA settings, the same effective batch (16) and max length, with its own loop: loss on
answer + explanation only, the output projection on supervised positions only, length-sorted micro-batches,
no gradient checkpointing unless asked.

Peak memory is the process's peak RSS through training (model load included, the held-out scoring after it not).
`--variant` adds more medtune workers to the same run (other micro-batch, checkpointing or memory budget), and
`--peer trl` adds TRL's SFTTrainer twice: with medtune's settings exactly, and with its defaults beside
`medtune train`'s defaults (bench/trl_peer.py).
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
        training_rss = peak_rss_bytes()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        loss, accuracy = answer_token_loss(model, tokenizer, PromptTemplate(format="harness"), held_out)
    return _result("seed-style HF Trainer", train, tokens, seconds, loss, accuracy, training_rss,
                   non_embedding_parameters(model.get_base_model()), args, tokenizer,
                   peak_rss_with_heldout_mib=round(peak_rss_bytes() / 2**20))


def _variant(spec: str) -> dict:
    """--variant's text, e.g. 'batch=2,checkpointing=2,memory_budget=2.3GB' -> TrainConfig keyword arguments."""
    keys = {"batch": "batch_size", "checkpointing": "gradient_checkpointing", "memory_budget": "memory_budget"}
    settings = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key not in keys or not value:
            raise SystemExit(f"--variant {spec!r}: {part!r} is not key=value with a key among {', '.join(keys)}")
        settings[keys[key]] = int(value) if key == "batch" else _checkpointing(value) if key == "checkpointing" \
            else value
    return settings


def _checkpointing(text: str):
    from medtune.plan import _checkpointing_arg

    return _checkpointing_arg(text)


def _medtune_config(args, scratch: str, train, **settings):
    """A TrainConfig on exactly `train`'s rows: the recipe's settings (section 1), or `settings` over them."""
    from medtune.config import TrainConfig

    data = Path(scratch) / "train.jsonl"
    source = (SHARED / "train-sample-original.jsonl").read_text().splitlines()
    wanted = {e.id for e in train}
    data.write_text("".join(line + "\n" for line in source if json.loads(line)["id"] in wanted))
    # the same rows for every system: no dev or calibration slice carved out, no periodic evaluation or checkpoint
    common = dict(model=args.model, data=str(data), output=str(Path(scratch) / "run"), epochs=args.epochs,
                  dev_size=0, calibration_size=0, eval_every=0, save_every=0, device="cpu", dtype=args.dtype,
                  skip_invalid=True, prompt_format=args.prompt_format)
    if args.worker == "medtune-defaults":  # everything else as `medtune train` sets it
        return TrainConfig(**common)
    batch = settings.get("batch_size", args.batch_size)
    recipe = dict(batch_size=batch, grad_accum=16 // batch, max_seq_len=256, learning_rate=2e-4, warmup_ratio=0.05,
                  lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                  lora_target_modules=LORA["targets"], gradient_checkpointing=args.gradient_checkpointing,
                  memory_budget=args.memory_budget, compile=args.compile)
    return TrainConfig(**common, **{**recipe, **settings})


def run_medtune(args) -> dict:
    import torch
    from common import answer_token_loss, non_embedding_parameters, peak_rss_bytes

    from medtune.answer import Answerer
    from medtune.train import train as medtune_train

    train, held_out = _examples(args)
    variant = args.variant[int(args.worker.rsplit("-", 1)[1])] if args.worker.startswith("variant-") else ""
    with tempfile.TemporaryDirectory() as scratch:
        config = _medtune_config(args, scratch, train, **_variant(variant))
        start = time.perf_counter()
        run = medtune_train(config, progress=False)
        seconds = time.perf_counter() - start
        training_rss = peak_rss_bytes()
        manifest = json.loads(run.manifest.read_text())
        answerer = Answerer.from_run(run.root, device="cpu", dtype="fp32")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss, accuracy = answer_token_loss(answerer.model, answerer.tokenizer, answerer.template, held_out)
        base = answerer.model  # the adapter folded in (Answerer.from_run): the base architecture
    # Time spent loading the model and data is inside `seconds` for medtune and outside it for Trainer:
    # subtract medtune's own measured training-loop time instead.
    loop_seconds = manifest["training"]["seconds"]
    name = {"medtune": "medtune", "medtune-defaults": "medtune (defaults)"}.get(args.worker, f"medtune ({variant})")
    return _result(name, train, manifest["training"]["tokens_seen"], loop_seconds, loss, accuracy,
                   training_rss, non_embedding_parameters(base), args, answerer.tokenizer,
                   wall_seconds=round(seconds, 2), attention=manifest["attention"], worker=args.worker,
                   settings={"batch_size": config.batch_size, "grad_accum": config.grad_accum,
                             "max_seq_len": config.max_seq_len, "lora_r": config.lora_r,
                             "lora_target_modules": config.lora_target_modules,
                             "gradient_checkpointing": config.gradient_checkpointing,
                             "memory_budget": config.memory_budget, "compile": config.compile},
                   gradient_checkpointing=manifest.get("gradient_checkpointing"),
                   gradient_checkpointing_reason=manifest.get("gradient_checkpointing_reason"),
                   peak_rss_with_heldout_mib=round(peak_rss_bytes() / 2**20))


def run_trl(args) -> dict:
    """TRL's SFTTrainer + PEFT (bench/trl_peer.py), in `args.worker`'s mode: TRL's defaults, or this file's
    medtune worker's settings exactly (keep `equal_settings` below in step with run_medtune)."""
    from trl_peer import DEFAULTS, equal_settings, train_trl

    train, held_out = _examples(args)
    if args.worker == "trl-equal" and not isinstance(args.gradient_checkpointing, bool):
        raise SystemExit("--trl-mode equal needs --gradient-checkpointing true or false: TRL checkpoints every layer "
                         "or none")
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


def _versus(ours: dict, other: dict) -> dict:
    """medtune's questions/s and peak memory as ratios of another system's, and its held-out loss minus the other's."""
    return {"speedup_questions_per_second": round(ours["questions_per_second"] / other["questions_per_second"], 2),
            "peak_rss_ratio": round(ours["peak_rss_mib"] / other["peak_rss_mib"], 2),
            "heldout_loss_difference": round(ours["heldout_answer_token_loss"] - other["heldout_answer_token_loss"], 4)}


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
    parser.add_argument("--gradient-checkpointing", nargs="?", const=True, default=False, type=_checkpointing,
                        metavar="auto|true|false|N",
                        help="medtune's checkpointing (the recipe always checkpoints): alone it means true; N is "
                             "every N-th decoder layer; auto lets the memory plan choose against --memory-budget")
    parser.add_argument("--memory-budget", help="medtune's memory_budget, e.g. 2.3GB (the plan's device memory)")
    parser.add_argument("--variant", action="append", default=[], metavar="SPEC",
                        help="another medtune worker in the same run, over the settings above: comma-separated "
                             "batch=N, checkpointing=auto|true|false|N, memory_budget=SIZE (repeatable)")
    parser.add_argument("--compile", action="store_true",
                        help="medtune with compile=true (torch.compile per decoder layer; compile time included)")
    parser.add_argument("--peer", choices=["trl"], action="append", default=[],
                        help="also train with TRL's SFTTrainer + PEFT (bench/trl_peer.py), in --trl-mode")
    parser.add_argument("--trl-mode", choices=["both", "defaults", "equal"], default="both",
                        help="with --peer trl: TRL's defaults, medtune's settings exactly, or both (default)")
    parser.add_argument("--worker", help="internal: the one system this subprocess trains")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.worker:
        from common import write_result

        run = run_seed if args.worker == "seed" else run_trl if args.worker.startswith("trl-") else run_medtune
        write_result(args.out, run(args))
        return
    for spec in args.variant:
        _variant(spec)  # a typo fails before the first worker starts
    import torch
    from common import peak_matmul_flops

    results = []
    trl_modes = ["defaults", "equal"] if args.trl_mode == "both" else [args.trl_mode]
    peers = []
    if "trl" in args.peer:  # each tool's defaults side by side, then medtune's settings on TRL
        peers = (["medtune-defaults", "trl-defaults"] if "defaults" in trl_modes else []) + (
            ["trl-equal"] if "equal" in trl_modes else [])
    variants = [f"variant-{i}" for i in range(len(args.variant))]
    for worker in ("seed", "medtune", *variants, *peers):
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
    by_worker = {result.get("worker", result.get("mode")): result for result in results[1:]}
    # every medtune worker against the recipe; the TRL modes against their medtune counterpart
    summary["vs_seed"] = {worker: _versus(result, seed) for worker, result in by_worker.items()
                          if worker and not worker.startswith("trl-")}
    for mode, counterpart in (("trl-equal", "medtune"), ("trl-defaults", "medtune-defaults")):
        if mode in by_worker:
            summary[f"vs_{mode}"] = _versus(by_worker[counterpart], by_worker[mode])
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
