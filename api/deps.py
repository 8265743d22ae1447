"""Shared dependencies of the routes: settings, catalog look-ups, the name check and the estimate cache.

Everything here is cached: settings and catalog names once per process, estimates by request (an
``EstimateRequest`` is frozen, hence hashable, and the estimate is a pure function of it), so a repeated
question costs a dictionary look-up and no serialisation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

import memplan
from memplan import catalog
from memplan.errors import InputError, UnknownModelError, shown
from memplan.estimator import cache_key, request_of
from memplan.report import EstimateRequest

MODEL_FIELDS = ("model", "critic_model", "reward_model")


def models_in(field: str) -> dict[str, str]:
    """The request's model fields located at the body field their names came from (a launch file)."""
    return dict.fromkeys(MODEL_FIELDS, field)


class Settings(BaseModel):
    """Service settings, read once from the environment (``MEMPLAN_API_*``)."""

    model_config = ConfigDict(frozen=True)

    max_body_bytes: int = Field(64 * 1024, ge=1, description="Larger request bodies get 413")
    cache_size: int = Field(4096, ge=0, description="Estimates kept, keyed by request (0: no cache)")
    telemetry: bool = Field(False, description="FastAPI's native OpenTelemetry (MEMPLAN_API_TELEMETRY=1)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env = {
        "max_body_bytes": os.environ.get("MEMPLAN_API_MAX_BODY_BYTES"),
        "cache_size": os.environ.get("MEMPLAN_API_CACHE_SIZE"),
        "telemetry": os.environ.get("MEMPLAN_API_TELEMETRY"),
    }
    return Settings.model_validate({k: v for k, v in env.items() if v})


@lru_cache(maxsize=1)
def catalog_names() -> frozenset[str]:
    """Every catalog model name and alias, lower-cased."""
    names: set[str] = set()
    for m in catalog.list_models():
        names.add(m.name.lower())
        names.update(a.lower() for a in (getattr(m, "aliases", ()) or ()))
    return frozenset(names)


def check_names(request: EstimateRequest) -> None:
    """A model given by name must be a catalog name: the service never reads a path nor fetches a config.

    (The library also accepts a local config.json path; over HTTP that would read the server's files.)
    """
    for field in MODEL_FIELDS:
        value = getattr(request, field)
        if isinstance(value, str) and value.lower() not in catalog_names():
            hint = "paths are not accepted; " if value.startswith((".", "~", "/", "\\")) else ""
            raise UnknownModelError(
                field, f"{shown(value)} is not a catalog model: {hint}use a name from GET /v1/models "
                "or give the architecture inline", value)


def _estimate_json(key: EstimateRequest | tuple) -> bytes:
    return memplan.estimate(request_of(key)).model_dump_json().encode()


@lru_cache(maxsize=1)
def _cached() -> object:
    size = get_settings().cache_size
    return lru_cache(maxsize=size)(_estimate_json) if size else _estimate_json


def estimate_json(request: EstimateRequest) -> bytes:
    """The report for ``request`` as JSON bytes (names checked first; cached by request)."""
    check_names(request)
    # keyed like the estimator's own cache: equal inline architectures can differ in the fields they set
    # (an unset tie_word_embeddings takes the family's default), so the set fields are part of the key
    return _cached()(cache_key(request))  # type: ignore[operator]


@contextmanager
def body_fields(names: dict[str, str]) -> Iterator[None]:
    """``InputError``s located at the body field they came from: a framework reader names its own file ('verl',
    'trl', 'openrlhf'), the request it makes names 'gpus'; the route's body says 'script', 'recipe', 'gpu'."""
    try:
        yield
    except InputError as exc:
        exc.field = names.get(exc.field, exc.field)
        raise
