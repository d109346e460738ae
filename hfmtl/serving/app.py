"""The HTTP app behind ``hfmtl serve``: a FastAPI app around a `Predictor` and its dynamic batcher.

Why FastAPI (on Starlette, run by uvicorn): the server's contract is its JSON bodies, and FastAPI turns
the pydantic models of `hfmtl.serving.schemas` into both the request checks and the OpenAPI schema
(``/openapi.json``, browsable at ``/docs``), which plain Starlette would leave us to write and keep in
step by hand. Both are widely used and maintained; uvicorn is the ASGI server both document, and
pydantic is already in our locked set.

Errors are one line of JSON, ``{"error": "..."}``, with a 4xx status: 400 for a body that is not JSON,
413 for one over ``max_body_bytes``, 422 for a request that names an unknown task or lacks a field, 404
and 405 for a wrong path or method. A request that fails never touches the model, and the server goes
on serving the others.

Example:
    >>> from hfmtl.serving.app import create_app  # doctest: +SKIP
    >>> app = create_app(Predictor.from_pretrained(model_dir), max_batch_size=32, max_wait_ms=5)  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HfmtlError
from ..inference.predictor import Predictor
from .batching import DynamicBatcher
from .limits import BodySizeLimit
from .planning import RequestError
from .routes import router, task_catalog

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1_000_000
_UNPARSED_BODY = "There was an error parsing the body"  # what FastAPI says of a body it cannot decode


def create_app(
    predictor: Predictor,
    *,
    model_name: str = "",
    batching: bool = True,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The app serving every task of `predictor`.

    Args:
        predictor: the loaded model; only the app's worker thread runs it.
        model_name: what ``/health`` names as the model (its directory or Hub id).
        batching: False: every request runs alone (a baseline to measure batching against).
        max_batch_size: inputs (times tasks) per model call at most.
        max_wait_ms: how long a request waits for others to share its model call.
        max_body_bytes: larger request bodies get a 413.
    """
    if max_body_bytes < 1:
        raise HfmtlError(f"max_body_bytes={max_body_bytes} must be at least 1")
    batcher = DynamicBatcher(
        lambda entries, options: predictor.predict_many(entries, **options),
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        enabled=batching,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        logger.info("serving tasks %s on %s", ", ".join(predictor.tasks), predictor.device)
        yield
        await batcher.stop()  # uvicorn has finished the in-flight requests by now

    app = FastAPI(
        title="hfmtl",
        version=importlib.metadata.version("hfmtl"),
        summary="Predictions of a multi-task model: one shared encoder, one head per task.",
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.catalog = task_catalog(predictor)
    app.state.model_name = model_name
    app.include_router(router)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    return app


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status_code)


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return _error(exc.status_code, str(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSED_BODY:  # FastAPI's words for bytes that are not text
        return _error(400, "the body is not valid JSON: it is not UTF-8 text")
    return _error(exc.status_code, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A failure of the server's own (the traceback goes to the log): still one line of JSON."""
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's list of pydantic errors, as the one line of the first: 400 for JSON that does not parse,
    422 for a body of the wrong shape."""
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = list(exc.errors())
    first = errors[0] if errors else {"msg": "invalid request", "loc": (), "type": ""}
    if first.get("type") == "json_invalid":
        problem = (first.get("ctx") or {}).get("error", first.get("msg"))
        return _error(400, f"the body is not valid JSON: {problem}")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "missing" and not location:
        return _error(422, 'the body must be a JSON object: {"task" or "tasks", "inputs"}')
    if first.get("type") == "model_attributes_type" and not location:
        if isinstance(first.get("input"), bytes):  # FastAPI did not parse it: it came as another content type
            return _error(422, "send the body as JSON, with the header content-type: application/json")
        got = repr(first.get("input"))[:40]
        return _error(422, f'the body must be a JSON object {{"task" or "tasks", "inputs"}}, got {got}')
    if first.get("type") == "extra_forbidden":
        keys = "task or tasks, inputs, options" if len(location) == 1 else "return_all_scores, top_k, threshold"
        return _error(422, f"unknown key {'.'.join(location)!r} (the keys are {keys})")
    where = f"{'.'.join(location)}: " if location else ""
    return _error(422, f"{where}{first.get('msg', 'invalid value')}")
