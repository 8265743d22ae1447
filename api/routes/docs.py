"""GET /docs (Swagger UI) and /redoc, with their scripts and styles served from here: they work offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a machine without internet ``/docs`` is a
blank page. The assets come from the ``fastapi-offline`` package (the ``[api]`` extra; it ships Swagger UI
5 and ReDoc 2 as package data): the four files are read once from the installed package by a fixed name →
file table, never from a path the client names.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from memplan.errors import EnvironmentProblem

router = APIRouter(include_in_schema=False)

STATIC = "/docs/static"
ASSETS = {  # URL name → media type; the file of the same name in fastapi_offline/static
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}


@lru_cache(maxsize=len(ASSETS))
def _asset(name: str) -> bytes:
    try:
        return (resources.files("fastapi_offline") / "static" / name).read_bytes()
    except ModuleNotFoundError:
        raise EnvironmentProblem("the /docs assets need fastapi-offline: pip install 'memplan[api]'") from None


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js", swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC}/favicon.png",
        oauth2_redirect_url=f"{root}{request.app.swagger_ui_oauth2_redirect_url}",
        swagger_ui_parameters=request.app.swagger_ui_parameters,
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC}/redoc.standalone.js", redoc_favicon_url=f"{root}{STATIC}/favicon.png",
        with_google_fonts=False,
    )


@router.api_route(STATIC + "/{name}", methods=["GET", "HEAD"])
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "Not Found")
    return Response(_asset(name), media_type=media_type, headers={"cache-control": "public, max-age=86400"})
