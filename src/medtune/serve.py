"""`medtune serve`: a REST API and a web page over one `Answerer`, with dynamic batching.

Questions that arrive together are scored in one `Answerer.score` call (`evaluate.choice_logprobs`, what
`medtune eval` scores with), so letters and probabilities match evaluation. One asyncio worker feeds one
model thread (`medtune.web.batching`). The queue is bounded for every route that uses the model (streams
included), so a burst gets 503 + Retry-After instead of a wait that grows without limit; each request has
a deadline, after which it gets 504 and its work is dropped.
"""

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Annotated

from medtune import __version__
from medtune.answer import abstains, add_model_arguments, answerer_from_args, check_threshold
from medtune.data import MAX_OPTIONS, MIN_OPTIONS, MCQExample, example_from_input
from medtune.web.batching import Batcher, RequestTimeout

try:  # the `serve` extra: without it the other commands and `medtune serve --help` still work
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    from medtune.web.errors import BodyLimit, add_error_handlers
except ImportError as missing:
    _MISSING_EXTRA: ImportError | None = missing
else:
    _MISSING_EXTRA = None

log = logging.getLogger("medtune.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_MISSING_MESSAGE = "medtune serve needs the serve extra: pip install 'medtune[serve]'"


@dataclass(frozen=True)
class Settings:
    """Limits and switches of one server; each has a `medtune serve` flag."""

    max_batch_size: int = 16  # questions per forward pass; evaluation's default batch
    max_wait_ms: float = 10.0  # how long a batch's first question waits for company; small next to a forward
    max_queue: int = 64  # waiting questions beyond which clients get 503 + Retry-After, not a longer wait
    max_question_chars: int = 4000  # ~1,000 tokens: above exam questions, below what could exhaust memory
    max_option_chars: int = 1000
    max_body_bytes: int = 64 * 1024  # a guard against floods, not a quota
    api_key: str | None = field(default_factory=lambda: os.environ.get("MEDTUNE_API_KEY") or None, repr=False)
    cors_origins: tuple[str, ...] = ()  # off: browsers may call the API only from the page it serves
    max_new_tokens: int = 160  # explanation length, as `medtune ask`
    # 8 explanations of 160 tokens take ~1 min for a 135M model on 2 CPU cores: a request's share of the model
    max_explanations: int = 8
    request_timeout: float = 120.0  # seconds; above that batch of explanations on a CPU, below a client's patience
    # answers whose top probability is below this say "abstain": true (a request's own abstain_below wins);
    # None: only a tie abstains
    abstain_below: float | None = None

    def __post_init__(self):
        check_threshold(self.abstain_below, "serve setting abstain_below")
        for item in fields(self):
            value, least = getattr(self, item.name), _LEAST.get(item.name, 1)
            if isinstance(value, int | float) and value < least:
                raise ValueError(f"serve setting {item.name} is {value}; it must be at least {least}")


_LEAST = {"max_wait_ms": 0, "request_timeout": 0.1, "abstain_below": 0}  # every other number: at least 1


_DEFAULTS = Settings(api_key=None)


# ------------------------------------------------------------------ the app

def create_app(answerer, settings: Settings | None = None) -> "FastAPI":
    """The API and page over `answerer`: an Answerer, or a function that loads one after start-up
    (/healthz answers 503 until it has)."""
    if _MISSING_EXTRA is not None:
        raise ImportError(_MISSING_MESSAGE) from _MISSING_EXTRA
    settings = settings or Settings()
    batcher = Batcher(settings.max_batch_size, settings.max_wait_ms, settings.max_queue,
                      settings.max_new_tokens, settings.request_timeout)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start(answerer)
        yield
        await batcher.stop()

    # No /docs or /redoc: FastAPI's pages load their JavaScript from a CDN; /openapi.json stays.
    app = FastAPI(title="medtune", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Answers medical multiple-choice questions: the letter, every option's "
                              "probability and an explanation. A research tool, not for clinical decisions.")
    app.state.batcher = batcher
    add_error_handlers(app)
    _add_routes(app, batcher, settings)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:  # added last, so outermost: refusals (401, 413) carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    return app


def _schemas(settings: Settings):
    """Request and response models; the text limits come from `settings`, so /openapi.json shows them."""
    strict = ConfigDict(extra="forbid", strict=True)  # no silent coercion: "yes" is not a boolean here
    # Documented, not enforced here: `example_from_input` refuses blank text and duplicates in plainer words.
    not_blank = {"pattern": r"\S"}
    option = Annotated[str, Field(min_length=1, max_length=settings.max_option_chars,
                                  json_schema_extra=not_blank)]

    class Question(BaseModel):
        model_config = strict
        question: str = Field(min_length=1, max_length=settings.max_question_chars,
                              json_schema_extra=not_blank)
        options: list[option] = Field(min_length=MIN_OPTIONS, max_length=MAX_OPTIONS,
                                      json_schema_extra={"uniqueItems": True})
        explain: bool = Field(True, description="also generate an explanation after choosing the answer")
        abstain_below: float | None = Field(
            None, ge=0, le=1, examples=[0.6],
            description="abstain (\"abstain\": true) when the top option's probability is below this; the letter "
                        "and probabilities are still given. Default: the server's --abstain-below (none: only a tie "
                        "abstains); 0 never abstains")

    class QuestionBatch(BaseModel):
        model_config = strict
        questions: list[Question] = Field(min_length=1, max_length=settings.max_queue)

    class AnswerOut(BaseModel):
        answer: str | None = Field(description="the chosen letter; null when the top options tie exactly "
                                               "(no letter is chosen, and none is explained)", examples=["B"])
        probs: dict[str, float] = Field(description="letter -> probability; they sum to 1 (temperature-scaled "
                                                    "when \"calibrated\")")
        explanation: str | None = Field(description="ends at a sentence end, or with ' […]' where the length "
                                                    "limit cut it")
        confidence: float = Field(description="the top option's probability", examples=[0.41])
        abstain: bool = Field(description="true when confidence is below abstain_below, or the top options tie: "
                                          "do not rely on this answer (it is still given)")
        abstain_below: float | None = Field(description="the threshold applied: the request's, else the server's")
        explanation_consistent: bool | None = Field(
            description="false when the explanation states a different option as the answer (the scored letter "
                        "stays the answer); null without an explanation")
        calibrated: bool = Field(description="probabilities are temperature-scaled (the run's calibration.json)")
        model: dict[str, str | None]

    class AnswerBatch(BaseModel):
        answers: list[AnswerOut]

    class Error(BaseModel):
        detail: str = Field(examples=["request: field 'options[1]': is empty"])

    return Question, QuestionBatch, AnswerOut, AnswerBatch, Error


def _add_routes(app: "FastAPI", batcher: Batcher, settings: Settings) -> None:
    Question, QuestionBatch, AnswerOut, AnswerBatch, Error = _schemas(settings)
    errors = {code: {"model": Error, "description": text} for code, text in _ERRORS}
    page = resources.files("medtune").joinpath("web/index.html").read_text(encoding="utf-8")
    key_check = [Depends(_key_check(settings.api_key))] if settings.api_key else []
    v1 = APIRouter(prefix="/v1", dependencies=key_check)
    gone = 499  # nobody reads this status: the client hung up

    def admit(examples: list[MCQExample], explain: list[bool], streamed: bool = False):
        if batcher.health != "ok":  # refuse rather than queue work that no worker would take
            raise _not_ready(batcher)
        if sum(explain) > settings.max_explanations:
            raise HTTPException(422, f"request: field 'questions': {sum(explain)} ask for an explanation; at "
                                     f"most {settings.max_explanations} per request: set \"explain\": false on "
                                     "the others or send them in another request")
        jobs = batcher.submit(examples, explain, _streamer(batcher) if streamed and explain[0] else None)
        if jobs is None:
            raise HTTPException(503, "the queue is full; retry shortly", headers={"Retry-After": "1"})
        return jobs

    async def answers(request: Request, examples: list[MCQExample], explain: list[bool]):
        jobs = admit(examples, explain)
        return await _await_or_hang_up(request, [job.future for job in jobs])

    def to_json(answer, question) -> dict:
        threshold = settings.abstain_below if question.abstain_below is None else question.abstain_below
        answer = replace(answer, abstain=abstains(answer.answer, answer.confidence, threshold))
        return {**answer.to_dict(), "abstain_below": threshold,
                "model": _public_description(batcher.answerer.description)}

    @v1.post("/answer", response_model=AnswerOut, responses=errors)
    async def answer(body: Question, request: Request):
        found = await answers(request, [_example(body, "request")], [body.explain])
        return to_json(found[0], body) if found else Response(status_code=gone)

    @v1.post("/answer/batch", response_model=AnswerBatch, responses=errors)
    async def answer_batch(body: QuestionBatch, request: Request):
        examples = [_example(question, f"questions[{i}]") for i, question in enumerate(body.questions)]
        found = await answers(request, examples, [question.explain for question in body.questions])
        if not found:
            return Response(status_code=gone)
        return {"answers": [to_json(a, question) for a, question in zip(found, body.questions, strict=True)]}

    @v1.post("/answer/stream", responses={200: {"content": {"text/event-stream": {}}}, **errors})
    async def answer_stream(body: Question, request: Request):
        """Server-sent events: `answer` (letter, probs, confidence, abstain, model), `token`s of the explanation,
        then `done` (the explanation as cut, and whether it is consistent with the letter)."""
        job = admit([_example(body, "request")], [body.explain], streamed=True)[0]
        # scored in a batch like any other question; its explanation waits its turn and counts in the bound
        found = await _await_or_hang_up(request, [job.future if job.scored is None else job.scored])
        if not found:
            return Response(status_code=gone)
        events = _events(job, to_json(found[0], body))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @v1.get("/model", responses=errors)
    async def model() -> dict:
        if batcher.health != "ok":
            raise _not_ready(batcher)
        return _public_description(batcher.answerer.description)

    @app.get("/healthz")
    async def healthz():
        return JSONResponse({"status": batcher.health}, status_code=200 if batcher.health == "ok" else 503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_POLICY})

    app.include_router(v1)


