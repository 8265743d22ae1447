"""The service's OpenAPI document, made to tell the truth about what the service takes.

The request models are the library's, where a model may also be a local config path and the GPU text any
string the cluster parser reads. Over HTTP the service takes less, and its schema says so:

* ``model``, ``critic_model``, ``reward_model`` by name: one of the catalog's names or aliases (an ``enum``;
  the service also takes them in any letter case), in every body that carries a request's fields. Paths are
  refused, so they are not in the schema.
* ``gpus``: the cluster form (``N x GPU`` or ``nodes x per-node x GPU``, or a GPU alone) over the catalog's GPU
  names, as a ``pattern``.
* ``/v1/compare``: either ``requests`` or ``base`` with ``algos`` (a ``oneOf``).
* Every POST may answer 413 (a body over the limit), and says so.

What JSON Schema cannot say stays a 422 with memplan's reason (its ``type`` is one of memplan's errors, never
one of pydantic's): a launch script the reader finds nothing in, knobs that contradict each other, a run the
chosen engine cannot run.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from memplan import catalog

NAME_FIELDS = ("model", "critic_model", "reward_model")
_PLAIN = re.compile(r"[A-Za-z0-9-]+")


def _model_names() -> list[str]:
    names: dict[str, None] = {}
    for m in catalog.list_models(fixtures=False):
        names[m.name] = None
        names.update(dict.fromkeys(m.aliases))
    return list(names)


def _gpus_pattern() -> str:
    names = sorted({n for g in catalog.list_gpus() for n in (g.name, *g.aliases)}, key=lambda n: (-len(n), n))
    assert all(_PLAIN.fullmatch(n) for n in names), "a GPU name that would need escaping in ECMA-262"
    return rf"^(?:[1-9][0-9]{{0,4}}x){{0,2}}(?:{'|'.join(names)})$"


def _names_enum(prop: dict[str, Any], names: list[str]) -> None:
    """The string branch of a model field (``oneOf`` [name, architecture], maybe inside ``anyOf`` with null)."""
    for key in ("oneOf", "anyOf"):
        for branch in prop.get(key, ()):
            if branch.get("type") == "string":
                branch.pop("minLength", None)
                branch.pop("maxLength", None)
                branch["enum"] = names
            else:
                _names_enum(branch, names)


def truthful_openapi(app: FastAPI) -> dict[str, Any]:
    """``app.openapi`` for the service: FastAPI's document, then the narrowing above (built once, cached)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.get("components", {}).get("schemas", {})
    names, pattern = _model_names(), _gpus_pattern()
    for schema in schemas.values():  # EstimateRequest and the bodies that extend it (POST /v1/time's)
        request = schema.get("properties", {})
        if "model" not in request or "gpus" not in request:
            continue
        for field in NAME_FIELDS:
            if field in request:
                _names_enum(request[field], names)
        request["gpus"]["pattern"] = pattern
    compare = schemas.get("CompareRequest")
    if compare is not None:
        compare["oneOf"] = [  # one form, the other's fields absent or null
            {"required": ["requests"], "properties": {
                "requests": {"type": "array"}, "base": {"type": "null"}, "algos": {"type": "null"}}},
            {"required": ["base", "algos"], "properties": {
                "requests": {"type": "null"}, "base": {"type": "object"}, "algos": {"type": "array"}}},
        ]
    for path in doc.get("paths", {}).values():
        post = path.get("post")
        if post is not None:
            post.setdefault("responses", {})["413"] = {"description": "The request body is over the service's limit"}
    app.openapi_schema = doc
    return doc
