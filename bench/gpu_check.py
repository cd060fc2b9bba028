"""One command for the day a GPU is lent: every accelerator path of medtune, measured, into one JSON.

    python bench/gpu_check.py                                  # CUDA or ROCm; sized for 8 minutes on one GPU
    python bench/gpu_check.py --device cpu --tiny --out /tmp/gpu-check.json   # the script's own check on a CPU

Stages, in order: the model (Qwen3-1.7B's exact shape with random weights from ../shared/models/qwen3-1.7b-config
and the real Qwen3 tokenizer; --tiny: 2 layers of hidden size 64), `medtune doctor`, the device's matmul peak,
LoRA training in bf16, in fp16 with loss scaling and as 4-bit QLoRA (`medtune.train.train` with the GPU recipe,
configs/qwen3-1.7b-lora.yaml, on real MedMCQA rows), the QLoRA run scored again after loading back, two
processes under torchrun (two GPUs only), evaluation throughput on MedMCQA validation questions, and serving
throughput at batch 1 and 16 (`Answerer.score`, and the server's batching path in-process).

Each stage is timed and guarded: one that fails records its error and the next runs; one medtune refuses on
this device records the refusal as its skip reason; once the time budget is spent the rest are skipped with
that reason. The JSON is rewritten after every stage, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRAIN_DATA = SHARED / "data" / "medmcqa" / "train-sample-original.jsonl"  # 11 of 2,190 rows invalid: skipped
VALIDATION = SHARED / "data" / "medmcqa" / "validation.jsonl"
QWEN3_CONFIG = SHARED / "models" / "qwen3-1.7b-config"
QWEN3_TOKENIZER = SHARED / "models" / "qwen3-tokenizer"
RECIPE = REPO / "configs" / "qwen3-1.7b-lora.yaml"
# --tiny: the same architecture at the tests' size (tests/conftest.py tiny_qwen3); its vocabulary stays real.
TINY_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16}
# The recipe's 8 x 4 rows per step would only add minutes here: a 2-layer model's step is its output head over
# a 151,936-token vocabulary, in fp32 cross-entropy, at every supervised position.
# 160 tokens hold every prompt of the first 40 rows (at most 133 tokens) and cut the explanations, which are
# most of the supervised positions: fewer rows of that head, which fp16 (emulated on most CPUs) runs slowly.
TINY_TRAIN = {"batch_size": 2, "grad_accum": 1, "max_seq_len": 160}
DEV_ROWS = 8  # the trainer's dev slice; unused (eval_every=0), kept small so the rows go to training
# Work per stage: (full shape, --tiny).
STEPS = (20, 3)  # optimizer steps; the first is warm-up and not timed
EVAL_QUESTIONS = (500, 32)
SERVE_REPEATS = (40, 8)  # timed calls at batch 1; batch 16 gets a quarter as many
STAGE_NAMES = ("model", "doctor", "matmul_peak", "train_bf16", "train_fp16", "train_qlora", "qlora_eval",
               "two_process", "eval", "serve")


class Skip(Exception):
    """A stage that cannot run here; the message is the reason."""


@dataclasses.dataclass
class Check:
    """What the stages share: the arguments, where the work goes and what earlier stages left."""

    args: argparse.Namespace
    device: str
    out: Path
    scratch: Path
    started: float
    result: dict
    model: Path | None = None
    shape: dict = dataclasses.field(default_factory=dict)  # vocab, hidden, non_embedding
    peaks: dict = dataclasses.field(default_factory=dict)  # dtype -> FLOP/s
    runs: dict = dataclasses.field(default_factory=dict)  # stage -> run directory
    answerer: object = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def size(self, pair: tuple[int, int]) -> int:
        return pair[1] if self.args.tiny else pair[0]


# ------------------------------------------------------------------ measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_size(device: str, dtype: torch.dtype) -> int:
    """Large enough that launch and thread start-up do not count; fp16 on a CPU is usually emulated
    (~1 GFLOP/s here, at any size), where a 2048 matmul would take 15 s."""
    if device.startswith("cuda"):
        return 8192
    return 256 if dtype == torch.float16 else 2048


def peak_matmul_flops(device: str, dtype: torch.dtype, seconds: float) -> tuple[float, int]:
    """(best FLOP/s of a square matmul in `dtype` on `device` over `seconds`, at least two rounds; its size)."""
    size = matmul_size(device, dtype)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # the first call pays for kernel selection
    _sync(device)
    best, rounds, deadline = 0.0, 0, time.perf_counter() + seconds
    while rounds < 2 or time.perf_counter() < deadline:
        begun = time.perf_counter()
        for _ in range(2):
            a @ b
        _sync(device)
        best, rounds = max(best, 2 * 2 * size**3 / (time.perf_counter() - begun)), rounds + 1
    return best, size


class TrainMeter:
    """Times `train()` from outside, so the product's own loop is what is measured.

    A global forward pre-hook marks the start of every training forward at the input embedding (with its
    unpadded and padded token counts) and counts the rows the output head sees: `AnswerLoss` runs the head on
    supervised positions only. On CUDA the marks are stream events, so measuring adds no synchronization.
    """

    def __init__(self, device: str, vocab: int, pad_id: int):
        self.device, self.vocab, self.pad_id = device, vocab, pad_id
        self.marks, self.tokens, self.padded, self.supervised = [], [], [], []

    def __enter__(self) -> TrainMeter:
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._seen)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _seen(self, module, args) -> None:
        if not torch.is_grad_enabled() or not args:  # training forwards only
            return
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab:
            self.marks.append(self._clock())
            self.tokens.append((args[0] != self.pad_id).sum())  # summed later: no sync per forward
            self.padded.append(args[0].numel())
        elif isinstance(module, torch.nn.Linear) and module.out_features == self.vocab:
            self.supervised.append(args[0].shape[0])  # [n_supervised, hidden]

    def _clock(self):
        if not self.device.startswith("cuda"):
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _seconds(self, first: int, last: int) -> float:
        if not self.device.startswith("cuda"):
            return self.marks[last] - self.marks[first]
        torch.cuda.synchronize(self.device)
        return self.marks[first].elapsed_time(self.marks[last]) / 1000  # ms -> s

    def throughput(self, forwards_per_step: int) -> dict:
        """Tokens/s from the first forward of step 2 to the start of the last forward (step 1 pays for the
        allocator, cuBLAS handles and kernel selection)."""
        first, last = forwards_per_step, len(self.marks) - 1
        if last <= first:
            raise RuntimeError(f"only {len(self.marks)} training forwards were seen; give --steps 3 or more")
        seconds = self._seconds(first, last)
        tokens = int(sum(int(t) for t in self.tokens[first:last]))
        return {"timed_forwards": last - first, "timed_seconds": round(seconds, 3), "timed_tokens": tokens,
                "timed_padded_tokens": sum(self.padded[first:last]),
                "timed_supervised_tokens": sum(self.supervised[first:last]),
                "tokens_per_second": round(tokens / seconds, 1)}


def model_flops(shape: dict, tokens: int, supervised: int) -> float:
    """LoRA training FLOPs, as bench/README.md counts them: forward 2N + backward to the inputs 2N per token
    (frozen weights need no weight gradient), N the non-embedding parameters; the output head on supervised
    positions only, forward and backward (4 x vocab x hidden each)."""
    return 4 * shape["non_embedding"] * tokens + 4 * shape["vocab"] * shape["hidden"] * supervised


def _gpu_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def _free_memory(check: Check) -> None:
    gc.collect()
    if check.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(_gpu_index(check.device))


# ------------------------------------------------------------------ stages


def stage_model(check: Check) -> dict:
    """Random weights of the shape under test, saved with the real tokenizer as an ordinary model folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from medtune.tokenization import pad_token_id

    config = AutoConfig.from_pretrained(QWEN3_CONFIG)
    if check.args.tiny:
        values = {**config.to_dict(), **TINY_SHAPE}
        values.pop("layer_types", None)  # sized for 28 layers; rebuilt from the new depth
        config = type(config)(**values)
    torch.manual_seed(0)
    # Random init of 1.7B parameters takes seconds on a GPU and a minute or more on a CPU.
    with torch.device(check.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    embedding = model.get_input_embeddings().weight.numel()
    head = 0 if config.tie_word_embeddings else model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    check.shape = {"vocab": config.vocab_size, "hidden": config.hidden_size,
                   "non_embedding": total - embedding - head}
    tokenizer = AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)
    check.shape["pad_id"] = pad_token_id(tokenizer)
    check.model = check.scratch / "model"
    model.save_pretrained(check.model)
    tokenizer.save_pretrained(check.model)
    del model
    return {"shape": "2-layer tiny Qwen3 (--tiny)" if check.args.tiny else "Qwen3-1.7B", "weights": "random",
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size, "parameters": total,
            "non_embedding_parameters": check.shape["non_embedding"], "vocab_size": config.vocab_size}


