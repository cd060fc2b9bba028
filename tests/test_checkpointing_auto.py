"""`gradient_checkpointing: auto`: the memory plan picks off / every n-th decoder layer / every layer / QLoRA, the
user's explicit settings win, `medtune plan` and the manifest show the decision, and partial checkpointing leaves
the losses unchanged."""

import dataclasses
import json
import sys

import pytest

from conftest import original_row, run_module_cli, write_jsonl
from medtune import plan as planner
from medtune.config import TrainConfig
from medtune.modeling import enable_checkpointing
from medtune.plan import PlanInput, checkpointed_layers, choose_memory
from medtune.train import train

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
trainer = sys.modules["medtune.train"]
LAYERS = 8


@pytest.fixture(scope="module")
def eight_layers(tmp_path_factory) -> str:
    """An 8-layer Qwen3 config with a small vocabulary, so the decoder (not the embedding) dominates memory."""
    from transformers import Qwen3Config

    folder = tmp_path_factory.mktemp("eight-layers")
    Qwen3Config(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=LAYERS,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64).save_pretrained(folder)
    return str(folder / "config.json")


def _setting(model: str, budget: int | None = None) -> PlanInput:
    return PlanInput(model=model, device="cuda", batch_size=8, seq_len=512, device_memory_bytes=budget)


def _total(model: str, every: int, method: str = "lora") -> int:
    return planner._plan(PlanInput(model=model, device="cuda", batch_size=8, seq_len=512, method=method,
                                   gradient_checkpointing=every)).total


def test_partial_checkpointing_keeps_activations_between_off_and_every_layer(eight_layers):
    totals = [_total(eight_layers, every) for every in (0, 4, 2, 1)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    assert [checkpointed_layers(LAYERS, n) for n in (0, 1, 2, 3, 7, 8)] == [0, 8, 4, 3, 2, 1]


# budget (from the plans' own totals) -> (checkpoint every n, quantization, words the reason must hold)
DECISIONS = [
    ("fits", lambda m: _total(m, 0), (0, "none", "with checkpointing off fits")),
    # 2 of 8 layers checkpointed: n = 4..7 all do that, and the largest n is chosen (the same memory)
    ("partial", lambda m: _total(m, 4), (7, "none", "every 7th decoder layer fits")),
    ("partial, half", lambda m: _total(m, 2), (2, "none", "every 2nd decoder layer fits")),
    ("full", lambda m: _total(m, 1), (1, "none", "every decoder layer fits")),
    ("quantize", lambda m: _total(m, 1, "qlora"), (1, "4bit", "4bit QLoRA with checkpointing every decoder layer")),
    ("nothing fits", lambda m: 1, (1, "4bit", "nothing tried fits")),
]


@pytest.mark.parametrize(("case", "budget", "expected"), DECISIONS, ids=[case[0] for case in DECISIONS])
def test_auto_decides_from_the_memory_plan(eight_layers, case, budget, expected):
    decision = choose_memory(_setting(eight_layers, budget(eight_layers)))
    every, quantization, words = expected
    assert (decision.checkpointing, decision.quantization) == (every, quantization)
    assert decision.reason.startswith("auto: ") and words in decision.reason
    assert decision.plan.fits is (case != "nothing fits")


def test_without_a_budget_auto_keeps_checkpointing_off(eight_layers):
    decision = choose_memory(_setting(eight_layers))
    assert (decision.checkpointing, decision.quantization, decision.plan.fits) == (0, "none", None)
    assert "no memory budget" in decision.reason


@pytest.mark.parametrize(("checkpointing", "quantize", "expected"), [
    (False, "auto", (0, "4bit")),  # checkpointing off as asked: only quantization is left to try
    (3, "none", (3, "none")),  # both given: the plan only says whether they fit
    ("auto", "none", (1, "none")),  # no QLoRA: every layer is the leanest that is allowed
    (True, "8bit", (1, "8bit")),
])
def test_explicit_settings_win_and_the_plan_states_whether_they_fit(eight_layers, checkpointing, quantize, expected):
    decision = choose_memory(_setting(eight_layers, budget=1), checkpointing, quantize)
    assert (decision.checkpointing, decision.quantization) == expected
    assert decision.plan.fits is False
    assert ("does not fit" if "auto" not in (checkpointing, quantize) else "nothing tried fits") in decision.reason


def test_explicit_setting_that_fits_says_so(eight_layers):
    decision = choose_memory(_setting(eight_layers, budget=10**12), 2, "none")
    assert decision.checkpointing == 2 and decision.plan.fits is True
    assert decision.reason.startswith("as asked: the memory plan says bf16 LoRA with checkpointing every 2nd")


def test_plan_shows_the_decision_and_its_reason(eight_layers, capsys):
    budget = str(_total(eight_layers, 2))
    argv = ["--model", eight_layers, "--device", "cuda", "--dtype", "bf16", "--batch-size", "8", "--seq-len", "512",
            "--memory-budget", budget]
    code, out, _ = run_module_cli(planner, argv, capsys)
    assert code == 0
    assert "checkpointing every 2nd decoder layer" in out.splitlines()[1]  # the table plans the chosen setting
    assert "decision: checkpointing every 2nd decoder layer, quantization none" in out
    assert "reason: auto: the memory plan says bf16 LoRA with checkpointing off needs" in out
    code, out, _ = run_module_cli(planner, [*argv, "--json"], capsys)
    result = json.loads(out)
    assert result["gradient_checkpointing"] == result["decision"]["gradient_checkpointing"] == 2
    assert result["decision"]["reason"] == choose_memory(_setting(eight_layers, int(budget))).reason


def test_plan_respects_an_explicit_checkpointing_option(eight_layers, capsys):
    code, out, _ = run_module_cli(planner, ["--model", eight_layers, "--device", "cuda", "--memory-budget", "1MB",
                                            "--method", "lora", "--gradient-checkpointing", "false", "--json"], capsys)
    decision = json.loads(out)["decision"]
    assert code == 0 and (decision["gradient_checkpointing"], decision["quantization"], decision["fits"]) == (
        0, "none", False)
    assert decision["reason"].startswith("as asked: the memory plan says bf16 LoRA with checkpointing off does not")


# ------------------------------------------------------------------ the trainer applies and records the decision


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(16)])


