"""memplan's errors as HTTP answers, once for every route; no answer echoes unbounded or unencodable input.

* ``InputError``, FastAPI's ``RequestValidationError`` (the body against the schema) and a pydantic
  ``ValidationError`` raised past parsing → 422 in FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape.
* A body that is not UTF-8 → 422 (FastAPI says 400).
* ``EnvironmentProblem`` → 503.

Every string of an answer goes through ``_clean``: at most ``MAX_TEXT`` characters (a 60 KB model name is
quoted as its first 80 characters and its length, never echoed whole) and a lone surrogate (``"\\ud800"``, valid
JSON, not encodable as UTF-8) written as its escape, so building the answer cannot fail. ``input`` is the
offending value as given when short,
else as ``memplan.errors.shown`` quotes it; pydantic's ``ctx`` is left out (it can hold the
non-finite number that made the error, which JSON cannot carry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from memplan.errors import InputError, bounded, shown

MAX_TEXT = 1_000  # characters of one message
MAX_LOC = 64  # characters of one path element of ``loc`` (an unknown key is the client's text)
MAX_ERRORS = 20  # errors listed for one body: the first ones, then how many more


def _clean(text: str, limit: int = MAX_TEXT) -> str:
    return bounded(text, limit).encode("utf-8", "backslashreplace").decode("utf-8")


def _loc(loc: Iterable[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else _clean(str(part), MAX_LOC) for part in loc]


def _unprocessable(errors: list[Mapping[str, Any]], prefix: tuple[str, ...] = ()) -> JSONResponse:
    detail: list[dict[str, Any]] = [
        {"loc": _loc((*prefix, *e["loc"])), "msg": _clean(str(e["msg"])), "type": str(e["type"])}
        for e in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        detail.append({"loc": ["body"], "msg": f"and {len(errors) - MAX_ERRORS} more errors", "type": "truncated"})
    return JSONResponse({"detail": detail}, status_code=422)


def _input(value: Any) -> Any:
    """The offending value as given when JSON carries it as is (a bool, an int, a finite float, a short string),
    else as ``shown`` quotes it."""
    if value is None or isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, str) and len(value) <= MAX_LOC:
        return _clean(value)
    return _clean(shown(value))


async def input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    loc = ["body", *_loc(exc.field.split("."))]
    detail = [{"loc": loc, "msg": _clean(str(exc)), "type": type(exc).__name__, "input": _input(exc.value)}]
    return JSONResponse({"detail": detail}, status_code=422)


async def request_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _unprocessable(list(exc.errors()))


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return _unprocessable(exc.errors(include_url=False, include_context=False, include_input=False), ("body",))


async def http_error(request: Request, exc: Exception) -> Response:
    # FastAPI answers 400 to a body it cannot decode (not UTF-8); to clients that is bad input like any other
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        detail = [{"loc": ["body"], "msg": _clean(f"{exc.detail}: send UTF-8 JSON"), "type": "body_unreadable"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return await http_exception_handler(request, exc)


async def environment_problem(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": _clean(str(exc))}, status_code=503)
