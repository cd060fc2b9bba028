"""`medtune serve`: a REST API and a web page over one `Answerer`, with dynamic batching.

Questions that arrive together are scored in one `Answerer.score` call (`evaluate.choice_logprobs`, what
`medtune eval` scores with), so letters and probabilities match evaluation. One asyncio worker feeds one
model thread (`medtune.web.batching`). The queue is bounded, so a burst gets 503 + Retry-After instead
of a wait that grows without limit.
"""

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Annotated

from medtune import __version__
from medtune.answer import add_model_arguments, answerer_from_args
from medtune.data import LETTERS, MAX_OPTIONS, MIN_OPTIONS, DataError, MCQExample, example_from_input
from medtune.web.batching import Batcher

try:  # the `serve` extra: without it the other commands and `medtune serve --help` still work
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException
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

    def __post_init__(self):
        for item in fields(self):
            value, least = getattr(self, item.name), 0 if item.name == "max_wait_ms" else 1
            if isinstance(value, int | float) and value < least:
                raise ValueError(f"serve setting {item.name} is {value}; it must be at least {least}")


_DEFAULTS = Settings(api_key=None)


# ------------------------------------------------------------------ the app

def create_app(answerer, settings: Settings | None = None) -> "FastAPI":
    """The API and page over `answerer`: an Answerer, or a function that loads one after start-up
    (/healthz answers 503 until it has)."""
    if _MISSING_EXTRA is not None:
        raise ImportError(_MISSING_MESSAGE) from _MISSING_EXTRA
    settings = settings or Settings()
    batcher = Batcher(settings.max_batch_size, settings.max_wait_ms, settings.max_queue,
                      settings.max_new_tokens)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start(answerer)
        yield
        await batcher.stop()

    app = FastAPI(title="medtune", version=__version__, lifespan=lifespan,
                  description="Answers medical multiple-choice questions: the letter, every option's "
                              "probability and an explanation. A research tool, not for clinical decisions.")
    app.state.batcher = batcher
    _add_error_handlers(app)
    _add_routes(app, batcher, settings)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
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

    class QuestionBatch(BaseModel):
        model_config = strict
        questions: list[Question] = Field(min_length=1, max_length=settings.max_queue)

    class AnswerOut(BaseModel):
        answer: str = Field(description="the chosen letter", examples=["B"])
        probs: dict[str, float] = Field(description="letter -> probability; they sum to 1")
        explanation: str | None
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

    async def answers(request: Request, examples: list[MCQExample], explain: list[bool]):
        if batcher.health != "ok":  # refuse rather than queue work that no worker would take
            raise _not_ready(batcher)
        futures = batcher.submit(examples, explain)
        if futures is None:
            raise HTTPException(503, "the queue is full; retry shortly", headers={"Retry-After": "1"})
        return await _await_or_hang_up(request, futures)

    def to_json(answer) -> dict:
        return {**answer.to_dict(), "model": _public_description(batcher.answerer.description)}

    @v1.post("/answer", response_model=AnswerOut, responses=errors)
    async def answer(body: Question, request: Request):
        found = await answers(request, [_example(body, "request")], [body.explain])
        return to_json(found[0]) if found else Response(status_code=gone)

    @v1.post("/answer/batch", response_model=AnswerBatch, responses=errors)
    async def answer_batch(body: QuestionBatch, request: Request):
        examples = [_example(question, f"questions[{i}]") for i, question in enumerate(body.questions)]
        found = await answers(request, examples, [question.explain for question in body.questions])
        return {"answers": [to_json(a) for a in found]} if found else Response(status_code=gone)

    @v1.post("/answer/stream", responses={200: {"content": {"text/event-stream": {}}}, **errors})
    async def answer_stream(body: Question, request: Request):
        """Server-sent events: `answer` (letter, probs, model), `token`s of the explanation, then `done`."""
        example = _example(body, "request")
        found = await answers(request, [example], [False])  # scored in a batch like any other question
        if not found:
            return Response(status_code=gone)
        events = _events(batcher, example, to_json(found[0]), body.explain)
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
           (422, "invalid field"), (500, "internal error"), (503, "queue full or model not loaded (see Retry-After)")]


def _not_ready(batcher: Batcher) -> "HTTPException":
    return HTTPException(503, f"the model is not ready ({batcher.health})", headers={"Retry-After": "5"})


