"""TRL's SFTTrainer with PEFT as a peer in bench/train_throughput.py (`--peer trl`): the trainer most people would
pick instead of medtune, on the same questions, prompt text and precision.

Two modes, each a worker subprocess of train_throughput.py (its own peak memory):
- "trl-defaults": TRL as a user meets it: medtune's default LoRA (r16, alpha 32, dropout 0.05, all-linear), the
  question as prompt and the answer + explanation as completion (so the loss is on the completion), max length
  512, batch 4 x accumulation 4, no gradient checkpointing (TRL turns it on by default; the issue's trial turned
  it off); everything else TRL's defaults (lr 2e-5, linear decay, no warmup, the default optimizer).
- "trl-equal": every setting of train_throughput's medtune worker (`equal_settings`): the same LoRA, max length,
  micro-batch and accumulation, lr/schedule/warmup, AdamW, weight decay, clipping, checkpointing and seed.
Both load the base in the bench's dtype (fp32, or bf16 weights under bf16 autocast, as medtune trains in bf16).
"""

from __future__ import annotations

import tempfile
import time

MODES = ("trl-defaults", "trl-equal")
DEFAULTS = {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "all-linear"}, "max_length": 512,
            "batch_size": 4, "grad_accum": 4, "gradient_checkpointing": False}


def equal_settings(lora: dict, max_length: int, batch_size: int, grad_accum: int, learning_rate: float,
                   warmup_ratio: float, gradient_checkpointing: bool) -> dict:
    """The medtune worker's settings, spelled for TRL (medtune: AdamW, weight decay 0, clipping at 1.0, linear
    warmup then cosine decay to 0, seed 42: train.py and config.py defaults)."""
    return {"lora": lora, "max_length": max_length, "batch_size": batch_size, "grad_accum": grad_accum,
            "gradient_checkpointing": gradient_checkpointing, "learning_rate": learning_rate,
            "lr_scheduler_type": "cosine", "warmup_steps": warmup_ratio, "optim": "adamw_torch",
            "weight_decay": 0.0, "max_grad_norm": 1.0}


def _template(tokenizer, prompt_format: str):
    from medtune.prompts import PromptTemplate, template_for

    return PromptTemplate(format="harness") if prompt_format == "harness" else template_for(tokenizer, prompt_format)


def train_trl(args, mode: str, settings: dict, train, held_out) -> tuple[dict, object]:
    """Train with SFTTrainer + PEFT; (measurements for train_throughput._result, the tokenizer)."""
    import datasets
    import torch
    from common import answer_token_loss, non_embedding_parameters, peak_rss_bytes
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    template = _template(tokenizer, args.prompt_format)
    rows = datasets.Dataset.from_list([{"prompt": template.prompt(e), "completion": template.target(e)}
                                       for e in train])
    lora = settings["lora"]
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora["targets"] if isinstance(lora["targets"], str)
                             else list(lora["targets"]), task_type="CAUSAL_LM")
    tuned = {key: settings[key] for key in ("learning_rate", "lr_scheduler_type", "warmup_steps", "optim",
                                              "weight_decay", "max_grad_norm") if key in settings}
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(
            output_dir=scratch, max_length=settings["max_length"], completion_only_loss=True, packing=False,
            per_device_train_batch_size=settings["batch_size"],
            gradient_accumulation_steps=settings["grad_accum"],
            gradient_checkpointing=settings["gradient_checkpointing"], num_train_epochs=args.epochs,
            bf16=args.dtype == "bf16", use_cpu=True, seed=42, save_strategy="no", report_to=[], logging_steps=1,
            disable_tqdm=True, model_init_kwargs={"dtype": dtype}, **tuned,
        )
        trainer = SFTTrainer(model=args.model, args=config, train_dataset=rows, processing_class=tokenizer,
                             peft_config=peft_config)
        tokens = args.epochs * sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        training_rss = peak_rss_bytes()  # through training; the held-out scoring below is not counted
    model = trainer.model
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        loss, accuracy = answer_token_loss(model, tokenizer, template, held_out)
    import trl

    measured = {"tokens": tokens, "seconds": seconds, "loss": loss, "accuracy": accuracy, "rss": training_rss,
                "n_params": non_embedding_parameters(model.get_base_model()),
                "extra": {"trl_version": trl.__version__, "mode": mode,
                          "settings": {**settings, "lora": {**lora, "targets": lora["targets"] if isinstance(
                              lora["targets"], str) else list(lora["targets"])}},
                          "gradient_checkpointing": settings["gradient_checkpointing"],
                          "peak_rss_with_heldout_mib": round(peak_rss_bytes() / 2**20)}}
    return measured, tokenizer
