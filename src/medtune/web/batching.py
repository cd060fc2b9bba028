"""Dynamic batching for `medtune serve`: a bounded queue of questions and one worker that feeds the model.

The worker alternates: it scores every waiting question it can take (up to `max_batch_size`, waiting at
most `max_wait_ms` for a first one to gain company) in one `Answerer.score` call, then generates one
explanation. So a question to score never waits behind more than one explanation, and requests take
turns at explanations: the request that has had the fewest goes next, so one batch of explanations
cannot hold the model for everyone. Every model call runs on one thread: torch calls would block the
event loop, and one thread keeps the model's memory and CPU use predictable.

Every request has a deadline. When it passes, its questions leave the queue, an explanation being
generated stops at its next token (a stopping criterion), and the request fails with `RequestTimeout`.
"""

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from medtune.answer import Answer, scored_answer, with_explanation
from medtune.data import LETTERS, MCQExample

log = logging.getLogger("medtune.serve")


class RequestTimeout(Exception):
    """A request's deadline passed before its answers were ready; its work was dropped."""


@dataclass(eq=False)
class _Request:
    number: int  # arrival order: breaks ties between requests that have had as many explanations
    explained: int = 0  # explanations generated for it so far: the fewest goes next


@dataclass(eq=False)  # identity equality: two clients may send the same question
class _Job:
    example: MCQExample
    explain: bool
    future: asyncio.Future  # settled once: an Answer, an exception, or cancelled because the client left
    request: _Request
    streamer: object = None  # streams only: receives the explanation's text as it is generated
    scored: asyncio.Future | None = None  # streams only: the Answer before its explanation
    answer: Answer | None = None  # once scored
    stop: threading.Event = field(default_factory=threading.Event)  # set once settled: generation ends


class _JobQueue:
    """What waits for the model: questions to score (first come, first served) and explanations to generate
    (by turns). `len()` counts the questions whose last model call has not started yet, which is what
    `limit` bounds: a question that will be explained holds its slot until its explanation starts."""

    def __init__(self, limit: int):
        self.limit, self._arrived = limit, asyncio.Event()
        self._counted: set[_Job] = set()
        self._scoring: deque[_Job] = deque()
        self._explaining: dict[_Request, deque[_Job]] = {}
        self.live: set[_Job] = set()  # admitted and not yet settled, wherever they are

    def __len__(self) -> int:
        return len(self._counted)

    def put_all(self, jobs: list[_Job]) -> bool:
        """Admit every job or none: a batch request is never half-queued."""
        if len(self._counted) + len(jobs) > self.limit:
            return False
        self._counted.update(jobs)
        self.live.update(jobs)
        self._scoring.extend(jobs)
        self._arrived.set()
        return True

    def forget(self, job: _Job) -> None:
        """A settled or cancelled job leaves at once, so a client that hangs up or runs out of time frees its
        slot (an asyncio.Queue cannot drop an item from its middle)."""
        self._counted.discard(job)
        self.live.discard(job)
        with suppress(ValueError):
            self._scoring.remove(job)
        waiting = self._explaining.get(job.request)
        if waiting is not None:
            with suppress(ValueError):
                waiting.remove(job)
            if not waiting:
                del self._explaining[job.request]

    async def take_scoring(self, limit: int, wait_s: float) -> list[_Job]:
        """Up to `limit` questions to score, after at most `wait_s` for others to join the first."""
        deadline = time.monotonic() + wait_s
        while len(self._scoring) < limit and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        jobs = [self._scoring.popleft() for _ in range(min(limit, len(self._scoring)))]
        self._counted.difference_update(job for job in jobs if not job.explain)
        return jobs

    def add_explanation(self, job: _Job) -> None:
        self._explaining.setdefault(job.request, deque()).append(job)

    def next_explanation(self) -> _Job | None:
        """The next explanation of the request that has had the fewest (the earliest among equals)."""
        if not self._explaining:
            return None
        request = min(self._explaining, key=lambda r: (r.explained, r.number))
        job = self._explaining[request].popleft()
        if not self._explaining[request]:
            del self._explaining[request]
        request.explained += 1
        self._counted.discard(job)
        return job

    def has_scoring(self) -> bool:
        return bool(self._scoring)

    async def wait_for_work(self) -> None:
        while not self._scoring and not self._explaining:
            self._arrived.clear()
            await self._arrived.wait()

    def cancel_all(self) -> None:
        for job in list(self.live):
            job.future.cancel()


