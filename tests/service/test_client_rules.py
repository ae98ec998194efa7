"""service.client without a server: the retry rule on 503 (httpx.MockTransport), the error
exception, the requests it builds, and that its result models match the service's schemas.
tests/service/test_client.py drives it against a real `cmhash serve`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from service import client as cm
from service.client import AsyncClient, Client, CmhashError, retry_after

ROOT = Path(__file__).resolve().parents[2]
NOT_READY = {"error": {"code": "not_ready", "message": "loading"}}
PAGE = {"results": [{"rank": 1, "id": "a", "distance": 0, "metadata": {}}], "bits": 16, "took_ms": 1.0, "total": None}


class Script:
    """A MockTransport handler answering from a list (the last answer repeats), recording requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        request.read()
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


def busy(headers: dict[str, str] | None = None, body: Any = NOT_READY) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(503, text=body, headers=headers)
    return httpx.Response(503, json=body, headers=headers)


def sync_client(script: Script, **options: Any) -> tuple[Client, list[float]]:
    client = Client("http://127.0.0.1:9", transport=httpx.MockTransport(script), **options)
    slept: list[float] = []
    client._sleep = slept.append
    return client, slept


def test_reads_retry_503_with_backoff_then_succeed() -> None:
    script = Script(busy(), busy(), httpx.Response(200, json=PAGE))
    client, slept = sync_client(script, retries=3, backoff=0.2)
    page = client.search_text_to_image("a red square", k=1)
    assert isinstance(page, cm.SearchResponse) and page.results[0].id == "a" and page.total is None
    assert len(script.requests) == 3
    assert len(slept) == 2 and 0.1 <= slept[0] <= 0.2 and 0.2 <= slept[1] <= 0.4  # jittered exponential


def test_retries_are_bounded_then_the_503_is_raised() -> None:
    script = Script(busy())
    client, slept = sync_client(script, retries=2, backoff=0.0)
    with pytest.raises(CmhashError) as caught:
        client.gallery_status("images")
    assert (caught.value.status, caught.value.code, caught.value.message) == (503, "not_ready", "loading")
    assert len(script.requests) == 3 and len(slept) == 2


def test_retry_after_is_honoured_and_a_long_one_is_not_waited_for() -> None:
    script = Script(busy({"Retry-After": "2"}), httpx.Response(200, json={"code": "ab", "bits": 8}))
    client, slept = sync_client(script, max_wait=5)
    assert client.encode_text("x").code == "ab"
    assert slept == [2.0]
    script = Script(busy({"Retry-After": "60"}))
    client, slept = sync_client(script, max_wait=5)
    with pytest.raises(CmhashError):
        client.encode_text("x")
    assert len(script.requests) == 1 and slept == []


def test_retry_after_forms() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after("7") == 7.0
    assert retry_after(format_datetime(datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(datetime(2029, 1, 1, tzinfo=UTC), usegmt=True), now) == 0.0
    assert retry_after(None) is None and retry_after("soon") is None and retry_after("") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.add_texts(["a red square"], ids=["t"]),
        lambda c: c.add_images([("a.png", b"\x89PNG")]),
        lambda c: c.delete_item("texts", "t"),
    ],
    ids=["add_texts", "add_images", "delete_item"],
)
def test_writes_retry_only_the_services_own_refusals(call: Callable[[Client], Any]) -> None:
    # the service's JSON 503 (it stored nothing): retried
    script = Script(busy(), httpx.Response(201, json={"ids": ["t"], "count": 1, "id": "t"}))
    client, _ = sync_client(script, backoff=0.0)
    call(client)
    assert len(script.requests) == 2
    # a 503 of something else (a proxy, the connection limit): the write may have happened: raised
    script = Script(busy(body="Service Unavailable"))
    client, slept = sync_client(script, backoff=0.0)
    with pytest.raises(CmhashError) as caught:
        call(client)
    assert len(script.requests) == 1 and slept == []
    assert (caught.value.status, caught.value.code, caught.value.message) == (503, "http_503", "Service Unavailable")


def test_reads_retry_any_503() -> None:
    script = Script(busy(body="Service Unavailable"), httpx.Response(200, json={"status": "ok", "detail": None}))
    client, _ = sync_client(script, backoff=0.0)
    assert client.health().status == "ok" and len(script.requests) == 2


@pytest.mark.parametrize("status", [400, 404, 409, 500, 502, 507])
def test_other_errors_are_raised_at_once(status: int) -> None:
    script = Script(httpx.Response(status, json={"error": {"code": "some_code", "message": "why"}}))
    client, _ = sync_client(script)
    with pytest.raises(CmhashError) as caught:
        client.get_item("texts", "x")
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, "some_code", "why")
    assert str(caught.value) == f"{status} some_code: why"
    assert len(script.requests) == 1


def test_validation_details_are_kept() -> None:
    details = [{"loc": ["body", "k"], "msg": "bad", "type": "int_parsing"}]
    body = {"error": {"code": "validation_error", "message": "k: bad", "details": details}}
    client, _ = sync_client(Script(httpx.Response(422, json=body)))
    with pytest.raises(CmhashError) as caught:
        client.search_text_to_text("x")
    assert caught.value.details == details


def test_ready_answers_a_503_without_retrying() -> None:
    body = {"status": "loading", "detail": None, **NOT_READY}
    script = Script(httpx.Response(503, json=body))
    client, slept = sync_client(script)
    readiness = client.ready()
    assert readiness.status == "loading" and not readiness.ready
    assert len(script.requests) == 1 and slept == []
    degraded = {"status": "degraded", "detail": "model", "degraded": {"image": "damaged"}}
    client, _ = sync_client(Script(httpx.Response(200, json=degraded)))
    readiness = client.ready()
    assert readiness.ready and readiness.degraded == {"image": "damaged"}