# Nothing the page loads or sends may leave this server: inline code and styles, fetches to its own origin.
_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src data:; frame-ancestors 'none'")
_ERRORS = [(400, "invalid JSON"), (401, "missing or wrong API key"), (413, "body too large"),
           (422, "invalid field"), (500, "internal error"), (503, "queue full or model not loaded (see Retry-After)"),
           (504, "the request's deadline passed (--request-timeout); its work was dropped")]


def _not_ready(batcher: Batcher) -> "HTTPException":
    return HTTPException(503, f"the model is not ready ({batcher.health})", headers={"Retry-After": "5"})


def _example(question, where: str) -> MCQExample:
    """Blank text and duplicate options, which a schema cannot express, are refused as data rows are."""
    return example_from_input(question.question, question.options, where)


async def _await_or_hang_up(request: "Request", futures: list[asyncio.Future]):
    """The answers, or None when the client hangs up first: its questions then leave the queue. A request
    that runs out of time raises `RequestTimeout` here (504)."""
    answers = asyncio.gather(*futures)
    hang_up = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answers, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled
        hang_up.cancel()
        if not answers.done():
            answers.cancel()
    return answers.result() if answers.done() else None


async def _disconnected(request: "Request") -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _streamer(batcher: Batcher):
    from transformers import AsyncTextIteratorStreamer

    return AsyncTextIteratorStreamer(batcher.answerer.tokenizer, skip_prompt=True, skip_special_tokens=True)


