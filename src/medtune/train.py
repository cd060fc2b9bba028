"""train(config) -> run directory: LoRA fine-tuning with the loss on the answer and explanation only.

One loop, read top to bottom: setup, then optimizer steps, then the finished run directory. accelerate brings
device placement and data parallelism (`accelerate launch` / `torchrun`); `fsdp=true` shards the frozen
decoder layers across processes with torch's FSDP2. Everything else -- batching, masking, the schedule,
autocast and fp16 loss scaling, the non-finite guard, checkpoints -- is here or in checkpoints.py, so it can
be read.
"""

from __future__ import annotations

import math
import platform
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medtune import __version__
from medtune.checkpoints import (
    Precision,
    adapter_state,
    load_checkpoint,
    restore,
    save_checkpoint,
    set_adapter_state,
    snapshot,
)
from medtune.config import TrainConfig, parse_source
from medtune.data import LETTERS, MCQExample, split_dev
from medtune.data.dev import split_calibration
from medtune.data.overlap import training_fingerprint
from medtune.device import (
    Choice,
    HardwareError,
    apply_visible_devices,
    backend,
    next_safer_dtype,
    select_attention,
    select_device,
    select_dtype,
    select_quantization,
)
from medtune.evaluate import choice_logprobs, model_device, predicted_options
from medtune.evaluation.after_training import calibrate_on_slice, compare_with_base, slice_source
from medtune.mixture import (
    TrainingRows,
    check_against_eval,
    combined_report,
    epoch_order,
    load_sources,
    manifest_data,
    mixture_weights,
    source_summaries,
)
from medtune.modeling import add_lora, count_parameters, enable_checkpointing, load_base, model_config
from medtune.parallel import (
    average_gradients,
    launched_processes,
    micro_batches,
    pin_device,
    shard_frozen_layers,
    wants_fsdp,
)
from medtune.plan import describe_checkpointing
from medtune.prompts import template_for
from medtune.rundir import RunDir, append_jsonl, write_json
from medtune.tokenization import IGNORE, Encoded, PromptError, collate, encode_example, letter_token_ids, pad_token_id


