"""The training loop's contract: the loss it optimizes, how steps are batched, precision, resume, and the run
folder's bookkeeping. Each test trains the tiny random Qwen3 on the CPU for a few steps."""

import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import original_row, write_jsonl
from medtune.cli import main
from medtune.config import TrainConfig
from medtune.device import HardwareError
from medtune.parallel import micro_batches, pin_device
from medtune.train import AnswerLoss, train

trainer = sys.modules["medtune.train"]  # the module; `medtune.train` is also the function's public name


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(24)])


def _config(model, data, output, **changes) -> TrainConfig:
    values = dict(model=str(model), data=str(data), output=str(output), max_steps=4, batch_size=4, grad_accum=1,
                  dev_size=0, eval_every=0, save_every=0, learning_rate=5e-3, lora_dropout=0.0, device="cpu",
                  dtype="fp32")
    return TrainConfig(**(values | changes))


def _adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _interrupt_at(monkeypatch, step: int) -> None:
    """Raise KeyboardInterrupt (as Ctrl-C would) when the loop starts optimizer step `step` (0-based)."""
    real = trainer.learning_rate

    def schedule(current, *args):
        if current == step:
            raise KeyboardInterrupt
        return real(current, *args)

    monkeypatch.setattr(trainer, "learning_rate", schedule)


# ------------------------------------------------------------------ the loss and the batching


def test_answer_loss_equals_hugging_face_shifted_cross_entropy(tiny_qwen3):
    from transformers import AutoModelForCausalLM

    from medtune.modeling import add_lora

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_qwen3), 4, 8, 0.0, "all-linear")
    torch.manual_seed(0)
    input_ids = torch.randint(0, 1000, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # right padding, as collate() makes it
    labels = input_ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[1, 9:] = -100
    loss_sum, n = AnswerLoss(model)(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    reference = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss  # mean over labels
    assert int(n) == 7 + 4  # labels 5..11 of row 0 and 5..8 of row 1, each predicted from the position before
    torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=1e-6)


def test_micro_batches_give_every_process_the_same_count():
    lengths = [10, 30, 20, 40, 50]
    assert micro_batches([0, 1, 2, 3, 4], 0, 1, 2, lengths) == [[0, 2], [1, 3], [4]]  # shortest first
    # 1 row, 2 processes: rank 1 gets a weightless stand-in instead of nothing
    assert micro_batches([3], 0, 2, 2, lengths) == [[3]]
    assert micro_batches([3], 1, 2, 2, lengths) == [[]]
    # 5 rows, 2 processes, micro-batch 2: rank 0 has 3 rows (2 micro-batches), rank 1 has 2 (1, then a stand-in)
    assert micro_batches([0, 1, 2, 3, 4], 1, 2, 2, lengths) == [[1, 3], []]


def test_batch_4_with_accumulation_2_matches_batch_8(tiny_qwen3, data, tmp_path):
    train(_config(tiny_qwen3, data, tmp_path / "accumulated", batch_size=4, grad_accum=2, max_steps=3),
          progress=False)
    train(_config(tiny_qwen3, data, tmp_path / "whole", batch_size=8, grad_accum=1, max_steps=3), progress=False)
    accumulated, whole = _adapter(tmp_path / "accumulated"), _adapter(tmp_path / "whole")
    assert any(t.abs().sum() > 0 for name, t in whole.items() if "lora_B" in name)
    # fp32; the two differ only in summation order, which Adam's division by the gradient's own size amplifies
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=2e-5, msg=name)


def test_training_lowers_the_loss_on_its_own_rows(tiny_qwen3, data, tmp_path):
    run = train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=12, batch_size=24, learning_rate=1e-2),
                progress=False)
    losses = [record["loss"] for record in _records(run.root)]  # every step sees all 24 rows
    assert losses[-1] < 0.8 * losses[0], losses


# ------------------------------------------------------------------ precision


