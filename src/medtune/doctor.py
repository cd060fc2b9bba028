"""`medtune doctor`: what this machine can train with, and why -- a report over device.py's findings.

device.py inspects; this module gathers its answers into one dict (the `--json` output) and prints it
readably, ending with the recommended device, dtype and quantization, each with its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from medtune import device as hw

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `medtune doctor` options."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="config source for the numeric probe and the memory check: Hub id (cache only "
                             f"when offline), model folder or config.json (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--cuda-visible-devices", help="set CUDA_VISIBLE_DEVICES before any GPU call")
    parser.add_argument("--hip-visible-devices", help="set HIP_VISIBLE_DEVICES before any GPU call")


def _tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)


def probe_config(source: str) -> tuple[object, str | None, str]:
    """(transformers config, a path/id the planner can read or None, note) for `source`, never downloading.

    SmolLM2 also comes from medtune's own cache (the folder made from its PyPI wheel). When nothing is
    found, a built-in 2-layer Llama config stands in and the note says so.
    """
    from medtune.modeling import SMOLLM2_ID, cache_dir
    from medtune.plan import load_model_config

    candidates = [source]
    if source == SMOLLM2_ID:
        candidates.append(str(cache_dir() / "SmolLM2-135M-Instruct-from-gguf"))
    errors = []
    for candidate in candidates:
        try:
            return load_model_config(candidate), candidate, f"config from {candidate}"
        except ValueError as error:
            errors.append(str(error).splitlines()[0])
    note = f"no config for {source!r} offline ({errors[0]}); probing a built-in 2-layer Llama instead"
    return _tiny_llama_config(), None, note


def memory_plan(source: str | None, device: str, dtype: str, memory: int | None) -> dict | None:
    """{fits, total_bytes, device_memory_bytes, setting} for `medtune train`'s default LoRA setting (TrainConfig)
    in `dtype`, planned exactly as the trainer's quantize=auto and `medtune plan` plan it; None when unknown."""
    if source is None or memory is None:
        return None
    from medtune.plan import estimate, input_from_config

    inp = input_from_config({"model": source}, dtype, device, memory)
    try:
        plan = estimate(inp)
    except ValueError:
        return None
    setting = (f"LoRA r={inp.lora_r}, {dtype} weights and compute, batch {inp.batch_size} x {inp.seq_len} tokens, "
               f"{inp.device}")
    return {"fits": plan.fits, "total_bytes": plan.total, "device_memory_bytes": memory, "setting": setting}


def _choice(choice: hw.Choice) -> dict:
    return {"value": choice.value, "reason": choice.reason}


def collect(model: str = DEFAULT_MODEL, requested_device: str = "auto") -> dict:
    """Everything the report shows, as JSON-ready values (bytes for memory, seconds for time)."""
    device = hw.select_device(requested_device)
    found = hw.devices()
    config, source, note = probe_config(model)
    probes = hw.probe_dtypes(config, device.value)
    dtype = hw.select_dtype("auto", device.value, probes=probes)
    # the trainer's budget: a GPU's memory, or the host memory available now (quantize=auto decides on it)
    plan = memory_plan(source, device.value, dtype.value, hw.memory_budget(device.value))
    quantization = hw.select_quantization("auto", device.value, plan and plan["fits"])
    environment = hw.environment_report()
    warnings = list(environment["warnings"])
    if device.value == "cpu" and not hw.cpu_native_bf16():
        warnings.append("this CPU has no native bf16: bf16 is emulated and slower than fp32")
    warnings += [f"the {d} probe step was {p.status}: {p.describe()}" for d, p in probes.items()
                 if p.status in ("non-finite", "error")]
    return {
        "backend": hw.backend(),
        "torch": hw.torch_build(),
        "devices": [asdict(info) for info in found],
        "cpu": {"cores": hw.cpu_cores(), "native_bf16": hw.cpu_native_bf16(),
                "bf16_flags": hw.cpu_bf16_flags()},
        "bf16": {"cpu_native": hw.cpu_native_bf16(), "cpu_flags": hw.cpu_bf16_flags(),
                 "gpus": {str(d.index): d.bf16 for d in found if d.kind != "cpu"}},
        "attention": {name: {"usable": c.value == "yes", "reason": c.reason}
                      for name, c in hw.attention_implementations(device.value).items()},
        "quantization": {**hw.bitsandbytes_status(device.value), "memory_plan": plan},
        "environment": environment["variables"],
        "probe": {"model": model, "architecture": type(config).__name__.removesuffix("Config"), "note": note,
                  "device": device.value, "results": {d: asdict(p) for d, p in probes.items()}},
        "warnings": warnings,
        "recommendation": {"device": _choice(device), "dtype": _choice(dtype),
                           "quantization": _choice(quantization)},
    }


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def format_report(report: dict) -> str:
    """The report as text: build, devices, precision, attention, quantization, environment, probe, advice."""
    torch_info, cpu = report["torch"], report["cpu"]
    lines = [f"PyTorch {torch_info['version']} ({torch_info['build']}); backend: {report['backend']}",
             "Devices:"]
    for d in report["devices"]:
        where = "cpu" if d["kind"] == "cpu" else f"{d['kind']}:{d['index']}"
        extra = f", {cpu['cores']} cores usable" if d["kind"] == "cpu" else ""
        lines.append(f"  {where:<8} {d['name']}: {_gib(d['memory_bytes'])}, {d['capability'] or '-'}{extra}")
    native = ", ".join(cpu["bf16_flags"]) or "none (emulated)"
    gpus = ", ".join(f"{i}: {'yes' if ok else 'no'}" for i, ok in report["bf16"]["gpus"].items()) or "no GPU"
    lines += [f"bf16: CPU native {native}; GPU {gpus}", "Attention:"]
    lines += [f"  {name:<18} {'yes' if a['usable'] else 'no':<4} {a['reason']}"
              for name, a in report["attention"].items()]
    quant = report["quantization"]
    lines.append("Quantization (bitsandbytes, probed with a real quantized matmul):")
    lines += [f"  {mode:<5} {'works' if m['works'] else 'unavailable':<12} {m['reason']}"
              for mode, m in quant["modes"].items()]
    if quant["memory_plan"]:
        mem = quant["memory_plan"]
        lines.append(f"Memory plan ({mem['setting']}): {_gib(mem['total_bytes'])} of "
                     f"{_gib(mem['device_memory_bytes'])} -> {'fits' if mem['fits'] else 'does NOT fit'}")
    lines.append("Environment: " + ", ".join(f"{k}={v if v is not None else '(unset)'}"
                                             for k, v in report["environment"].items()))
    probe = report["probe"]
    lines.append(f"Probe: one forward+backward step of a 2-layer {probe['architecture']} on "
                 f"{probe['device']} ({probe['note']})")
    lines += [f"  {d:<5} {hw.Probe(**p).describe()}" for d, p in probe["results"].items()]
    lines += [f"Warning: {text}" for text in report["warnings"]]
    lines.append("Recommendation:")
    lines += [f"  {what:<13} {c['value']:<5} {c['reason']}" for what, c in report["recommendation"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the report (or JSON) for parsed `args`; 0 on success, 2 with a sentence when it cannot."""
    try:
        hw.apply_visible_devices(args.cuda_visible_devices, args.hip_visible_devices)
        report = collect(args.model, args.device)
    except (hw.HardwareError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":  # python -m medtune.doctor, before the CLI wiring exists
    parser = argparse.ArgumentParser(prog="medtune doctor", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
