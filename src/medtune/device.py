"""The only module that inspects hardware: which device, which dtype, which backend -- each with its reason.

PyTorch's ROCm build exposes AMD GPUs as the `cuda` device; `torch.version.hip` tells them apart.
Nothing here sets a hardware environment variable on its own: `apply_visible_devices` sets the visible-device
variables only when a caller passes values from config or the command line. doctor.py writes the report.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZATIONS = ("none", "auto", "4bit", "8bit")
ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
               "HSA_OVERRIDE_GFX_VERSION")
# x86 flags (Linux /proc/cpuinfo) for bf16 dot products in hardware; without them bf16 is emulated in fp32
# and slower than plain fp32. Arm's BF16 extension shows as "bf16" in the Features line.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# The probe model: the chosen architecture shrunk to 2 layers so one step takes well under a second.
PROBE_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "vocab_size": 512, "head_dim": 16}
# flash-attn 2 kernels need Ampere (sm_80) or newer on NVIDIA, MI200/MI300 (CDNA2/3) on AMD.
FLASH_ATTENTION_GFX = ("gfx90a", "gfx942", "gfx950")


# bitsandbytes' CPU backend logs a warning at import when the optional `kernels` package (a faster CPU 4-bit
# matmul) is absent, and falls back to its own kernel, which the probe below checks; PEFT imports bitsandbytes
# whenever it is installed, so without this every command would print that line.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class HardwareError(RuntimeError):
    """An explicit request the hardware cannot honour."""


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str


@dataclass(frozen=True)
class Probe:
    """One forward+backward step of the probe model in one dtype.

    status: "finite" | "non-finite" | "unsupported" | "error". `loss` is the mean token cross-entropy
    (nats); `seconds` is the step's wall time, model construction excluded.
    """

    dtype: str
    status: str
    loss: float | None = None
    finite_loss: bool | None = None
    finite_grads: bool | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def finite(self) -> bool:
        return self.status == "finite"

    def describe(self) -> str:
        if self.status not in ("finite", "non-finite"):
            return f"{self.status}: {self.error}"
        grads = "finite" if self.finite_grads else "NOT finite"
        return f"{self.status} (loss {self.loss:.4g}, grads {grads}, {self.seconds:.2f} s)"


@dataclass(frozen=True)
class DeviceInfo:
    """One device PyTorch can use. capability: "8.0"-style compute capability (CUDA) or "gfx942" (ROCm)."""

    kind: str  # cuda | rocm | mps | cpu
    index: int | None
    name: str
    memory_bytes: int | None
    capability: str | None
    bf16: bool  # computes bfloat16 at all (on the CPU possibly emulated; see cpu_native_bf16)


def backend() -> str:
    """'rocm', 'cuda', 'mps' or 'cpu': the accelerator stack this PyTorch build can use right now."""
    if torch.cuda.is_available():
        return "rocm" if torch.version.hip else "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def select_device(requested: str = "auto") -> Choice:
    """'auto' takes the first accelerator PyTorch can use, else the CPU; an explicit one must exist."""
    if requested == "auto":
        kind = backend()
        device = "cuda" if kind in ("cuda", "rocm") else kind
        why = {"rocm": "AMD GPU via PyTorch's ROCm build", "cuda": "NVIDIA GPU", "mps": "Apple GPU (MPS)",
               "cpu": "no GPU visible to PyTorch"}[kind]
        return Choice(device, f"auto: {why}")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HardwareError(
                f"--device {requested} was asked for, but this PyTorch build sees no CUDA/ROCm GPU "
                f"(torch {torch.__version__}); use --device cpu or install a GPU build of torch")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise HardwareError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) are visible")
    elif requested == "mps" and not torch.backends.mps.is_available():
        raise HardwareError("--device mps was asked for, but MPS is not available on this machine")
    elif requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise HardwareError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    return Choice(requested, "asked for")


# --- precision -------------------------------------------------------------------------------------------


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's native-bf16 features: /proc/cpuinfo on Linux (or the `cpuinfo` text given), else what
    torch's own CPU check reports."""
    try:
        lines = (Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo).splitlines()
    except OSError:
        lines = []
    features = [line.partition(":")[2] for line in lines if line.startswith(("flags", "Features"))]
    words = {word for line in features for word in line.split()}
    if not lines:  # macOS and others: sysctl would tell; torch's own x86 check is enough for what we choose
        words = {"avx512_bf16"} if torch.cpu._is_avx512_bf16_supported() else set()
        words |= {"amx_bf16"} if torch.cpu._is_amx_tile_supported() else set()
    return [flag for flag in CPU_BF16_FLAGS if flag in words]


