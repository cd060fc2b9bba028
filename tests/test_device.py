"""medtune.device: explicit requests fail with sentences, automatic choices carry reasons and evidence."""

import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from medtune import device as hw
from medtune.device import HardwareError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_LLAMA = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def rocm_gpu(monkeypatch):
    """A pretend ROCm build with one visible GPU (only what device.py asks torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")


@pytest.mark.parametrize(("call", "sentence"), [
    (lambda: hw.select_device("cuda"), "sees no CUDA/ROCm GPU"),
    (lambda: hw.select_device("cuda:1"), "sees no CUDA/ROCm GPU"),
    (lambda: hw.select_device("mps"), "MPS is not available"),
    (lambda: hw.select_device("tpu"), "unknown device 'tpu'"),
    (lambda: hw.select_dtype("fp8", "cpu"), "unknown dtype 'fp8'"),
    (lambda: hw.select_quantization("8bit", "mps"), "--quantize 8bit was asked for, but"),
    (lambda: hw.select_quantization("3bit", "cpu"), "unknown quantization '3bit'"),
])
def test_impossible_explicit_requests_fail_with_a_sentence(no_gpu, call, sentence):
    with pytest.raises(HardwareError, match=sentence):
        call()


def test_cpu_native_bf16_agrees_with_torch_own_check():
    x86 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if not sys.platform.startswith("linux") or not x86:
        pytest.skip("x86 Linux only: elsewhere the flags come from other sources")
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert hw.cpu_native_bf16() == expected


@pytest.mark.parametrize(("cpuinfo", "flags"), [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n", ["avx512_bf16", "amx_bf16"]),
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n", []),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", ["bf16"]),  # Arm's BF16 extension
])
def test_cpu_bf16_flags_are_read_from_cpuinfo(cpuinfo, flags):
    assert hw.cpu_bf16_flags(cpuinfo) == flags


@pytest.mark.parametrize(("flags", "value", "reason"), [
    (["avx512_bf16"], "bf16", "auto: the CPU has native bf16 (avx512_bf16), bf16 weights under autocast "
                              "(no numeric probe run)"),
    ([], "fp32", "auto: fp32 because the CPU lacks native bf16 (emulated bf16 is slower than fp32)"),
])
def test_auto_dtype_on_the_cpu_follows_native_bf16(monkeypatch, flags, value, reason):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: flags)
    assert hw.select_dtype("auto", "cpu") == hw.Choice(value, reason)


def test_auto_dtype_avoids_emulated_bf16_on_the_cpu(monkeypatch):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: [])
    choice = hw.select_dtype("auto", "cpu", TINY_LLAMA)
    assert choice.value == "fp32" and "lacks native bf16" in choice.reason


def test_explicit_bf16_on_a_cpu_without_native_bf16_says_it_is_emulated(monkeypatch):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: [])
    assert hw.select_dtype("bf16", "cpu").reason == "asked for (emulated on this CPU: slower than fp32)"


def test_auto_dtype_with_a_finite_probe_cites_it(monkeypatch):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    choice = hw.select_dtype("auto", "cpu", TINY_LLAMA)
    assert choice.value == "bf16" and "probe step finite" in choice.reason


def _inject_inf(model, input_ids):
    loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    return loss * float("inf")


def test_probe_marks_an_injected_inf_as_not_finite(monkeypatch):
    monkeypatch.setattr(hw, "_probe_loss", _inject_inf)
    probe = hw.probe_dtypes(TINY_LLAMA, "cpu", ("fp32",))["fp32"]
    assert probe.status == "non-finite" and not probe.finite
    assert probe.finite_loss is False and probe.seconds is not None


def test_auto_dtype_passes_over_a_non_finite_probe(monkeypatch):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(hw, "_probe_loss", _inject_inf)
    choice = hw.select_dtype("auto", "cpu", TINY_LLAMA)
    assert choice.value == "fp32"
    assert "bf16 (probe non-finite" in choice.reason


def test_probe_records_an_error_per_dtype_and_goes_on(monkeypatch):
    def fail_in_bf16(model, input_ids):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no kernel for this dtype")
        return model(input_ids=input_ids, labels=input_ids).loss

    monkeypatch.setattr(hw, "_probe_loss", fail_in_bf16)
    probes = hw.probe_dtypes(TINY_LLAMA, "cpu")
    assert probes["bf16"].status == "error"
    assert probes["bf16"].error == "RuntimeError: no kernel for this dtype"
    assert probes["fp16"].status == "unsupported"
    assert probes["fp32"].finite


def test_probe_model_keeps_the_architecture_at_two_layers():
    config = AutoConfig.from_pretrained(SHARED / "models" / "qwen3-1.7b-config")
    small = hw._shrunk_config(config)
    assert type(small) is type(config)
    assert (small.num_hidden_layers, small.hidden_size, small.vocab_size) == (2, 64, 512)
    assert small.num_key_value_heads < small.num_attention_heads  # grouped-query attention stays grouped


@pytest.mark.parametrize(("device", "chain"), [("cpu", ["bf16", "fp32", None]),
                                               ("cuda", ["bf16", "fp16", "fp32", None])])
def test_next_safer_dtype_chain(monkeypatch, device, chain):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda")
    steps = [chain[0]]
    while steps[-1] is not None:
        steps.append(hw.next_safer_dtype(steps[-1], device))
    assert steps == chain


@pytest.mark.parametrize(("override", "gfx"), [("9.4.2", "gfx942"), ("9.0.10", "gfx90a"),
                                               ("11.0.0", "gfx1100"), ("10.3.0", "gfx1030")])
def test_gfx_names_and_override_versions_map_both_ways(override, gfx):
    assert hw.gfx_from_override(override) == gfx
    assert hw.override_from_gfx(gfx + ":sramecc+:xnack-") == override


def test_contradictory_hsa_override_is_warned_about(monkeypatch, rocm_gpu):
    monkeypatch.setenv("HSA_OVERRIDE_GFX_VERSION", "10.3.0")
    monkeypatch.setattr(hw, "detected_gfx_archs", lambda: ["gfx942"])
    report = hw.environment_report()
    assert report["variables"]["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0"
    assert len(report["warnings"]) == 1
    assert "as gfx1030, but this machine has gfx942 (override 9.4.2)" in report["warnings"][0]


def test_matching_hsa_override_is_not_warned_about(monkeypatch, rocm_gpu):
    monkeypatch.setenv("HSA_OVERRIDE_GFX_VERSION", "9.4.2")
    monkeypatch.setattr(hw, "detected_gfx_archs", lambda: ["gfx942", "gfx942"])
    assert hw.environment_report()["warnings"] == []


def test_hsa_override_on_a_non_rocm_build_is_warned_about(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setenv("HSA_OVERRIDE_GFX_VERSION", "11.0.0")
    assert "this PyTorch build is not ROCm" in hw.environment_report()["warnings"][0]


def test_visible_devices_are_set_only_when_asked(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    assert hw.apply_visible_devices() == {}
    assert "CUDA_VISIBLE_DEVICES" not in hw.os.environ
    hw.apply_visible_devices(hip_visible="1")
    assert hw.os.environ["HIP_VISIBLE_DEVICES"] == "1" and "CUDA_VISIBLE_DEVICES" not in hw.os.environ


def test_visible_devices_are_refused_after_cuda_initialized(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    hw.apply_visible_devices(cuda_visible="0")  # already in place: nothing to change
    with pytest.raises(HardwareError, match="already initialized CUDA/HIP"):
        hw.apply_visible_devices(cuda_visible="1")


def _fake_bitsandbytes(monkeypatch, backend: str, loaded: bool = True):
    """A pretend bitsandbytes build on a pretend GPU. There is no GPU here to run the matmul probe on, so these
    tests (of the build checks before the probe) also report the probe as passing."""
    monkeypatch.setattr(hw, "_bitsandbytes", lambda: ("0.45.5", backend, loaded))
    monkeypatch.setattr(hw, "_quantized_matmul_error", lambda device, mode: None)


@pytest.fixture
def without_bitsandbytes(monkeypatch):
    """bitsandbytes made unimportable the way an environment without it is: `import bitsandbytes` fails."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


