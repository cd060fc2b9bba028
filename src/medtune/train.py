"""train(config) -> run directory: LoRA fine-tuning with the loss on the answer and explanation only.

One loop, read top to bottom. accelerate brings device placement and multi-process data parallelism
(`accelerate launch` / `torchrun`); everything else -- batching, masking, the schedule, autocast and fp16
loss scaling, the non-finite guard, checkpoints -- is here so it can be read.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from medtune import __version__
from medtune.config import TrainConfig
from medtune.data import LETTERS, MCQExample, load_examples, split_dev
from medtune.device import (
    DTYPES,
    Choice,
    apply_visible_devices,
    backend,
    next_safer_dtype,
    select_attention,
    select_device,
    select_dtype,
    select_quantization,
)
from medtune.evaluate import choice_logprobs, model_device
from medtune.modeling import add_lora, count_parameters, load_base, model_config
from medtune.prompts import template_for
from medtune.rundir import RunDir, append_jsonl, write_json
from medtune.tokenization import IGNORE, Encoded, PromptError, collate, encode_example, letter_token_ids, pad_token_id

KEEP_CHECKPOINTS = 2


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


def step_batch(step: int, n: int, global_batch: int, seed: int) -> list[int]:
    """Row indices of optimizer step `step`: epoch-wise seeded permutations, so any step can be recomputed."""
    per_epoch = math.ceil(n / global_batch)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[offset * global_batch : (offset + 1) * global_batch]


def _load_data(config: TrainConfig, tokenizer, template, log) -> _Data:
    train, train_report = load_examples(config.data, split=config.train_split, answer_base=config.answer_base,
                                        skip_invalid=config.skip_invalid, limit=config.limit)
    log(f"training data: {config.data}: {train_report.rows_loaded} rows ({train_report.answer_base_reason})"
        + (f"; skipped {train_report.skipped}" if train_report.skipped else ""))
    reports = {"train": train_report.to_dict()}
    held_out: set[str] = set()
    if config.eval_data:
        evaluation, eval_report = load_examples(config.eval_data, split=config.eval_split,
                                                answer_base=config.answer_base, skip_invalid=config.skip_invalid,
                                                limit=config.eval_limit)
        reports["eval"] = eval_report.to_dict()
        held_out = {example.key() for example in evaluation}
        overlap = sum(example.key() in held_out for example in train)
        reports["train_eval_overlap"] = overlap
        if overlap:
            log(f"warning: {overlap} training rows also appear in the evaluation data")
    train, dev = split_dev(train, config.dev_size, config.seed, exclude=held_out)
    letter_ids = letter_token_ids(tokenizer, template, len(LETTERS), sample=train[0])
    encoded = []
    for example in train:
        try:
            encoded.append(encode_example(tokenizer, template, example, letter_ids, config.max_seq_len))
        except PromptError:
            if not config.skip_invalid:
                raise
            reports["train"]["skipped"]["too_long"] = reports["train"]["skipped"].get("too_long", 0) + 1
    reports.update(train_rows=len(encoded), dev_rows=len(dev), dev_ids=[e.id for e in dev])
    return _Data(dev, encoded, reports)


def _save_checkpoint(run: RunDir, step: int, model, optimizer, best: dict) -> None:
    """Adapter, optimizer moments and RNG state as safetensors + JSON (no pickle); state file last."""
    from peft import get_peft_model_state_dict

    folder = run.checkpoint(step)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()},
              folder / "adapter.safetensors")
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.cpu().contiguous() for i, s in state["state"].items() for k, v in s.items()}
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, folder / "optimizer.safetensors")
    write_json(folder / "trainer_state.json", {"step": step, "param_groups": state["param_groups"],
                                               "best": best})
    for old in sorted(run.checkpoints.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)


def _load_checkpoint(folder: Path, model, optimizer) -> dict:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(folder / "adapter.safetensors"))
    saved = json.loads((folder / "trainer_state.json").read_text())
    tensors = load_file(folder / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("torch_rng"))
    moments: dict = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": saved["param_groups"]})
    return saved


def _dev_accuracy(model, tokenizer, template, dev: list[MCQExample]) -> float:
    if not dev:
        return float("nan")
    predicted = choice_logprobs(model, tokenizer, template, dev, batch_size=16).argmax(-1)
    return sum(int(p) == e.answer for p, e in zip(predicted.tolist(), dev)) / len(dev)


def _versions() -> dict:
    import accelerate
    import datasets
    import peft
    import transformers

    return {"medtune": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}


class _Precision:
    """The compute dtype of the forward pass, with fp16 loss scaling; can step down to a safer dtype."""

    def __init__(self, dtype: str, device_type: str):
        self.device_type = device_type
        self._use(dtype)

    def _use(self, dtype: str) -> None:
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32")

    def step_down(self, model, to: str) -> None:
        """Continue in `to`: frozen base weights follow (LoRA weights are fp32 throughout)."""
        for parameter in model.parameters():
            if not parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(DTYPES[to])
        self._use(to)


def _snapshot(model, optimizer, step: int, best: dict) -> dict:
    """In-memory copy of everything a rollback restores: the last good checkpoint's state."""
    from peft import get_peft_model_state_dict

    return {"adapter": {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()), "rng": torch.get_rng_state(), "step": step,
            "best": dict(best)}