def test_fp16_with_loss_scaling_trains_on_the_cpu(tiny_qwen3, data, tmp_path):
    run = train(_config(tiny_qwen3, data, tmp_path / "run", dtype="fp16"), progress=False)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["dtype"] == manifest["final_dtype"] == "fp16"
    records = _records(run.root)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss_scale"] > 1 for r in records)
    assert any(t.abs().sum() > 0 for name, t in _adapter(run.root).items() if "lora_B" in name)


def test_fp16_overflow_halves_the_loss_scale_and_skips_the_update(tiny_qwen3, data, tmp_path, monkeypatch):
    real, calls = AnswerLoss.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        loss_sum, n = real(self, *args, **kwargs)
        return (loss_sum * 1e30 if calls["n"] == 2 else loss_sum), n  # finite in fp32, inf once scaled

    monkeypatch.setattr(AnswerLoss, "forward", forward)
    run = train(_config(tiny_qwen3, data, tmp_path / "run", dtype="fp16"), progress=False)
    records = _records(run.root)
    assert [r["overflow"] for r in records] == [False, True, False, False]  # step 2's update was skipped
    assert records[1]["loss_scale"] == records[0]["loss_scale"] / 2  # GradScaler's backoff factor


def test_accelerate_mixed_precision_setting_adds_no_second_autocast(tiny_qwen3, data, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # as in a fresh `accelerate launch` process
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    seen, real = [], AnswerLoss.forward

    def forward(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AnswerLoss, "forward", forward)
    try:
        run = train(_config(tiny_qwen3, data, tmp_path / "run", dtype="fp32", max_steps=2), progress=False)
    finally:
        AcceleratorState._reset_state(True)
    assert seen and not any(seen)  # fp32 as the manifest says, not accelerate's bf16 autocast
    assert json.loads(run.manifest.read_text())["final_dtype"] == "fp32"


# ------------------------------------------------------------------ devices


def test_a_device_index_becomes_the_current_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    pin_device("cuda:1", world=1)
    pin_device("cuda", world=1)  # no index: the current device stays
    assert chosen == [1]


def test_a_device_index_with_several_processes_is_refused():
    with pytest.raises(HardwareError, match="--device cuda:1 names one GPU, but 2 processes .* CUDA_VISIBLE_DEVICES"):
        pin_device("cuda:1", world=2)


# ------------------------------------------------------------------ resume and the run folder


def test_resumed_fp16_run_continues_with_its_loss_scale(tiny_qwen3, data, tmp_path, monkeypatch):
    train(_config(tiny_qwen3, data, tmp_path / "full", dtype="fp16", save_every=2), progress=False)
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(_config(tiny_qwen3, data, tmp_path / "cut", dtype="fp16", save_every=2), progress=False)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["precision"]["dtype"] == "fp16" and state["precision"]["scaler"]["scale"] > 1
    train(_config(tiny_qwen3, data, tmp_path / "cut", dtype="fp16", save_every=2, resume=True), progress=False)
    assert _records(tmp_path / "cut") == [
        {**r, "tokens_per_second": c["tokens_per_second"]} for r, c in zip(_records(tmp_path / "full"),
                                                                           _records(tmp_path / "cut"))]
    full, resumed = _adapter(tmp_path / "full"), _adapter(tmp_path / "cut")
    assert all(torch.equal(full[name], resumed[name]) for name in full)


def test_a_run_that_fell_back_to_fp32_resumes_in_fp32(tiny_qwen3, data, tmp_path, monkeypatch):
    real = AnswerLoss.forward

    def forward(self, *args, **kwargs):  # non-finite whenever bf16 autocast is on: the run must fall back
        loss_sum, n = real(self, *args, **kwargs)
        return (loss_sum * math.inf if torch.is_autocast_enabled("cpu") else loss_sum), n

    monkeypatch.setattr(AnswerLoss, "forward", forward)
    settings = dict(dtype="bf16", nonfinite_patience=1, save_every=2, max_steps=4)
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(_config(tiny_qwen3, data, tmp_path / "run", **settings), progress=False)
    run = train(_config(tiny_qwen3, data, tmp_path / "run", resume=True, **settings), progress=False)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["final_dtype"] == "fp32"
    assert manifest["training"]["nonfinite_guard"]["skipped_steps"] == 0  # no bf16 step was tried after resume
    assert {r["dtype"] for r in _records(run.root)} == {"fp32"}


def test_checkpoints_hold_every_gpu_generator(monkeypatch):
    from medtune import checkpoints

    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    tensors = checkpoints._rng_tensors()
    assert set(tensors) == {"torch_rng", "cuda_rng.0", "cuda_rng.1"}
    checkpoints._set_rng(dict(tensors))
    assert [t.tolist() for t in restored] == [[1, 2], [3, 4]]


def test_an_interrupted_run_is_not_started_over(tiny_qwen3, data, tmp_path, monkeypatch, capsys):
    output = tmp_path / "run"
    arguments = ["train", "--model", str(tiny_qwen3), "--data", str(data), "--output", str(output), "--quiet",
                 "--max-steps", "4", "--dtype", "fp32", "save_every=2", "batch_size=4", "grad_accum=1", "dev_size=0"]
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        assert main(arguments) == 130
    assert f"Continue with: medtune train --output {output} --resume" in capsys.readouterr().err
    assert main(arguments) == 2  # the same command again refuses, and keeps the checkpoint
    assert "--resume" in capsys.readouterr().err and (output / "checkpoints" / "step-0000002").is_dir()
    assert main([*arguments, "--overwrite"]) == 0  # asked for: a fresh run
    assert [r["step"] for r in _records(output)] == [1, 2, 3, 4]


def test_resume_takes_the_runs_saved_settings(tiny_qwen3, data, tmp_path, monkeypatch):
    output = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        assert main(["train", "--model", str(tiny_qwen3), "--data", str(data), "--output", str(output), "--quiet",
                     "--max-steps", "4", "--dtype", "fp32", "save_every=2", "lora_r=4", "batch_size=4",
                     "grad_accum=1", "dev_size=0"]) == 130
    assert main(["train", "--output", str(output), "--resume", "--quiet"]) == 0  # nothing else given
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["base_model"]["id"] == str(tiny_qwen3) and manifest["training"]["steps"] == 4
    assert json.loads((output / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_a_finished_run_is_not_replaced_without_overwrite(tiny_qwen3, data, tmp_path):
    train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=1), progress=False)
    with pytest.raises(FileExistsError, match="finished run; choose another --output, or pass --overwrite"):
        train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=1), progress=False)


