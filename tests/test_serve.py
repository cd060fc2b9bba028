"""The REST API over a tiny trained run: answers match `Answerer.score`, a model trained to one letter is served
that letter, bad input is refused politely, the queue bounds every route (streams included), explanations take
turns and never hold up scoring, a request past its deadline gets 504 and its work stops, a client that leaves
frees its slot, and 50 concurrent clients are all answered right."""

import asyncio
import importlib.util
import json
import threading
import time
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from schemathesis.checks import positive_data_acceptance

from conftest import original_row, serving, write_jsonl
from medtune.answer import Answerer
from medtune.config import TrainConfig
from medtune.data import example_from_input
from medtune.serve import Settings, add_arguments, create_app, settings_from_args

QUESTION = {"question": "Which nerve is injured in wrist drop?",
            "options": ["Radial nerve", "Ulnar nerve", "Median nerve", "Axillary nerve"]}
FAST = Settings(api_key=None, max_new_tokens=6)  # short explanations keep the tiny model quick


@pytest.fixture(scope="module")
def answerer(tiny_run) -> Answerer:
    # fp32: batched scores then match one-at-a-time scores to ~1e-7; bf16 (auto on CPUs that have it) to ~2e-3
    return Answerer.from_run(tiny_run, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def client(answerer):
    with TestClient(create_app(answerer, FAST)) as test_client:
        yield test_client


def scored(answerer: Answerer, question: dict) -> dict:
    return answerer.score([example_from_input(question["question"], question["options"])])[0]


class Gate:
    """An Answerer whose scoring waits until the test opens the gate: makes queue states deterministic."""

    def __init__(self, answerer: Answerer):
        self.answerer, self.scored = answerer, []
        self.entered, self.opened = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.answerer, name)

    def score(self, examples):
        self.entered.set()
        assert self.opened.wait(30), "the test never opened the gate"
        self.scored += [example.question for example in examples]
        return self.answerer.score(examples)


class Held:
    """An Answerer whose explanations wait until the test opens the gate; it records every model call in order."""

    def __init__(self, answerer: Answerer):
        self.answerer, self.calls = answerer, []
        self.explaining, self.opened = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.answerer, name)

    def score(self, examples):
        self.calls.append(("score", [example.question for example in examples]))
        return self.answerer.score(examples)

    def explain(self, example, index, max_new_tokens=160, **options):
        self.calls.append(("explain", example.question))
        self.explaining.set()
        assert self.opened.wait(30), "the test never opened the gate"
        return self.answerer.explain(example, index, max_new_tokens, **options)


