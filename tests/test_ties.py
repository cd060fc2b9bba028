"""A question whose top options tie exactly gets no letter anywhere: `medtune eval` counts it wrong, and ask,
the Python API and the server answer null with no explanation, instead of a position tie-break that favours "A".

The tie is real, not mocked: the tiny model's tied embedding rows for " A".." D" are made identical, so every
letter gets exactly the same logit."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

from medtune.answer import Answerer, chosen_letter
from medtune.cli import main
from medtune.data import MCQExample
from medtune.evaluate import evaluate
from medtune.serve import Settings, create_app
from medtune.tokenization import letter_token_ids

QUESTION = {"question": "Which nerve is injured in wrist drop?",
            "options": ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"]}


@pytest.fixture(scope="module")
def tied(tiny_qwen3) -> Answerer:
    answerer = Answerer.from_model(str(tiny_qwen3), device="cpu", dtype="fp32", prompt_format="plain")
    ids = letter_token_ids(answerer.tokenizer, answerer.template, 4)
    with torch.no_grad():
        head = answerer.model.get_output_embeddings().weight
        head[ids] = head[ids[0]].clone()  # four identical rows: four identical logits
    return answerer


def test_chosen_letter_is_none_only_for_an_exact_top_tie():
    assert chosen_letter({"A": 0.4, "B": 0.4, "C": 0.2}) is None
    assert chosen_letter({"A": 0.2, "B": 0.4, "C": 0.4}) is None
    assert chosen_letter({"A": 0.3, "B": 0.3, "C": 0.4}) == "C"  # a tie below the top is no tie
    assert chosen_letter({"A": 0.4, "B": 0.3999999, "C": 0.2000001}) == "A"


def test_a_tied_question_is_counted_wrong_by_eval(tied):
    examples = [MCQExample("q", QUESTION["question"], tuple(QUESTION["options"]), 0)]
    metrics, predictions = evaluate(tied.model, tied.tokenizer, tied.template, examples, progress=False)
    assert predictions[0]["pred"] is None and metrics["ties"] == 1 and metrics["accuracy"] == 0.0
    assert set(predictions[0]["probs"].values()) == {0.25}


def test_a_tied_question_gets_no_letter_and_no_explanation_from_the_api(tied):
    answer = tied.answer(QUESTION["question"], QUESTION["options"], explain=True, max_new_tokens=4)
    assert answer.answer is None and answer.explanation is None
    assert len(set(answer.probs.values())) == 1 and sum(answer.probs.values()) == pytest.approx(1)


def test_ask_says_the_options_tie(tied, tiny_qwen3, capsys, monkeypatch):
    monkeypatch.setattr(Answerer, "from_model", classmethod(lambda cls, *args, **kwargs: tied))
    argv = ["ask", "--model", str(tiny_qwen3), "--question", QUESTION["question"],
            *(item for option in QUESTION["options"] for item in ("--option", option))]
    assert main(argv) == 0
    assert "Answer: none: the top options tie exactly" in capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] is None


def test_the_server_answers_null_and_the_stream_ends(tied):
    with TestClient(create_app(tied, Settings(api_key=None, max_new_tokens=4))) as client:
        body = client.post("/v1/answer", json=QUESTION).json()
        assert body["answer"] is None and body["explanation"] is None
        batch = client.post("/v1/answer/batch", json={"questions": [QUESTION, QUESTION]}).json()
        assert [a["answer"] for a in batch["answers"]] == [None, None]
        with client.stream("POST", "/v1/answer/stream", json=QUESTION) as response:
            text = response.read().decode()
    events = [block.split("\n")[0].removeprefix("event: ") for block in text.strip().split("\n\n")]
    assert events == ["answer", "done"]