def cpu_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16, AMX, Arm BF16); emulated bf16 is slower."""
    return bool(cpu_bf16_flags())


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    # The CPU always computes bf16 (emulated without native support); MPS from macOS 14.
    return device in ("cpu", "mps")


def _shrunk_config(model_config):
    """The same architecture class at probe size: 2 layers, hidden 64, vocab 512 where the config has them."""
    values = model_config.to_dict()
    values.pop("layer_types", None)  # per-layer lists sized for the full depth; rebuilt from the new depth
    names = getattr(model_config, "attribute_map", {})  # GPT-2 style configs say n_layer, n_embd, ...
    shape = {names.get(key, key): value for key, value in PROBE_SHAPE.items()}
    values.update({key: value for key, value in shape.items() if key in values})
    heads, kv_heads = model_config.num_attention_heads, values.get("num_key_value_heads")
    if kv_heads:  # keep grouped-query attention grouped, and plain multi-head attention plain
        values["num_key_value_heads"] = 2 if kv_heads < heads else PROBE_SHAPE["num_attention_heads"]
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids past the shrunk vocab break Embedding
        ids = values.get(key) if isinstance(values.get(key), list) else [values.get(key)]
        if any(i is not None and i >= PROBE_SHAPE["vocab_size"] for i in ids):
            values[key] = None
    return type(model_config)(**values)


def _probe_loss(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The probe's loss: next-token cross-entropy on random ids (tests replace this to inject inf)."""
    return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss


def _probe_step(model_config, device: str, dtype: str) -> Probe:
    """One training step as the trainer takes it: weights in `dtype`, under autocast for 16-bit dtypes."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(_shrunk_config(model_config))
    model = model.to(device=device, dtype=DTYPES[dtype]).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    kind = device.split(":")[0]
    started = time.perf_counter()
    with torch.autocast(kind, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
        loss = _probe_loss(model, ids)
    loss.backward()
    if kind == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    finite_loss = math.isfinite(loss.item())
    finite_grads = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    return Probe(dtype, "finite" if finite_loss and finite_grads else "non-finite", loss.item(), finite_loss,
                 finite_grads, round(seconds, 4))


def probe_dtypes(model_config, device: str, dtypes=("bf16", "fp16", "fp32")) -> dict[str, Probe]:
    """One forward+backward step of a 2-layer copy of `model_config`'s architecture per dtype, on `device`.

    It catches kernels that return NaN/Inf or fail in a dtype on this backend; random small weights cannot
    show overflow that only trained weights' large activations cause (fp16 on some Qwen checkpoints), which
    the trainer's non-finite-step guard handles.
    """
    probes = {}
    for dtype in dtypes:
        if dtype == "fp16" and device == "cpu":
            why = "auto never trains in fp16 on the CPU (no fast kernels there; ask for it with --dtype fp16)"
            probes[dtype] = Probe(dtype, "unsupported", error=why)
            continue
        try:
            probes[dtype] = _probe_step(model_config, device, dtype)
        except Exception as error:  # one dtype failing must not stop the others
            first_line = (str(error).splitlines() or [""])[0]
            probes[dtype] = Probe(dtype, "error", error=f"{type(error).__name__}: {first_line}")
    return probes


def _auto_candidates(device: str) -> tuple[list[str], str]:
    """16-bit dtypes worth trying on `device`, best first, and why the list is what it is."""
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return ["bf16", "fp16"], "the GPU supports bfloat16 (fp32 range, no loss scaling needed)"
        return ["fp16"], "the GPU lacks bfloat16; fp16 with dynamic loss scaling"
    if device == "cpu" and cpu_native_bf16():
        flags = ", ".join(cpu_bf16_flags())
        return ["bf16"], f"the CPU has native bf16 ({flags}), bf16 weights under autocast"
    if device == "cpu":
        return [], "the CPU lacks native bf16 (emulated bf16 is slower than fp32)"
    return [], f"no fast 16-bit training path assumed on {device}"


def select_dtype(requested: str, device: str, model_config=None,
                 probes: dict[str, Probe] | None = None) -> Choice:
    """'auto': bf16 where supported and the probe is finite, else fp16 with loss scaling (GPU), else fp32.

    With `model_config`, each candidate is probed (or `probes` from probe_dtypes is used) and a non-finite
    or failing dtype is passed over; without it the hardware alone decides, and the reason says so.
    """
    if requested != "auto":
        if requested not in DTYPES:
            raise HardwareError(f"unknown dtype {requested!r}; use auto, bf16, fp16 or fp32")
        if requested == "bf16" and not bf16_supported(device):
            raise HardwareError(f"bf16 was asked for, but {device} does not support bfloat16; "
                                "use fp16 or fp32")
        slow = requested in ("bf16", "fp16") and device == "cpu" and not cpu_native_bf16()
        if requested == "fp16" and device == "cpu":  # torch's CPU autocast and GradScaler("cpu") do fp16
            return Choice("fp16", "asked for (fp16 with loss scaling on the CPU: slower than bf16 or fp32, and "
                                  "never chosen by auto)")
        return Choice(requested, "asked for" + (" (emulated on this CPU: slower than fp32)" if slow else ""))
    candidates, why = _auto_candidates(device)
    if model_config is None and probes is None:
        if candidates:
            return Choice(candidates[0], f"auto: {why} (no numeric probe run)")
        return Choice("fp32", f"auto: fp32 because {why}")
    if probes is None:
        probes = probe_dtypes(model_config, device, candidates)
    failed = []
    for dtype in candidates:
        probe = probes.get(dtype) or probe_dtypes(model_config, device, (dtype,))[dtype]
        if probe.finite:
            passed_over = f"; passed over {', '.join(failed)}" if failed else ""
            return Choice(dtype, f"auto: {why}; probe step {probe.describe()}{passed_over}")
        failed.append(f"{dtype} (probe {probe.describe()})")
    if failed:
        return Choice("fp32", f"auto: fp32 because {why}, but {'; '.join(failed)}")
    return Choice("fp32", f"auto: fp32 because {why}")


def next_safer_dtype(dtype: str, device: str | None = None) -> str | None:
    """The trainer's fallback after repeated non-finite steps: bf16 -> fp16 (GPUs) or fp32 -> None."""
    device = device or select_device("auto").value
    if dtype == "bf16":  # fp16 needs loss scaling, which medtune (through accelerate) does on GPUs only
        return "fp16" if device.startswith("cuda") and torch.cuda.is_available() else "fp32"
    return "fp32" if dtype == "fp16" else None


