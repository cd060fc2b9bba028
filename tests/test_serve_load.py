"""The server under load, on loopback only: 1,000 requests from 100 concurrent clients mixing scores, explanations,
streams, batches and bad input against a real uvicorn server over a tiny trained run. Nothing is lost: every
request gets exactly one response, each a 2xx/4xx/503/504 that fits what was asked; afterwards no request state
is left and the process's memory is flat."""

import asyncio
import ctypes
import gc
import json
import threading
import time
import weakref
from collections import Counter

import httpx
import pytest

from conftest import serving
from medtune.answer import Answerer
from medtune.serve import Settings, create_app
from medtune.web.batching import _Job

CLIENTS, PER_CLIENT = 100, 10
# Small enough that 100 clients overrun the queue (503s happen), short explanations (the tiny model is quick),
# a deadline that a request stuck behind the whole queue can pass (504s may happen).
LOADED = Settings(api_key=None, max_new_tokens=4, max_queue=48, max_batch_size=16, max_explanations=2,
                  request_timeout=20.0)
# One client's requests, in turn; client k starts at slot k, so every kind is in flight at every moment.
KINDS = ["score", "explain", "stream", "score", "batch", "bad", "stream", "score", "explain", "bad"]
BAD = [  # (body or raw text, the status it must get)
    ('{"question": "Why?", ', 400),
    ({"question": "Why?", "options": ["yes", ""]}, 422),
    ({"question": "Why?", "options": ["yes", "no"], "explain": "yes"}, 422),
    ({"question": "x" * 70_000, "options": ["yes", "no"]}, 413),
]
# RSS may grow by this much over 1,000 requests after a warm-up round: glibc keeps freed arenas and torch its
# caches, which moves RSS by a few MiB from run to run. Request state that leaked (a job keeps its question,
# futures, answer, a stream's queue: ~10 KiB) would be ~10 MiB per 1,000; the exact check is the count of live
# jobs below, which must be 0.
RSS_TOLERANCE_MIB = 25


@pytest.fixture(scope="module")
def answerer(tiny_run) -> Answerer:
    return Answerer.from_run(tiny_run, device="cpu", dtype="fp32")


class Counted:
    """ASGI wrapper that counts how many responses each HTTP request started: exactly one, or it is lost."""

    def __init__(self, app):
        self.app, self.starts = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = [0]
        self.starts.append(started)

        async def counting(message):
            if message["type"] == "http.response.start":
                started[0] += 1
            await send(message)

        await self.app(scope, receive, counting)


def question(k: int, j: int, explain: bool) -> dict:
    options = [f"agent {k}", f"cause {j}", f"factor {k + j}", "none of these"][: 2 + (k + j) % 3]
    return {"question": f"Patient {k}-{j} presents with fever. Most likely cause?", "options": options,
            "explain": explain}


async def one_request(http: httpx.AsyncClient, k: int, j: int) -> dict:
    kind = KINDS[(k + j) % len(KINDS)]
    sent, expected = question(k, j, explain=kind != "score"), None
    if kind in ("score", "explain"):
        response = await http.post("/v1/answer", json=sent)
    elif kind == "stream":
        response = await http.post("/v1/answer/stream", json=sent)
    elif kind == "batch":
        sent = {"questions": [question(k, j, explain=i == 0) for i in range(3)]}
        response = await http.post("/v1/answer/batch", json=sent)
    else:
        body, expected = BAD[(k + j) // len(KINDS) % len(BAD)]  # each bad body in turn
        raw = body if isinstance(body, str) else json.dumps(body)
        response = await http.post("/v1/answer", content=raw, headers={"Content-Type": "application/json"})
    return {"kind": kind, "sent": sent, "expected": expected, "status": response.status_code, "text": response.text}


async def load(url: str, clients: int) -> list[dict]:
    async def client(http, k):
        return [await one_request(http, k, j) for j in range(PER_CLIENT)]

    # Idle connections expire on the client first (2 s < uvicorn's 5 s keep-alive): otherwise the server may close
    # one just as a client sends on it, and that request fails with ReadError before the server sees it.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        per_client = await asyncio.gather(*(client(http, k) for k in range(clients)))
    return [result for results in per_client for result in results]


def check_answer(answer: dict, sent: dict) -> None:
    letters = "ABCDE"[: len(sent["options"])]
    assert set(answer["probs"]) == set(letters), answer
    assert abs(sum(answer["probs"].values()) - 1) < 1e-4, answer
    assert answer["answer"] == max(answer["probs"], key=answer["probs"].get)
    assert (answer["explanation"] is None) == (not sent["explain"]), answer


def check_stream(text: str, sent: dict) -> None:
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in text.strip().split("\n\n")]
    names = [name for name, _ in events]
    assert names[0] == "answer" and set(names[1:-1]) <= {"token"}, names
    assert names[-1] in ("done", "error"), names
    if names[-1] == "error":  # the only error a healthy server may end a stream with: its deadline
        assert "took longer than" in events[-1][1]["detail"], events[-1]
    letters = "ABCDE"[: len(sent["options"])]
    assert set(events[0][1]["probs"]) == set(letters)


