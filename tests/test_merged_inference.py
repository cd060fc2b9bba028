"""A run scores as fast as its base model: for eval, ask and serve the LoRA adapter is folded into the base weights
in memory (modeling.fold_adapter), with the scores of the unmerged path; a 4-bit base and an adapter on tied
embeddings stay unmerged; the comparison after training still scores the base with the adapter disabled.

The tiny run's adapter after 2 steps barely moves the scores, so the tests give it random lora_B weights first:
the adapter then changes the log-probabilities by far more than the tolerance, and a fold that lost it would fail."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import original_row, write_jsonl
from medtune.answer import Answerer
from medtune.cli import main
from medtune.config import TrainConfig
from medtune.data import load_examples
from medtune.evaluate import choice_logprobs
from medtune.evaluation.after_training import compare_with_base
from medtune.modeling import fold_adapter, load_base

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
# fp32, folded (W + s*B@A, one matmul) against unmerged (W x + s*B(A x), three): the same sums in another order.
# Measured on this CPU on the tiny run with random lora_B: 9.5e-7 at most. In nats, per option log-probability.
FOLD_TOLERANCE = 1e-5


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between two score tables over the real options (absent ones are -inf in both)."""
    real = torch.isfinite(a) & torch.isfinite(b)
    assert torch.equal(real, torch.isfinite(a))
    return (a[real] - b[real]).abs().max().item()


def _lora_names(model) -> list[str]:
    return [name for name, _ in model.named_parameters() if "lora_" in name]


@pytest.fixture(scope="module")
def strong_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run whose adapter moves the scores: lora_B drawn at random (lora_A is already)."""
    run = tmp_path_factory.mktemp("strong") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    path = run / "adapter" / "adapter_model.safetensors"
    generator = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(t.shape, generator=generator) * 0.2 if "lora_B" in name else t
               for name, t in load_file(str(path)).items()}
    save_file(tensors, str(path))
    return run


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    data = write_jsonl(tmp_path_factory.mktemp("questions") / "q.jsonl", [original_row(500 + i, cop=i % 4)
                                                                           for i in range(8)])
    return load_examples(str(data))[0]


def test_a_folded_run_scores_what_the_unmerged_run_scores(strong_run, examples, tiny_qwen3):
    folded = Answerer.from_run(strong_run, device="cpu", dtype="fp32")
    unmerged = Answerer.from_run(strong_run, device="cpu", dtype="fp32", fold=False)
    assert folded.description["adapter_folded"].startswith("folded into the base weights")
    assert _lora_names(folded.model) == [] and _lora_names(unmerged.model)  # the base architecture again
    a = choice_logprobs(folded.model, folded.tokenizer, folded.template, examples)
    b = choice_logprobs(unmerged.model, unmerged.tokenizer, unmerged.template, examples)
    assert _gap(a, b) <= FOLD_TOLERANCE
    base, _, _ = load_base(str(tiny_qwen3), "fp32")
    plain = choice_logprobs(base.eval(), folded.tokenizer, folded.template, examples)
    assert _gap(a, plain) > 100 * FOLD_TOLERANCE  # the adapter acts, so the fold kept it


def test_eval_records_the_fold_and_scores_as_the_unmerged_run(strong_run, tmp_path):
    data = write_jsonl(tmp_path / "held.jsonl", [original_row(600 + i, cop=i % 4) for i in range(6)])
    assert main(["eval", str(strong_run), "--data", str(data), "--output", str(tmp_path / "eval"),
                 "--device", "cpu", "--dtype", "fp32"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["adapter_folded"].startswith("folded into the base weights")
    saved = [json.loads(line)["probs"] for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    unmerged = Answerer.from_run(strong_run, device="cpu", dtype="fp32", fold=False)
    for row, probs in zip(saved, unmerged.score(load_examples(str(data))[0])):
        assert row == pytest.approx(probs, abs=FOLD_TOLERANCE)


def test_a_4bit_base_keeps_its_adapter_unmerged(strong_run):
    answerer = Answerer.from_run(strong_run, device="cpu", dtype="bf16", quantize="4bit")
    assert answerer.description["adapter_folded"].startswith("kept unmerged: the base is quantized")
    assert _lora_names(answerer.model)  # the adapter is still applied beside the 4-bit weights
    assert {type(p).__name__ for p in answerer.model.parameters()} >= {"Params4bit"}


def test_an_adapter_on_tied_embeddings_stays_unmerged(tiny_qwen3):
    from peft import LoraConfig, get_peft_model

    base, _, _ = load_base(str(tiny_qwen3), "fp32")
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    same, reason = fold_adapter(model)
    assert same is model and reason == "kept unmerged: the adapter changes lm_head, one matrix tied to the other"


def test_a_plain_model_has_nothing_to_fold(tiny_qwen3):
    base, _, _ = load_base(str(tiny_qwen3), "fp32")
    assert fold_adapter(base) == (base, "no adapter to fold")


def test_the_comparison_scores_the_base_unmerged_and_the_tuned_run_folded(strong_run, tiny_qwen3, tmp_path):
    """The base side disables the adapter before the fold: it equals a fresh base model; the tuned side is folded
    and equals the unmerged run."""
    run = tmp_path / "run"
    shutil.copytree(strong_run, run)
    held_out = write_jsonl(tmp_path / "held.jsonl", [original_row(700 + i, cop=i % 4) for i in range(6)])
    examples = load_examples(str(held_out))[0]
    compare_with_base(TrainConfig(eval_data=str(held_out)), run, "cpu", lambda *_: None)

    def predictions(side):
        return [json.loads(line)["probs"] for line in (run / "eval" / side / "predictions.jsonl").read_text()
                .splitlines()]

    fresh = Answerer.from_model(str(tiny_qwen3), "cpu", "fp32").score(examples)
    unmerged = Answerer.from_run(run, device="cpu", dtype="fp32", fold=False).score(examples)
    for base_row, tuned_row, want_base, want_tuned in zip(predictions("base"), predictions("tuned"), fresh, unmerged):
        assert base_row == pytest.approx(want_base, abs=FOLD_TOLERANCE)
        assert tuned_row == pytest.approx(want_tuned, abs=FOLD_TOLERANCE)
        assert tuned_row != pytest.approx(base_row, abs=1e-3)  # the two sides differ by the adapter
    tuned = json.loads((run / "eval" / "tuned" / "metrics.json").read_text())["model"]
    base = json.loads((run / "eval" / "base" / "metrics.json").read_text())["model"]
    assert tuned["adapter_folded"].startswith("folded into") and "adapter_folded" not in base