def _restore(snapshot: dict, model, optimizer) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, snapshot["adapter"])
    optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
    torch.set_rng_state(snapshot["rng"])


def train(config: TrainConfig, progress: bool = True) -> RunDir:
    """Fine-tune a LoRA adapter as `config` says; returns the finished run directory."""
    from accelerate import Accelerator

    run = RunDir(config.output)
    if run.is_run() and not config.resume:
        raise FileExistsError(f"{run.root} already holds a finished run; choose another --output or pass --resume")
    apply_visible_devices(config.cuda_visible_devices, config.hip_visible_devices)  # before any CUDA call
    device = select_device(config.device)
    # 'auto' probes one step of this architecture (shrunk) per candidate dtype and takes the first finite one
    dtype = select_dtype(config.dtype, device.value,
                         model_config(config.model, config.revision, config.trust_remote_code))
    # accelerate brings device placement and DDP; autocast and loss scaling are ours (_Precision), so the
    # NaN guard can step down to a safer dtype in the middle of a run.
    accelerator = Accelerator(cpu=device.value == "cpu")
    main = accelerator.is_main_process

    def log(message: str) -> None:
        if main:
            tqdm.write(f"[medtune] {message}")

    seed_everything(config.seed, device.value)
    attention = select_attention(config.attention, device.value)
    quantize = _choose_quantization(config, device.value, dtype.value, attention.value)
    # Base weights in the compute dtype (the frozen part needs no fp32 master copy, and autocast then has no
    # weights to cast); LoRA weights stay fp32.
    model, tokenizer, info = load_base(config.model, dtype.value, config.revision, config.trust_remote_code,
                                       quantize.value, device.value, attention.value)
    if quantize.value != "none":  # QLoRA: norms to fp32, inputs that need gradients for checkpointing
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    template = template_for(tokenizer, config.prompt_format)
    data = _load_data(config, tokenizer, template, log)
    if config.gradient_checkpointing:
        # transformers 5 renamed gradient_checkpointing_enable (still there, deprecated) to this
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn here: same seed, same initial adapter
    model = add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    if config.compile:
        compile_layers(model)
    trainable, total = count_parameters(model)
    log(f"model {config.model} ({info.kind}{', ' + info.note if info.note else ''}); LoRA trains "
        f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%); {device.value}, {dtype.value} "
        f"({dtype.reason}); quantization {quantize.value} ({quantize.reason}); attention {attention.value}")

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    loss_module = accelerator.prepare(AnswerLoss(model))
    world = accelerator.num_processes
    global_batch = config.batch_size * config.grad_accum * world
    steps_per_epoch = math.ceil(len(data.encoded) / global_batch)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = max(1, round(config.warmup_ratio * total_steps))
    pad = pad_token_id(tokenizer)
    precision = _Precision(dtype.value, accelerator.device.type)

    step, best = 0, {"dev_accuracy": -1.0, "step": 0, "evals_without_improvement": 0}
    checkpoint = run.latest_checkpoint() if config.resume else None
    if checkpoint:
        saved = _load_checkpoint(checkpoint, model, optimizer)
        step, best = saved["step"], saved["best"]
        log(f"resuming from {checkpoint} (step {step} of {total_steps})")
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        config.save(run.config)
        template.save(run.prompt)
        _truncate_metrics(run.metrics, after_step=step)

    good = _snapshot(model, optimizer, step, best)  # where a run of non-finite steps rolls back to
    started, tokens_seen, bad_in_a_row = time.perf_counter(), 0, 0
    guard = {"skipped_steps": 0, "rollbacks": []}
    record: dict = {}
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not (progress and main))
    model.train()
    while step < total_steps:
        rows = step_batch(step, len(data.encoded), global_batch, config.seed)
        mine = sorted(rows[accelerator.process_index :: world], key=lambda i: len(data.encoded[i].input_ids))
        micro = [mine[i : i + config.batch_size] for i in range(0, len(mine), config.batch_size)]
        # Normalize by the supervised tokens of the whole global batch, so the gradient does not depend on
        # how rows fall into micro-batches or processes (DDP averages over processes, hence * world).
        local_tokens = torch.tensor(sum(sum(t != IGNORE for t in data.encoded[i].labels[1:]) for i in mine))
        n_tokens = accelerator.reduce(local_tokens.to(accelerator.device), reduction="sum").item()
        lr = learning_rate(step, total_steps, config.learning_rate, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, padded = torch.zeros((), device=accelerator.device), 0
        for index, chunk in enumerate(micro):
            batch = {k: v.to(accelerator.device) for k, v in collate([data.encoded[i] for i in chunk], pad).items()}
            padded = max(padded, batch["input_ids"].shape[1])  # `medtune plan --from-run` sizes activations by it
            sync = accelerator.no_sync(loss_module) if index < len(micro) - 1 else nullcontext()
            with sync:
                with precision.autocast():
                    loss_sum, _ = loss_module(**batch)
                precision.scaler.scale(loss_sum * world / n_tokens).backward()
            step_loss += loss_sum.detach().float()
            tokens_seen += int(batch["attention_mask"].sum())
        loss = accelerator.reduce(step_loss, reduction="sum").item() / n_tokens
        padded = int(accelerator.reduce(torch.tensor(padded, device=accelerator.device), "max").item())
        precision.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
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
            else:
                step += 1
            continue
        bad_in_a_row = 0
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
        last = step == total_steps
        if config.eval_every and (step % config.eval_every == 0 or last):
            record["dev_accuracy"] = _dev_accuracy(model, tokenizer, template, data.dev)
            _track_best(best, record["dev_accuracy"], step)
        if main:
            append_jsonl(run.metrics, record)
        stop = config.early_stopping_patience and best["evals_without_improvement"] >= config.early_stopping_patience
        if config.save_every and step % config.save_every == 0 and not last and not stop:
            accelerator.wait_for_everyone()
            if main:
                _save_checkpoint(run, step, model, optimizer, best)
            good = _snapshot(model, optimizer, step, best)
        if stop:
            log(f"early stopping at step {step}: dev accuracy has not improved for {config.early_stopping_patience} "
                f"evaluations (best {best['dev_accuracy']:.3f} at step {best['step']})")
            break
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        accelerator.unwrap_model(loss_module).model.save_pretrained(run.adapter)
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "device": device.value, "device_reason": device.reason, "backend": backend(),
            "dtype": dtype.value, "dtype_reason": dtype.reason, "final_dtype": precision.dtype,
            "quantization": quantize.value, "quantization_reason": quantize.reason,
            "attention": attention.value, "attention_reason": attention.reason,
            "processes": world,
            "base_model": info.to_dict(),
            "prompt": {"format": template.format, "enable_thinking": template.enable_thinking},
            "data": {name: _data_summary(report) for name, report in data.reports.items() if isinstance(report, dict)}
            | {"train_rows": data.reports["train_rows"], "dev_rows": data.reports["dev_rows"]},
            "parameters": {"trainable": trainable, "total": total, "trainable_share": trainable / total},
            "training": {"steps": step, "planned_steps": total_steps, "nonfinite_guard": guard,
                         "seconds": round(time.perf_counter() - started, 1), "tokens_seen": tokens_seen * world},
        }
        write_json(run.manifest, manifest)
        write_json(run.report, {"data": data.reports, "final": record, "best_dev": best, "nonfinite_guard": guard})
        log(f"adapter saved: {run.adapter}")
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