def stage_doctor(check: Check) -> dict:
    from medtune.doctor import collect

    return collect(str(_need_model(check)), check.device)


def stage_matmul_peak(check: Check) -> dict:
    seconds = 0.5 if check.args.tiny else 1.0
    figures = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        try:
            flops, size = peak_matmul_flops(check.device, dtype, seconds)
        except RuntimeError as error:  # a dtype this device has no matmul for
            figures[name] = {"error": str(error).splitlines()[0]}
            continue
        check.peaks[name] = flops
        figures[name] = {"flops_per_second": round(flops), "tflops": round(flops / 1e12, 3), "size": size}
    return figures


def _train_config(check: Check, name: str, dtype: str, quantize: str, processes: int = 1):
    """The GPU recipe on the local MedMCQA sample, `--steps` steps, no checkpoints or dev evaluations."""
    from medtune.config import load_config

    overrides = TINY_TRAIN if check.args.tiny else {}
    config = load_config(str(RECIPE), model=str(_need_model(check)), data=str(TRAIN_DATA),
                         output=str(check.scratch / name), skip_invalid=True, max_steps=check.args.steps,
                         dev_size=DEV_ROWS, eval_every=0, save_every=0, device=check.device, dtype=dtype,
                         quantize=quantize, **overrides)
    rows = config.max_steps * config.batch_size * config.grad_accum * processes + DEV_ROWS
    # The recipe's eval_data is the Hub's validation split: offline here, and scored in the eval stage instead.
    return dataclasses.replace(config, eval_data=None, limit=rows)