# --- quantization ----------------------------------------------------------------------------------------


def _bitsandbytes() -> tuple[str, str, bool]:
    """(version, backend, native library loaded) of the installed bitsandbytes; ImportError when absent.

    bitsandbytes' `cextension` says which native library it loaded: BNB_BACKEND is "CUDA", "ROCm", "CPU" or
    "XPU", and `lib` is a mock object (ErrorHandlerMockBNBNativeLibrary) when that library failed to load.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes
        from bitsandbytes import cextension
    lib = getattr(cextension, "lib", None)
    loaded = lib is not None and "Mock" not in type(lib).__name__
    return bitsandbytes.__version__, getattr(cextension, "BNB_BACKEND", "CUDA"), loaded


# A 4-bit probe on Gaussian weights: NF4 rounds them with ~10% relative error (0.097 measured on this CPU,
# bitsandbytes 0.50.2), so a product further off than this is a broken kernel, not quantization.
NF4_PROBE_TOLERANCE = 0.2
# LLM.int8 with per-row absmax scales: 0.006 measured here.
INT8_PROBE_TOLERANCE = 0.05


@functools.lru_cache(maxsize=8)
def _quantized_matmul_error(device: str, mode: str) -> str | None:
    """None when a bitsandbytes `mode` (4bit | 8bit) Linear computes right on `device`, else why not.

    A real forward, not a guess from the platform: 4-bit quantizes a [128, 64] weight to NF4 with double
    quantization (the QLoRA setting the trainer loads) and checks the Linear4bit forward against the fp32
    product with the de-quantized weight (the kernel) and with the original weight (the quantization);
    8-bit checks a Linear8bitLt forward against the fp32 product. Cached: one probe per device and mode.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional

    generator = torch.Generator().manual_seed(0)
    weight, x = torch.randn(128, 64, generator=generator), torch.randn(4, 64, generator=generator)
    exact = x @ weight.T
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 8-bit warns that it casts fp32 inputs to fp16, as designed
            if mode == "4bit":
                layer = bnb.nn.Linear4bit(64, 128, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                                          compress_statistics=True)
                layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True)
                layer = layer.to(device)  # bitsandbytes quantizes on the move to the device
                if layer.weight.dtype != torch.uint8:
                    return f"the 4-bit weight stayed {layer.weight.dtype} on {device}: it was not quantized"
                output = layer(x.to(device)).float().cpu()
                dequantized = bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
                kernel = _relative_error(output, x @ dequantized.float().cpu().T)
                if kernel > 1e-2:
                    return f"the 4-bit matmul on {device} is off by {kernel:.3g} from its own de-quantized weight"
                tolerance = NF4_PROBE_TOLERANCE
            else:
                layer = bnb.nn.Linear8bitLt(64, 128, bias=False, has_fp16_weights=False, threshold=0.0)
                layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
                output = layer.to(device)(x.to(device)).float().cpu()
                tolerance = INT8_PROBE_TOLERANCE
    except Exception as error:  # a backend without the kernel raises all sorts (NotImplementedError, RuntimeError)
        return f"its {mode} matmul fails on {device} ({type(error).__name__}: {_first_line(error)})"
    error = _relative_error(output, exact)
    if not error <= tolerance:  # also catches NaN
        return f"its {mode} matmul on {device} is off by {error:.3g} (relative) from fp32, more than {tolerance}"
    return None


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def bitsandbytes_status(device: str) -> dict:
    """{installed, version, backend, works, reason, modes}: can bitsandbytes train 4-bit QLoRA on `device`?

    `works` and `reason` are about 4-bit (what QLoRA and quantize=auto use); `modes` holds {works, reason}
    for 4bit and 8bit, each from a real quantized matmul on the device (`_quantized_matmul_error`).
    """
    status = {"installed": False, "version": None, "backend": None}
    try:
        version, build, loaded = _bitsandbytes()
    except ModuleNotFoundError as error:
        if error.name != "bitsandbytes":
            raise
        return _status(status, "bitsandbytes is not installed (pip install bitsandbytes)")
    except Exception as error:  # a broken build raises all sorts at import
        return _status({**status, "installed": True},
                       f"bitsandbytes is installed but does not import ({type(error).__name__}: {error})")
    status = {"installed": True, "version": version, "backend": build}
    if device.startswith("cuda") and torch.version.hip and build != "ROCm":
        return _status(status, f"this is a ROCm GPU, but bitsandbytes loaded no ROCm/HIP library "
                               f"(its backend: {build})")
    if not loaded:
        return _status(status, f"bitsandbytes {version} imports, but its {build} library did not load")
    modes = {}
    for mode in ("4bit", "8bit"):
        why_not = _quantized_matmul_error(device, mode)
        modes[mode] = {"works": why_not is None,
                       "reason": f"bitsandbytes {version} ({build} library): " + (
                           f"the {mode} matmul probe on {device} matched fp32" if why_not is None else why_not)}
    return {**status, **modes["4bit"], "modes": modes}


