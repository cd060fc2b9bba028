"""The wiring proof: a model trained on 32 real MedMCQA questions, explanations included, answers those same 32
correctly and has learned to continue with their explanations."""

import json

from conftest import MEDMCQA, write_jsonl
from medtune.answer import Answerer
from medtune.config import TrainConfig
from medtune.data import load_examples
from medtune.train import train

EXPLANATION_WORDS = 12  # the real explanations, cut to their first words: a 2-layer model has little capacity


def test_training_with_explanations_memorizes_32_questions(tiny_qwen3, tmp_path):
    rows = [json.loads(line) for line in (MEDMCQA / "train-sample-original.jsonl").open()][:60]
    rows = [dict(row, exp=" ".join(row["exp"].split()[:EXPLANATION_WORDS])) for row in rows
            if all(row[k] for k in ("opa", "opb", "opc", "opd")) and len((row["exp"] or "").split())
            >= EXPLANATION_WORDS][:32]
    data = write_jsonl(tmp_path / "32.jsonl", rows)
    config = TrainConfig(model=str(tiny_qwen3), data=str(data), output=str(tmp_path / "run"), dev_size=0,
                         max_steps=200, batch_size=8, grad_accum=1, learning_rate=1e-2, lora_dropout=0.0,
                         warmup_ratio=0.1, eval_every=0, save_every=0)
    train(config, progress=False)
    examples, _ = load_examples(str(data))
    assert len(examples) == 32 and all(e.explanation for e in examples)  # every row trains on its explanation
    probs = Answerer.from_run(tmp_path / "run", device="cpu").score(examples)
    correct = sum(max(p, key=p.get) == e.letters[e.answer] for p, e in zip(probs, examples))
    gold_counts = [sum(e.answer == k for e in examples) for k in range(4)]
    assert max(gold_counts) / 32 < 0.9  # always answering one letter could not pass
    assert correct / 32 >= 0.9, f"{correct}/32"
    # the loss averages over letter, option text and explanation (the explanation is most of a row's ~25
    # supervised tokens): perfect letters and option texts alone would lower it by about a quarter
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()
              if "loss" in json.loads(line)]
    assert losses[-1] < 0.7 * losses[0], losses
