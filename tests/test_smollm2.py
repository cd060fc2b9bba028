"""On the real SmolLM2-135M-Instruct (from the PyPI wheel): train a few steps, evaluate, answer."""

import json

import pytest

from conftest import MEDMCQA
from medtune.answer import Answerer
from medtune.cli import main

pytestmark = pytest.mark.slow


def test_smollm2_train_eval_ask(smollm2, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--model", str(smollm2), "--data", str(MEDMCQA / "train-sample-original.jsonl"),
                 "--skip-invalid", "--limit", "24", "--output", str(run), "--max-steps", "2", "--quiet",
                 "dev_size=8", "batch_size=4", "grad_accum=2", "max_seq_len=256", "eval_every=2"])
    assert code == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["prompt"]["format"] == "chat" and manifest["base_model"]["kind"] == "folder"
    assert 0 < manifest["parameters"]["trainable_share"] < 0.05

    assert main(["eval", str(run), "--data", str(MEDMCQA / "validation.jsonl"), "--limit", "16",
                 "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["baselines"]["random"] == 0.25

    answerer = Answerer.from_run(run, device="cpu")
    answer = answerer.answer("Deficiency of which vitamin causes scurvy?",
                             ["Vitamin A", "Vitamin C", "Vitamin D", "Vitamin K"], max_new_tokens=24)
    assert answer.answer in "ABCD" and abs(sum(answer.probs.values()) - 1) < 1e-5
    assert answer.explanation  # the real model writes words after "Explanation:"


def test_gguf_file_loads_to_the_same_weights_as_the_cached_folder(smollm2):
    from medtune.modeling import load_base, smollm2_gguf

    _, tokenizer, from_gguf = load_base(str(smollm2_gguf()))
    _, _, from_folder = load_base(str(smollm2))
    assert from_gguf.kind == "gguf" and from_gguf.fingerprint == from_folder.fingerprint
    assert tokenizer.encode(" A", add_special_tokens=False) == [330]