def test_early_stopping_keeps_the_best_adapter(tiny_qwen3, data, tmp_path, monkeypatch):
    accuracies = iter([0.25, 0.75, 0.5, 0.25])
    monkeypatch.setattr(trainer, "_dev_accuracy", lambda *args: next(accuracies))
    run = train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=8, eval_every=1, save_every=2,
                        early_stopping_patience=2), progress=False)
    manifest = json.loads(run.manifest.read_text())
    assert manifest["training"]["steps"] == 4 and manifest["training"]["adapter_step"] == 2
    at_step_2 = load_file(run.checkpoints / "step-0000002" / "adapter.safetensors")
    saved = _adapter(run.root)
    assert sorted(at_step_2) == sorted(saved)
    assert all(torch.equal(at_step_2[name], saved[name]) for name in saved)


def test_a_rollback_logs_each_step_once(tiny_qwen3, data, tmp_path, monkeypatch):
    real, calls = AnswerLoss.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        loss_sum, n = real(self, *args, **kwargs)
        return (loss_sum * math.inf if calls["n"] in (4, 5) else loss_sum), n

    monkeypatch.setattr(AnswerLoss, "forward", forward)
    run = train(_config(tiny_qwen3, data, tmp_path / "run", dtype="bf16", nonfinite_patience=2, save_every=2,
                        max_steps=5), progress=False)
    assert [r["step"] for r in _records(run.root)] == [1, 2, 3, 4, 5]  # 3 was logged, rolled back, re-done


def test_no_dev_slice_writes_null_not_nan(tiny_qwen3, data, tmp_path):
    run = train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=2, eval_every=1), progress=False)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    for path in (run.metrics, run.report, run.manifest):
        for line in ([path.read_text()] if path.suffix == ".json" else path.read_text().splitlines()):
            json.loads(line, parse_constant=refuse)
    assert [r["dev_accuracy"] for r in _records(run.root)] == [None, None]


