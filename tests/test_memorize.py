"""The wiring proof: a model trained on 32 real MedMCQA questions answers those same 32 correctly."""

import json

from conftest import MEDMCQA, write_jsonl
from medtune.answer import Answerer
from medtune.config import TrainConfig
from medtune.data import load_examples
from medtune.train import train


def test_training_memorizes_32_questions(tiny_qwen3, tmp_path):
    rows = [json.loads(line) for line in (MEDMCQA / "train-sample-original.jsonl").open()][:40]
    rows = [dict(row, exp=None) for row in rows if all(row[k] for k in ("opa", "opb", "opc", "opd"))][:32]
    data = write_jsonl(tmp_path / "32.jsonl", rows)
    config = TrainConfig(model=str(tiny_qwen3), data=str(data), output=str(tmp_path / "run"), dev_size=0,
                         max_steps=150, batch_size=8, grad_accum=1, learning_rate=1e-2, lora_dropout=0.0,
                         warmup_ratio=0.1, eval_every=0, save_every=0)
    train(config, progress=False)
    examples, _ = load_examples(str(data))
    probs = Answerer.from_run(tmp_path / "run", device="cpu").score(examples)
    correct = sum(max(p, key=p.get) == e.letters[e.answer] for p, e in zip(probs, examples))
    gold_counts = [sum(e.answer == k for e in examples) for k in range(4)]
    assert max(gold_counts) / 32 < 0.9  # always answering one letter could not pass
    assert correct / 32 >= 0.9, f"{correct}/32"