class Endless:
    """An Answerer whose explanation goes on for 30 s, a step every 10 ms, unless its stopping criteria end it
    (as `model.generate` checks them after each token). `stopped_after` is how long it ran once stopped."""

    def __init__(self, answerer: Answerer):
        self.answerer, self.stopped_after = answerer, None

    def __getattr__(self, name):
        return getattr(self.answerer, name)

    def explain(self, example, index, max_new_tokens=160, stopping_criteria=None, streamer=None):
        started, ids = time.monotonic(), torch.zeros((1, 1), dtype=torch.long)
        if streamer is not None:
            streamer.put(ids[0])  # the prompt, which the server's streamer skips
        for _ in range(3000):
            time.sleep(0.01)
            if streamer is not None:
                streamer.put(torch.tensor([self.tokenizer.encode(" word")[0]]))
            if stopping_criteria is not None and bool(stopping_criteria(ids, None).all()):
                self.stopped_after = time.monotonic() - started
                break
        if streamer is not None:
            streamer.end()
        return "endless"


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def assert_polite(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert field in detail, detail
    assert "Traceback" not in response.text and "/" not in detail.replace("medtune[serve]", "")


# ------------------------------------------------------------------ answers

def test_answer_equals_answerer_score_exactly(client, answerer):
    response = client.post("/v1/answer", json={**QUESTION, "explain": False})
    assert response.status_code == 200
    body = response.json()
    probs = scored(answerer, QUESTION)
    assert body["probs"] == probs  # exact: one question is scored alone, as Answerer.score scored it
    assert body["answer"] == max(probs, key=probs.get)
    assert body["explanation"] is None
    assert set(body) == {"answer", "probs", "explanation", "confidence", "abstain", "abstain_below",
                         "explanation_consistent", "calibrated", "model"}


def test_explanation_is_the_answerers(client, answerer):
    body = client.post("/v1/answer", json=QUESTION).json()
    expected = answerer.answer(QUESTION["question"], QUESTION["options"], explain=True, max_new_tokens=6)
    assert body["answer"] == expected.answer and body["explanation"] == expected.explanation


def test_batch_answers_each_question_in_order(client, answerer):
    questions = [{"question": f"Which option is number {i}?", "options": ["one", "two", "three"][: 2 + i % 2],
                  "explain": False} for i in range(5)]
    response = client.post("/v1/answer/batch", json={"questions": questions})
    assert response.status_code == 200
    answers = response.json()["answers"]
    assert len(answers) == len(questions)
    for answer, question in zip(answers, questions, strict=True):  # batched: equal to ~1e-7, not bit for bit
        assert answer["probs"] == pytest.approx(scored(answerer, question), abs=1e-5)


def test_stream_sends_answer_tokens_and_the_same_explanation(client, answerer):
    with client.stream("POST", "/v1/answer/stream", json=QUESTION) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    lines = [block.split("\n") for block in text.strip().split("\n\n")]
    events = [(name.removeprefix("event: "), json.loads(data.removeprefix("data: "))) for name, data in lines]
    names = [name for name, _ in events]
    assert names[0] == "answer" and names[-1] == "done" and "token" in names
    expected = answerer.answer(QUESTION["question"], QUESTION["options"], explain=True, max_new_tokens=6)
    assert events[0][1]["probs"] == scored(answerer, QUESTION)
    assert events[-1][1]["explanation"] == expected.explanation


def test_model_route_describes_the_run_without_server_paths(client, tiny_qwen3):
    body = client.get("/v1/model").json()
    expected = {"base_model": tiny_qwen3.name, "adapter": "run", "dtype": "fp32", "device": "cpu",
                "prompt_format": "chat"}
    assert {key: body.get(key) for key in expected} == expected
    assert not any(str(value).startswith("/") or str(tiny_qwen3) in str(value) for value in body.values()), body


def test_healthz_is_ok_once_loaded(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_healthz_is_503_until_the_model_is_loaded(answerer):
    loaded = threading.Event()

    def load():
        assert loaded.wait(30)
        return answerer

    with TestClient(create_app(load, FAST)) as test_client:
        assert test_client.get("/healthz").status_code == 503
        waiting = test_client.post("/v1/answer", json=QUESTION)
        assert waiting.status_code == 503 and "Retry-After" in waiting.headers
        loaded.set()
        wait_until(lambda: test_client.get("/healthz").status_code == 200)
        assert test_client.post("/v1/answer", json=QUESTION).status_code == 200


def test_page_shows_the_research_notice_and_loads_nothing_from_the_network(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "Research tool — not for clinical decisions" in response.text
    assert "http://" not in response.text and "https://" not in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/answer", "/v1/answer/batch", "/v1/answer/stream", "/v1/model", "/healthz"} <= set(paths)


def test_docs_pages_that_load_scripts_from_a_cdn_are_off_and_openapi_stays(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_a_model_trained_on_one_letter_is_served_that_letter(tiny_qwen3, tmp_path):
    """A known answer that does not come from `Answerer`: every training row's answer is C, so a model that
    memorized them must be served C with high probability; a random 2-layer model gives each letter ~1/4."""
    rows = [original_row(i, cop=2, exp=None) for i in range(8)]
    data = write_jsonl(tmp_path / "all-c.jsonl", rows)
    config = TrainConfig(model=str(tiny_qwen3), data=str(data), output=str(tmp_path / "run"), dev_size=0,
                         max_steps=40, batch_size=4, grad_accum=1, learning_rate=1e-2, lora_dropout=0.0,
                         warmup_ratio=0.1, eval_every=0, save_every=0, answer_base=0)
    from medtune.train import train

    train(config, progress=False)
    app = create_app(lambda: Answerer.from_run(tmp_path / "run", device="cpu", dtype="fp32"), FAST)
    with TestClient(app) as test_client:
        wait_until(lambda: test_client.get("/healthz").status_code == 200, 60)
        for row in rows:
            question = {"question": row["question"], "options": [row[k] for k in ("opa", "opb", "opc", "opd")],
                        "explain": False}
            body = test_client.post("/v1/answer", json=question).json()
            assert body["answer"] == "C" and body["probs"]["C"] > 0.9, body


# ------------------------------------------------------------------ bad input

def long_text(n: int) -> str:
    return "x" * n


BAD = [  # (case, body or raw text, status, field the message must name)
    ("empty question", {**QUESTION, "question": ""}, 422, "question"),
    ("blank question", {**QUESTION, "question": "   "}, 422, "question"),
    ("one option", {**QUESTION, "options": ["only"]}, 422, "options"),
    ("six options", {**QUESTION, "options": list("abcdef")}, 422, "options"),
    ("empty option", {**QUESTION, "options": ["yes", ""]}, 422, "options[1]"),
    ("blank option", {**QUESTION, "options": ["yes", "  "]}, 422, "options[1]"),
    ("duplicate options", {**QUESTION, "options": ["yes", "no", "yes"]}, 422, "options"),
    ("oversized question", {**QUESTION, "question": long_text(4001)}, 422, "question"),
    ("oversized option", {**QUESTION, "options": ["yes", long_text(1001)]}, 422, "options[1]"),
    ("question not a string", {**QUESTION, "question": 7}, 422, "question"),
    ("options not a list", {**QUESTION, "options": "yes,no"}, 422, "options"),
    ("option not a string", {**QUESTION, "options": ["yes", 2]}, 422, "options[1]"),
    ("explain not a boolean", {**QUESTION, "explain": "yes"}, 422, "explain"),
    ("missing options", {"question": "Why?"}, 422, "options"),
    ("extra field", {**QUESTION, "temperature": 0.7}, 422, "temperature"),
    ("body not an object", ["Why?"], 422, "body"),
    ("invalid JSON", '{"question": "Why?", ', 400, "body"),
    ("body too large", json.dumps({**QUESTION, "question": long_text(70_000)}), 413, "body"),
]


@pytest.mark.parametrize("case,body,status,field", BAD, ids=[case[0] for case in BAD])
def test_bad_input_is_refused_naming_the_field(client, case, body, status, field):
    if isinstance(body, str):
        response = client.post("/v1/answer", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v1/answer", json=body)
    assert_polite(response, status, f"'{field}'")


def test_bad_batch_item_is_named_by_its_index(client):
    questions = [QUESTION, {**QUESTION, "options": ["a", "a"]}]
    response = client.post("/v1/answer/batch", json={"questions": questions})
    assert_polite(response, 422, "questions[1]")


def test_server_keeps_serving_after_bad_input(client):
    for _, body, _, _ in BAD[:5]:
        client.post("/v1/answer", json=body)
    assert client.post("/v1/answer", json={**QUESTION, "explain": False}).status_code == 200


def test_a_failing_model_answers_a_generic_500_and_the_server_lives_on(answerer):
    class Broken(Gate):
        def score(self, examples):
            if examples[0].question.startswith("boom"):
                raise RuntimeError("/secret/path/model.safetensors exploded")
            return self.answerer.score(examples)

    with TestClient(create_app(Broken(answerer), FAST), raise_server_exceptions=False) as test_client:
        for route in ("/v1/answer", "/v1/answer/stream"):
            response = test_client.post(route, json={**QUESTION, "question": "boom?"})
            assert response.status_code == 500 and response.json() == {"detail": "internal error"}, route
        assert test_client.post("/v1/answer", json=QUESTION).status_code == 200


# ------------------------------------------------------------------ security

def test_api_key_is_required_when_set(answerer):
    with TestClient(create_app(answerer, Settings(api_key="s3cret", max_new_tokens=4))) as test_client:
        assert_polite(test_client.post("/v1/answer", json=QUESTION), 401, "API key")
        for wrong in ({"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            assert test_client.post("/v1/answer", json=QUESTION, headers=wrong).status_code == 401
        assert test_client.get("/v1/model").status_code == 401
        for right in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
            assert test_client.post("/v1/answer", json=QUESTION, headers=right).status_code == 200
        assert test_client.get("/healthz").status_code == 200 and test_client.get("/").status_code == 200


APP = Path(__file__).resolve().parents[1] / "app.py"


def load_space_app(monkeypatch, **environment) -> None:
    """Import app.py (the Space entry point) as the platform would; the model loads only when it serves."""
    for name in ("MEDTUNE_API_KEY", "MEDTUNE_RUN_DIR", "MEDTUNE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("medtune_space_app", APP)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_space_entry_point_warns_when_no_api_key_is_set(monkeypatch, capsys, tiny_run):
    load_space_app(monkeypatch, MEDTUNE_RUN_DIR=str(tiny_run))
    warning = capsys.readouterr().err
    assert "MEDTUNE_API_KEY" in warning and "0.0.0.0" in warning, warning


def test_space_entry_point_is_quiet_when_a_key_is_set(monkeypatch, capsys, tiny_run):
    load_space_app(monkeypatch, MEDTUNE_RUN_DIR=str(tiny_run), MEDTUNE_API_KEY="s3cret")
    assert "MEDTUNE_API_KEY" not in capsys.readouterr().err


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDTUNE_API_KEY", "from-env")
    assert Settings().api_key == "from-env" and "from-env" not in repr(Settings())


def test_cors_is_off_by_default_and_on_for_named_origins(client, answerer):
    preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/answer", headers=preflight).headers
    settings = Settings(api_key=None, cors_origins=("https://app.example.org",))
    with TestClient(create_app(answerer, settings)) as other:
        allowed = other.options("/v1/answer", headers=preflight).headers
        assert allowed["access-control-allow-origin"] == "https://app.example.org"


def test_cli_flags_are_documented_and_become_settings():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert all(action.help for action in parser._actions)
    args = parser.parse_args(["run", "--max-queue", "3", "--max-question-chars", "99", "--api-key", "k",
                              "--cors-origin", "https://a", "--cors-origin", "https://b",
                              "--request-timeout", "2.5", "--max-explanations", "3"])
    settings = settings_from_args(args)
    assert (settings.max_queue, settings.max_question_chars, settings.api_key) == (3, 99, "k")
    assert (settings.request_timeout, settings.max_explanations) == (2.5, 3)
    assert settings.cors_origins == ("https://a", "https://b")
    assert (args.host, args.port) == ("127.0.0.1", 8000)


# ------------------------------------------------------------------ the queue

async def _post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    return await client.post("/v1/answer", json=body)


def test_full_queue_answers_503_with_retry_after(answerer):
    gate = Gate(answerer)
    app = create_app(gate, Settings(api_key=None, max_queue=1, max_batch_size=1, max_wait_ms=0))
    queue = app.state.batcher.queue

    async def scenario():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            first = asyncio.create_task(_post(http, {**QUESTION, "explain": False}))
            await asyncio.to_thread(gate.entered.wait, 10)  # the worker holds the first question
            second = asyncio.create_task(_post(http, {**QUESTION, "explain": False}))
            while len(queue) < 1:
                await asyncio.sleep(0.01)
            refused = await _post(http, {**QUESTION, "explain": False})
            gate.opened.set()
            return refused, await first, await second

    refused, first, second = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert_polite(refused, 503, "queue")
    assert refused.headers["Retry-After"] == "1"
    assert (first.status_code, second.status_code) == (200, 200)


def test_a_client_that_hangs_up_frees_its_slot(answerer):
    gate = Gate(answerer)
    app = create_app(gate, Settings(api_key=None, max_queue=1, max_batch_size=1, max_wait_ms=0))
    queue, outcomes = app.state.batcher.queue, {}

    def ask(question: str, timeout: float) -> None:
        try:
            body = {**QUESTION, "question": question, "explain": False}
            outcomes[question] = httpx.post(f"{url}/v1/answer", json=body, timeout=timeout).status_code
        except httpx.ReadTimeout:
            outcomes[question] = "hung up"

    with serving(app) as url:
        clients = [threading.Thread(target=ask, args=("Who holds the model?", 30))]
        clients[0].start()
        assert gate.entered.wait(10)
        clients.append(threading.Thread(target=ask, args=("Who hangs up?", 1.0)))
        clients[1].start()
        wait_until(lambda: len(queue) == 1)  # queued behind the held question...
        clients[1].join(10)
        wait_until(lambda: len(queue) == 0)  # ...and gone once its client hung up, before its turn came
        clients.append(threading.Thread(target=ask, args=("Who comes late?", 30)))
        clients[2].start()
        wait_until(lambda: len(queue) == 1)  # the freed slot took a new question
        gate.opened.set()
        for thread in clients:
            thread.join(30)
    assert outcomes == {"Who holds the model?": 200, "Who hangs up?": "hung up", "Who comes late?": 200}
    assert gate.scored == ["Who holds the model?", "Who comes late?"]


def test_streamed_explanations_count_against_the_queue_bound(answerer):
    """Explanations are held; 4 waves of 3 streams arrive. One explanation may run and 3 questions may wait (the
    bound), so 4 streams are admitted and 8 refused, however the waves fall against the batches."""
    held = Held(answerer)
    app = create_app(held, Settings(api_key=None, max_queue=3, max_batch_size=3, max_wait_ms=500,
                                    max_new_tokens=4))
    streamed = {**QUESTION, "explain": True}

    async def scenario():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http:
            calls = []
            for _ in range(4):
                calls += [asyncio.create_task(http.post("/v1/answer/stream", json=streamed)) for _ in range(3)]
                await asyncio.sleep(0.3)
            deadline = time.monotonic() + 10
            refused = []
            while len(refused) < 8 and time.monotonic() < deadline:
                refused = [c for c in calls if c.done() and c.result().status_code == 503]
                await asyncio.sleep(0.05)
            held.opened.set()
            return len(refused), await asyncio.gather(*calls)

    refused, responses = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert refused == 8, [response.status_code for response in responses]
    assert sorted(response.status_code for response in responses) == [200] * 4 + [503] * 8
    for response in responses:
        if response.status_code == 200:
            assert response.text.rstrip().split("\n\n")[-1].startswith("event: done")


def explained_batch(name: str, n: int) -> dict:
    return {"questions": [{**QUESTION, "question": f"{name}{i}?"} for i in range(n)]}


def test_explanations_take_turns_and_never_hold_up_scoring(answerer):
    """A asks 4 explanations; while the model explains A0, B asks 2 and C asks for a score only. C is scored
    right after A0 (with B's questions), then the requests take turns: B0 before A1."""
    held = Held(answerer)
    app = create_app(held, Settings(api_key=None, max_new_tokens=2, max_wait_ms=0))
    queue = app.state.batcher.queue

    async def scenario():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http:
            a = asyncio.create_task(http.post("/v1/answer/batch", json=explained_batch("A", 4)))
            await asyncio.to_thread(held.explaining.wait, 10)
            b = asyncio.create_task(http.post("/v1/answer/batch", json=explained_batch("B", 2)))
            c = asyncio.create_task(_post(http, {**QUESTION, "question": "C?", "explain": False}))
            while len(queue) < 3 + 2 + 1:  # A's three explanations to come, B's two questions and C
                await asyncio.sleep(0.01)
            held.opened.set()
            return await asyncio.gather(a, b, c)

    responses = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert held.calls[:3] == [("score", ["A0?", "A1?", "A2?", "A3?"]), ("explain", "A0?"),
                              ("score", ["B0?", "B1?", "C?"])]
    assert [q for kind, q in held.calls if kind == "explain"] == ["A0?", "B0?", "A1?", "B1?", "A2?", "A3?"]


def test_a_request_may_ask_for_at_most_max_explanations(answerer):
    with TestClient(create_app(answerer, Settings(api_key=None, max_explanations=2, max_new_tokens=2))) as http:
        refused = http.post("/v1/answer/batch", json=explained_batch("Q", 3))
        assert_polite(refused, 422, "'questions'")
        assert "3 ask for an explanation" in refused.json()["detail"] and "at most 2" in refused.json()["detail"]
        two = explained_batch("Q", 3)
        two["questions"][2]["explain"] = False
        assert http.post("/v1/answer/batch", json=two).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_its_waiting_work_is_dropped(answerer):
    gate = Gate(answerer)
    app = create_app(gate, Settings(api_key=None, max_batch_size=1, max_wait_ms=0, request_timeout=0.5))
    queue = app.state.batcher.queue

    async def scenario():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as http:
            first = asyncio.create_task(_post(http, {**QUESTION, "question": "Who holds the model?"}))
            await asyncio.to_thread(gate.entered.wait, 10)
            second = await _post(http, {**QUESTION, "question": "Who waits?"})  # its deadline passes in the queue
            left_in_queue = len(queue)
            gate.opened.set()
            after = await _post(http, {**QUESTION, "question": "Who comes after?", "explain": False})
            return await first, second, left_in_queue, after

    first, second, left_in_queue, after = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert_polite(second, 504, "0.5 s")
    assert "--request-timeout" in second.json()["detail"]
    assert first.status_code == 504 and left_in_queue == 0
    assert after.status_code == 200
    assert gate.scored == ["Who holds the model?", "Who comes after?"]  # the dropped question never ran


def test_a_generation_past_its_deadline_is_stopped_not_left_running(answerer):
    endless = Endless(answerer)
    settings = Settings(api_key=None, request_timeout=1.0, max_new_tokens=4)
    with TestClient(create_app(endless, settings)) as http:
        started = time.monotonic()
        response = http.post("/v1/answer", json=QUESTION)
        assert_polite(response, 504, "1 s")
        assert time.monotonic() - started < 5
        wait_until(lambda: endless.stopped_after is not None, 10)
        assert endless.stopped_after < 3  # stopped near its deadline, not after its 30 s
        assert http.post("/v1/answer", json={**QUESTION, "explain": False}).status_code == 200


def test_a_client_that_hangs_up_mid_explanation_stops_its_generation(answerer):
    endless = Endless(answerer)
    with serving(create_app(endless, Settings(api_key=None, max_new_tokens=4))) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/answer", json=QUESTION, timeout=1.0)
        wait_until(lambda: endless.stopped_after is not None, 10)
    assert endless.stopped_after < 5  # not its 30 s


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_its_generation_stops(answerer):
    endless = Endless(answerer)
    settings = Settings(api_key=None, request_timeout=1.0, max_new_tokens=4)
    with TestClient(create_app(endless, settings)) as http:
        text = http.post("/v1/answer/stream", json=QUESTION).text
        blocks = text.strip().split("\n\n")
        assert blocks[0].startswith("event: answer") and blocks[1].startswith("event: token")
        name, data = blocks[-1].split("\n")
        assert name == "event: error" and "took longer than 1 s" in json.loads(data.removeprefix("data: "))["detail"]
        wait_until(lambda: endless.stopped_after is not None, 10)
        assert endless.stopped_after < 3


def clear_winners(answerer: Answerer, n: int) -> list[tuple[dict, dict]]:
    """Questions whose top option leads by a margin far above batching's ~1e-6 noise, with their scores."""
    found = []
    for i in range(4 * n):
        question = {"question": f"Patient {i} presents with fever. Most likely cause?",
                    "options": [f"cause {i}", f"agent {i + 1}", f"factor {2 * i}", "none"][: 2 + i % 3]}
        probs = scored(answerer, question)
        top = sorted(probs.values(), reverse=True)
        if top[0] - top[1] > 1e-4:
            found.append((question, probs))
    assert len(found) >= n
    return found[:n]


def test_200_requests_from_50_concurrent_clients_are_all_answered_right(answerer):
    questions = clear_winners(answerer, 25)
    app = create_app(answerer, Settings(api_key=None))

    async def one_client(http: httpx.AsyncClient, k: int) -> list[tuple[dict, httpx.Response]]:
        results = []
        for j in range(4):
            question, probs = questions[(4 * k + j) % len(questions)]
            results.append((probs, await http.post("/v1/answer", json={**question, "explain": False})))
        return results

    async def load(url: str):
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            return [r for client_results in await asyncio.gather(*(one_client(http, k) for k in range(50)))
                    for r in client_results]

    with serving(app) as url:
        results = asyncio.run(load(url))
    assert len(results) == 200
    assert [response.status_code for _, response in results] == [200] * 200
    for probs, response in results:
        body = response.json()
        assert body["answer"] == max(probs, key=probs.get)
        assert body["probs"] == pytest.approx(probs, abs=1e-5)
    sizes = app.state.batcher.batch_sizes
    assert sum(size * count for size, count in sizes.items()) == 200  # every question scored exactly once
    assert max(sizes) > 1, sizes  # and some of them together


# ------------------------------------------------------------------ the OpenAPI contract

CONTRACT = Settings(api_key=None, max_new_tokens=2, max_queue=8)  # small batches, short explanations
# The document depends only on the settings, so it can be read before any model is loaded.
api = schemathesis.openapi.from_dict(create_app(answerer=None, settings=CONTRACT).openapi())


@pytest.fixture(scope="module")
def contract_server(answerer):
    with serving(create_app(answerer, CONTRACT)) as url:
        yield url


@api.parametrize()
@hypothesis.settings(max_examples=30, deadline=None, derandomize=True,  # the same cases on every CI run
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_no_generated_request_gets_a_server_error(case, contract_server):
    # Every default check but "schema-valid data is accepted": options that differ only in surrounding spaces
    # are duplicates here, which JSON Schema's uniqueItems cannot say.
    case.call_and_validate(base_url=contract_server, timeout=30, excluded_checks=[positive_data_acceptance])