def _example(question, where: str) -> MCQExample:
    """Blank text and duplicate options, which a schema cannot express, are refused as data rows are."""
    return example_from_input(question.question, question.options, where)


async def _await_or_hang_up(request: "Request", futures: list[asyncio.Future]):
    """The answers, or None when the client hangs up first: its questions then leave the queue."""
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


async def _events(batcher: Batcher, example: MCQExample, answer: dict, explain: bool):
    yield _sse("answer", {key: answer[key] for key in ("answer", "probs", "model")})
    explanation = None
    if explain:
        from transformers import AsyncTextIteratorStreamer

        tokenizer = batcher.answerer.tokenizer
        streamer = AsyncTextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()  # set when the client leaves mid-stream: generation ends at the next token
        generation = asyncio.ensure_future(batcher.on_model(
            _generate_streamed, batcher.answerer, example, LETTERS.index(answer["answer"]),
            batcher.max_new_tokens, streamer, stop))
        try:
            async for text in streamer:
                if text:
                    yield _sse("token", {"text": text})
            explanation = await generation
        except Exception:
            log.exception("streaming an explanation failed")
            yield _sse("error", {"detail": "internal error"})
            return
        finally:
            stop.set()
    yield _sse("done", {"explanation": explanation})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _generate_streamed(answerer, example: MCQExample, index: int, max_new_tokens: int, streamer, stop) -> str:
    """`Answerer.explain`, with text sent to `streamer` as it comes and a switch that ends it early."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class UntilStopped(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    try:
        return answerer.explain(example, index, max_new_tokens, streamer=streamer,
                                stopping_criteria=StoppingCriteriaList([UntilStopped()]))
    except BaseException:
        streamer.end()  # wake the reader, which would otherwise wait for text forever
        raise


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


def _add_error_handlers(app: "FastAPI") -> None:
    """Every error is {"detail": "<where>: field '<name>': <problem>"}; no stack trace or path leaves."""

    async def invalid_request(request, error: RequestValidationError):
        problems = error.errors()
        bad_json = next((p for p in problems if p["type"] == "json_invalid"), None)
        if bad_json:
            reason = (bad_json.get("ctx") or {}).get("error", "cannot be parsed")
            return _error(400, f"request: field 'body': invalid JSON ({reason})")
        return _error(422, "; ".join(_describe(problem) for problem in problems))

    async def bad_question(request, error: DataError):
        return _error(422, str(error))

    async def internal(request, error: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return _error(500, "internal error")

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(DataError, bad_question)
    app.add_exception_handler(Exception, internal)


def _describe(problem: dict) -> str:
    """A pydantic error as "questions[2]: field 'options': List should have at least 2 items ..."."""
    parts = list(problem["loc"][1:])  # loc starts with "body"
    where = "request"
    if len(parts) > 2 and parts[0] == "questions" and isinstance(parts[1], int):
        where, parts = f"questions[{parts[1]}]", parts[2:]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "body"
    return f"{where}: field '{name}': {problem['msg']}"


def _error(status: int, detail: str, headers: dict | None = None) -> "JSONResponse":
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, counting what arrives: Content-Length may be
    absent (chunked uploads) or lie. The body is held and replayed to the app, so it is read once."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        too_large = _error(413, f"request: field 'body': larger than {self.limit} bytes")
        if declared.isdigit() and int(declared) > self.limit:
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body, more = body + message.get("body", b""), message.get("more_body", False)
            if len(body) > self.limit:
                return await too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


# ------------------------------------------------------------------ command line

_LIMITS = [("max_batch_size", int, "questions scored in one forward pass"),
           ("max_wait_ms", float, "how long a question waits for others to batch with"),
           ("max_queue", int, "waiting questions before answering 503 + Retry-After"),
           ("max_question_chars", int, "longest question accepted"),
           ("max_option_chars", int, "longest option accepted"),
           ("max_body_bytes", int, "largest request body; larger gets 413"),
           ("max_new_tokens", int, "explanation length limit in tokens")]


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


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**{name: getattr(args, name) for name, _, _ in _LIMITS},
                    api_key=args.api_key or os.environ.get("MEDTUNE_API_KEY") or None,
                    cors_origins=tuple(args.cors_origin))


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
