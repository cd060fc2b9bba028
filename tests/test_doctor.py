"""`medtune doctor` on this machine: what it reports is checked against /proc, the planner and a real
bitsandbytes probe; the fallbacks; one memory figure shared with `medtune plan`."""

import json
import re
import sys
from pathlib import Path

import pytest
import transformers

from conftest import run_module_cli
from medtune import doctor
from medtune import plan as planner

CPUINFO = Path("/proc/cpuinfo")
linux_only = pytest.mark.skipif(not CPUINFO.exists(), reason="reads /proc to check the report independently")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_module_cli(doctor, argv, capsys)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> str:
    """A 2-layer Qwen3 config folder: its LoRA plan (~0.7 GiB) fits any machine that runs the tests."""
    folder = tmp_path_factory.mktemp("tiny-config")
    transformers.Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             tie_word_embeddings=True).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def report(tiny_config) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION"):
            patch.delenv(name, raising=False)
        return doctor.collect(tiny_config, "cpu")


def _cpu_flags() -> set[str]:
    """The CPU's flags, read here without medtune."""
    text = CPUINFO.read_text()
    return set(re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE).group(1).split())


def test_json_report_has_the_documented_keys_and_the_asked_device(tiny_config, capsys):
    code, out, _ = _run(["--json", "--device", "cpu", "--model", tiny_config], capsys)
    result = json.loads(out)
    assert code == 0
    assert {"backend", "devices", "bf16", "probe", "recommendation", "torch", "attention", "quantization",
            "environment", "warnings"} <= result.keys()
    assert result["recommendation"]["device"] == {"value": "cpu", "reason": "asked for"}


@linux_only
def test_devices_end_with_the_cpu_its_name_and_memory_from_proc(report):
    name = re.search(r"^model name\s*:\s*(.*)$", CPUINFO.read_text(), re.MULTILINE).group(1).strip()
    total_kb = int(re.search(r"^MemTotal:\s*(\d+) kB$", Path("/proc/meminfo").read_text(), re.MULTILINE).group(1))
    cpu = report["devices"][-1]
    assert (cpu["kind"], cpu["name"], cpu["memory_bytes"]) == ("cpu", name, total_kb * 1024)


@linux_only
def test_bf16_section_and_dtype_recommendation_follow_the_cpu_flags(report):
    native = [flag for flag in ("avx512_bf16", "amx_bf16", "bf16") if flag in _cpu_flags()]
    assert report["bf16"]["cpu_native"] is bool(native) and report["bf16"]["cpu_flags"] == native
    assert report["recommendation"]["dtype"]["value"] == ("bf16" if native else "fp32")


def test_probe_runs_fp32_and_records_what_it_did_with_each_dtype(report):
    results = report["probe"]["results"]
    assert set(results) == {"bf16", "fp16", "fp32"}
    assert results["fp32"]["status"] == "finite" and results["fp32"]["finite_grads"] is True
    assert results["fp32"]["seconds"] > 0 and 0 < results["fp32"]["loss"] < 20  # ~ln(512) = 6.2 for random ids
    assert report["probe"]["architecture"] == "Qwen3"


def test_environment_lists_the_four_variables_and_warns_about_none_unset(report):
    assert report["environment"] == dict.fromkeys(("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                                                   "ROCR_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION"))
    assert not [w for w in report["warnings"] if "VISIBLE" in w or "HSA" in w]


def test_quantization_is_probed_for_real_and_works_on_this_cpu(report):
    quant = report["quantization"]
    assert quant["works"] is True and quant["backend"] == "CPU"
    assert [quant["modes"][mode]["works"] for mode in ("4bit", "8bit")] == [True, True]
    assert quant["modes"]["4bit"]["reason"].endswith("the 4bit matmul probe on cpu matched fp32")
    # the tiny model's 16-bit plan fits, so the recommendation stays 16-bit even though 4-bit works
    assert report["recommendation"]["quantization"] == {"value": "none",
                                                        "reason": "auto: the memory plan says 16-bit LoRA fits"}


def test_quantization_without_bitsandbytes_says_it_is_not_installed(tiny_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    quant = doctor.collect(tiny_config, "cpu")["quantization"]
    assert (quant["installed"], quant["works"]) == (False, False)
    assert quant["reason"] == "bitsandbytes is not installed (pip install bitsandbytes)"


def test_doctor_and_plan_give_one_figure_for_one_setting(report, tiny_config, capsys):
    """The memory check of doctor is `medtune plan --model M --device cpu` with no other option, to the byte,
    and its weights are in the trainer's compute dtype (not fp32 on the CPU)."""
    memory = report["quantization"]["memory_plan"]
    code, out, _ = run_module_cli(planner, ["--model", tiny_config, "--device", "cpu", "--json",
                                            "--device-memory", str(memory["device_memory_bytes"])], capsys)
    planned = json.loads(out)
    assert code == 0
    assert memory["total_bytes"] == planned["total_bytes"]
    dtype = report["recommendation"]["dtype"]["value"]
    assert planned["dtype"] == planned["weights_dtype"] == dtype
    # the tiny Qwen3 has 9,798,016 base parameters (counted by hand in test_plan.py), all in the compute dtype
    assert planned["breakdown"]["weights"] == {"bf16": 2, "fp32": 4}[dtype] * 9_798_016
    assert memory["setting"] == f"LoRA r=16, {dtype} weights and compute, batch 4 x 512 tokens, cpu"


def test_text_report_ends_with_the_recommendation(report):
    lines = doctor.format_report(report).splitlines()
    assert lines[-4] == "Recommendation:"
    assert [line.split()[0] for line in lines[-3:]] == ["device", "dtype", "quantization"]


def test_unknown_model_falls_back_to_a_built_in_config_and_says_so(tmp_path):
    config, source, note = doctor.probe_config(str(tmp_path / "no-such-model"))
    assert type(config).__name__ == "LlamaConfig" and source is None
    assert "built-in 2-layer Llama" in note


def test_unavailable_device_is_a_sentence_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, out, err = _run(["--device", "cuda:0"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --device cuda:0 was asked for")
