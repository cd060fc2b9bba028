"""`medtune export --gguf`: llama.cpp's converter (from the pinned llama-cpp-python sdist, fetched once into the
cache) on a tiny random Qwen3 run; the GGUF file read back by transformers gives the merged model's letters; the
card's front matter is in the GGUF metadata; the Ollama Modelfile's TEMPLATE is the run's prompt.

The tiny Qwen3 here has head_dim 128, as every released Qwen3 has: transformers' GGUF reader does not read
`qwen3.attention.key_length` and assumes Qwen3Config's default of 128, so the conftest model (head_dim 16)
converts but cannot be read back by transformers (llama.cpp itself reads the key length). It carries the real
GPT-2 tokenizer (50k tokens) rather than Qwen3's (152k): gguf's reader parses the vocabulary array element by
element in Python, and each read of a Qwen3-vocabulary file took 35 s on the shared 2 cores. SmolLM2's Llama
architecture (the q/k row permutation llama.cpp applies) is checked by the slow test at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medtune.cli import main
from medtune.publish.export import check_examples, compare_probabilities, raw_probabilities
from medtune.publish.gguf import ollama_template


def _tiny_run(folder: Path, config, tokenizer: Path) -> Path:
    """A 2-step run of a random model of `config` with the tokenizer in `tokenizer`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import original_row, write_jsonl

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "base")
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder / "base")
    data = write_jsonl(folder / "train.jsonl", [original_row(i, cop=i % 4) for i in range(8)])
    assert main(["train", "--model", str(folder / "base"), "--data", str(data), "--output", str(folder / "run"),
                 "--max-steps", "2", "--quiet", "dev_size=2", "batch_size=2", "grad_accum=1"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def gguf_export(tmp_path_factory) -> tuple[Path, Path]:
    """(run, export folder): a tiny head_dim-128 Qwen3 run exported with --gguf --gguf-type f16."""
    from transformers import Qwen3Config

    from conftest import GPT2_TOKENIZER

    folder = tmp_path_factory.mktemp("gguf")
    config = Qwen3Config(vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=128, tie_word_embeddings=True,
                         bos_token_id=50256, eos_token_id=50256, initializer_range=0.1)
    run = _tiny_run(folder, config, GPT2_TOKENIZER)
    assert main(["export", str(run), "--output", str(folder / "export"), "--gguf", "--gguf-type", "f16",
                 "--base-model", "example-org/tiny-qwen3"]) == 0
    return run, folder / "export"


def test_gguf_export_writes_the_file_the_merged_model_and_a_modelfile(gguf_export):
    _, out = gguf_export
    report = json.loads((out / "verification.json").read_text())
    assert report["kind"] == "merged" and report["gguf"]["file"] == "run-f16.gguf"
    assert (out / "run-f16.gguf").stat().st_size == report["gguf"]["bytes"] > 0
    assert (out / "config.json").is_file() and (out / "Modelfile").read_text().startswith("FROM ./run-f16.gguf\n")


def test_gguf_read_back_by_transformers_chooses_the_merged_model_s_letters(gguf_export):
    """The export read the GGUF back with transformers (gguf_file=, its own tokenizer) and scored the check
    questions; those letters are the merged folder's, scored here independently. (Reading the file again here
    would cost another half minute of the shared CPU for the same figures.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.prompts import PromptTemplate

    run, out = gguf_export
    template, examples = PromptTemplate.load(run / "prompt.yaml"), check_examples()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    expected = raw_probabilities(merged, AutoTokenizer.from_pretrained(out), template, examples)
    gguf = json.loads((out / "verification.json").read_text())["gguf"]
    assert gguf["loads_with_transformers"] is True
    assert gguf["gguf_vs_merged"]["letters"] == compare_probabilities(expected, expected)["letters"]
    assert 0 < gguf["gguf_vs_merged"]["max_abs_prob_difference"] < 1e-3  # f16 weights: close, not bit-equal


def test_gguf_metadata_carries_the_card_s_front_matter(gguf_export):
    from gguf import GGUFReader

    _, out = gguf_export
    reader = GGUFReader(out / "run-f16.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}
    assert fields["general.architecture"] == "qwen3" and fields["general.file_type"] == 1  # f16
    assert "medical" in fields["general.tags"]  # from README.md's front matter, written before converting
    assert fields["general.base_model.0.repo_url"].endswith("example-org/tiny-qwen3")


def test_modelfile_template_renders_the_run_s_prompt(tiny_run):
    """Ollama fills {{ .System }} with SYSTEM and {{ .Prompt }} with what the user types (the question block):
    the result is the text `medtune eval` scores, up to and including 'Answer:'."""
    from medtune.prompts import PromptTemplate

    template = PromptTemplate.load(tiny_run / "prompt.yaml")
    example = check_examples(rows=1)[0]
    go = ollama_template(template)
    assert go.replace("{{ .System }}", template.system).replace(
        "{{ .Prompt }}", template.question_block(example)) == template.prompt(example)
    plain = template.with_format("plain")
    assert ollama_template(plain).replace("{{ .System }}", plain.system).replace(
        "{{ .Prompt }}", plain.question_block(example)) == plain.prompt(example)


def test_an_unknown_gguf_type_is_refused_with_the_k_quant_route(tmp_path):
    from medtune.publish.export import ExportError
    from medtune.publish.gguf import convert

    with pytest.raises(ExportError, match="K-quants need llama.cpp's llama-quantize"):
        convert(tmp_path, tmp_path / "x.gguf", "q4_k_m")


@pytest.mark.slow
def test_a_llama_run_with_smollm2_s_tokenizer_exports_a_q8_0_gguf_with_the_same_letters(smollm2, tmp_path):
    """SmolLM2's architecture (Llama: llama.cpp permutes the q/k rows for its rope) and its real tokenizer and
    chat template, on a tiny random model; q8_0 weights."""
    from transformers import AutoConfig, LlamaConfig

    smol = AutoConfig.from_pretrained(smollm2)
    config = LlamaConfig(vocab_size=smol.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                         bos_token_id=smol.bos_token_id, eos_token_id=smol.eos_token_id,
                         pad_token_id=smol.pad_token_id, initializer_range=0.1)
    run = _tiny_run(tmp_path, config, smollm2)
    assert main(["export", str(run), "--output", str(tmp_path / "export"), "--gguf", "--gguf-type", "q8_0"]) == 0
    report = json.loads((tmp_path / "export" / "verification.json").read_text())
    assert report["merged_vs_run"]["max_abs_prob_difference"] <= 1e-4
    assert report["gguf"]["type"] == "q8_0" and report["gguf"]["gguf_vs_merged"]["same_letters"] is True
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    assert "<|im_start|>assistant\nAnswer:" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_a_llama_cpp_checkout_without_the_converter_is_refused(tmp_path, monkeypatch):
    from medtune.publish.gguf import CONVERTER_ENV, converter_dir

    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no convert_hf_to_gguf.py"):
        converter_dir()
