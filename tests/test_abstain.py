"""Abstention: an answer says "abstain" when its top probability is below the threshold asked for (and always
for a tie), keeps its letter and probabilities either way, and reports whether they are calibrated -- in the
Python API, `medtune ask` and the server (where a request's own threshold overrides the server's default)."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import serving
from medtune.answer import Answerer, abstains, check_threshold, scored_answer
from medtune.cli import main
from medtune.serve import Settings, add_arguments, create_app, settings_from_args

QUESTION = {"question": "Which nerve is injured in wrist drop?",
            "options": ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"]}
ITEMS = [(QUESTION["question"], QUESTION["options"]), ("Which vitamin prevents scurvy?", ["C", "D", "K"])]


@pytest.fixture(scope="module")
def answerer(tiny_run) -> Answerer:
    return Answerer.from_run(tiny_run, device="cpu", dtype="fp32")


def test_confidence_is_the_top_probability_and_a_tie_always_abstains():
    answer = scored_answer({"A": 0.2, "B": 0.5, "C": 0.3})
    assert (answer.answer, answer.confidence, answer.abstain, answer.calibrated) == ("B", 0.5, False, False)
    assert scored_answer({"A": 0.2, "B": 0.5, "C": 0.3}, abstain_below=0.6).abstain is True
    assert scored_answer({"A": 0.2, "B": 0.5, "C": 0.3}, abstain_below=0.5).abstain is False  # below, not at
    tie = scored_answer({"A": 0.4, "B": 0.4, "C": 0.2})
    assert tie.answer is None and tie.abstain is True
    assert abstains("A", 0.0, 0.0) is False  # 0 never abstains


def test_answer_many_abstains_above_the_confidence_and_not_below_it(answerer):
    confident = answerer.answer_many(ITEMS, abstain_below=0.0)
    assert [a.abstain for a in confident] == [False, False]
    doubtful = answerer.answer_many(ITEMS, abstain_below=0.99)  # a random 2-layer model is never 99% sure
    assert [a.abstain for a in doubtful] == [True, True]
    for kept, given in zip(doubtful, confident, strict=True):  # the letter and probabilities are kept
        assert (kept.answer, kept.probs, kept.confidence) == (given.answer, given.probs, given.confidence)
        assert kept.confidence == max(kept.probs.values())
        assert kept.calibrated is False  # the tiny run has no calibration.json
    middle = sorted(a.confidence for a in confident)[0] + 1e-6  # just above the lower confidence
    assert sorted(a.abstain for a in answerer.answer_many(ITEMS, abstain_below=middle)) == [False, True]
    assert [a.abstain for a in answerer.answer_many(ITEMS)] == [False, False]  # no threshold: only ties


def test_an_answerer_with_a_temperature_says_calibrated(answerer, monkeypatch):
    monkeypatch.setattr(answerer, "temperature", 1.5, raising=False)
    assert answerer.answer_many(ITEMS[:1])[0].calibrated is True


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.5", True, float("nan")])
def test_an_invalid_threshold_is_refused_with_a_sentence(answerer, threshold):
    with pytest.raises(ValueError, match=r"abstain_below is .*; it must be a probability from 0 to 1"):
        answerer.answer_many(ITEMS, abstain_below=threshold)
    assert check_threshold(1) == 1.0 and check_threshold(None) is None


def test_ask_says_plainly_that_the_model_abstains(tiny_run, capsys):
    ask = ["ask", str(tiny_run), "--question", QUESTION["question"], *sum((["--option", o] for o in
                                                                           QUESTION["options"]), []), "--no-explain"]
    assert main([*ask, "--abstain-below", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "The model abstains: confidence 0." in out and "is below 0.99" in out
    assert out.splitlines()[0].startswith("Answer: ")  # the letter is still given
    assert main([*ask, "--abstain-below", "0.99", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["abstain"] is True and answer["abstain_below"] == 0.99 and answer["answer"] in "ABCD"
    assert answer["confidence"] == max(answer["probs"].values()) and answer["calibrated"] is False
    assert answer["explanation_consistent"] is None  # no explanation asked for
    assert main([*ask, "--abstain-below", "0"]) == 0
    assert "abstains" not in capsys.readouterr().out


def test_ask_refuses_an_invalid_threshold_before_loading_the_model(capsys):
    assert main(["ask", "/nonexistent-run", "--question", "Q?", "--option", "a", "--option", "b",
                 "--abstain-below", "60"]) == 2
    err = capsys.readouterr().err
    assert "--abstain-below is 60.0; it must be a probability from 0 to 1" in err and "nonexistent" not in err


# ------------------------------------------------------------------ the server

def test_a_request_threshold_overrides_the_server_default(answerer):
    settings = Settings(api_key=None, max_new_tokens=4, abstain_below=0.99)
    with TestClient(create_app(answerer, settings)) as client:
        default = client.post("/v1/answer", json={**QUESTION, "explain": False}).json()
        assert default["abstain"] is True and default["abstain_below"] == 0.99
        assert default["answer"] in "ABCD" and default["confidence"] == max(default["probs"].values())
        own = client.post("/v1/answer", json={**QUESTION, "explain": False, "abstain_below": 0.0}).json()
        assert own["abstain"] is False and own["abstain_below"] == 0.0
        assert (own["answer"], own["probs"]) == (default["answer"], default["probs"])
        batch = client.post("/v1/answer/batch", json={"questions": [
            {**QUESTION, "explain": False}, {**QUESTION, "explain": False, "abstain_below": 0}]}).json()
        assert [a["abstain"] for a in batch["answers"]] == [True, False]


def test_without_a_default_only_a_request_threshold_abstains(answerer):
    with TestClient(create_app(answerer, Settings(api_key=None, max_new_tokens=4))) as client:
        plain = client.post("/v1/answer", json={**QUESTION, "explain": False}).json()
        assert plain["abstain"] is False and plain["abstain_below"] is None
        assert client.post("/v1/answer", json={**QUESTION, "explain": False, "abstain_below": 1}).json()["abstain"]


def test_every_response_shape_carries_confidence_abstain_and_consistency(answerer):
    """Over a real server: single, batch and stream (the stream's `answer` event has the abstention, its
    `done` event the consistency of the finished explanation)."""
    with serving(create_app(answerer, Settings(api_key=None, max_new_tokens=8))) as url:
        body = {**QUESTION, "abstain_below": 0.99}
        single = httpx.post(f"{url}/v1/answer", json=body, timeout=60).json()
        assert {"confidence", "abstain", "explanation_consistent", "calibrated"} <= set(single)
        assert single["abstain"] is True and isinstance(single["explanation_consistent"], bool)
        expected = answerer.answer(QUESTION["question"], QUESTION["options"], max_new_tokens=8)
        assert single["explanation"] == expected.explanation
        assert single["explanation_consistent"] == expected.explanation_consistent
        batch = httpx.post(f"{url}/v1/answer/batch", json={"questions": [body]}, timeout=60).json()["answers"][0]
        assert (batch["abstain"], batch["explanation_consistent"]) == (True, single["explanation_consistent"])
        with httpx.stream("POST", f"{url}/v1/answer/stream", json=body, timeout=60) as response:
            text = response.read().decode()
    events = {block.split("\n")[0].removeprefix("event: "): json.loads(block.split("\n")[1].removeprefix("data: "))
              for block in text.strip().split("\n\n")}
    assert events["answer"]["abstain"] is True and events["answer"]["confidence"] == single["confidence"]
    assert events["done"] == {"explanation": single["explanation"],
                              "explanation_consistent": single["explanation_consistent"]}


@pytest.mark.parametrize("threshold,message", [
    (1.5, "request: field 'abstain_below': Input should be less than or equal to 1"),
    (-0.2, "request: field 'abstain_below': Input should be greater than or equal to 0"),
    ("high", "request: field 'abstain_below': Input should be a valid number"),
])
def test_an_invalid_request_threshold_is_a_422_naming_the_field(answerer, threshold, message):
    with TestClient(create_app(answerer, Settings(api_key=None))) as client:
        response = client.post("/v1/answer", json={**QUESTION, "abstain_below": threshold})
    assert response.status_code == 422 and response.json() == {"detail": message}


def test_serve_abstain_below_flag_sets_the_default_and_is_checked():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args(["run", "--abstain-below", "0.6"])).abstain_below == 0.6
    assert settings_from_args(parser.parse_args(["run"])).abstain_below is None
    with pytest.raises(ValueError, match="serve setting abstain_below is 2.0; it must be a probability from 0 to 1"):
        settings_from_args(parser.parse_args(["run", "--abstain-below", "2"]))