class AnswerLoss(torch.nn.Module):
    """Summed cross-entropy over supervised positions only.

    The output projection runs on the positions that carry a label (the answer and explanation), not on
    every position: for a 150k-token vocabulary that is most of the forward's memory and much of its time.
    Returns (loss_sum, n_supervised_tokens).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model  # a PeftModel

    def forward(self, input_ids, attention_mask, labels, position_ids=None):
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False)
        targets = labels[:, 1:]  # position t predicts token t+1
        keep = targets != IGNORE
        logits = base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])  # [n_supervised, vocab]
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), keep.sum()


@dataclass
class _Data:
    dev: list[MCQExample]
    encoded: list[Encoded]
    reports: dict
    rows: TrainingRows  # the examples behind `encoded`, with their sources
    weights: tuple[float, ...] | None  # a weighted mixture's; None: every row once per epoch
    calibration: list[MCQExample]  # never trained on: the temperature is fitted on them after training
    calibration_data: dict  # {"source", "sha256"} of the calibration rows, for calibration.json


def seed_everything(seed: int, device: str) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if device == "cpu":  # bit-for-bit repeatable on the CPU; on GPUs this would cost speed for little gain
        torch.use_deterministic_algorithms(True, warn_only=True)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_batch(step: int, n: int, global_batch: int, seed: int, source_of: list[int] | None = None,
               weights: tuple[float, ...] | None = None) -> list[int]:
    """Row indices of optimizer step `step`: epoch-wise seeded permutations, so any step can be recomputed.
    With `weights` (a weighted mixture; `source_of` gives each row's source) an epoch is n rows drawn by weight."""
    per_epoch = math.ceil(n / global_batch)
    epoch, offset = divmod(step, per_epoch)
    if weights:
        order = epoch_order(epoch, source_of, weights, seed)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[offset * global_batch : (offset + 1) * global_batch]


def _prepare_output(run: RunDir, config: TrainConfig) -> None:
    """Never lose work silently: a finished or interrupted run is continued or replaced only when asked."""
    finished, checkpoint = run.is_run(), run.latest_checkpoint()
    if config.overwrite:
        run.clear()
    elif finished:
        raise FileExistsError(f"{run.root} already holds a finished run; choose another --output, or pass "
                              "--overwrite to replace it")
    elif checkpoint and not config.resume:
        raise FileExistsError(f"{run.root} holds an unfinished run (last checkpoint: {checkpoint.name}): continue it "
                              f"with `medtune train --output {run.root} --resume`, or start over with --overwrite")


def _load_data(config: TrainConfig, tokenizer, template, world: int, log) -> _Data:
    rows, sources = load_sources(config, log)
    rows, reports, held_out = check_against_eval(config, rows, log)
    train_rows, dev = split_dev(rows.examples, config.dev_size, config.seed, exclude=held_out)
    train_rows, calibration = split_calibration(train_rows, config.calibration_size, config.seed,
                                                len(rows.examples), exclude=held_out)
    calibration_data = slice_source(sources, rows.keep(calibration).source_of) if calibration else {}
    rows = rows.keep(train_rows)
    encoded, rows = _encode(rows, sources, tokenizer, template, config)
    cut = [item.context_cut for item in encoded]
    step_rows = config.batch_size * config.grad_accum * world
    if len(encoded) < step_rows:
        raise ValueError(f"only {len(encoded)} rows are left to train on ({len(dev)} held for dev), fewer than one "
                         f"optimizer step takes (batch_size {config.batch_size} x grad_accum {config.grad_accum} x "
                         f"{world} process{'es' if world > 1 else ''} = {step_rows}): use more rows, or lower "
                         "batch_size, grad_accum, dev_size or calibration_size")
    log(f"{len(encoded)} rows train, {len(dev)} are held out as the dev slice (dev_size {config.dev_size}), "
        f"{len(calibration)} as the calibration slice (calibration_size {config.calibration_size}"
        + ("" if calibration or not config.calibration_size else "; none under 300 rows: data/dev.py") + ")"
        + _context_note(cut, config.max_seq_len))
    weights = mixture_weights(config)
    reports = {"train": combined_report(sources)} | reports | {
        "sources": source_summaries(sources, rows, weights), "train_rows": len(encoded), "dev_rows": len(dev),
        "dev_ids": [e.id for e in dev], "calibration_rows": len(calibration),
        "calibration_ids": [e.id for e in calibration],
        "context_truncated": {"rows": sum(map(bool, cut)), "tokens": sum(cut)}}
    return _Data(dev, encoded, reports, rows, weights, calibration, calibration_data)


def _encode(rows: TrainingRows, sources: list[dict], tokenizer, template, config: TrainConfig):
    """Token ids of every row, and the rows that encoded; with skip_invalid a row that cannot be encoded is
    counted by reason in its source's report."""
    letter_ids = letter_token_ids(tokenizer, template, len(LETTERS), sample=rows.examples[0])
    encoded, kept = [], []
    for example, source in zip(rows.examples, rows.source_of):
        try:
            encoded.append(encode_example(tokenizer, template, example, letter_ids, config.max_seq_len))
            kept.append(example)
        except PromptError as error:
            if not config.skip_invalid:
                raise
            skipped = sources[source]["skipped"]
            skipped[error.reason] = skipped.get(error.reason, 0) + 1
    return encoded, rows.keep(kept)


def _context_note(cut: list[int], max_seq_len: int) -> str:
    rows = sum(map(bool, cut))
    return (f"; {rows} rows had their context cut to fit max_seq_len {max_seq_len} ({sum(cut)} tokens)"
            if rows else "")


def _dev_accuracy(model, tokenizer, template, dev: list[MCQExample]) -> float | None:
    """Accuracy on the dev slice; None when there is none (JSON null, never NaN)."""
    if not dev:
        return None
    predicted = predicted_options(choice_logprobs(model, tokenizer, template, dev, batch_size=16), dev)
    return sum(p == e.answer for p, e in zip(predicted, dev)) / len(dev)  # a tie (None) counts wrong, as in eval


def _versions() -> dict:
    import accelerate
    import datasets
    import peft
    import transformers

    return {"medtune": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}


def train(config: TrainConfig, progress: bool = True) -> RunDir:
    """Fine-tune a LoRA adapter as `config` says; returns the finished run directory."""
    from accelerate import Accelerator

    # --- setup: hardware, model, data ------------------------------------------------------------------
    run = RunDir(config.output)
    _prepare_output(run, config)
    apply_visible_devices(config.cuda_visible_devices, config.hip_visible_devices)  # before any CUDA call
    device = select_device(config.device)
    pin_device(device.value, launched_processes())
    # Mixed precision off: autocast and loss scaling are ours (Precision), so the NaN guard can step down to a
    # safer dtype mid-run, and an `accelerate launch` config cannot wrap a second autocast around ours.
    accelerator = Accelerator(cpu=device.value == "cpu", mixed_precision="no")
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index

    def log(message: str) -> None:
        if main:
            tqdm.write(f"[medtune] {message}")

    # 'auto' probes one step of this architecture (shrunk) per candidate dtype and takes the first finite one;
    # after the accelerator exists, so each process probes on its own GPU
    dtype = select_dtype(config.dtype, device.value,
                         model_config(config.model, config.revision, config.trust_remote_code))
    seed_everything(config.seed, device.value)
    attention = select_attention(config.attention, device.value, dtype.value)
    quantize, checkpoint_every, checkpointing_reason = _choose_memory(config, device.value, dtype.value,
                                                                     attention.value)
    fsdp = wants_fsdp(config) and world > 1
    if fsdp and quantize.value != "none":
        raise HardwareError("fsdp cannot shard a 4-bit or 8-bit base; use one of them: --quantize none with fsdp, "
                            "or QLoRA without fsdp")
    # Base weights in the compute dtype (the frozen part needs no fp32 master copy, and autocast then has no
    # weights to cast); LoRA weights stay fp32. A local model is recorded by its absolute path, so the run
    # loads from any working directory.
    local = Path(config.model).expanduser()
    source = str(local.resolve()) if local.exists() else config.model
    model, tokenizer, info = load_base(source, dtype.value, config.revision, config.trust_remote_code,
                                       quantize.value, device.value, attention.value)
    if quantize.value != "none":  # QLoRA: norms to fp32, inputs that need gradients for checkpointing
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpoint_every > 0)
    template = template_for(tokenizer, config.prompt_format)
    data = _load_data(config, tokenizer, template, world, log)
    if checkpoint_every:
        enable_checkpointing(model, checkpoint_every)
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn here: same seed, same initial adapter
    model = add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    if config.compile:
        compile_layers(model)
    trainable, total = count_parameters(model)
    log(f"model {config.model} ({info.kind}{', ' + info.note if info.note else ''}); LoRA trains "
        f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%); {device.value}, {dtype.value} "
        f"({dtype.reason}); quantization {quantize.value} ({quantize.reason}); checkpointing "
        f"{describe_checkpointing(checkpoint_every)} ({checkpointing_reason}); attention {attention.value}"
        + (f"; FSDP over {world} processes" if fsdp else ""))

    if fsdp:
        shard_frozen_layers(model)  # before the optimizer, which must hold the parameters training will update
        loss_module = AnswerLoss(model)
    else:
        loss_module = accelerator.prepare(AnswerLoss(model))  # DDP under several processes
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    global_batch = config.batch_size * config.grad_accum * world
    steps_per_epoch = math.ceil(len(data.encoded) / global_batch)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = max(1, round(config.warmup_ratio * total_steps))
    pad = pad_token_id(tokenizer)
    lengths = [len(item.input_ids) for item in data.encoded]
    precision = Precision(dtype.value, accelerator.device.type)
    keep_best = config.early_stopping_patience > 0  # then the adapter of the best dev evaluation is the one saved

    step, best, best_adapter = 0, {"dev_accuracy": -1.0, "step": 0, "evals_without_improvement": 0}, None
    checkpoint = run.latest_checkpoint() if config.resume else None
    if checkpoint:
        saved = load_checkpoint(checkpoint, model, optimizer, precision)
        step, best, best_adapter = saved["step"], saved["best"], saved["best_adapter"]
        log(f"resuming from {checkpoint} (step {step} of {total_steps}, {precision.dtype})")
    elif config.resume:
        log(f"--resume: {run.root} holds no checkpoint yet, so training starts at step 1")
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        config.save(run.config)
        template.save(run.prompt)
        _truncate_metrics(run.metrics, after_step=step)

    # --- the loop: one optimizer step per iteration ----------------------------------------------------
    good = snapshot(model, optimizer, step, best)  # where a run of non-finite steps rolls back to
    started, tokens_seen, bad_in_a_row = time.perf_counter(), 0, 0
    guard = {"skipped_steps": 0, "rollbacks": []}
    record: dict = {}
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not (progress and main))
    model.train()
    while step < total_steps:
        rows = step_batch(step, len(data.encoded), global_batch, config.seed, data.rows.source_of, data.weights)
        micro = micro_batches(rows, rank, world, config.batch_size, lengths)
        # Normalize by the supervised tokens of the whole global batch, so the gradient does not depend on
        # how rows fall into micro-batches or processes (DDP averages over processes, hence * world).
        mine = rows[rank::world]
        local_tokens = torch.tensor(sum(sum(t != IGNORE for t in data.encoded[i].labels[1:]) for i in mine))
        n_tokens = accelerator.reduce(local_tokens.to(accelerator.device), reduction="sum").item()
        lr = learning_rate(step, total_steps, config.learning_rate, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, padded = torch.zeros((), device=accelerator.device), 0
        for index, chunk in enumerate(micro):
            weight = 1.0 if chunk else 0.0  # an empty share runs a real row with no weight: see micro_batches
            items = [data.encoded[i] for i in (chunk or rows[:1])]
            batch = {k: v.to(accelerator.device) for k, v in collate(items, pad).items()}
            padded = max(padded, batch["input_ids"].shape[1])  # `medtune plan --from-run` sizes activations by it
            last_micro = index == len(micro) - 1
            sync = accelerator.no_sync(loss_module) if not (last_micro or fsdp) else nullcontext()
            with sync:
                with precision.autocast():
                    loss_sum, _ = loss_module(**batch)
                precision.scaler.scale(loss_sum * weight * world / n_tokens).backward()
            step_loss += loss_sum.detach().float() * weight
            tokens_seen += int(batch["attention_mask"].sum()) if chunk else 0
        if fsdp:
            average_gradients(parameters)
        loss = accelerator.reduce(step_loss, reduction="sum").item() / n_tokens
        padded = int(accelerator.reduce(torch.tensor(padded, device=accelerator.device), "max").item())
        precision.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        finite = math.isfinite(loss) and (precision.dtype == "fp16" or bool(torch.isfinite(grad_norm)))
        # every process must agree to skip (accelerate's reduce has sum/mean/max, no min)
        finite = accelerator.reduce(torch.tensor(float(not finite), device=accelerator.device), "max").item() == 0
        if not finite:  # a non-finite loss or gradient never reaches the weights
            optimizer.zero_grad(set_to_none=True)
            precision.scaler.update()
            guard["skipped_steps"] += 1
            bad_in_a_row += 1
            log(f"step {step + 1}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'} in "
                f"{precision.dtype}, update skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row >= config.nonfinite_patience:
                step, best = _fall_back(precision, model, optimizer, good, step, guard, log)
                bad_in_a_row = 0
                bar.n = step
                if main:  # the replayed steps are logged again, once
                    _truncate_metrics(run.metrics, after_step=step)
            else:
                step += 1
            continue
        bad_in_a_row = 0
        scale = precision.scaler.get_scale()
        precision.scaler.step(optimizer)  # a plain optimizer.step() unless fp16 loss scaling is on
        precision.scaler.update()
        optimizer.zero_grad(set_to_none=True)

        step += 1
        rate = tokens_seen * world / (time.perf_counter() - started)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}")
        record = {"step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6),
                  "tokens_per_second": round(rate, 1), "supervised_tokens": n_tokens, "padded_length": padded,
                  "dtype": precision.dtype}
        if precision.dtype == "fp16":  # the scaler skips an update whose fp16 gradients overflowed, and halves
            record.update(loss_scale=precision.scaler.get_scale(), overflow=precision.scaler.get_scale() < scale)
        last = step == total_steps
        if config.eval_every and (step % config.eval_every == 0 or last):
            record["dev_accuracy"] = _dev_accuracy(model, tokenizer, template, data.dev)
            if _track_best(best, record["dev_accuracy"], step) and keep_best:
                best_adapter = adapter_state(model)
        if main:
            append_jsonl(run.metrics, record)
        stop = keep_best and best["evals_without_improvement"] >= config.early_stopping_patience
        if config.save_every and step % config.save_every == 0 and not last and not stop:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(run, step, model, optimizer, precision, best, best_adapter)
            good = snapshot(model, optimizer, step, best)
        if stop:
            best["stopped_early"] = step
            log(f"early stopping at step {step}: dev accuracy has not improved for {config.early_stopping_patience} "
                f"evaluations (best {best['dev_accuracy']:.3f} at step {best['step']})")
            break
    bar.close()

    # --- finish: the adapter, the manifest, the report, and what to do next --------------------------------
    adapter_step = step
    if keep_best and best_adapter is not None and best["step"] != step:
        set_adapter_state(model, best_adapter)  # early stopping keeps the best evaluated adapter, not the last
        adapter_step = best["step"]
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started
    calibrate_on_slice(model, tokenizer, template, data.calibration, run.root, data.calibration_data, main, log)
    if not main:
        return run
    model.save_pretrained(run.adapter)
    finished = {"steps": step, "planned_steps": total_steps, "adapter_step": adapter_step,
                "adapter_choice": "best dev accuracy (early stopping)" if adapter_step != step else "last step",
                "nonfinite_guard": guard, "seconds": round(seconds, 1), "tokens_seen": tokens_seen * world,
                "tokens_per_second": round(tokens_seen * world / seconds, 1) if seconds else 0.0}
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "device": device.value, "device_reason": device.reason, "backend": backend(),
        "dtype": dtype.value, "dtype_reason": dtype.reason, "final_dtype": precision.dtype,
        "quantization": quantize.value, "quantization_reason": quantize.reason,
        # 0: off, 1: every decoder layer, n: every n-th (`medtune plan --from-run` plans the run with it)
        "gradient_checkpointing": checkpoint_every, "gradient_checkpointing_reason": checkpointing_reason,
        "attention": attention.value, "attention_reason": attention.reason,
        "processes": world, "fsdp": fsdp,
        "base_model": info.to_dict(),
        "prompt": {"format": template.format, "enable_thinking": template.enable_thinking},
        "data": manifest_data(data.reports) | {"calibration_rows": data.reports["calibration_rows"]},
        "parameters": {"trainable": trainable, "total": total, "trainable_share": trainable / total},
        "training": finished,
    }
    write_json(run.manifest, manifest)
    write_json(run.fingerprint, training_fingerprint(data.rows.examples))  # what `medtune eval` checks against
    write_json(run.report, {"data": data.reports, "final": record, "best_dev": best, "nonfinite_guard": guard})
    log(_summary(run, config, data, record, best, finished, global_batch))
    del model, loss_module, optimizer, parameters, good, best_adapter  # the comparison loads the run afresh
    accelerator.free_memory()  # accelerate keeps references to what it prepared
    compare_with_base(config, run.root, device.value, log)
    return run


