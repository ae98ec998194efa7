"""Safe by default: the Host allow-list (DNS rebinding), the Origin check on writes (CSRF),
anonymous writes only from loopback, security headers, and no server paths in answers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.middleware import allowed_host_names, origin_of, split_host
from service.settings import Settings
from tests.service.conftest import TEST_ACCESS, open_client, png_bytes, wait_ready


@pytest.fixture(scope="module")
def app_client(module_settings: Settings) -> Iterator[TestClient]:
    """A ready app with the default Host and client rules (no API key)."""
    settings = module_settings.model_copy(
        update={"allowed_hosts": ["127.0.0.1", "localhost", "[::1]"], "anonymous_write_clients": ["127.0.0.0/8", "::1"]}
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 40000)) as client:
        wait_ready(client)
        yield client


def remote(client: TestClient, address: str = "203.0.113.5") -> TestClient:
    """The same app, seen from another machine."""
    return TestClient(client.app, base_url="http://127.0.0.1:8000", client=(address, 40000))


def expect(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    return r.json()["error"]["message"]


def test_defaults_are_local_only() -> None:
    fields = Settings.model_fields
    assert fields["allowed_hosts"].default == ["127.0.0.1", "localhost", "[::1]"]
    assert fields["allowed_origins"].default == []
    assert fields["anonymous_write_clients"].default == ["127.0.0.0/8", "::1"]
    assert fields["api_key"].default is None


def test_list_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CMHASH_ALLOWED_HOSTS", "cmhash.example.org, [::1]")
    monkeypatch.setenv("CMHASH_ALLOWED_ORIGINS", "")
    settings = Settings(model_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.allowed_hosts == ["cmhash.example.org", "[::1]"] and settings.allowed_origins == []


def test_host_parsing() -> None:
    assert split_host("LocalHost:8000") == ("localhost", 8000)
    assert split_host("[::1]:80") == ("[::1]", 80)
    assert split_host("example.org.") == ("example.org", None)
    assert split_host("a:b") is None and split_host("") is None and split_host("x@y") is None
    assert allowed_host_names(["localhost"], "10.1.2.3") == ["localhost", "10.1.2.3"]
    assert allowed_host_names(["localhost"], "0.0.0.0") == ["localhost"]
    assert allowed_host_names([], "::1") == ["[::1]"]
    assert origin_of("https://Example.org") == ("https", "example.org", 443)
    assert origin_of("null") is None


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1234", "[::1]:8000", "127.0.0.1"])
def test_local_host_names_are_served(app_client: TestClient, host: str) -> None:
    assert app_client.get("/healthz", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost@evil", "10.0.0.1"]
)
def test_other_hosts_are_400(app_client: TestClient, host: str) -> None:
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host evil.example."""
    message = expect(app_client.get("/healthz", headers={"Host": host}), 400, "bad_request")
    assert "CMHASH_ALLOWED_HOSTS" in message
    r = app_client.delete("/gallery/images/i00", headers={"Host": host})
    expect(r, 400, "bad_request")
    assert app_client.get("/gallery/images/i00").status_code == 200  # nothing deleted


def test_star_and_bound_address(module_settings: Settings) -> None:
    for update, host, other in (
        ({"allowed_hosts": ["*"]}, "anything.example", None),
        ({"allowed_hosts": ["*.example.org"]}, "cmhash.example.org", "example.org.evil"),
        ({"allowed_hosts": [], "host": "192.0.2.7"}, "192.0.2.7:8000", "localhost"),
    ):
        client = TestClient(create_app(module_settings.model_copy(update=update)))  # no lifespan: /healthz needs none
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, update
        if other is not None:
            assert client.get("/healthz", headers={"Host": other}).status_code == 400, update


def test_cross_origin_writes_are_403(app_client: TestClient) -> None:
    """CSRF: a page of another site posting a form to the local server."""
    files = [("files", ("x.png", png_bytes(1), "image/png"))]
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another port is another origin
        {"Referer": "https://evil.example/page.html"},
    ):
        message = expect(
            app_client.post("/gallery/images", files=files, data={"ids": "csrf"}, headers=headers), 403, "forbidden"
        )
        assert "CMHASH_ALLOWED_ORIGINS" in message
        expect(app_client.delete("/gallery/images/i00", headers=headers), 403, "forbidden")
        search = app_client.post("/search/text-to-image", json={"text": "a red square"}, headers=headers)
        expect(search, 403, "forbidden")
    assert app_client.get("/gallery/images/csrf").status_code == 404
    assert app_client.get("/gallery/images/i00").status_code == 200
    # reads are not writes: a cross-origin GET is answered (the browser keeps it from the page)
    assert app_client.get("/gallery/images", headers={"Origin": "https://evil.example"}).status_code == 200