async def _events(job, answer: dict):
    """`answer`, then the explanation's `token`s and `done`; `error` instead of `done` if it fails or times out.
    `done` carries the explanation as `Answerer.explain` finished it (cut at a sentence end, or marked), which
    may differ from the streamed tokens' end, and `explanation_consistent`."""
    yield _sse("answer", {key: value for key, value in answer.items()
                          if key not in ("explanation", "explanation_consistent")})
    if job.streamer is None or answer["answer"] is None:  # nothing asked, or a tie: no letter to explain
        yield _sse("done", {"explanation": None, "explanation_consistent": None})
        return
    try:
        async for text in job.streamer:
            if text:
                yield _sse("token", {"text": text})
        explained = await job.future
    except RequestTimeout as error:  # the status line has gone: the deadline can only be said here
        yield _sse("error", {"detail": str(error)})
        return
    except Exception:
        log.exception("streaming an explanation failed")
        yield _sse("error", {"detail": "internal error"})
        return
    finally:
        job.future.cancel()  # a client that leaves mid-stream stops the generation at its next token
    yield _sse("done", {"explanation": explained.explanation,
                        "explanation_consistent": explained.explanation_consistent})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _key_check(expected: str):
    expected_bytes = expected.encode()

    async def require_key(request: Request) -> None:
        """`Authorization: Bearer KEY` or `X-API-Key: KEY`, compared in constant time: timing tells nothing"""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), expected_bytes):
            raise HTTPException(401, "request: header 'Authorization' (Bearer) or 'X-API-Key': missing or "
                                     "wrong API key", headers={"WWW-Authenticate": "Bearer"})

    return require_key