def compile_layers(model) -> None:
    """torch.compile every decoder layer in place. The layers share their code, so one graph (with dynamic
    sequence lengths) serves them all; it fuses the elementwise work between the matmuls."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel or not
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError("compile=true needs a decoder with a `layers` list (Llama/Qwen/Mistral-style models)")
    for layer in layers:
        layer.compile(dynamic=True)


def _fall_back(precision: Precision, model, optimizer, good: dict, step: int, guard: dict, log):
    """After `nonfinite_patience` bad steps in a row: back to the last good state, on in a safer dtype."""
    safer = next_safer_dtype(precision.dtype, model_device(model).type)
    if safer is None:
        raise FloatingPointError(
            f"training produced non-finite values {guard['skipped_steps']} times and is already in fp32: "
            "lower the learning rate or check the data"
        )
    restore(good, model, optimizer)
    guard["rollbacks"].append({"at_step": step + 1, "back_to_step": good["step"], "from": precision.dtype,
                               "to": safer})
    log(f"non-finite values persist in {precision.dtype}: rolled back to step {good['step']}, continuing in {safer}")
    precision.step_down(model, safer)
    return good["step"], dict(good["best"])


def _choose_memory(config: TrainConfig, device: str, dtype: str, attention: str) -> tuple[Choice, int, str]:
    """(quantization none/4bit/8bit with its reason, checkpoint every n-th decoder layer (0: off, 1: all), the
    checkpointing's reason). plan.choose_memory decides against the memory budget (config.memory_budget, else the GPU's
    memory or the host memory available now): checkpointing off, every n-th layer, every layer, then QLoRA; a
    setting the user gave wins. Quantization still goes through select_quantization, which knows whether
    bitsandbytes works here (when it does not, the run stays 16-bit with every layer checkpointed)."""
    from medtune.device import memory_budget
    from medtune.plan import choose_memory, input_from_config, parse_memory_size

    asked = config.quantize if config.quantize != "auto" else None
    quantize = select_quantization(asked, device) if asked else None  # refuses a mode that cannot work here
    budget = parse_memory_size(config.memory_budget) if config.memory_budget else memory_budget(device)
    try:
        inp = input_from_config(config.to_dict(), dtype, device, budget, attention=attention,
                                quantization=asked if asked in ("4bit", "8bit") else "none")
        decision = choose_memory(inp, config.gradient_checkpointing, config.quantize)
    except ValueError as error:  # a GGUF file, a model without a Llama-style `layers` list, remote code, ...
        first_line = (str(error).splitlines() or [""])[0]
        cannot = f"because the memory planner cannot read {config.model} ({first_line})"
        every = 0 if config.gradient_checkpointing == "auto" else int(config.gradient_checkpointing)
        return (quantize or Choice("none", f"auto: 16-bit LoRA, {cannot}"), every,
                "asked for" if config.gradient_checkpointing != "auto" else f"auto: off, {cannot}")
    quantize = quantize or select_quantization("auto", device, decision.quantization == "none")
    return quantize, decision.checkpointing, decision.reason


def _track_best(best: dict, accuracy: float | None, step: int) -> bool:
    """Update the best dev accuracy; True when `accuracy` is a new best."""
    if accuracy is None:
        return False
    if accuracy > best["dev_accuracy"]:
        best.update(dev_accuracy=accuracy, step=step, evals_without_improvement=0)
        return True
    best["evals_without_improvement"] += 1
    return False


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric lines past `after_step`: a resumed or rolled-back run re-does those steps and logs them again."""
    import json

    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(line for line in lines if json.loads(line)["step"] <= after_step), encoding="utf-8")