def test_same_origin_writes_pass(app_client: TestClient) -> None:
    for headers in ({"Origin": "http://127.0.0.1:8000"}, {"Referer": "http://127.0.0.1:8000/"}, {}):
        r = app_client.post("/search/text-to-image", json={"text": "a red square", "k": 1}, headers=headers)
        assert r.status_code == 200, (headers, r.text)
    r = app_client.post(
        "/search/text-to-image",
        json={"text": "a red square", "k": 1},
        headers={"Host": "localhost:8000", "Origin": "http://LOCALHOST:8000"},
    )
    assert r.status_code == 200


def test_allowed_origins(make_settings) -> None:
    settings = make_settings(allowed_origins=["https://app.example.org"])
    with open_client(settings) as client:
        ok = client.post(
            "/search/text-to-text", json={"text": "a red square"}, headers={"Origin": "https://app.example.org"}
        )
        assert ok.status_code == 200
        expect(
            client.post(
                "/search/text-to-text", json={"text": "a red square"}, headers={"Origin": "https://other.example.org"}
            ),
            403,
            "forbidden",
        )


def test_anonymous_writes_only_from_loopback(make_settings) -> None:
    settings = make_settings(anonymous_write_clients=["127.0.0.0/8", "::1"])
    with TestClient(create_app(settings), client=("127.0.0.1", 40000)) as local:
        wait_ready(local)
        for address in ("203.0.113.5", "10.0.0.8", "2001:db8::1", "testclient"):
            stranger = remote(local, address)
            message = expect(stranger.delete("/gallery/images/i00"), 403, "forbidden")
            assert "CMHASH_API_KEY" in message
            expect(
                stranger.post("/gallery/texts", json={"items": [{"id": "n", "text": "a red square"}]}), 403, "forbidden"
            )
            assert stranger.post("/search/text-to-text", json={"text": "a red square"}).status_code == 200  # reads
        assert local.get("/gallery/images/i00").status_code == 200
        for address in ("127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"):
            r = remote(local, address).post("/gallery/texts", json={"items": [{"id": f"n{address}", "text": "a red"}]})
            assert r.status_code == 201, (address, r.text)
        assert local.delete("/gallery/images/i00").status_code == 200


def test_with_a_key_remote_writes_need_it(make_settings) -> None:
    settings = make_settings(api_key="s3cret", anonymous_write_clients=["127.0.0.0/8", "::1"])
    with TestClient(create_app(settings), client=("203.0.113.5", 40000)) as stranger:
        wait_ready(stranger)
        expect(stranger.delete("/gallery/texts/t00"), 401, "unauthorized")
        assert stranger.delete("/gallery/texts/t00", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_nosniff_everywhere_and_page_policy(app_client: TestClient) -> None:
    file = app_client.get("/gallery/images/i00/file")
    assert file.status_code == 200 and file.headers["x-content-type-options"] == "nosniff"
    for r in (
        app_client.get("/healthz"),
        app_client.get("/no/such/route"),
        app_client.get("/static/app.js"),
        app_client.get("/healthz", headers={"Host": "evil.example"}),
    ):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
    page = app_client.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "same-origin"
    assert 'src="/static/app.js"' in page.text and "<script>" not in page.text  # nothing inline for the CSP to block


def test_no_server_paths_in_search_results(app_client: TestClient, module_settings: Settings) -> None:
    stored = app_client.app.state.cmhash.galleries["image"].get("i00")["metadata"]["path"]  # type: ignore[attr-defined]
    assert stored.startswith("/")  # what `cmhash index` stores (and the CLI prints) is unchanged
    roots = {
        str(module_settings.image_gallery),
        str(module_settings.text_gallery),
        str(module_settings.model_dir),
        "/tmp",
    }
    bodies = [
        app_client.post("/search/text-to-image", json={"text": "a red square", "k": 12}),
        app_client.post(
            "/search/image-to-image", files={"file": ("q.png", png_bytes(0), "image/png")}, data={"k": "12"}
        ),
        app_client.post("/search/text-to-text", json={"text": "a red square", "k": 5}),
        app_client.post("/search/text-to-image", json={"text": "a red square", "radius": 16, "k": 12}),
    ]
    for r in bodies:
        assert r.status_code == 200, r.text
        assert not any(root in r.text for root in roots), r.text
        for hit in r.json()["results"]:
            path = hit["metadata"].get("path")
            assert path is None or ("/" not in path and path.endswith(".png")), hit


def test_no_server_paths_in_readyz(tmp_path) -> None:
    settings = Settings(model_dir=tmp_path / "srv" / "missing", device="cpu", **TEST_ACCESS)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        for _ in range(300):
            r = client.get("/readyz")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert str(tmp_path) not in r.text and "/srv/" not in r.text and "missing" in r.json()["detail"]
        search = client.post("/search/text-to-text", json={"text": "x"})
        assert search.status_code == 503 and str(tmp_path) not in search.text
