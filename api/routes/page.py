"""GET /: the planner page — a form, the phase bars against the GPU's capacity, the verdict and the planner's
cheapest changes — served from this package's own files (``api/static``), so it works offline.

The page is plain HTML, CSS and JavaScript, with no build step and nothing fetched from elsewhere; it calls
only the public REST API (``/openapi.json`` for the request's fields, ``/v1/models``, ``/v1/gpus``,
``/v1/algorithms``, ``POST /v1/estimate`` and ``POST /v1/plan``), like any other client. Files are served by a
fixed name → file table, never from a path the client names; the Content-Security-Policy allows this origin
only.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

PREFIX = "/page"
FILES = {  # URL name → (file in api/static, media type)
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "page.css": ("page.css", "text/css; charset=utf-8"),
    "page.js": ("page.js", "text/javascript; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
HEADERS = {
    # this origin only: no CDN, no inline script; the page's SVG is built through the DOM
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # small files; a new release is seen at once
}


@lru_cache(maxsize=len(FILES))
def _read(filename: str) -> bytes:
    return (resources.files("api") / "static" / filename).read_bytes()


def _serve(name: str) -> Response:
    entry = FILES.get(name)
    if entry is None:
        raise HTTPException(404, "Not Found")
    filename, media_type = entry
    return Response(_read(filename), media_type=media_type, headers=HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> Response:
    """The planner page; its state is the query string (``/?model=…&algo=grpo&gpus=8xH100-80GB``)."""
    return _serve("index.html")


@router.api_route(PREFIX + "/{name}", methods=["GET", "HEAD"])
async def asset(name: str) -> Response:
    return _serve(name)