def _train_stage(check: Check, name: str, dtype: str, quantize: str = "none") -> dict:
    """One in-process `train()` run: throughput and MFU from the meter, peak memory against `medtune plan`."""
    from medtune.train import train

    config = _train_config(check, name, dtype, quantize)
    _free_memory(check)
    with TrainMeter(check.device, check.shape["vocab"], check.shape["pad_id"]) as meter:
        run = train(config, progress=False)
    check.runs[name] = run.root
    manifest = run.read_manifest()
    figures = {"dtype": manifest["dtype"], "final_dtype": manifest.get("final_dtype"),
               "quantization": manifest.get("quantization"), "attention": manifest.get("attention"),
               "batch_size": config.batch_size, "grad_accum": config.grad_accum, "max_seq_len": config.max_seq_len,
               "steps": manifest["training"]["steps"], "nonfinite_guard": manifest["training"].get("nonfinite_guard"),
               # the whole loop, step 1 included: comparable with the two-process run's manifest
               "whole_loop_tokens_per_second": _manifest_rate(manifest)}
    figures.update(meter.throughput(forwards_per_step=config.grad_accum))
    peak = check.peaks.get(figures["final_dtype"] or dtype)
    flops = model_flops(check.shape, figures["timed_tokens"], figures["timed_supervised_tokens"])
    figures["model_flops_per_second"] = round(flops / figures["timed_seconds"])
    figures["mfu"] = round(flops / figures["timed_seconds"] / peak, 4) if peak else None
    try:  # the planner failing must not throw away the throughput measured above
        figures["memory"] = _memory_against_plan(check, run.root)
    except Exception as error:  # noqa: BLE001
        figures["memory"] = {"error": f"{type(error).__name__}: {error}"}
    return figures


def _manifest_rate(manifest: dict) -> float | None:
    training = manifest["training"]
    return round(training["tokens_seen"] / training["seconds"], 1) if training.get("seconds") else None


def _memory_against_plan(check: Check, run_dir: Path) -> dict:
    """`medtune plan --from-run` for the run, against torch.cuda.max_memory_allocated over the run."""
    from medtune.plan import estimate, input_from_run

    total = torch.cuda.get_device_properties(_gpu_index(check.device)).total_memory if check.cuda else None
    plan_input = input_from_run(run_dir, total)
    plan = estimate(plan_input)
    tensors = plan.total - plan.runtime_overhead  # what max_memory_allocated can see (no context, no cache)
    figures = {"plan_total_bytes": plan.total, "plan_tensor_bytes": tensors,
               "plan": plan.to_dict()}  # what `medtune plan --from-run RUN --json` prints
    if not check.cuda:
        return {**figures, "measured_max_allocated_bytes": None,
                "measured_reason": "no torch.cuda.max_memory_allocated on the CPU, and this process's peak RSS "
                                   "mixes every stage (bench/memory.py measures CPU peaks run by run)"}
    index = _gpu_index(check.device)
    allocated, reserved = torch.cuda.max_memory_allocated(index), torch.cuda.max_memory_reserved(index)
    return {**figures, "measured_max_allocated_bytes": allocated, "measured_max_reserved_bytes": reserved,
            "allocated_over_plan_tensors": round(allocated / tensors, 3)}


