"""compile=true: every decoder layer goes through torch.compile, and training ends where eager training does."""

import torch
from safetensors.torch import load_file

from conftest import original_row, write_jsonl
from medtune.config import TrainConfig
from medtune.train import train


def test_compiled_training_compiles_each_layer_and_matches_eager(tiny_qwen3, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", [original_row(i, cop=i % 4) for i in range(16)])
    compiled = []
    real_compile = torch.nn.Module.compile

    def compile_and_count(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_and_count)
    adapters = {}
    for use_compile in (False, True):
        config = TrainConfig(model=str(tiny_qwen3), data=str(data), output=str(tmp_path / f"run-{use_compile}"),
                             max_steps=3, batch_size=4, grad_accum=1, dev_size=0, eval_every=0, save_every=0,
                             learning_rate=1e-3, lora_dropout=0.0, device="cpu", dtype="fp32",
                             compile=use_compile)  # no dropout: compiled code draws its masks differently
        run = train(config, progress=False)
        adapters[use_compile] = load_file(run.adapter / "adapter_model.safetensors")
    assert compiled == ["Qwen3DecoderLayer"] * 2  # the tiny model's two layers, only when asked
    assert adapters[True].keys() == adapters[False].keys()
    for name, eager in adapters[False].items():
        torch.testing.assert_close(adapters[True][name], eager, rtol=1e-3, atol=1e-4)  # steps move ~1e-3