class Batcher:
    """Scores waiting questions together in one `Answerer.score` call on the model thread and generates the
    explanations asked for, by turns between requests. `batch_sizes` counts scoring batches by size."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, max_queue: int, max_new_tokens: int,
                 request_timeout: float):
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.max_new_tokens, self.request_timeout = max_new_tokens, request_timeout
        self.queue = _JobQueue(max_queue)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-model")
        self.answerer, self.status, self.batch_sizes = None, "loading", Counter()
        self._tasks: list[asyncio.Task] = []
        self._arrivals = itertools.count()

    @property
    def health(self) -> str:
        """ok | loading | failed (the model did not load) | stopped (not started, or shut down)."""
        if self.status == "ok" and all(task.done() for task in self._tasks):
            return "stopped"
        return self.status

    def start(self, answerer) -> None:
        """Start the worker; `answerer` is an Answerer or a function that loads one (then loaded here)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._load(answerer)), loop.create_task(self._work())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        self.queue.cancel_all()
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    def submit(self, examples: list[MCQExample], explain: list[bool], streamer=None) -> list[_Job] | None:
        """One job per question, or None when the queue has no room for all of them. With a `streamer` (one
        question), the explanation's text goes there and `job.scored` settles as soon as it is scored."""
        loop = asyncio.get_running_loop()
        request = _Request(next(self._arrivals))
        jobs = [_Job(example, wants, loop.create_future(), request, streamer)
                for example, wants in zip(examples, explain, strict=True)]
        if streamer is not None:
            jobs[0].scored = loop.create_future()
        if not self.queue.put_all(jobs):
            return None
        timer = loop.call_later(self.request_timeout, _expire, jobs, self.request_timeout)
        for job in jobs:
            job.future.add_done_callback(lambda _, job=job: self._settled(job, jobs, timer))
            if job.scored is not None:  # a client that leaves before the score cancels the whole job
                job.scored.add_done_callback(lambda scored, job=job: scored.cancelled() and job.future.cancel())
        return jobs

    def _settled(self, job: _Job, jobs: list[_Job], timer: asyncio.TimerHandle) -> None:
        self.queue.forget(job)
        job.stop.set()  # a generation still running for it ends at its next token
        if job.scored is not None:
            job.scored.cancel()  # no-op once scored
        if job.streamer is not None:  # wake the reader; the model thread may never get to this job
            job.streamer.text_queue.put_nowait(job.streamer.stop_signal)
        for outcome in (job.future, job.scored):  # retrieved here: a client that left no longer reads it
            if outcome is not None and outcome.done() and not outcome.cancelled():
                outcome.exception()
        if all(other.future.done() for other in jobs):
            timer.cancel()  # frees the jobs now rather than at the deadline

    async def on_model(self, function: Callable, *args):
        """Run a blocking torch call on the model thread, where every model call goes."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def _load(self, answerer) -> None:
        try:
            self.answerer = await self.on_model(answerer) if callable(answerer) else answerer
            self.status = "ok"
        except Exception:
            log.exception("loading the model failed")
            self.status = "failed"

    async def _work(self) -> None:
        while True:
            await self.queue.wait_for_work()
            await self._turn()  # a call of its own, so that no finished job stays referenced from here

    async def _turn(self) -> None:
        """Every question waiting to be scored (a batch), then one explanation: a question to score waits
        behind one explanation at most."""
        if self.queue.has_scoring():
            await self._attempt(self._score, await self.queue.take_scoring(self.max_batch_size, self.max_wait_s))
        job = self.queue.next_explanation()
        if job is not None:
            await self._attempt(self._explain, [job])

    async def _attempt(self, step: Callable, jobs: list[_Job]) -> None:
        """Run `step` on the jobs still wanted; a failure fails its own requests and the worker lives on."""
        jobs = [job for job in jobs if not job.future.done()]
        if not jobs:
            return
        try:
            await step(jobs)
        except Exception as error:
            log.exception("answering %d question(s) failed", len(jobs))
            for job in jobs:
                _fail(job, error)

    async def _score(self, jobs: list[_Job]) -> None:
        self.batch_sizes[len(jobs)] += 1
        all_probs = await self.on_model(self.answerer.score, [job.example for job in jobs])
        calibrated = getattr(self.answerer, "temperature", None) is not None  # score then returns scaled probs
        for job, probs in zip(jobs, all_probs, strict=True):  # unexplained answers do not wait for the rest
            # no threshold here: each route applies its request's own (`serve._with_threshold`)
            job.answer = answer = scored_answer(probs, calibrated=calibrated)
            if job.scored is not None:
                _settle(job.scored, job.answer)
            if not job.explain or answer.answer is None:  # a tie chooses no letter: nothing to explain
                _settle(job.future, job.answer)
            elif not job.future.done():  # no explanation is generated for a client that left
                self.queue.add_explanation(job)

    async def _explain(self, jobs: list[_Job]) -> None:
        job = jobs[0]
        text = await self.on_model(_generate, self.answerer, job, self.max_new_tokens)
        # checked against the scored letter here, so every route reports `explanation_consistent` alike;
        # a no-op if it ran out of time meanwhile
        _settle(job.future, with_explanation(job.answer, job.example, text))


class _UntilDropped(StoppingCriteria):
    """Ends a generation at its next token once its request is settled elsewhere: the client left, or the
    request's timer expired it. The timer alone decides a deadline, so a request never both times out here
    and succeeds there."""

    def __init__(self, job: _Job):
        self.job = job

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.job.stop.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate(answerer, job: _Job, max_new_tokens: int) -> str:
    """`Answerer.explain` on the model thread, stopped early when the job is dropped."""
    options = {"stopping_criteria": StoppingCriteriaList([_UntilDropped(job)])}
    if job.streamer is not None:
        options["streamer"] = job.streamer
    return answerer.explain(job.example, LETTERS.index(job.answer.answer), max_new_tokens, **options)


def _expire(jobs: list[_Job], timeout: float) -> None:
    error = RequestTimeout(f"request: the request took longer than {timeout:g} s and was dropped; retry "
                           "later, ask for fewer explanations, or raise the server's --request-timeout")
    for job in jobs:
        _fail(job, error)


def _fail(job: _Job, error: BaseException) -> None:
    _settle(job.future, error=error)
    if job.scored is not None:  # a stream still waiting for its score hears of the failure too
        _settle(job.scored, error=error)


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client left, or it was already answered: exactly one outcome per request
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
