"""/docs and /redoc work offline: every script, style and icon they reference is served by the service itself
(from the fastapi-offline package), and nothing else is. GET /v1/models lists no test fixtures."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from memplan import catalog

client = TestClient(create_app())

TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def references(html: str) -> list[str]:
    """Every URL the page loads: src= and href= attributes, and the spec URL Swagger UI / ReDoc fetch."""
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_references_only_local_assets(page):
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = references(response.text)
    assert "/openapi.json" in urls
    assert len(urls) >= 3, urls  # the spec, a script, the icon at least
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # no CDN, no other host
    assert "http://" not in response.text.replace("http://www.w3.org", "") and "https://" not in response.text
    for url in urls:
        if url == "/openapi.json":
            continue
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(TYPES[url[url.rfind("."):]]), (url, asset.headers)
        assert len(asset.content) > 1000, url  # the real file, not a stub


@pytest.mark.parametrize("path", ["/docs/static/core.py", "/docs/static/..%2f..%2fmain.py",
                                  "/docs/static/%2e%2e/%2e%2e/api/main.py", "/docs/static/"])
def test_assets_are_a_fixed_list(path):
    assert client.get(path).status_code == 404


def test_docs_pages_stay_out_of_the_schema():
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


def test_models_lists_no_test_fixtures():
    names = [m["name"] for m in client.get("/v1/models").json()]
    assert names == [m.name for m in catalog.list_models(fixtures=False)]
    assert not [n for n in names if n.startswith("memplan/")]
    assert [m for m in catalog.list_models() if m.name.startswith("memplan/")]  # the library still has them