def test_skipped_rows_are_counted_by_their_reason(tiny_qwen3, data, tmp_path, monkeypatch):
    from medtune.tokenization import PromptError

    real = trainer.encode_example

    def encode(tokenizer, template, example, *args):
        if example.id == "q3":
            raise PromptError("the letter is not one token here", "letter_token")
        return real(tokenizer, template, example, *args)

    monkeypatch.setattr(trainer, "encode_example", encode)
    run = train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=1, skip_invalid=True), progress=False)
    assert json.loads(run.report.read_text())["data"]["train"]["skipped"] == {"letter_token": 1}


def test_a_relative_model_path_loads_from_another_directory(tiny_qwen3, data, tmp_path, monkeypatch):
    from medtune.answer import Answerer

    monkeypatch.chdir(tiny_qwen3.parent)
    run = train(_config(tiny_qwen3.name, data, tmp_path / "run", max_steps=1), progress=False)
    monkeypatch.chdir(tmp_path)
    assert json.loads(run.manifest.read_text())["base_model"]["id"] == str(tiny_qwen3)
    answerer = Answerer.from_run(run.root, device="cpu", dtype="fp32")
    assert answerer.answer("Which?", ["one", "two"], explain=False).answer in ("A", "B")


def test_too_few_rows_for_one_optimizer_step_are_refused(tiny_qwen3, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [original_row(i) for i in range(10)])
    with pytest.raises(ValueError, match=r"only 10 rows are left to train on .* = 16\)"):
        train(_config(tiny_qwen3, data, tmp_path / "run", batch_size=4, grad_accum=4), progress=False)


def test_the_end_of_a_run_says_what_happened_and_what_to_run_next(tiny_qwen3, data, tmp_path, capsys):
    held_out = write_jsonl(tmp_path / "heldout.jsonl", [original_row(100 + i) for i in range(4)])
    train(_config(tiny_qwen3, data, tmp_path / "run", eval_data=str(held_out), dev_size=2, eval_every=2),
          progress=False)
    out = capsys.readouterr().out
    # max_steps=4 of batch 4 sees 16 of the 22 rows: the summary says so rather than claiming all 22
    assert "finished: 16 of 22 rows trained, 2 held for dev; 4 of 4 steps" in out
    assert "final train loss" in out and "dev accuracy" in out and "tokens/s" in out
    assert f"adapter: {tmp_path / 'run' / 'adapter'}" in out
    assert f"medtune eval {tmp_path / 'run'} --data {held_out} --output {tmp_path / 'run' / 'eval'}" in out
    assert f"medtune serve {tmp_path / 'run'}" in out and "--resume" not in out



def test_a_hub_dataset_is_recorded_with_its_revision_and_fingerprint(tiny_qwen3, tmp_path, monkeypatch):
    # No network here: the Hub's two answers (the rows, and the commit they came from) are stood in for.
    import datasets
    import huggingface_hub

    import medtune.modeling

    rows = datasets.Dataset.from_list([original_row(i, cop=i % 4) for i in range(24)])
    info = type("Info", (), {"sha": "0123abcd" * 5})()
    monkeypatch.setattr(medtune.modeling, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None: rows)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, name: info)
    run = train(_config(tiny_qwen3, "someone/medmcqa", tmp_path / "run", max_steps=1), progress=False)
    recorded = json.loads(run.manifest.read_text())["data"]["train"]
    assert recorded["source"] == "someone/medmcqa" and recorded["revision"] == "0123abcd" * 5
    assert recorded["fingerprint"] == rows._fingerprint


def test_the_dtype_is_probed_after_each_process_has_its_device(tiny_qwen3, data, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)  # as in a fresh process
    seen = []
    real = trainer.select_dtype

    def select_dtype(*args, **kwargs):
        seen.append(PartialState._shared_state != {})  # the accelerator (which pins each rank's GPU) exists
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "select_dtype", select_dtype)
    train(_config(tiny_qwen3, data, tmp_path / "run", max_steps=1), progress=False)
    assert seen == [True]
