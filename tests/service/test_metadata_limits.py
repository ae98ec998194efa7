"""Metadata limits: whatever metadata a gallery write accepts can be read back, by GET and by a
search that returns the item; anything else (too deep, too large, a value JSON cannot carry) is
refused with a 400 naming the limit and stores nothing."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.conftest import open_client, png_bytes

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cmhash-hypothesis")
except ImportError:  # the `test` extra installs it; without it only the property test is skipped
    given = None

TEXT = "a plain purple thing"
_ids = itertools.count()


@pytest.fixture(scope="module")
def api(module_settings: Settings) -> Iterator[TestClient]:
    """A ready app (500s answered, not raised) over this module's own gallery copies, which
    these tests add to."""
    with open_client(module_settings) as ready:
        yield TestClient(ready.app, raise_server_exceptions=False)


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """An object `depth` levels deep ({"a": leaf} is 1)."""
    value: Any = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values (an int and the equal float compare equal, as a JSON reader sees them)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or a == b


def add_text(api: TestClient, metadata: Any, raw: bytes | None = None) -> tuple[str, httpx.Response]:
    item_id = f"m{next(_ids)}"
    if raw is None:
        body = json.dumps({"items": [{"id": item_id, "text": TEXT, "metadata": metadata}]}).encode()
    else:  # metadata given as raw JSON text (values json.dumps cannot write, e.g. huge integers)
        head = f'{{"items": [{{"id": "{item_id}", "text": "{TEXT}", "metadata": '.encode()
        body = head + raw + b"}]}"
    return item_id, api.post("/gallery/texts", content=body, headers={"content-type": "application/json"})


def check_outcome(api: TestClient, kind: str, item_id: str, r: httpx.Response, sent: Any) -> bool:
    """Accepted: readable by GET and by a search that returns it, metadata as sent. Refused: a
    400 with the error body, and nothing stored. Returns whether it was accepted."""
    assert r.status_code in (201, 400), f"{r.status_code}: {r.text[:300]}"
    if r.status_code == 400:
        body = r.json()
        assert set(body) == {"error"} and body["error"]["code"] == "bad_request" and body["error"]["message"]
        assert api.get(f"/gallery/{kind}/{item_id}").status_code == 404
        return False
    got = api.get(f"/gallery/{kind}/{item_id}")
    assert got.status_code == 200, got.text[:300]
    meta = got.json()["metadata"]
    if sent is not None:  # the server's own keys (text, path, filename) replace any sent under those names
        ours = ("text", "path", "filename")
        assert same_json(
            {k: v for k, v in meta.items() if k not in ours}, {k: v for k, v in sent.items() if k not in ours}
        )
    count = api.get(f"/gallery/{kind}").json()["count"]
    if kind == "texts":
        hits = api.post("/search/text-to-text", json={"text": TEXT, "k": count})
    else:
        hits = api.post(
            "/search/image-to-image", files={"file": ("q.png", png_bytes(0), "image/png")}, data={"k": str(count)}
        )
    assert hits.status_code == 200, hits.text[:300]
    found = [h for h in hits.json()["results"] if h["id"] == item_id]
    assert len(found) == 1  # "path" may be shown differently (a file name, not the server's path)
    assert same_json(
        {k: v for k, v in found[0]["metadata"].items() if k != "path"}, {k: v for k, v in meta.items() if k != "path"}
    )
    assert len(hits.content) < 100 * (count + 2) * 2**10  # no item makes a search answer megabytes
    return True


HOSTILE: list[tuple[str, Any, bytes | None, bool]] = [  # (name, metadata, raw JSON text, accepted)
    ("depth-16", nested(16), None, True),
    ("depth-17", nested(17), None, False),
    ("depth-255", nested(255), None, False),
    ("depth-400", nested(400), None, False),
    ("depth-900", nested(900), None, False),
    ("list-depth-17", {"a": json.loads("[" * 16 + "]" * 16)}, None, False),
    ("16-KiB", {"s": "x" * (16 * 1024 - 60)}, None, True),  # with the text the server adds
    ("over-16-KiB", {"s": "x" * (16 * 1024)}, None, False),
    ("9-MB", {"s": "x" * 9_000_000}, None, False),
    ("multibyte-over-limit", {"s": "\u00e9" * 9000}, None, False),  # 9000 chars, 18000 bytes
    ("int64", {"n": 2**63 - 1, "m": -(2**63), "u": 2**64 - 1}, None, True),
    ("int-65-bits", None, b'{"n": 36893488147419103232}', False),
    ("int-5000-digits", None, b'{"n": ' + b"9" * 5000 + b"}", False),
    ("nan", None, b'{"x": NaN}', False),
    ("infinity", None, b'{"x": -Infinity}', False),
    ("float-overflow", None, b'{"x": 1e999}', False),
    ("lone-surrogate", None, b'{"x": "\\ud800"}', False),
    ("lone-surrogate-key", None, b'{"\\udc00": 1}', False),
    ("odd-but-fine", {"": None, "e": 1e308, "z": -0.0, "t": True, "l": [[], {}], "u": "\u2028\x00"}, None, True),
]


@pytest.mark.parametrize(("metadata", "raw", "accepted"), [pytest.param(m, r, a, id=n) for n, m, r, a in HOSTILE])
def test_hostile_text_metadata(api: TestClient, metadata: Any, raw: bytes | None, accepted: bool) -> None:
    item_id, r = add_text(api, metadata, raw)
    assert check_outcome(api, "texts", item_id, r, metadata) == accepted, r.text[:300]
    if not accepted and r.status_code == 400 and ("deep" in r.text or "bytes as JSON" in r.text):
        assert "max_metadata_" in r.json()["error"]["message"]  # names the limit


@pytest.mark.parametrize(
    ("metadata", "raw", "accepted"), [pytest.param(m, r, a, id=n) for n, m, r, a in HOSTILE if "9-MB" not in n]
)
def test_hostile_image_metadata(
    api: TestClient, module_settings: Settings, metadata: Any, raw: bytes | None, accepted: bool
) -> None:
    item_id = f"im{next(_ids)}"
    text = raw if raw is not None else json.dumps(metadata).encode()
    r = api.post(
        "/gallery/images",
        files={"files": (f"{item_id}.png", png_bytes(1, seed=5), "image/png")},
        data={"metadata": text.decode("utf-8")},
    )
    expected = accepted and len(text) < 15 * 1024  # the stored path and file name count too
    assert check_outcome(api, "images", item_id, r, metadata) == expected, r.text[:300]
    uploads = module_settings.image_gallery / "uploads"  # type: ignore[operator]
    assert not list(uploads.glob("*.tmp"))


def test_limits_are_settings(tiny_model_dir: Path, gallery_templates: Path, tmp_path: Path) -> None:
    shutil.copytree(gallery_templates / "texts", tmp_path / "texts")
    tight = Settings(
        model_dir=tiny_model_dir,
        text_gallery=tmp_path / "texts",
        device="cpu",
        encoder_threads=1,
        max_metadata_bytes=200,
        max_metadata_depth=2,
    )
    with open_client(tight) as api:
        assert add_text(api, {"a": {"b": 1}})[1].status_code == 201
        r = add_text(api, {"a": {"b": [1]}})[1]
        assert r.status_code == 400 and "max_metadata_depth" in r.json()["error"]["message"]
        r = add_text(api, {"s": "x" * 200})[1]
        assert r.status_code == 400 and "max_metadata_bytes limit of 200" in r.json()["error"]["message"]


if given is not None:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=40)
    )
    json_values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=30,
    )
    shapes = st.one_of(
        st.dictionaries(st.text(max_size=8), json_values, max_size=5),
        st.builds(nested, st.integers(min_value=1, max_value=40), scalars),
        st.builds(
            lambda n, s: {"s": s * n}, st.integers(min_value=1, max_value=40_000), st.sampled_from(["x", "\u00e9"])
        ),
    )

    @settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(metadata=shapes)
    def test_accepted_metadata_is_readable(api: TestClient, metadata: dict[str, Any]) -> None:
        """Property: every metadata the write accepts reads back by GET and by search; the rest is a 400."""
        raw = json.dumps(metadata, allow_nan=True).encode()  # NaN / Infinity tokens, as Python's json reads them
        item_id, r = add_text(api, None, raw)
        accepted = check_outcome(api, "texts", item_id, r, metadata if _finite(metadata) else None)
        if accepted:
            assert _finite(metadata)
else:

    @pytest.mark.skip(reason="hypothesis is not installed (pip install -e '.[test]')")
    def test_accepted_metadata_is_readable() -> None:
        pass


def _finite(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True