def test_requests_carry_the_key_and_the_fields() -> None:
    script = Script(httpx.Response(201, json={"ids": ["x", "y"], "count": 2}))
    client, _ = sync_client(script, api_key="secret")
    client.add_images([("x.png", b"one"), b"two"], ids=["x", "y"], metadata=[{"label": 1}, None])
    request = script.requests[-1]
    assert request.headers["x-api-key"] == "secret" and request.url.path == "/gallery/images"
    body = request.content
    assert body.count(b'name="files"') == 2 and body.count(b'name="ids"') == 2 and body.count(b'name="metadata"') == 2
    assert b'filename="x.png"' in body and b"Content-Type: image/png" in body and b'{"label": 1}' in body

    script.answers = [httpx.Response(201, json={"ids": ["a"], "count": 3})]
    client.add_texts(["first", "second"], ids=["a", None], metadata=[None, {"k": "v"}])
    assert json.loads(script.requests[-1].content) == {
        "items": [{"text": "first", "id": "a"}, {"text": "second", "metadata": {"k": "v"}}]
    }
    script.answers = [httpx.Response(200, json=PAGE)]
    client.search_text_to_image("q", k=5, offset=10, radius=3)
    assert json.loads(script.requests[-1].content) == {"text": "q", "k": 5, "offset": 10, "radius": 3}
    client.search_image_to_text(b"img", k=2)
    body = script.requests[-1].content
    assert b'name="k"\r\n\r\n2' in body and b'name="radius"' not in body and b'name="file"' in body

    client.search_text_to_text("q", filter={"labels": "dog", "n": 2})
    assert json.loads(script.requests[-1].content)["filter"] == {"labels": "dog", "n": 2}
    client.search_text_to_text("q", filter={})
    assert "filter" not in json.loads(script.requests[-1].content)
    client.search_image_to_image(b"img", filter={"labels": "dog"})
    assert b'name="filter"\r\n\r\n{"labels": "dog"}' in script.requests[-1].content

    script.answers = [httpx.Response(200, json={"items": [{"id": "a", "metadata": {"n": 1}}], "count": 7})]
    page = client.list_items("images", offset=3, limit=2)
    assert page == cm.ItemPage(items=[cm.ItemSummary(id="a", metadata={"n": 1})], count=7)
    assert script.requests[-1].url.path == "/gallery/images/items"
    assert dict(script.requests[-1].url.params) == {"offset": "3", "limit": "2"}
    client.list_items("text")
    assert script.requests[-1].url.path == "/gallery/texts/items"
    assert dict(script.requests[-1].url.params) == {"offset": "0"}

    script.answers = [httpx.Response(200, json={"id": "a b/c?", "code": "00", "metadata": {}})]
    client.get_item("text", "a b/c?")
    assert script.requests[-1].url.raw_path == b"/gallery/texts/a%20b%2Fc%3F"
    with pytest.raises(ValueError):
        client.gallery_status("audio")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.add_texts(["a", "b"], ids=["a"])


def test_base_url_prefix_is_kept() -> None:
    script = Script(httpx.Response(200, json={"status": "ok", "detail": None}))
    client = Client("http://127.0.0.1:9/cmhash/", transport=httpx.MockTransport(script))
    client.health()
    assert script.requests[-1].url.path == "/cmhash/healthz"


def test_async_client_retries_and_raises_the_same_way() -> None:
    async def main() -> None:
        script = Script(busy({"Retry-After": "0"}), httpx.Response(200, json=PAGE))
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        async with AsyncClient("http://127.0.0.1:9", transport=httpx.MockTransport(script)) as client:
            client._sleep = sleep
            page = await client.search_image_to_image(b"img", k=1)
            assert page.results[0].rank == 1 and slept == [0.0] and len(script.requests) == 2
            script.answers = [busy(body="Service Unavailable")]
            script.requests.clear()
            with pytest.raises(CmhashError) as caught:
                await client.add_texts("x")
            assert caught.value.status == 503 and len(script.requests) == 1

    asyncio.run(main())


def test_result_models_match_the_service_schemas() -> None:
    """The client's models mirror service/schemas.py (it may not import them: they pull in numpy
    and FAISS), field for field."""
    from index.search import Hit
    from service import schemas

    pairs: list[tuple[type[BaseModel], type[BaseModel]]] = [
        (cm.SearchResponse, schemas.SearchResponse),
        (cm.Hit, Hit),
        (cm.CodeResponse, schemas.CodeResponse),
        (cm.Added, schemas.Added),
        (cm.Deleted, schemas.Deleted),
        (cm.Item, schemas.Item),
        (cm.GalleryStatus, schemas.GalleryStatus),
        (cm.Health, schemas.Health),
        (cm.ItemSummary, schemas.ItemSummary),
        (cm.ItemPage, schemas.ItemPage),
    ]
    for mine, theirs in pairs:
        assert list(mine.model_fields) == list(theirs.model_fields), mine.__name__
        for name, f in theirs.model_fields.items():
            assert mine.model_fields[name].is_required() == f.is_required(), f"{mine.__name__}.{name}"


def test_the_client_imports_no_server_code() -> None:
    code = (
        "import sys, service.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'numpy', 'faiss', 'torch', 'index', 'model') or m.startswith('service.') "
        "and m != 'service.client'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_one_image_or_many() -> None:
    assert cm._is_one_image(b"bytes") and cm._is_one_image("a.png") and cm._is_one_image(Path("a.png"))
    assert cm._is_one_image(("a.png", b"bytes"))
    assert not cm._is_one_image(("a.png", "b.png")) and not cm._is_one_image(["a.png"])
