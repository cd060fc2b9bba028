"""Dynamic batching for `medtune serve`: a bounded queue of questions and one worker that scores them.

The worker takes up to `max_batch_size` waiting questions (waiting at most `max_wait_ms` for a first one
to gain company), scores them together in one `Answerer.score` call, then generates the explanations that
were asked for, one at a time. Every model call runs on one thread: torch calls would block the event loop,
and one thread keeps the model's memory and CPU use predictable.
"""

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace

from medtune.answer import Answer
from medtune.data import LETTERS, MCQExample

log = logging.getLogger("medtune.serve")


@dataclass(frozen=True, eq=False)  # identity equality: two clients may send the same question
class _Job:
    example: MCQExample
    explain: bool
    future: asyncio.Future  # settled once: an Answer, an exception, or cancelled because the client left


class _JobQueue:
    """A bounded FIFO that a cancelled job leaves at once, so a client that hangs up frees its slot
    (an asyncio.Queue cannot drop an item from its middle)."""

    def __init__(self, limit: int):
        self.limit, self._jobs, self._arrived = limit, deque(), asyncio.Event()

    def __len__(self) -> int:
        return len(self._jobs)

    def put_all(self, jobs: list[_Job]) -> bool:
        """Admit every job or none: a batch request is never half-queued."""
        if len(self._jobs) + len(jobs) > self.limit:
            return False
        for job in jobs:
            self._jobs.append(job)
            job.future.add_done_callback(lambda future, job=job: self._drop_cancelled(job))
        self._arrived.set()
        return True

    def _drop_cancelled(self, job: _Job) -> None:
        if job.future.cancelled() and job in self._jobs:
            self._jobs.remove(job)

    async def take(self, limit: int, wait_s: float) -> list[_Job]:
        """Up to `limit` jobs: waits for a first one, then at most `wait_s` for others to join it."""
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + wait_s
        while len(self._jobs) < limit and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return [self._jobs.popleft() for _ in range(min(limit, len(self._jobs)))]

    def cancel_all(self) -> None:
        for job in list(self._jobs):
            job.future.cancel()


class Batcher:
    """Scores waiting questions together in one `Answerer.score` call on the model thread, then generates
    the explanations that were asked for, one at a time. `batch_sizes` counts batches by size."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, max_queue: int, max_new_tokens: int):
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.max_new_tokens = max_new_tokens
        self.queue = _JobQueue(max_queue)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtune-model")
        self.answerer, self.status, self.batch_sizes = None, "loading", Counter()
        self._tasks: list[asyncio.Task] = []

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

    def submit(self, examples: list[MCQExample], explain: list[bool]) -> list[asyncio.Future] | None:
        """One future per question, or None when the queue has no room for all of them."""
        loop = asyncio.get_running_loop()
        jobs = [_Job(example, wants, loop.create_future())
                for example, wants in zip(examples, explain, strict=True)]
        return [job.future for job in jobs] if self.queue.put_all(jobs) else None

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
            jobs = await self.queue.take(self.max_batch_size, self.max_wait_s)
            jobs = [job for job in jobs if not job.future.done()]
            try:
                if jobs:
                    await self._answer(jobs)
            except Exception as error:  # a failed batch fails its own requests; the worker lives on
                log.exception("answering a batch of %d failed", len(jobs))
                for job in jobs:
                    _settle(job.future, error=error)

    async def _answer(self, jobs: list[_Job]) -> None:
        self.batch_sizes[len(jobs)] += 1
        all_probs = await self.on_model(self.answerer.score, [job.example for job in jobs])
        answers = [Answer(max(probs, key=probs.get), probs, None) for probs in all_probs]
        for job, answer in zip(jobs, answers, strict=True):  # unexplained answers do not wait for the rest
            if not job.explain:
                _settle(job.future, answer)
        for job, answer in zip(jobs, answers, strict=True):
            if job.explain and not job.future.done():  # no explanation is generated for a client that left
                text = await self.on_model(self.answerer.explain, job.example, LETTERS.index(answer.answer),
                                           self.max_new_tokens)
                _settle(job.future, replace(answer, explanation=text))


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client left, or it was already answered: exactly one outcome per request
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