def _lora_dtype(check: Check) -> str:
    from medtune.device import bf16_supported

    return "bf16" if bf16_supported(check.device) else "fp16"


def stage_train_bf16(check: Check) -> dict:
    return _train_stage(check, "train_bf16", "bf16")


def stage_train_fp16(check: Check) -> dict:
    return _train_stage(check, "train_fp16", "fp16")


def stage_train_qlora(check: Check) -> dict:
    from medtune.device import bitsandbytes_status

    status = bitsandbytes_status(check.device)
    if not status["installed"] or status["version"] is None:
        raise Skip(f"bitsandbytes does not load: {status['reason']}")
    return {**_train_stage(check, "train_qlora", _lora_dtype(check), "4bit"), "bitsandbytes": status}


def _need_model(check: Check) -> Path:
    if check.model is None:
        raise Skip("the model stage did not finish, so there is no model to run")
    return check.model


def _validation(n: int):
    from medtune.data import load_examples

    examples, report = load_examples(str(VALIDATION), split="validation", skip_invalid=True, limit=n)
    return examples, report


def _score_rate(check: Check, answerer, n: int) -> dict:
    """Questions/s of `medtune.evaluate.evaluate` on the first `n` validation questions, after a warm-up."""
    from medtune.evaluate import evaluate
    from medtune.tokenization import encode_prompt

    examples, report = _validation(n)
    model, tokenizer, template = answerer.model, answerer.tokenizer, answerer.template
    evaluate(model, tokenizer, template, examples[:16], batch_size=16, progress=False)  # warm-up
    _sync(check.device)
    begun = time.perf_counter()
    metrics, _ = evaluate(model, tokenizer, template, examples, batch_size=16, progress=False)
    _sync(check.device)
    seconds = time.perf_counter() - begun
    tokens = sum(len(encode_prompt(tokenizer, template, example)) for example in examples)
    dtype = answerer.description.get("dtype")
    peak = check.peaks.get(dtype)
    return {"loaded": answerer.description, "dtype": dtype, "questions": len(examples),
            "skipped_rows": report.skipped, "batch_size": 16, "seconds": round(seconds, 3),
            "questions_per_second": round(len(examples) / seconds, 2),
            "prompt_tokens": tokens,
            # scoring: forward only, 2N per prompt token (the head runs at one position per question)
            "mfu": round(2 * check.shape["non_embedding"] * tokens / seconds / peak, 4) if peak else None,
            "accuracy": metrics["accuracy"],
            "accuracy_note": "random weights: near chance; shows that scoring runs, not how well"}


def _answerer(check: Check):
    """The bf16 run (else the fp16 run) with its adapter, as eval/ask/serve load it; else the base model."""
    from medtune.answer import Answerer

    for name in ("train_bf16", "train_fp16"):
        if name in check.runs:
            return Answerer.from_run(check.runs[name], check.device)
    return Answerer.from_model(str(_need_model(check)), check.device)


def stage_eval(check: Check) -> dict:
    check.answerer = _answerer(check)
    return _score_rate(check, check.answerer, check.size(EVAL_QUESTIONS))


