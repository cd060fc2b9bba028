"""`medtune doctor` on this machine: the JSON keys and types, the text report's ending, the fallbacks."""

import json

import pytest

from conftest import run_module_cli
from medtune import doctor
from medtune.device import Probe


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_module_cli(doctor, argv, capsys)


@pytest.fixture(scope="module")
def report() -> dict:
    return doctor.collect()


def test_json_has_the_documented_keys(capsys):
    code, out, _ = _run(["--json", "--device", "cpu"], capsys)
    result = json.loads(out)
    assert code == 0
    assert {"backend", "devices", "bf16", "probe", "recommendation", "torch", "attention", "quantization",
            "environment", "warnings"} <= result.keys()
    assert result["backend"] in ("cpu", "cuda", "rocm", "mps")
    assert result["recommendation"].keys() == {"device", "dtype", "quantization"}
    assert all(isinstance(c["value"], str) and c["reason"] for c in result["recommendation"].values())


def test_devices_end_with_the_cpu_and_its_memory(report):
    cpu = report["devices"][-1]
    assert cpu["kind"] == "cpu" and isinstance(cpu["name"], str) and cpu["memory_bytes"] > 2**30


def test_bf16_and_probe_sections_have_their_types(report):
    assert isinstance(report["bf16"]["cpu_native"], bool) and isinstance(report["bf16"]["cpu_flags"], list)
    results = report["probe"]["results"]
    assert set(results) == {"bf16", "fp16", "fp32"}
    statuses = {Probe(**value).status for value in results.values()}
    assert statuses <= {"finite", "non-finite", "unsupported", "error"}
    assert results["fp32"]["status"] == "finite" and isinstance(results["fp32"]["seconds"], float)


def test_environment_lists_the_four_variables(report):
    assert set(report["environment"]) == {"CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                                          "ROCR_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION"}
    assert isinstance(report["warnings"], list)


def test_cpu_recommendation_never_quantizes(report):
    if report["recommendation"]["device"]["value"] != "cpu":
        pytest.skip("this machine has a GPU")
    assert report["recommendation"]["quantization"]["value"] == "none"
    assert report["quantization"]["works"] is False


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
