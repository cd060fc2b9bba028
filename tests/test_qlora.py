"""QLoRA for real on the CPU (bitsandbytes' CPU backend): train 4-bit -> eval -> ask -> serve, 8-bit loading,
quantize=auto deciding from the memory plan, the base fingerprint across loads, and loading errors as sentences.

Tiny models only: the 2-layer Qwen3 of conftest and a 2-layer GPT-2. The QLoRA run computes in bf16 (the
QLoRA paper's choice), and a reload in bf16 must score exactly as at the end of training."""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import original_row, write_jsonl
from medtune import modeling
from medtune.answer import Answerer
from medtune.cli import main
from medtune.config import TrainConfig
from medtune.evaluate import choice_logprobs
from medtune.modeling import ModelError, load_base, weights_fingerprint
from medtune.serve import Settings, create_app

trainer = importlib.import_module("medtune.train")  # the module (the attribute medtune.train is the function)
# PEFT calls a transformers API that warns about its own deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
QUESTION = {"question": "Which nerve is injured in wrist drop?",
            "options": ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"]}
# A reloaded run against the same forward at the end of training: the same 4-bit weights, the same fp32
# embeddings and norms (upcast as prepare_model_for_kbit_training did), the same kernels, so only float
# summation order may differ. Measured on this CPU: 0 (0.019 before the reload upcast them). In nats.
RELOAD_TOLERANCE = 1e-5


def _quantized(model) -> set[str]:
    """bitsandbytes' parameter classes present in `model`."""
    return {type(p).__name__ for p in model.parameters()} & {"Params4bit", "Int8Params"}


def _train(model: Path, folder: Path, *options: str, overrides: tuple[str, ...] = (), dtype: str = "fp32") -> Path:
    # 30 rows: the trainer holds at most a share of them for dev, and dev_size=2 must be honoured
    data = write_jsonl(folder / "train.jsonl", [original_row(i, cop=i % 4) for i in range(30)])
    run = folder / "run"
    code = main(["train", "--model", str(model), "--data", str(data), "--output", str(run), "--max-steps", "2",
                 "--dtype", dtype, "--device", "cpu", "--quiet", *options, "dev_size=2", "batch_size=2",
                 "grad_accum=1", *overrides])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def qlora(tiny_qwen3, tmp_path_factory) -> dict:
    """A 4-bit QLoRA run of the tiny Qwen3, and the dev scores its trainer computed at the end (spied, not
    replaced: the trainer's own choice_logprobs runs)."""
    calls = []

    def spy(model, tokenizer, template, examples, *args, **kwargs):
        scores = choice_logprobs(model, tokenizer, template, examples, *args, **kwargs)
        calls.append((examples, scores))
        return scores

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "choice_logprobs", spy)
        run = _train(tiny_qwen3, tmp_path_factory.mktemp("qlora"), "--quantize", "4bit", dtype="bf16")
    examples, scores = calls[-1]
    return {"run": run, "dev": examples, "final_scores": scores}


@pytest.fixture(scope="module")
def answerer(qlora) -> Answerer:
    return Answerer.from_run(qlora["run"], device="cpu", dtype="bf16")


def test_qlora_run_records_its_quantization_in_the_manifest(qlora):
    manifest = json.loads((qlora["run"] / "manifest.json").read_text())
    assert manifest["quantization"] == "4bit"
    assert manifest["quantization_reason"].startswith("asked for (bitsandbytes")
    assert manifest["base_model"]["quantization"] == "4bit"


def test_qlora_fingerprint_is_the_checkpoints_not_the_4bit_loads(qlora, tiny_qwen3):
    """The 4-bit base of the run and a plain fp32 load of the same folder name one checkpoint."""
    manifest = json.loads((qlora["run"] / "manifest.json").read_text())
    assert load_base(str(tiny_qwen3), "fp32")[2].fingerprint == manifest["base_model"]["fingerprint"]


