"""The FastAPI application: assembles the routers and maps memplan's errors to HTTP, once.

* ``InputError`` (and a pydantic ``ValidationError`` raised past request parsing) → 422 in FastAPI's
  ``{"detail": [{"loc", "msg", "type"}]}`` shape; a body that is not UTF-8 → 422 (FastAPI says 400).
* A body over the limit → 413 (FastAPI's ``max_body_size``: declared Content-Length or streamed bytes).
* ``EnvironmentProblem`` → 503.

No torch here: the app imports in well under a second.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import memplan
from api.deps import get_settings
from api.routes import catalog, compare, estimate, health, openrlhf, plan, trl, verl
from memplan.errors import EnvironmentProblem, InputError

DESCRIPTION = """Ask memplan over HTTP: the per-GPU peak memory of an RL fine-tuning run (PPO, GRPO, ReMax,
RLOO, DPO, SFT), phase by phase, and whether it fits. The same report as `memplan estimate --json`.

Models are catalog names (`GET /v1/models`) or inline architectures; the service reads no files and
fetches nothing."""


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    loc = ["body", *exc.field.split(".")]
    detail = [{"loc": loc, "msg": str(exc), "type": type(exc).__name__, "input": jsonable_encoder(exc.value)}]
    return JSONResponse({"detail": detail}, status_code=422)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    # FastAPI answers 400 to a body it cannot decode (not UTF-8); to clients that is bad input like any other
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        detail = [{"loc": ["body"], "msg": f"{exc.detail}: send UTF-8 JSON", "type": "body_unreadable"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return await http_exception_handler(request, exc)


async def _environment(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="memplan",
        version=getattr(memplan, "__version__", "0.1.0"),
        description=DESCRIPTION,
        # Starlette's body limit: a declared Content-Length over it, or a streamed body crossing it → 413
        max_body_size=settings.max_body_bytes,
        # FastAPI's native OpenTelemetry costs ~25 µs a request just to find no provider: opt-in
        telemetry=None if settings.telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    for module in (estimate, compare, plan, verl, trl, openrlhf, catalog, health):
        app.include_router(module.router)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(EnvironmentProblem, _environment)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    return app


app = create_app()