def _config(model, data, output, **changes) -> TrainConfig:
    values = dict(model=str(model), data=str(data), output=str(output), max_steps=4, batch_size=4, grad_accum=1,
                  dev_size=0, calibration_size=0, eval_every=0, save_every=0, learning_rate=5e-3,
                  lora_dropout=0.1, device="cpu", dtype="fp32", quantize="none")
    return TrainConfig(**(values | changes))


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_enable_checkpointing_marks_every_nth_decoder_layer(tiny_qwen3):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    enable_checkpointing(model, 2)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, False]


def test_partial_checkpointing_gives_the_same_losses_in_fp32(tiny_qwen3, data, tmp_path, monkeypatch):
    applied = []
    monkeypatch.setattr(trainer, "enable_checkpointing", lambda model, every: (
        applied.append(every), enable_checkpointing(model, every)))
    plain = train(_config(tiny_qwen3, data, tmp_path / "plain", gradient_checkpointing=False), progress=False)
    partial = train(_config(tiny_qwen3, data, tmp_path / "partial", gradient_checkpointing=2), progress=False)
    assert applied == [2]  # the second run checkpointed layer 0 of 2, the first nothing
    # fp32, same seed; with dropout on, non-reentrant checkpointing replays the same masks. Recompute repeats the
    # same kernels, so the only differences are summation order: equal within 1e-5.
    assert _losses(partial.root) == pytest.approx(_losses(plain.root), abs=1e-5)
    manifest = json.loads(partial.manifest.read_text())
    assert (manifest["gradient_checkpointing"], manifest["gradient_checkpointing_reason"][:10]) == (2, "as asked: ")


def test_the_manifest_records_the_auto_choice_and_its_reason(tiny_qwen3, data, tmp_path):
    config = _config(tiny_qwen3, data, tmp_path / "auto")
    assert config.gradient_checkpointing == "auto"  # the default
    # the trainer's own plan inputs for this run, and a budget that only checkpointing every layer meets (with 2
    # layers, checkpointing one of them saves nothing: its recompute needs what it freed)
    inp = planner.input_from_config(config.to_dict(), "fp32", "cpu", attention="eager")
    budget = planner._plan(dataclasses.replace(inp, gradient_checkpointing=1)).total
    assert planner._plan(inp).total > budget
    run = train(dataclasses.replace(config, memory_budget=str(budget)), progress=False)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["gradient_checkpointing"] == 1
    reason = choose_memory(dataclasses.replace(inp, device_memory_bytes=budget), "auto", "none").reason
    assert manifest["gradient_checkpointing_reason"] == reason
    assert "fp32 LoRA with checkpointing every decoder layer fits" in reason
    assert planner.input_from_run(run.root).gradient_checkpointing == 1  # `plan --from-run` plans what ran


def test_train_memory_budget_option_reaches_the_config(tmp_path, monkeypatch):
    from medtune.cli import main

    seen = []
    monkeypatch.setattr(trainer, "train", lambda config, progress: seen.append(config))
    assert main(["train", "--output", str(tmp_path / "run"), "--memory-budget", "6GB"]) == 0
    assert (seen[0].memory_budget, seen[0].gradient_checkpointing) == ("6GB", "auto")