def _status(status: dict, reason: str) -> dict:
    failed = {"works": False, "reason": reason}
    return {**status, **failed, "modes": {"4bit": failed, "8bit": failed}}


def select_quantization(requested: str, device: str, fits_16bit: bool | None = None) -> Choice:
    """'auto' quantizes (4-bit QLoRA) only when the memory plan says 16-bit does not fit and it works here."""
    if requested not in QUANTIZATIONS:
        raise HardwareError(f"unknown quantization {requested!r}; use none, auto, 4bit or 8bit")
    if requested == "none":
        return Choice("none", "asked for")
    if requested != "auto":
        support = bitsandbytes_status(device)["modes"][requested]
        if not support["works"]:
            raise HardwareError(f"--quantize {requested} was asked for, but {support['reason']}; "
                                "use --quantize none (16-bit LoRA)")
        return Choice(requested, f"asked for ({support['reason']})")
    if fits_16bit is None:
        return Choice("none", "auto: no memory plan for this device, so no reason to quantize")
    if fits_16bit:
        return Choice("none", "auto: the memory plan says 16-bit LoRA fits")
    support = bitsandbytes_status(device)
    if support["works"]:
        return Choice("4bit", f"auto: the memory plan says 16-bit LoRA does not fit; 4-bit QLoRA with "
                              f"{support['reason']}")
    return Choice("none", "auto: the memory plan says 16-bit LoRA does not fit, but quantization is "
                          f"unavailable ({support['reason']}); lower the batch size or enable checkpointing")