@pytest.fixture(scope="module")
def small_qwen3(tmp_path_factory) -> Path:
    """tiny_qwen3's shape with a 1,000-token vocabulary, so the decoder Linears are most of its weights; the
    GPT-2 tokenizer beside it is only there for load_base (it loads in 0.3 s, Qwen3's in 2.5 s)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from conftest import GPT2_TOKENIZER

    folder = tmp_path_factory.mktemp("small-qwen3")
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16)).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(GPT2_TOKENIZER / name, folder / name)
    return folder


def test_4bit_8bit_and_16bit_loads_share_a_fingerprint_and_other_checkpoints_differ(small_qwen3, tmp_path):
    loads = {quantize: load_base(str(small_qwen3), "bf16", quantize=quantize)
             for quantize in ("none", "4bit", "8bit")}
    assert _quantized(loads["4bit"][0]) == {"Params4bit"} and _quantized(loads["8bit"][0]) == {"Int8Params"}
    fingerprints = {quantize: info.fingerprint for quantize, (_, _, info) in loads.items()}
    assert len(set(fingerprints.values())) == 1, fingerprints
    assert [info.quantization for _, _, info in loads.values()] == ["none", "4bit", "8bit"]
    # another checkpoint of the same architecture: one decoder weight changed in its first row
    other, tokenizer, _ = load_base(str(small_qwen3), "fp32")
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    changed = load_base(str(tmp_path / "other"), "bf16", quantize="4bit")[2].fingerprint
    assert changed != fingerprints["4bit"]
    assert changed == weights_fingerprint(other)  # its 4-bit load still names its own checkpoint


def test_qlora_run_reloads_in_4bit_and_scores_as_at_the_end_of_training(qlora, answerer):
    assert answerer.description["quantization"] == "4bit"
    assert _quantized(answerer.model) == {"Params4bit"}
    reloaded = choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, qlora["dev"])
    finite = torch.isfinite(qlora["final_scores"])
    assert torch.equal(finite, torch.isfinite(reloaded)) and finite.sum() == 2 * 4  # 2 dev rows x 4 options
    assert (reloaded[finite] - qlora["final_scores"][finite]).abs().max() <= RELOAD_TOLERANCE


def test_qlora_run_evaluates_and_answers_through_the_cli(qlora, tmp_path, capsys):
    data = write_jsonl(tmp_path / "eval.jsonl", [original_row(100 + i, cop=i % 4) for i in range(4)])
    assert main(["eval", str(qlora["run"]), "--data", str(data), "--output", str(tmp_path / "eval"),
                 "--device", "cpu", "--dtype", "fp32"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 4
    capsys.readouterr()
    assert main(["ask", str(qlora["run"]), "--question", QUESTION["question"], *sum((["--option", o] for o in
                 QUESTION["options"]), []), "--no-explain", "--json", "--device", "cpu", "--dtype", "fp32"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert list(answer["probs"]) == ["A", "B", "C", "D"] and answer["answer"] in answer["probs"]
    assert sum(answer["probs"].values()) == pytest.approx(1.0, abs=1e-6)
    assert answer["answer"] == max(answer["probs"], key=answer["probs"].get)


def test_qlora_run_serves_the_answer_that_ask_gives(answerer):
    expected = answerer.answer(QUESTION["question"], QUESTION["options"], explain=False)
    with TestClient(create_app(answerer, Settings(api_key=None, max_new_tokens=4))) as client:
        response = client.post("/v1/answer", json={**QUESTION, "explain": False})
    assert response.status_code == 200
    body = response.json()
    assert body["answer"] == expected.answer
    assert body["probs"] == pytest.approx(expected.probs, abs=1e-6)


def test_qlora_adapter_loads_onto_a_16bit_base_when_asked(qlora, answerer):
    on_16bit = Answerer.from_run(qlora["run"], device="cpu", dtype="bf16", quantize="none")
    assert on_16bit.description["quantization"] == "none"
    assert on_16bit.description["trained_quantization"] == "4bit"
    assert _quantized(on_16bit.model) == set()
    # the same adapter on the unquantized weights: close to the 4-bit scores, not equal (NF4 rounds the base)
    dev = qlora["dev"]
    scores = choice_logprobs(on_16bit.model, on_16bit.tokenizer, on_16bit.template, dev)
    four_bit = choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, dev)
    finite = torch.isfinite(scores)
    assert not torch.equal(scores[finite], four_bit[finite])


def test_8bit_loading_for_evaluation(tiny_qwen3, tmp_path):
    data = write_jsonl(tmp_path / "eval.jsonl", [original_row(i, cop=i % 4) for i in range(3)])
    assert main(["eval", "--model", str(tiny_qwen3), "--quantize", "8bit", "--data", str(data),
                 "--output", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["model"]["quantization"] == "8bit"


def test_quantize_auto_trains_in_4bit_when_the_plan_says_16bit_does_not_fit(tiny_qwen3, tmp_path):
    # the tiny Qwen3's 16-bit LoRA plan is ~0.7 GiB (most of it the process baseline): 100 MB cannot hold it
    run = _train(tiny_qwen3, tmp_path, "--quantize", "auto", "--max-steps", "1", overrides=("memory_budget=100MB",))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["quantization"] == "4bit"
    assert manifest["quantization_reason"].startswith("auto: the memory plan says 16-bit LoRA does not fit")


def test_quantize_auto_stays_16bit_when_the_budget_holds_the_plan(tiny_qwen3):
    config = TrainConfig(model=str(tiny_qwen3), quantize="auto", memory_budget="64GiB", batch_size=2)
    choice = trainer._choose_memory(config, "cpu", "fp32", "eager")[0]
    assert (choice.value, choice.reason) == ("none", "auto: the memory plan says 16-bit LoRA fits")


@pytest.fixture
def tiny_gpt2(gpt2_tokenizer, tmp_path) -> Path:
    """A 2-layer random GPT-2: no Llama-style `layers` list, so the memory planner cannot read it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(gpt2_tokenizer))).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


