"""The OpenAPI document describes every response field, and /docs works offline: its Swagger UI
assets are served by this app (from the fastapi-offline package), never from a CDN.

The app is built but never started (neither the OpenAPI document nor the docs need the model)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import TEST_ACCESS


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    """A client of an app that is never started (no lifespan: no model is loaded)."""
    app = create_app(Settings.model_construct(model_dir=Path("unused"), static_dir=None, **TEST_ACCESS))
    yield TestClient(app)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ref = schema.get("$ref")
    if ref is None:
        return "(inline)", schema
    name = ref.rsplit("/", 1)[-1]
    return name, doc["components"]["schemas"][name]


def _undescribed(doc: dict[str, Any], schema: dict[str, Any], where: str, seen: set[str]) -> Iterator[str]:
    """`where.property` for every property of `schema` (and of the schemas it holds) without a
    description."""
    name, schema = _resolve(doc, schema)
    if name in seen:
        return
    if name != "(inline)":
        seen.add(name)
        where = name
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            yield from _undescribed(doc, option, where, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _undescribed(doc, schema[key], where, seen)
    for prop, sub in schema.get("properties", {}).items():
        if not sub.get("description"):
            yield f"{where}.{prop}"
        yield from _undescribed(doc, sub, f"{where}.{prop}", seen)


def test_every_response_property_has_a_description(http: TestClient) -> None:
    doc = http.get("/openapi.json").json()
    missing, checked = [], set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    seen: set[str] = set()
                    missing += [
                        f"{method.upper()} {path} {status} {media}: {m}"
                        for m in _undescribed(doc, content.get("schema", {}), "(inline)", seen)
                    ]
                    checked |= seen
    assert not missing, "\n".join(missing)
    # the walk did reach the response models (and the error body on every route)
    assert {
        "SearchResponse",
        "Hit",
        "CodeResponse",
        "Added",
        "Deleted",
        "Item",
        "GalleryStatus",
        "Health",
        "ErrorResponse",
        "ErrorDetail",
    } <= checked


def test_search_total_is_documented(http: TestClient) -> None:
    total = http.get("/openapi.json").json()["components"]["schemas"]["SearchResponse"]["properties"]["total"]
    assert "radius" in total["description"] and "k-NN" in total["description"]


def test_errors_are_documented_as_the_error_body(http: TestClient) -> None:
    """Every operation's 4XX and 5XX answers are the service's error body (not FastAPI's
    HTTPValidationError, which the service never sends)."""
    doc = http.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status in ("4XX", "5XX"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, f"{method} {path} {status}"


def test_docs_page_loads_no_external_url(http: TestClient) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert not re.findall(r"(?:https?:)?//[^\s\"'<>]+", html), "the page names an external URL"
    assets = re.findall(r"(?:src|href)=[\"']([^\"']+)[\"']", html)
    scripts = [a for a in assets if a.endswith(".js")]
    styles = [a for a in assets if a.endswith(".css")]
    assert scripts and styles, assets
    for url in scripts + styles:
        assert url.startswith("/"), url
        asset = http.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 50_000, f"{url} is only {len(asset.content)} bytes"
        kind = "javascript" if url.endswith(".js") else "css"
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
    assert "url: '/openapi.json'" in html
    assert '"validatorUrl": null' in html  # no badge image fetched from validator.swagger.io


def test_redoc_page_is_local_too(http: TestClient) -> None:
    page = http.get("/redoc")
    assert page.status_code == 200
    assert not re.findall(r"(?:https?:)?//[^\s\"'<>]+", page.text)
    script = re.search(r"<script src=\"([^\"]+)\"", page.text)
    assert script is not None
    asset = http.get(script.group(1))
    assert asset.status_code == 200 and len(asset.content) > 50_000


def test_docs_routes_are_not_in_the_schema(http: TestClient) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static-docs"))]