def _fall_back(precision: _Precision, model, optimizer, good: dict, step: int, guard: dict, log):
    """After `nonfinite_patience` bad steps in a row: back to the last good state, on in a safer dtype."""
    safer = next_safer_dtype(precision.dtype, model_device(model).type)
    if safer is None:
        raise FloatingPointError(
            f"training produced non-finite values {guard['skipped_steps']} times and is already in fp32: "
            "lower the learning rate or check the data"
        )
    _restore(good, model, optimizer)
    guard["rollbacks"].append({"at_step": step + 1, "back_to_step": good["step"], "from": precision.dtype,
                               "to": safer})
    log(f"non-finite values persist in {precision.dtype}: rolled back to step {good['step']}, continuing in {safer}")
    precision.step_down(model, safer)
    return good["step"], dict(good["best"])


def _choose_quantization(config: TrainConfig, device: str, dtype: str, attention: str) -> Choice:
    """none/4bit/8bit: 'auto' asks the memory planner whether 16-bit LoRA fits this GPU first."""
    fits = None
    if config.quantize == "auto" and device.startswith("cuda"):
        from medtune.plan import PlanInput, estimate

        targets = config.lora_target_modules
        memory = torch.cuda.get_device_properties(int(device.partition(":")[2] or 0)).total_memory
        fits = estimate(PlanInput(
            model=config.model, method="lora", dtype=dtype, batch_size=config.batch_size, seq_len=config.max_seq_len,
            gradient_checkpointing=config.gradient_checkpointing, lora_r=config.lora_r, device="cuda",
            attention=attention,
            lora_target_modules=(targets,) if isinstance(targets, str) else tuple(targets),
            device_memory_bytes=memory)).fits
    return select_quantization(config.quantize, device, fits)


def _data_summary(report: dict) -> dict:
    """What the manifest keeps of a data report: where it came from, its hash and its counts."""
    keys = ("source", "sha256", "rows_read", "rows_loaded", "skipped", "answer_base")
    return {key: report[key] for key in keys if key in report}


def _track_best(best: dict, accuracy: float, step: int) -> None:
    if accuracy > best["dev_accuracy"]:
        best.update(dev_accuracy=accuracy, step=step, evals_without_improvement=0)
    else:
        best["evals_without_improvement"] += 1


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric lines past `after_step`: a resumed run re-does those steps and logs them again."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(line for line in lines if json.loads(line)["step"] <= after_step), encoding="utf-8")