def _public_description(description: dict) -> dict:
    """The model description without server paths: a local model or run is named by its folder's name."""
    public = dict(description)
    for key in ("base_model", "adapter"):
        value = public.get(key)
        if value and (Path(value).is_absolute() or Path(value).exists()):  # Hub ids are neither
            public[key] = Path(value).parent.name if key == "adapter" else Path(value).name
    return public


# ------------------------------------------------------------------ command line

_LIMITS = [("max_batch_size", int, "questions scored in one forward pass"),
           ("max_wait_ms", float, "how long a question waits for others to batch with"),
           ("max_queue", int, "questions waiting for the model (explanations still to come included) before "
                                "answering 503 + Retry-After"),
           ("max_question_chars", int, "longest question accepted"),
           ("max_option_chars", int, "longest option accepted"),
           ("max_body_bytes", int, "largest request body; larger gets 413"),
           ("max_new_tokens", int, "explanation length limit in tokens"),
           ("max_explanations", int, "questions in one request that may ask for an explanation; more gets 422"),
           ("request_timeout", float, "seconds a request may take; then 504 and its work (queued questions, a "
                                      "generation in progress) is dropped")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `medtune serve` options."""
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--api-key", help="require this key on /v1/* (Authorization: Bearer KEY or "
                                          "X-API-Key); default $MEDTUNE_API_KEY, which stays out of `ps`")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. https://app.example.org) call the API; "
                             "repeatable; default none: CORS off")
    for name, kind, text in _LIMITS:
        default = getattr(_DEFAULTS, name)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                            help=f"{text} (default {default:g})")
    parser.add_argument("--abstain-below", type=float, metavar="P",
                        help="answers whose top probability is below P (0 to 1) say \"abstain\": true, and the "
                             "page says the model abstains; a request's own \"abstain_below\" wins (default "
                             "none: only a tie abstains)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**{name: getattr(args, name) for name, _, _ in _LIMITS},
                    api_key=args.api_key or os.environ.get("MEDTUNE_API_KEY") or None,
                    cors_origins=tuple(args.cors_origin), abstain_below=getattr(args, "abstain_below", None))


def run(args: argparse.Namespace) -> int:
    """`medtune serve`: load the model first (a bad run or flag fails here, with a sentence), then serve."""
    if _MISSING_EXTRA is not None:
        print(f"medtune serve: error: {_MISSING_MESSAGE}", file=sys.stderr)
        return 2
    import uvicorn

    settings = settings_from_args(args)
    app = create_app(answerer_from_args(args), settings)
    if args.host not in LOOPBACK and not settings.api_key:
        log.warning("listening on %s without an API key: anyone who can reach it can use it", args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", server_header=False)
    return 0
