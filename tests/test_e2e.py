"""End to end on a tiny random Qwen3 with the real Qwen3 tokenizer: train -> eval -> ask, through the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import original_row, write_jsonl
from medtune.answer import Answerer, cut_at_sentence, explanation_settings
from medtune.cli import main
from medtune.data import MCQExample, load_examples
from medtune.evaluate import choice_logprobs
from medtune.modeling import ModelError, load_adapter, load_base


@pytest.fixture(scope="module")
def trained(tiny_qwen3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    train_file = write_jsonl(folder / "train.jsonl", [original_row(i, cop=i % 4) for i in range(24)])
    held_out = write_jsonl(folder / "heldout.jsonl", [original_row(100 + i, cop=(i + 1) % 4) for i in range(8)])
    run = folder / "run"
    code = main(["train", "--model", str(tiny_qwen3), "--data", str(train_file), "--eval-data", str(held_out),
                 "--output", str(run), "--max-steps", "4", "--quiet", "dev_size=4", "batch_size=4", "grad_accum=2",
                 "learning_rate=1e-2", "eval_every=2", "save_every=2", "--dtype", "fp32"])
    assert code == 0
    return run, held_out, train_file


def test_run_directory_is_complete_and_self_describing(trained):
    run, _, train_file = trained
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml", "prompt.yaml",
                 "metrics.jsonl", "manifest.json"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dtype"] == "fp32" and manifest["device"] == "cpu"
    assert manifest["prompt"] == {"format": "chat", "enable_thinking": False}
    assert manifest["data"]["train"]["sha256"] == load_examples(str(train_file))[1].sha256
    assert manifest["data"]["train_rows"] == 22 and manifest["data"]["dev_rows"] == 2  # dev capped at 10%
    assert {"torch", "transformers", "peft", "accelerate"} <= set(manifest["versions"])
    share = manifest["parameters"]["trainable"] / manifest["parameters"]["total"]
    assert manifest["parameters"]["trainable_share"] == pytest.approx(share)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and "dev_accuracy" in steps[1]


def test_only_lora_weights_are_saved_and_they_changed(trained):
    run, _, _ = trained
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    manifest = json.loads((run / "manifest.json").read_text())
    assert all("lora_" in name for name in tensors)
    assert sum(t.numel() for t in tensors.values()) == manifest["parameters"]["trainable"]
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # PEFT initializes B to zero


def test_base_weights_did_not_change(trained, tiny_qwen3):
    run, _, _ = trained
    manifest = json.loads((run / "manifest.json").read_text())
    fresh, _, info = load_base(str(tiny_qwen3))
    assert info.fingerprint == manifest["base_model"]["fingerprint"]
    tuned = load_adapter(load_base(str(tiny_qwen3))[0], run / "adapter", info.fingerprint)
    merged_base = dict(tuned.unload().named_parameters())
    for name, parameter in fresh.named_parameters():
        assert torch.equal(parameter, merged_base[name]), name


def test_eval_writes_metrics_and_predictions(trained, tmp_path):
    run, held_out, _ = trained
    assert main(["eval", str(run), "--data", str(held_out), "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 8 and 0 <= metrics["ci95"][0] <= metrics["accuracy"] <= metrics["ci95"][1]
    assert set(metrics["baselines"]) >= {"random", "majority"} and "confusion" in metrics
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in lines] == [f"q{100 + i}" for i in range(8)]
    assert all(set(p) == {"id", "gold", "pred", "probs", "subject"} and p["pred"] in {"A", "B", "C", "D"}
               for p in lines)
    assert {p["subject"] for p in lines} == {"Anatomy"}  # the rows' subject_name


def test_eval_generative_writes_generations_and_one_metrics_file_with_everything(trained, tmp_path):
    run, held_out, _ = trained
    assert main(["eval", str(run), "--data", str(held_out), "--output", str(tmp_path), "--generative",
                 "--max-new-tokens", "3"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data"]["rows_loaded"] == 8 and metrics["generative"]["n"] == 8
    generations = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 8


def test_adapter_reloads_to_identical_scores(trained, tmp_path, tiny_qwen3):
    from peft import PeftModel

    run, held_out, _ = trained
    main(["eval", str(run), "--data", str(held_out), "--output", str(tmp_path), "--dtype", "fp32"])
    saved = [json.loads(line)["probs"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    examples, _ = load_examples(str(held_out))
    answerer = Answerer.from_run(run, device="cpu", dtype="fp32")
    assert [{k: round(v, 6) for k, v in p.items()} for p in answerer.score(examples)] == saved
    plain = PeftModel.from_pretrained(load_base(str(tiny_qwen3))[0], str(run / "adapter"))  # standard PEFT format
    again = choice_logprobs(plain, answerer.tokenizer, answerer.template, examples)
    assert torch.allclose(again, choice_logprobs(answerer.model, answerer.tokenizer, answerer.template, examples))


def test_ask_prints_letter_probabilities_and_explanation(trained, capsys):
    run, _, _ = trained
    code = main(["ask", str(run), "--question", "Which vitamin deficiency causes scurvy?", "--option", "Vitamin A",
                 "--option", "Vitamin C", "--option", "Vitamin D", "--json", "--max-new-tokens", "5"])
    assert code == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["answer"] in {"A", "B", "C"} and set(answer["probs"]) == {"A", "B", "C"}
    assert sum(answer["probs"].values()) == pytest.approx(1.0)
    assert answer["answer"] == max(answer["probs"], key=answer["probs"].get)
    # the explanation is greedy text continuing from the chosen answer line, generated here independently
    answerer = Answerer.from_run(run, device="cpu")
    example = MCQExample("q", "Which vitamin deficiency causes scurvy?", ("Vitamin A", "Vitamin C", "Vitamin D"))
    context = answerer.template.explanation_context(example, "ABC".index(answer["answer"]))
    ids = answerer.tokenizer(context, add_special_tokens=False, return_tensors="pt")["input_ids"]
    output = answerer.model.generate(input_ids=ids, max_new_tokens=5, **explanation_settings(ids.shape[1]))
    expected = answerer.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
    capped = output.shape[1] - ids.shape[1] == 5 and output[0, -1].item() != answerer.tokenizer.eos_token_id
    assert answer["explanation"] == (cut_at_sentence(expected) if capped else expected)


def test_adapter_is_refused_on_a_different_base(trained, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    run, _, _ = trained
    manifest = json.loads((run / "manifest.json").read_text())
    torch.manual_seed(1)
    other = Qwen3ForCausalLM(Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=16, tie_word_embeddings=True))
    with pytest.raises(ModelError, match="refusing to load it onto a different model"):
        load_adapter(other, run / "adapter", manifest["base_model"]["fingerprint"])


def test_training_into_a_finished_run_without_resume_is_refused(trained, capsys):
    run, held_out, train_file = trained
    code = main(["train", "--model", "unused", "--data", str(train_file), "--output", str(run), "--quiet"])
    assert code == 2 and "already holds a finished run" in capsys.readouterr().err


def test_bad_data_fails_with_file_line_and_field(tiny_qwen3, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [original_row(1), original_row(2, opd="")])
    code = main(["train", "--model", str(tiny_qwen3), "--data", str(bad), "--output", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "bad.jsonl:2: field 'opd': is empty" in capsys.readouterr().err


def test_explicit_quantization_the_backend_cannot_do_fails_with_a_sentence(tiny_qwen3, tmp_path, capsys,
                                                                          monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as where it is not installed
    data = write_jsonl(tmp_path / "d.jsonl", [original_row(i, cop=i % 4) for i in range(40)])
    code = main(["train", "--model", str(tiny_qwen3), "--data", str(data), "--output", str(tmp_path / "r"),
                 "--quantize", "4bit", "--quiet", "--max-steps", "1"])
    assert code == 2 and "--quantize 4bit was asked for, but" in capsys.readouterr().err


def test_manifest_records_the_automatic_precision_and_quantization_choices(trained):
    run, _, _ = trained
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["quantization"] == "none" and manifest["quantization_reason"].startswith("auto:")
    assert manifest["dtype_reason"] == "asked for"