@pytest.fixture
def fresh_probe():
    hw._quantized_matmul_error.cache_clear()
    yield
    hw._quantized_matmul_error.cache_clear()


def test_bitsandbytes_4bit_and_8bit_matmuls_work_on_this_cpu(fresh_probe):
    """bitsandbytes' CPU backend computes NF4 and LLM.int8 matmuls: the probe runs them for real."""
    status = hw.bitsandbytes_status("cpu")
    assert status["installed"] and status["backend"] == "CPU"
    assert status["works"] is True
    assert status["modes"]["4bit"]["reason"].endswith("the 4bit matmul probe on cpu matched fp32")
    assert status["modes"]["8bit"] == {"works": True, "reason": f"bitsandbytes {status['version']} (CPU library): "
                                                                "the 8bit matmul probe on cpu matched fp32"}
    assert hw.select_quantization("4bit", "cpu").value == "4bit"
    assert hw.select_quantization("8bit", "cpu").value == "8bit"


def test_a_4bit_matmul_that_computes_wrong_is_reported_with_its_error(monkeypatch, fresh_probe):
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes.nn.Linear4bit, "forward", lambda self, x: torch.zeros(x.shape[0], 128))
    status = hw.bitsandbytes_status("cpu")
    assert status["works"] is False and status["modes"]["8bit"]["works"] is True
    assert status["reason"].endswith("the 4-bit matmul on cpu is off by 1 from its own de-quantized weight")
    with pytest.raises(HardwareError, match="--quantize 4bit was asked for, but .* is off by 1"):
        hw.select_quantization("4bit", "cpu")


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_quantization_is_refused_with_a_sentence_without_bitsandbytes(without_bitsandbytes, mode):
    with pytest.raises(HardwareError) as caught:
        hw.select_quantization(mode, "cpu")
    assert str(caught.value) == (f"--quantize {mode} was asked for, but bitsandbytes is not installed "
                                 "(pip install bitsandbytes); use --quantize none (16-bit LoRA)")


