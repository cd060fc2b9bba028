"""`medtune export` on the tiny random Qwen3 run (tied embeddings, the real Qwen3 tokenizer): the adapter copy,
the fp32 merge checked against the run, the refusals (tied-embedding targets, a quantized base), the vLLM
warnings, and `medtune train` refusing tied-embedding targets up front."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medtune.cli import main
from medtune.publish.export import check_examples, merge_adapter, raw_probabilities, vllm_check


def _copy_run(tiny_run: Path, tmp_path: Path, **adapter_changes) -> Path:
    """A copy of the tiny run whose adapter_config.json has `adapter_changes` (the weights are unchanged)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    path = run / "adapter" / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | adapter_changes), encoding="utf-8")
    return run


def _export(capsys, *argv) -> tuple[int, str]:
    code = main(["export", *map(str, argv)])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- the adapter


def test_adapter_export_names_the_hub_base_and_copies_the_run_s_weights(tiny_run, tmp_path, capsys):
    out = tmp_path / "export"
    code, err = _export(capsys, tiny_run, "--output", out, "--base-model", "example-org/tiny-qwen3")
    assert code == 0, err
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "example-org/tiny-qwen3"
    assert (out / "adapter_model.safetensors").read_bytes() == (tiny_run / "adapter" /
                                                                "adapter_model.safetensors").read_bytes()
    assert (out / "prompt.yaml").read_text() == (tiny_run / "prompt.yaml").read_text()
    scoring = json.loads((out / "scoring.json").read_text())
    assert scoring["letter_texts"] == [" A", " B", " C", " D", " E"] and scoring["prompt_format"] == "chat"
    assert (out / "README.md").read_text().startswith("---\n")  # the card, with its front matter
    assert json.loads((out / "verification.json").read_text())["adapter_weights_identical"] is True


def test_adapter_export_of_a_local_base_warns_and_names_only_the_folder(tiny_run, tiny_qwen3, tmp_path, capsys):
    code, err = _export(capsys, tiny_run, "--output", tmp_path / "export")
    assert code == 0, err
    assert "not a Hub id" in err and "--base-model" in err
    name = json.loads((tmp_path / "export" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert name == tiny_qwen3.name  # never the training machine's path
    for path in (tmp_path / "export").glob("*.json"):
        assert str(tiny_qwen3) not in path.read_text()


def test_export_refuses_a_folder_that_is_not_empty(tiny_run, tmp_path, capsys):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "old.txt").write_text("earlier export")
    code, err = _export(capsys, tiny_run, "--output", tmp_path / "export")
    assert code == 2 and "is not empty" in err


# ---------------------------------------------------------------- merged


def test_merged_fp32_export_gives_the_run_s_probabilities_with_plain_transformers(tiny_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.answer import Answerer

    out = tmp_path / "merged"
    code, err = _export(capsys, tiny_run, "--output", out, "--merge", "--dtype", "fp32", "--max-shard-size", "5MB")
    assert code == 0, err
    report = json.loads((out / "verification.json").read_text())
    assert report["merged_vs_run"]["max_abs_prob_difference"] <= 1e-4 and report["merged_vs_run"]["same_letters"]
    # sharded as asked (the 39 MB embedding is one tensor, so it fills a shard of its own), with an index
    assert len(report["shards"]) >= 2 and (out / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).is_file(), name
    # independently of the export's own check: the run (base + adapter) and the merged folder, scored alike
    examples = check_examples()
    run = Answerer.from_run(tiny_run, device="cpu", dtype="fp32")
    expected = raw_probabilities(run.model, run.tokenizer, run.template, examples)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    actual = raw_probabilities(merged, AutoTokenizer.from_pretrained(out), run.template, examples)
    assert max(abs(a - b) for x, y in zip(expected, actual) for a, b in zip(x, y)) <= 1e-4
    assert "lora" not in " ".join(name for name, _ in merged.named_parameters())


def test_merge_refuses_an_adapter_on_the_tied_embeddings(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path, target_modules=["q_proj", "lm_head"])
    code, err = _export(capsys, run, "--output", tmp_path / "merged", "--merge")
    assert code == 2
    assert "cannot merge this adapter: it changes lm_head" in err and "tie_word_embeddings = False" in err
    assert not (tmp_path / "merged").exists()  # refused before anything was written


def test_merge_refuses_a_4bit_base(tiny_qwen3):
    from medtune.modeling import add_lora, load_base
    from medtune.publish.export import ExportError

    model, _, _ = load_base(str(tiny_qwen3), "fp32", quantize="4bit", device="cpu")
    model = add_lora(model, 4, 8, 0.0, ["q_proj"])
    with pytest.raises(ExportError, match="cannot merge into a 4-bit or 8-bit base.*load the base in 16-bit"):
        merge_adapter(model)


# ---------------------------------------------------------------- training refuses tied targets up front


def test_train_refuses_lm_head_as_a_target_of_a_tied_model(tiny_qwen3, tmp_path, capsys):
    from conftest import original_row, write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(16)])
    code = main(["train", "--model", str(tiny_qwen3), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "--quiet", "dev_size=2", "batch_size=2", "grad_accum=1",
                 "lora_target_modules=[q_proj,lm_head]"])
    err = capsys.readouterr().err
    assert code == 2
    assert "names lm_head" in err and "ties its input and output embeddings" in err
    assert "m.config.tie_word_embeddings = False" in err  # the untie recipe
    assert not (tmp_path / "run" / "adapter").exists()


