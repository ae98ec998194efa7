"""A multi-file image upload (POST /gallery/images with several `files` and `ids`): each id gets
the code of ITS file, its metadata and its stored file, in the order the parts were sent.
The oracle is the encoder run on each file alone, never the service."""

from __future__ import annotations

import json
from pathlib import Path

from model.runtime.encoder import Encoder
from tests.service.conftest import open_client, png_bytes


def distinct_images(encoder: Encoder, n: int) -> list[bytes]:
    """n drawn images whose codes are pairwise different (else a swap would go unseen)."""
    images: list[bytes] = []
    codes: set[bytes] = set()
    for seed in range(200):
        data = png_bytes(seed % 4, seed=seed)
        code = bytes(encoder.encode_images([data])[0])
        if code not in codes:
            images.append(data)
            codes.add(code)
        if len(images) == n:
            return images
    raise AssertionError(f"fewer than {n} drawn images with distinct codes")


def test_each_id_gets_the_code_metadata_and_file_of_its_own_file(make_settings, encoder: Encoder) -> None:
    n = 4
    images = distinct_images(encoder, n)
    ids = [f"up{k}" for k in (3, 0, 2, 1)]  # not in sorted order: a sort would show too
    names = [f"file{k}.png" for k in range(n)]
    metas = [{"caption": f"caption of file {k}", "k": k} for k in range(n)]
    settings = make_settings()
    with open_client(settings) as client:
        r = client.post(
            "/gallery/images",
            files=[("files", (names[k], images[k], "image/png")) for k in range(n)],
            data={"ids": ids, "metadata": [json.dumps(m) for m in metas]},
        )
        assert r.status_code == 201, r.text
        assert r.json() == {"ids": ids, "count": 12 + n}
        for k, item_id in enumerate(ids):
            item = client.get(f"/gallery/images/{item_id}").json()
            assert item["code"] == bytes(encoder.encode_images([images[k]])[0]).hex(), (
                f"{item_id} has another file's code"
            )
            meta = item["metadata"]
            assert {key: meta[key] for key in metas[k]} == metas[k], meta
            assert meta["filename"] == names[k], meta
            assert (settings.image_gallery / "uploads" / meta["path"]).read_bytes() == images[k]  # type: ignore[operator]
            file = client.get(f"/gallery/images/{item_id}/file")
            assert file.status_code == 200 and file.content == images[k]
            # the item is found at distance 0 by a search with its own file
            hits = client.post(
                "/search/image-to-image",
                files={"file": ("q.png", images[k], "image/png")},
                data={"k": "16", "radius": "0"},
            ).json()["results"]
            assert item_id in [h["id"] for h in hits]


def test_default_ids_follow_each_files_own_name(make_settings, encoder: Encoder) -> None:
    images = distinct_images(encoder, 3)
    names = ["zeta.png", "alpha.png", "mid.png"]
    with open_client(make_settings()) as client:
        r = client.post(
            "/gallery/images", files=[("files", (name, data, "image/png")) for name, data in zip(names, images)]
        )
        assert r.status_code == 201, r.text
        assert r.json()["ids"] == ["zeta", "alpha", "mid"]
        for name, data in zip(names, images):
            item = client.get(f"/gallery/images/{Path(name).stem}").json()
            assert item["code"] == bytes(encoder.encode_images([data])[0]).hex()
            assert item["metadata"]["filename"] == name