def test_quantize_auto_trains_16bit_where_the_planner_cannot_read_the_model(tiny_gpt2, tmp_path):
    run = _train(tiny_gpt2, tmp_path, "--quantize", "auto", "--max-steps", "1", overrides=("memory_budget=1MB",))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["quantization"] == "none"
    assert manifest["quantization_reason"].startswith(f"auto: 16-bit LoRA, because the memory planner cannot "
                                                      f"read {tiny_gpt2}")
    assert "no llama-style decoder layers" in manifest["quantization_reason"]


def test_quantize_auto_on_a_gguf_file_falls_back_to_16bit(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")  # the planner reads configs, never GGUF files
    choice = trainer._choose_memory(TrainConfig(model=str(gguf), quantize="auto"), "cpu", "fp32", "eager")[0]
    assert choice.value == "none" and f"the memory planner cannot read {gguf}" in choice.reason


# --- loading errors are sentences ---------------------------------------------------------------------------


def test_a_hub_model_that_cannot_be_fetched_is_named_with_its_revision(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:
        load_base("medtune-test/no-such-model", revision="v1.0")
    message = str(caught.value)
    assert message.startswith("cannot fetch the tokenizer of model 'medtune-test/no-such-model' (revision v1.0) "
                              "from the Hugging Face Hub: HF_HUB_OFFLINE is set")
    assert message.endswith("or pass a local model folder instead") and "\n" not in message


def test_an_unreachable_hub_is_said_to_be_unreachable_for_the_config(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda: False)
    with pytest.raises(ModelError, match=r"^cannot fetch the config of model 'medtune-test/no-such-model' "
                                         r"\(revision main\) from the Hugging Face Hub: the Hub is not reachable"):
        modeling.model_config("medtune-test/no-such-model")


@pytest.fixture
def damaged_run(qlora, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(qlora["run"], copy)
    return copy


def test_a_missing_adapter_file_is_one_sentence(damaged_run, capsys):
    weights = damaged_run / "adapter" / "adapter_model.safetensors"
    weights.unlink()
    with pytest.raises(ModelError, match=f"^{weights} is missing: the run's adapter was not saved completely"):
        Answerer.from_run(damaged_run, device="cpu", dtype="fp32")
    capsys.readouterr()
    assert main(["ask", str(damaged_run), "--question", "Q?", "--option", "a", "--option", "b", "--no-explain"]) == 2
    assert capsys.readouterr().err.strip() == (f"medtune ask: error: {weights} is missing: the run's adapter was not "
                                               "saved completely; train again (or --resume) to write it")


def test_a_truncated_adapter_file_is_one_sentence(damaged_run):
    weights = damaged_run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match=f"^{weights} is damaged or truncated .*; train again"):
        Answerer.from_run(damaged_run, device="cpu", dtype="fp32")
