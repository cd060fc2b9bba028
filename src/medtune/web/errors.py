"""How `medtune serve` refuses: every error is one sentence, {"detail": "<where>: field '<name>': <problem>"},
with no stack trace or server path; and the request body limit, counted as the body arrives."""

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from medtune.data import DataError
from medtune.web.batching import RequestTimeout

log = logging.getLogger("medtune.serve")


def add_error_handlers(app: FastAPI) -> None:
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

    async def timed_out(request, error: RequestTimeout):
        return _error(504, str(error))

    async def internal(request, error: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return _error(500, "internal error")

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(DataError, bad_question)
    app.add_exception_handler(RequestTimeout, timed_out)
    app.add_exception_handler(Exception, internal)


def _describe(problem: dict) -> str:
    """A pydantic error as "questions[2]: field 'options': List should have at least 2 items ..."."""
    parts = list(problem["loc"][1:])  # loc starts with "body"
    where = "request"
    if len(parts) > 2 and parts[0] == "questions" and isinstance(parts[1], int):
        where, parts = f"questions[{parts[1]}]", parts[2:]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "body"
    return f"{where}: field '{name}': {problem['msg']}"


def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyLimit:
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