def check(result: dict) -> None:
    kind, status, text = result["kind"], result["status"], result["text"]
    if kind == "bad":
        assert status == result["expected"], result
        assert set(json.loads(text)) == {"detail"}
        return
    assert status in (200, 503, 504), result
    if status != 200:
        detail = json.loads(text)["detail"]
        assert ("queue is full" if status == 503 else "took longer than") in detail, detail
    elif kind == "stream":
        check_stream(text, result["sent"])
    elif kind == "batch":
        answers = json.loads(text)["answers"]
        assert len(answers) == 3
        for answer, sent in zip(answers, result["sent"]["questions"], strict=True):
            check_answer(answer, sent)
    else:
        check_answer(json.loads(text), result["sent"])


def rss_mib() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS shows what is still held
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def live_jobs() -> list[_Job]:
    gc.collect()
    return [thing for thing in gc.get_objects() if isinstance(thing, _Job)]


def test_1000_requests_from_100_clients_are_each_answered_once_and_memory_stays_flat(answerer):
    counted = Counted(create_app(answerer, LOADED))
    batcher = counted.app.state.batcher
    with serving(counted) as url:
        asyncio.run(load(url, clients=10))  # warm-up: 100 requests fill torch's and the allocator's caches
        counted.starts.clear()
        rss_before, threads_before = rss_mib(), threading.active_count()
        earlier = weakref.WeakSet(live_jobs())  # e.g. other tests' jobs that their tracebacks still hold
        started, cpu = time.monotonic(), time.process_time()
        results = asyncio.run(load(url, clients=CLIENTS))
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        deadline = time.monotonic() + 5
        while (batcher.queue.live or len(batcher.queue)) and time.monotonic() < deadline:
            time.sleep(0.05)  # a job whose client already has its answer may settle a moment later
        left = (len(batcher.queue.live), len(batcher.queue))
        # counted while the server runs: its loop's pending timers, say, would hold jobs until it closes
        jobs_alive = len([job for job in live_jobs() if job not in earlier])
        rss_after, threads_after = rss_mib(), threading.active_count()
    assert len(results) == CLIENTS * PER_CLIENT
    assert [count for (count,) in counted.starts] == [1] * len(results)  # the server answered each exactly once
    for result in results:
        check(result)
    by_status = Counter((result["kind"], result["status"]) for result in results)
    print(f"\n{len(results)} requests in {seconds:.1f} s ({cpu:.1f} CPU s); RSS {rss_before:.0f} -> "
          f"{rss_after:.0f} MiB; {sorted(by_status.items())}")
    for kind in ("score", "explain", "stream", "batch"):
        assert by_status.get((kind, 200), 0) > 0, by_status  # every kind was really served, not only refused
    assert left == (0, 0)
    assert jobs_alive == 0  # no request state survives its request
    assert threads_after <= threads_before
    assert rss_after - rss_before < RSS_TOLERANCE_MIB, (rss_before, rss_after)