def stage_qlora_eval(check: Check) -> dict:
    """The QLoRA run loaded back the way eval/ask/serve load a run, and scored."""
    from medtune.answer import Answerer

    if "train_qlora" not in check.runs:
        raise Skip("the QLoRA stage did not produce a run")
    answerer = Answerer.from_run(check.runs["train_qlora"], check.device)
    try:
        return _score_rate(check, answerer, check.size(EVAL_QUESTIONS) // 4)
    finally:
        del answerer


def _rate(call, questions_per_call: int, repeats: int) -> float:
    call()  # warm-up
    begun = time.perf_counter()
    for _ in range(repeats):
        call()
    return round(questions_per_call * repeats / (time.perf_counter() - begun), 2)


def stage_serve(check: Check) -> dict:
    """Batch 1 and 16 through `Answerer.score` alone, then through the server's routes and batcher
    (in-process: FastAPI's TestClient, no sockets)."""
    from fastapi.testclient import TestClient

    from medtune.serve import Settings, create_app

    answerer = check.answerer or _answerer(check)
    examples, _ = _validation(16)
    questions = [{"question": e.question, "options": list(e.options), "explain": False} for e in examples]
    repeats = check.size(SERVE_REPEATS)
    figures = {"score_batch_1_questions_per_second": _rate(lambda: answerer.score(examples[:1]), 1, repeats),
               "score_batch_16_questions_per_second": _rate(lambda: answerer.score(examples), 16,
                                                            max(1, repeats // 4))}
    settings = Settings(api_key=None)
    cycle = itertools.count()

    def one() -> None:
        client.post("/v1/answer", json=questions[next(cycle) % 16]).raise_for_status()

    def sixteen() -> None:
        client.post("/v1/answer/batch", json={"questions": questions}).raise_for_status()

    with TestClient(create_app(answerer, settings)) as client:
        _wait_healthy(client)
        figures["server_batch_1_questions_per_second"] = _rate(one, 1, repeats)
        figures["server_batch_16_questions_per_second"] = _rate(sixteen, 16, max(1, repeats // 4))
        figures["server_batch_sizes"] = {str(k): v for k, v in client.app.state.batcher.batch_sizes.items()}
    figures["server_settings"] = {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms}
    figures["note"] = "batch 1 through the server includes max_wait_ms, the wait for other questions to join"
    figures["dtype"] = answerer.description.get("dtype")
    return figures


def _wait_healthy(client, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/healthz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the in-process server was not healthy after {seconds:.0f} s")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(config_file: Path, output: str) -> list[str]:
    """`medtune train` in 2 processes on this machine, all settings from `config_file`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "medtune.cli", "train", "--config", str(config_file),
            "--output", output, "--quiet"]


def stage_two_process(check: Check) -> dict:
    """`medtune train` under torchrun, 2 processes, the bf16 stage's settings per process."""
    count = torch.cuda.device_count() if check.cuda else 0
    if count < 2:
        raise Skip(f"fewer than 2 GPUs ({count} visible)")
    config = _train_config(check, "two_process", _lora_dtype(check), "none", processes=2)
    config = dataclasses.replace(config, device="cuda")  # each rank takes its own GPU (accelerate's LOCAL_RANK)
    saved = check.scratch / "two_process.yaml"
    config.save(saved)
    command = torchrun_command(saved, config.output)
    left = check.args.budget_minutes * 60 - (time.perf_counter() - check.started)
    begun = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(60, left), cwd=REPO,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-2000:]}")
    manifest = json.loads((Path(config.output) / "manifest.json").read_text())
    rate = _manifest_rate(manifest)
    single = check.result["stages"].get("train_bf16", {}).get("figures") or {}
    base = single.get("whole_loop_tokens_per_second")
    return {"command": shlex.join(command), "processes": manifest.get("processes"), "dtype": manifest["dtype"],
            "steps": manifest["training"]["steps"], "wall_seconds": round(time.perf_counter() - begun, 1),
            "whole_loop_tokens_per_second": rate,
            "speedup_over_one_process": round(rate / base, 3) if rate and base else None}


STAGES = {"model": stage_model, "doctor": stage_doctor, "matmul_peak": stage_matmul_peak,
          "train_bf16": stage_train_bf16, "train_fp16": stage_train_fp16, "train_qlora": stage_train_qlora,
          "qlora_eval": stage_qlora_eval, "two_process": stage_two_process, "eval": stage_eval,
          "serve": stage_serve}
assert tuple(STAGES) == STAGE_NAMES


# ------------------------------------------------------------------ running


def run_stage(check: Check, name: str) -> dict:
    """Run one stage within the budget; its outcome: ok + figures, skipped + reason, or failed + error."""
    from medtune.device import HardwareError

    elapsed = time.perf_counter() - check.started
    if elapsed >= check.args.budget_minutes * 60:
        return {"status": "skipped",
                "reason": f"the time budget of {check.args.budget_minutes:g} min was spent ({elapsed:.0f} s)"}
    begun = time.perf_counter()
    try:
        entry = {"status": "ok", "figures": STAGES[name](check)}
    except Skip as why:
        entry = {"status": "skipped", "reason": str(why)}
    except HardwareError as refusal:  # medtune's own sentence for a request this device cannot honour
        entry = {"status": "skipped", "reason": f"medtune refuses it on {check.device}: {refusal}"}
    except Exception as error:  # noqa: BLE001 -- one stage failing must not stop the others
        entry = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc().splitlines()[-12:]}
    entry["seconds"] = round(time.perf_counter() - begun, 2)
    _free_memory(check)
    return entry


def _device_name(device: str) -> str:
    from medtune.device import cpu_info

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(_gpu_index(device))
    return f"{cpu_info().name} ({torch.get_num_threads()} threads)" if device == "cpu" else device


def _versions() -> dict:
    import accelerate
    import peft
    import transformers

    from medtune import __version__

    versions = {"medtune": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                "cuda": torch.version.cuda, "hip": torch.version.hip, "transformers": transformers.__version__,
                "peft": peft.__version__, "accelerate": accelerate.__version__}
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except Exception as error:  # noqa: BLE001 -- a broken build raises all sorts at import
        versions["bitsandbytes"] = f"does not import ({type(error).__name__})"
    return versions


def _what_figures_are(device: str, name: str, tiny: bool) -> str:
    if not device.startswith("cuda"):
        return (f"CPU figures on {name}, not GPU figures: the script's own check. MFU is against this CPU's "
                "measured matmul peak; no GPU figure has been measured by this run.")
    shape = "the 2-layer tiny model (--tiny): a check of the script, not Qwen3-1.7B figures" if tiny else \
        "Qwen3-1.7B's shape with random weights"
    return f"measured on {name}, {shape}"


def _clean(value):
    """JSON-safe: NaN and infinities become null (strict parsers reject them); paths become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def write(check: Check) -> None:
    check.out.parent.mkdir(parents=True, exist_ok=True)
    check.out.write_text(json.dumps(_clean(check.result), indent=2) + "\n", encoding="utf-8")


def _headline(entry: dict) -> str:
    if entry["status"] != "ok":
        return entry.get("reason") or entry.get("error", "")
    figures = entry["figures"]
    keys = ("tokens_per_second", "mfu", "questions_per_second", "server_batch_16_questions_per_second")
    shown = [f"{k} {figures[k]}" for k in keys if isinstance(figures, dict) and figures.get(k) is not None]
    if isinstance(figures.get("bf16"), dict) and "tflops" in figures["bf16"]:
        shown.append(f"bf16 peak {figures['bf16']['tflops']} TFLOP/s")
    return ", ".join(shown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-layer model of the same architecture, few steps and questions: the CPU check")
    parser.add_argument("--out", help="the JSON to write (default bench/results/gpu-check-<device>.json)")
    parser.add_argument("--budget-minutes", type=float, default=8.0,
                        help="stages not started by then are skipped with that reason (default 8)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per training stage (default {STEPS[0]}, "
                                                  f"--tiny {STEPS[1]}); the first is not timed")
    parser.add_argument("--work-dir", help="where the model and runs go (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = STEPS[1] if args.tiny else STEPS[0]
    if args.steps < 3:
        parser.error("--steps must be at least 3: the first step is warm-up and the last forward ends the timing")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from medtune.device import HardwareError, backend, select_device

    try:
        device = select_device(args.device).value
    except HardwareError as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    name = _device_name(device)
    slug = "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = Path(args.out or REPO / "bench" / "results" / f"gpu-check-{slug}{'-tiny' if args.tiny else ''}.json")
    scratch = Path(args.work_dir or tempfile.mkdtemp(prefix="medtune-gpu-check-"))
    scratch.mkdir(parents=True, exist_ok=True)
    result = {"check": "bench/gpu_check.py", "command": shlex.join(["python", *sys.argv]) if argv is None else
              shlex.join(["python", "bench/gpu_check.py", *argv]),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": {"requested": args.device, "used": device, "backend": backend(), "name": name,
                         "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0},
              "figures_are": _what_figures_are(device, name, args.tiny), "versions": _versions(),
              "budget_minutes": args.budget_minutes, "steps": args.steps, "stages": {}}
    check = Check(args, device, out, scratch, time.perf_counter(), result)
    try:
        for stage in STAGE_NAMES:
            entry = run_stage(check, stage)
            result["stages"][stage] = entry
            result["total_seconds"] = round(time.perf_counter() - check.started, 1)
            write(check)
            print(f"[gpu-check] {stage}: {entry['status']} ({entry.get('seconds', 0):.1f} s) {_headline(entry)}",
                  file=sys.stderr, flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"[gpu-check] wrote {out} in {result['total_seconds']:.0f} s; {result['figures_are']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