# --- environment -----------------------------------------------------------------------------------------


def apply_visible_devices(cuda_visible: str | None = None, hip_visible: str | None = None) -> dict[str, str]:
    """Set CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES from config or CLI; returns what was set.

    They only take effect before the process's first CUDA/HIP call, so this refuses once torch.cuda has
    initialized (unless the value is already in place). Nothing is set unless asked for.
    """
    wanted = {name: str(value) for name, value in (("CUDA_VISIBLE_DEVICES", cuda_visible),
                                                   ("HIP_VISIBLE_DEVICES", hip_visible)) if value is not None}
    changed = {name: value for name, value in wanted.items() if os.environ.get(name) != value}
    if changed and torch.cuda.is_initialized():
        raise HardwareError(f"cannot set {', '.join(changed)} now: this process already initialized "
                            "CUDA/HIP; set it in the environment before starting medtune instead")
    os.environ.update(changed)
    return wanted


def gfx_from_override(version: str) -> str | None:
    """HSA_OVERRIDE_GFX_VERSION "9.4.2" -> "gfx942", "9.0.10" -> "gfx90a"; None when unreadable."""
    try:
        major, minor, stepping = (int(part) for part in version.strip().split("."))
    except ValueError:
        return None
    return f"gfx{major}{minor:x}{stepping:x}"


def override_from_gfx(arch: str) -> str | None:
    """"gfx942" (or "gfx942:sramecc+:xnack-") -> "9.4.2"; the last two digits are hexadecimal."""
    name = arch.split(":")[0].removeprefix("gfx")
    if len(name) < 3 or not name[:-2].isdigit():
        return None
    return f"{int(name[:-2])}.{int(name[-2], 16)}.{int(name[-1], 16)}"


def detected_gfx_archs() -> list[str]:
    """The AMD GPUs' real gfx architectures, from the kernel driver's topology when readable.

    The KFD topology reports the hardware's own target even under HSA_OVERRIDE_GFX_VERSION, which makes
    the ROCm runtime (and so torch's gcnArchName) report the overridden one instead.
    """
    archs = []
    for properties in sorted(Path("/sys/class/kfd/kfd/topology/nodes").glob("*/properties")):
        fields = dict(line.split(" ", 1) for line in properties.read_text().splitlines() if " " in line)
        target = int(fields.get("gfx_target_version", "0") or 0)  # major*10000+minor*100+stepping; 0: CPU
        if target:
            archs.append(gfx_from_override(f"{target // 10000}.{target // 100 % 100}.{target % 100}"))
    if not archs and torch.version.hip and torch.cuda.is_available():
        archs = [torch.cuda.get_device_properties(i).gcnArchName.split(":")[0]
                 for i in range(torch.cuda.device_count())]
    return archs


def environment_report() -> dict:
    """The hardware-relevant environment variables (None: unset) and warnings about them."""
    values = {name: os.environ.get(name) for name in ENVIRONMENT}
    warnings_ = []
    override = values["HSA_OVERRIDE_GFX_VERSION"]
    if override is not None and not torch.version.hip:
        warnings_.append(f"HSA_OVERRIDE_GFX_VERSION={override} is set, but this PyTorch build is not ROCm: "
                         "it does nothing here and would force that GPU target on any AMD GPU; unset it")
    elif override is not None:
        forced, archs = gfx_from_override(override), detected_gfx_archs()
        for arch in sorted({a for a in archs if a != forced}):
            warnings_.append(f"HSA_OVERRIDE_GFX_VERSION={override} makes ROCm treat every GPU as {forced}, "
                             f"but this machine has {arch} (override {override_from_gfx(arch)}); a wrong "
                             "override can crash or miscompute: unset it unless this GPU needs it")
    return {"variables": values, "warnings": warnings_}


# --- inventory -------------------------------------------------------------------------------------------


