"""The FastAPI application: assembles the routers and maps memplan's errors to HTTP, once.

* ``InputError``, a body against the schema, a pydantic ``ValidationError`` raised past parsing → 422 in FastAPI's
  ``{"detail": [{"loc", "msg", "type"}]}`` shape; a body that is not UTF-8 → 422 (FastAPI says 400); bounded
  and always encodable (``api.errors``).
* No request reads the server's files (``NoDisk``).
* A body over the limit → 413 (FastAPI's ``max_body_size``: declared Content-Length or streamed bytes).
* ``EnvironmentProblem`` → 503.

No torch here: the app imports in well under a second.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import memplan
from api import errors
from api.deps import get_settings
from api.openapi import truthful_openapi
from api.routes import catalog, compare, docs, dschat, estimate, health, openrlhf, page, plan, trl, verl
from memplan.disk import no_disk
from memplan.errors import EnvironmentProblem, InputError

DESCRIPTION = """Ask memplan over HTTP: the per-GPU peak memory of an RL fine-tuning run (PPO, GRPO, ReMax,
RLOO, DPO, SFT), phase by phase, and whether it fits. The same report as `memplan estimate --json`.

Models are catalog names (`GET /v1/models`) or inline architectures; the service reads no files and
fetches nothing."""


class NoDisk:
    """Every request runs inside ``memplan.disk.no_disk``: no route, reader or catalog look-up reads this
    machine's files, whatever the request names (a model path inside a launch script included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with no_disk():
            await self.app(scope, receive, send)


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="memplan",
        version=getattr(memplan, "__version__", "0.1.0"),
        description=DESCRIPTION,
        docs_url=None, redoc_url=None,  # api/routes/docs.py serves both with local assets (offline)
        # Starlette's body limit: a declared Content-Length over it, or a streamed body crossing it → 413
        max_body_size=settings.max_body_bytes,
        # FastAPI's native OpenTelemetry costs ~25 µs a request just to find no provider: opt-in
        telemetry=None if settings.telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    for module in (estimate, compare, plan, verl, trl, openrlhf, dschat, catalog, health, docs, page,
                   __import__("api.routes.time", fromlist=["router"]), __import__("api.routes.emit", fromlist=["router"])):
        app.include_router(module.router)
    app.add_exception_handler(InputError, errors.input_error)
    app.add_exception_handler(RequestValidationError, errors.request_validation_error)
    app.add_exception_handler(ValidationError, errors.validation_error)
    app.add_exception_handler(EnvironmentProblem, errors.environment_problem)
    app.add_exception_handler(StarletteHTTPException, errors.http_error)
    app.add_middleware(NoDisk)
    app.openapi = lambda: truthful_openapi(app)  # type: ignore[method-assign]
    return app


app = create_app()