def _eval_flags(config: TrainConfig) -> str:
    """`medtune eval`'s flags for the run's eval_data, read as training read it (mixture.check_against_eval)."""
    entry = parse_source(config.eval_data)
    hub_split = not (Path(entry.source).exists() or entry.task)
    return (f"--data {entry.source}" + (f" --task {entry.task}" if entry.task else "")
            + (f" --split {config.eval_split}" if hub_split else ""))


def _summary(run: RunDir, config: TrainConfig, data: _Data, record: dict, best: dict, finished: dict,
             global_batch: int) -> str:
    """What a person needs when training ends: what was trained, how it went, where it is, what to run next."""
    dev = data.dev
    rows = data.reports["train_rows"]
    seen = min(rows, finished["steps"] * global_batch)  # a max_steps run may stop before an epoch ends
    trained = f"{rows} rows trained" if seen == rows else f"{seen} of {rows} rows trained"
    majority = max((sum(e.answer == k for e in dev) for k in range(len(LETTERS))), default=0)
    accuracy = record.get("dev_accuracy")
    dev_line = (f"dev accuracy {accuracy:.3f} on {len(dev)} questions (always the commonest letter: "
                f"{majority / len(dev):.3f})" if accuracy is not None and dev else "no dev slice evaluated")
    loss = f"{record['loss']:.4f}" if "loss" in record else "n/a"
    evaluate = _eval_flags(config) if config.eval_data else "--data EVAL_DATA"
    lines = [
        f"finished: {trained}, {len(dev)} held for dev; {finished['steps']} of "
        f"{finished['planned_steps']} steps in {finished['seconds']:.1f} s ({finished['tokens_per_second']:,.0f} "
        f"tokens/s); final train loss {loss}; {dev_line}",
        f"adapter: {run.adapter}" + (f" (from step {finished['adapter_step']}, the best dev accuracy)"
                                     if finished["adapter_step"] != finished["steps"] else ""),
        "next:",
        f"  medtune eval {run.root} {evaluate} --output {run.root / 'eval'}",
        f"  medtune ask {run.root} --question \"...\" --option ... --option ...",
        f"  medtune serve {run.root}",
    ]
    if finished["steps"] < finished["planned_steps"] and not best.get("stopped_early"):
        lines.append(f"  medtune train --output {run.root} --resume   # continue the remaining steps")
    return "\n".join(lines)