def test_tied_embedding_targets_reads_lists_regexes_and_all_linear(tiny_qwen3):
    from transformers import AutoConfig

    from medtune.modeling import tied_embedding_targets

    tied = AutoConfig.from_pretrained(tiny_qwen3)
    assert tied_embedding_targets(tied, ["q_proj", "model.embed_tokens"]) == ["embed_tokens"]
    assert tied_embedding_targets(tied, r".*(q_proj|lm_head)") == ["lm_head"]
    assert tied_embedding_targets(tied, "all-linear") == []
    assert tied_embedding_targets(tied, ["q_proj"], modules_to_save=["lm_head"]) == ["lm_head"]
    tied.tie_word_embeddings = False
    assert tied_embedding_targets(tied, ["lm_head", "embed_tokens"]) == []


# ---------------------------------------------------------------- vLLM


def test_vllm_check_of_a_default_adapter_has_no_warning():
    assert vllm_check({"r": 16, "modules_to_save": None, "use_dora": False}) == {
        "loads": True, "rank": 16, "max_lora_rank_flag": None, "warnings": []}


def test_vllm_check_names_the_max_lora_rank_flag_for_a_rank_above_16():
    check = vllm_check({"r": 8, "rank_pattern": {"q_proj": 48}})
    assert check["max_lora_rank_flag"] == 64 and "--max-lora-rank 64" in check["warnings"][0]
    assert check["loads"] is True  # it loads, with the flag
    assert vllm_check({"r": 1024})["loads"] is False


def test_vllm_check_refuses_modules_to_save_and_dora():
    check = vllm_check({"r": 8, "modules_to_save": ["score"], "use_dora": True})
    assert check["loads"] is False
    assert "modules_to_save" in check["warnings"][0] and "DoRA" in check["warnings"][1]


def test_export_warns_when_vllm_would_not_load_the_adapter(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path, r=32, use_dora=True)
    code, err = _export(capsys, run, "--output", tmp_path / "export", "--base-model", "example-org/tiny-qwen3")
    assert code == 0, err
    assert "warning: vLLM loads LoRA ranks up to 16 by default" in err and "--max-lora-rank 32" in err
    assert "warning: vLLM does not load DoRA adapters" in err
    assert json.loads((tmp_path / "export" / "verification.json").read_text())["vllm"]["loads"] is False


def test_auto_dtype_is_the_base_checkpoint_s_as_saved(tiny_run, tmp_path):
    """'auto' reads the checkpoint's config.json, not the fp32 the merge loaded it in."""
    from medtune.publish.export import checkpoint_dtype

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert checkpoint_dtype(manifest) == "fp32"  # the tiny Qwen3 was saved in fp32
    base = tmp_path / "base"
    shutil.copytree(manifest["base_model"]["id"], base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config | {"dtype": "bfloat16"}))
    assert checkpoint_dtype({"base_model": {"id": str(base)}}) == "bf16"


def test_merge_falls_back_to_the_run_s_compute_dtype_when_fp32_does_not_fit(tiny_run, monkeypatch):
    import medtune.device
    from medtune.publish.export import merge_dtype

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert merge_dtype(manifest)[0] == "fp32"  # 9.8M parameters fit anywhere
    monkeypatch.setattr(medtune.device, "available_cpu_memory", lambda: 10_000_000)
    dtype, reason = merge_dtype(manifest | {"dtype": "fp16"})
    assert dtype == "fp16" and reason.startswith("fp16, the run's compute dtype: fp32 weights need about")