def test_quantization_auto_stays_16bit_when_the_plan_fits():
    assert hw.select_quantization("auto", "cpu", fits_16bit=True) == hw.Choice(
        "none", "auto: the memory plan says 16-bit LoRA fits")
    assert hw.select_quantization("auto", "cpu", fits_16bit=None).value == "none"


def test_quantization_auto_quantizes_on_this_cpu_when_16bit_does_not_fit():
    choice = hw.select_quantization("auto", "cpu", fits_16bit=False)
    assert choice.value == "4bit" and choice.reason.startswith("auto: the memory plan says 16-bit LoRA does not fit")


def test_quantization_auto_falls_back_with_a_reason_without_bitsandbytes(without_bitsandbytes):
    choice = hw.select_quantization("auto", "cpu", fits_16bit=False)
    assert choice == hw.Choice("none", "auto: the memory plan says 16-bit LoRA does not fit, but quantization is "
                                       "unavailable (bitsandbytes is not installed (pip install bitsandbytes)); "
                                       "lower the batch size or enable checkpointing")


def test_quantization_auto_quantizes_when_16bit_does_not_fit_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    _fake_bitsandbytes(monkeypatch, "CUDA")
    assert hw.select_quantization("auto", "cuda", fits_16bit=False).value == "4bit"
    assert hw.select_quantization("8bit", "cuda").value == "8bit"


def test_rocm_needs_a_rocm_build_of_bitsandbytes(monkeypatch, rocm_gpu):
    _fake_bitsandbytes(monkeypatch, "CUDA")
    with pytest.raises(HardwareError, match="loaded no ROCm/HIP library"):
        hw.select_quantization("4bit", "cuda")
    assert hw.select_quantization("auto", "cuda", fits_16bit=False).value == "none"
    _fake_bitsandbytes(monkeypatch, "ROCm")
    assert hw.select_quantization("4bit", "cuda").value == "4bit"


def test_bitsandbytes_whose_native_library_failed_does_not_work(monkeypatch, rocm_gpu):
    _fake_bitsandbytes(monkeypatch, "ROCm", loaded=False)
    assert hw.bitsandbytes_status("cuda")["works"] is False


def test_bitsandbytes_cextension_is_read_for_its_backend(monkeypatch):
    """The real import path, against a stand-in package exposing what bitsandbytes' cextension does."""
    package = types.ModuleType("bitsandbytes")
    package.__version__ = "0.45.5"
    cextension = types.ModuleType("bitsandbytes.cextension")
    cextension.BNB_BACKEND, cextension.lib = "ROCm", type("ErrorHandlerMockBNBNativeLibrary", (), {})()
    package.cextension = cextension
    monkeypatch.setitem(sys.modules, "bitsandbytes", package)
    monkeypatch.setitem(sys.modules, "bitsandbytes.cextension", cextension)
    assert hw._bitsandbytes() == ("0.45.5", "ROCm", False)


def test_inventory_lists_the_cpu_with_its_memory():
    cpu = hw.devices()[-1]
    assert cpu.kind == "cpu" and cpu.memory_bytes > 2**30 and cpu.bf16
    assert hw.attention_implementations("cpu")["sdpa"].value == "yes"


def test_auto_attention_is_eager_on_the_cpu_and_sdpa_on_gpus():
    assert hw.select_attention("auto", "cpu").value == "eager"
    assert hw.select_attention("auto", "cuda:0").value == "sdpa"
    assert hw.select_attention("auto", "mps").value == "sdpa"


def test_explicit_attention_is_checked_against_what_can_run(no_gpu):
    assert hw.select_attention("sdpa", "cpu") == hw.Choice("sdpa", "asked for")
    with pytest.raises(hw.HardwareError, match="unknown attention 'flash'"):
        hw.select_attention("flash", "cpu")
    with pytest.raises(hw.HardwareError, match="'flash_attention_2' cannot run here"):
        hw.select_attention("flash_attention_2", "cpu")


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_flash_attention_is_refused_for_an_fp32_model(device):
    with pytest.raises(hw.HardwareError) as caught:
        hw.select_attention("flash_attention_2", device, "fp32")
    assert str(caught.value) == ("attention 'flash_attention_2' runs only in fp16 or bf16, and this model computes "
                                 "in fp32; use --dtype bf16 (or fp16), or --attention sdpa")