def torch_build() -> dict:
    """Which accelerator stacks this PyTorch was built with, and which it can use now."""
    cuda, hip = torch.version.cuda, torch.version.hip
    label = (f"ROCm/HIP {hip}" if hip else f"CUDA {cuda}" if cuda
             else "MPS" if torch.backends.mps.is_built() else "CPU-only")
    return {"version": torch.__version__, "build": label, "cuda": cuda, "hip": hip,
            "mps_built": torch.backends.mps.is_built(), "mps_available": torch.backends.mps.is_available(),
            "cuda_available": torch.cuda.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_info() -> DeviceInfo:
    """The host CPU: model name, memory (MemTotal), and bf16 (True: computes it; see cpu_native_bf16)."""
    name, memory = "unknown CPU", None
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
        meminfo = Path("/proc/meminfo").read_text().split()
        memory = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024  # reported in kB
    except (OSError, ValueError):
        if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceInfo("cpu", None, name, memory, torch.backends.cpu.get_cpu_capability(), True)


def available_cpu_memory() -> int | None:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable), None where unknown."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split()
        return int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024  # reported in kB
    except (OSError, ValueError):
        return cpu_info().memory_bytes


def memory_budget(device: str) -> int | None:
    """Bytes a training run on `device` may plan for: a GPU's total memory; on the CPU (and MPS, which shares
    host memory) what is available now, since other processes hold the rest."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(int(device.partition(":")[2] or 0)).total_memory
    return available_cpu_memory() if device in ("cpu", "mps") else None


def cpu_cores() -> int:
    """Cores this process may use (affinity and container limits), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def devices() -> list[DeviceInfo]:
    """Every GPU PyTorch sees (CUDA/ROCm or MPS), then the CPU."""
    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            capability = (props.gcnArchName.split(":")[0] if torch.version.hip
                          else f"{props.major}.{props.minor}")
            found.append(DeviceInfo("rocm" if torch.version.hip else "cuda", index, props.name,
                                    props.total_memory, capability, torch.cuda.is_bf16_supported()))
    elif torch.backends.mps.is_available():
        found.append(DeviceInfo("mps", 0, "Apple GPU (MPS)", torch.mps.recommended_max_memory(), None, True))
    return found + [cpu_info()]


def attention_implementations(device: str) -> dict[str, Choice]:
    """transformers' attn_implementation names -> usable ("yes"/"no") with the reason."""
    usable = {"eager": Choice("yes", "plain PyTorch; always works, keeps the [seq, seq] score matrix"),
              "sdpa": Choice("yes", f"torch's scaled_dot_product_attention (torch {torch.__version__})")}
    if importlib.util.find_spec("flash_attn") is None:
        usable["flash_attention_2"] = Choice("no", "the flash_attn package is not installed")
    elif not device.startswith("cuda") or not torch.cuda.is_available():
        usable["flash_attention_2"] = Choice("no", f"flash_attn needs a CUDA/ROCm GPU, not {device}")
    else:
        index = int(device.partition(":")[2] or 0)
        props = torch.cuda.get_device_properties(index)
        arch = props.gcnArchName.split(":")[0] if torch.version.hip else None
        fits = arch in FLASH_ATTENTION_GFX if arch else props.major >= 8
        why = "flash_attn installed; " + ("the GPU supports it" if fits else "needs sm_80+ or MI200/MI300")
        usable["flash_attention_2"] = Choice("yes" if fits else "no", why)
    return usable


def select_attention(requested: str, device: str, dtype: str | None = None) -> Choice:
    """transformers' `attn_implementation` for this device: 'auto' takes plain attention on the CPU and torch's
    fused SDPA elsewhere; a named one is refused where `attention_implementations` says it cannot run, and
    flash_attention_2 where the model computes in `dtype` fp32 (its kernels take only fp16 and bf16)."""
    if requested == "flash_attention_2" and dtype == "fp32":
        raise HardwareError("attention 'flash_attention_2' runs only in fp16 or bf16, and this model computes in "
                            "fp32; use --dtype bf16 (or fp16), or --attention sdpa")
    if requested == "auto":
        if device == "cpu":
            return Choice("eager", "auto: on the CPU plain attention trained 1.1-1.2x faster than SDPA at MedMCQA "
                                   "lengths (bench/README.md); it keeps the score matrix, which the memory plan counts")
        return Choice("sdpa", f"auto: torch's fused scaled_dot_product_attention on {device}")
    usable = attention_implementations(device)
    if requested not in usable:
        raise HardwareError(f"unknown attention {requested!r}; use auto, {', '.join(usable)}")
    if usable[requested].value != "yes":
        raise HardwareError(f"attention {requested!r} cannot run here: {usable[requested].reason}")
    return Choice(requested, "asked for")
