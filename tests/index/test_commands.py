"""`cmhash index` and `cmhash search` end to end with a real exported model (the tiny Bi_NCMH
run through ONNX Runtime): reports, incremental runs, rebuild, remove/prune, the model
mismatch refusal, and search results checked against a brute-force scan of the encoder's codes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from index.commands import build_gallery, search_gallery
from index.gallery import Gallery, GalleryMismatchError
from model.runtime.codes import hamming_distance_matrix
from model.runtime.encoder import Encoder
from model.runtime.errors import UserError
from service.cli import app
from tests.tiny_data import CLASSES, draw_item, item_text

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})


@pytest.fixture(autouse=True)
def no_cmhash_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("CMHASH_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> Encoder:
    return Encoder.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """16 drawn images, a truncated JPEG and a text file."""
    root = tmp_path_factory.mktemp("gallery_images")
    rng = np.random.default_rng(5)
    for i in range(16):
        draw_item(i % 4, rng, size=96).save(root / f"g{i:02d}.jpg", quality=92)
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (200, 30, 30)).save(buf, "JPEG")
    (root / "broken.jpg").write_bytes(buf.getvalue()[:300])
    (root / "notes.txt").write_text("this is not an image")
    return root


def stored_codes(gallery_dir: Path) -> tuple[list[str], np.ndarray]:
    store = Gallery.open(gallery_dir).store
    ids = store.ids()
    return ids, np.stack([store.get(i)["code"] for i in ids])


def test_index_folder_then_search_matches_brute_force(tiny_model_dir, encoder, folder, tmp_path):
    report = build_gallery(tiny_model_dir, tmp_path / "g", images=folder, batch_size=5, workers=2, progress=False)
    assert (report.added, report.gallery_size) == (16, 16)
    assert {Path(e).name for e, _ in report.skipped} == {"broken.jpg", "notes.txt"}
    saved = json.loads((tmp_path / "g" / "last_index_report.json").read_text())
    assert saved["added"] == 16 and len(saved["skipped"]) == 2

    ids, codes = stored_codes(tmp_path / "g")
    files = sorted(folder.glob("g*.jpg"))
    assert ids == [f.stem for f in files]
    np.testing.assert_array_equal(codes, encoder.encode_images(files))  # pipeline = direct encoding

    for text in ("a small red square", "a bright blue stripes"):
        hits = search_gallery(tiny_model_dir, tmp_path / "g", text=text, k=6).hits
        q = encoder.encode_texts([text])
        dist = hamming_distance_matrix(q, codes)[0]
        expected = sorted(range(len(ids)), key=lambda p: (dist[p], p))[:6]
        assert [h.id for h in hits] == [ids[p] for p in expected]
        assert [h.distance for h in hits] == [int(dist[p]) for p in expected]
        assert hits[0].metadata["path"] == str((folder / f"{hits[0].id}.jpg").resolve())
    radius = int(np.median(dist))
    within = search_gallery(tiny_model_dir, tmp_path / "g", text="a bright blue stripes", k=100, radius=radius).hits
    assert [h.id for h in within] == [
        ids[p] for p in sorted(range(len(ids)), key=lambda p: (dist[p], p)) if dist[p] <= radius
    ]


def test_rerun_adds_only_new_and_remove_prune_rebuild(tiny_model_dir, folder, tmp_path):
    src = tmp_path / "imgs"
    shutil.copytree(folder, src)
    g = tmp_path / "g"
    assert build_gallery(tiny_model_dir, g, images=src, progress=False).added == 16
    again = build_gallery(tiny_model_dir, g, images=src, progress=False)
    assert (again.added, again.already_present) == (0, 16)
    (src / "g00.jpg").unlink()
    draw_item(1, np.random.default_rng(9), size=96).save(src / "new.jpg")
    update = build_gallery(tiny_model_dir, g, images=src, prune=True, remove=["g01"], progress=False)
    assert (update.added, update.removed, update.gallery_size) == (1, 2, 15)
    ids, _codes = stored_codes(g)
    assert "g00" not in ids and "g01" not in ids and ids[-1] == "new"
    rebuilt = build_gallery(tiny_model_dir, g, images=src, rebuild=True, progress=False)
    assert rebuilt.added == 16 and not (tmp_path / "g.rebuild").exists() and not (tmp_path / "g.old").exists()
    ids2, _codes2 = stored_codes(g)
    assert ids2 == sorted(ids2) and set(ids2) == set(ids) | {"g01"}


def test_text_gallery_and_image_query(tiny_model_dir, encoder, folder, tmp_path):
    texts = tmp_path / "texts.jsonl"
    rows = [{"id": f"c{i}", "text": item_text(i), "labels": [CLASSES[i % 4][0]]} for i in range(12)]
    texts.write_text("\n".join(json.dumps(r) for r in rows))
    report = build_gallery(tiny_model_dir, tmp_path / "t", texts=texts, progress=False)
    assert report.added == 12
    hits = search_gallery(tiny_model_dir, tmp_path / "t", image=folder / "g02.jpg", k=12).hits
    q = encoder.encode_images([folder / "g02.jpg"])
    dist = hamming_distance_matrix(q, encoder.encode_texts([r["text"] for r in rows]))[0]
    assert [h.id for h in hits] == [f"c{p}" for p in sorted(range(12), key=lambda p: (dist[p], p))]
    assert hits[0].metadata["labels"] == rows[int(hits[0].id[1:])]["labels"]


@pytest.fixture(scope="module")
def other_model_dir(tiny_run, tmp_path_factory) -> Path:
    """The tiny run with one weight changed, exported: another model of the same shape."""
    import torch

    from model.training.export import export_run

    run = tmp_path_factory.mktemp("other_run") / "run"
    shutil.copytree(tiny_run, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("text_head.mlp") and k.endswith("bias"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.1
    torch.save(ckpt, run / "checkpoint.pt")
    out = tmp_path_factory.mktemp("other_model") / "m"
    export_run(run, out)
    return out


def test_gallery_of_another_model_is_refused(tiny_model_dir, other_model_dir, folder, tmp_path):
    build_gallery(tiny_model_dir, tmp_path / "g", images=folder, progress=False)
    assert Encoder.load(other_model_dir).checksum != Encoder.load(tiny_model_dir).checksum
    with pytest.raises(GalleryMismatchError, match="rebuild"):
        search_gallery(other_model_dir, tmp_path / "g", text="red")
    with pytest.raises(GalleryMismatchError):
        build_gallery(other_model_dir, tmp_path / "g", images=folder, progress=False)
    result = invoke("index", "--model", other_model_dir, "--images", folder, "--out", tmp_path / "g")
    assert result.exit_code == 2 and "was built with model" in ANSI.sub("", result.output)
    assert len(Gallery.open(tmp_path / "g").store) == 16  # untouched
    rebuilt = build_gallery(other_model_dir, tmp_path / "g", images=folder, rebuild=True, progress=False)
    assert rebuilt.added == 16 and search_gallery(other_model_dir, tmp_path / "g", text="red").hits


def test_cli_index_and_search(tiny_model_dir, folder, tmp_path):
    result = invoke("index", "--model", tiny_model_dir, "--images", folder, "--out", tmp_path / "g", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "added 16 items" in result.output and "2 skipped" in result.output
    assert "broken.jpg: not a decodable image" in result.output and "notes.txt" in result.output

    result = invoke(
        "search", "--model", tiny_model_dir, "--gallery", tmp_path / "g", "--text", "a red square", "-k", "3"
    )
    assert result.exit_code == 0, result.output
    header, *lines = result.output.strip().splitlines()
    assert header.split() == ["rank", "dist", "id", "item"]
    assert len(lines) == 3 and [line.split()[0] for line in lines] == ["1", "2", "3"]
    result = invoke(
        "search", "--model", tiny_model_dir, "--gallery", tmp_path / "g", "--text", "a red square", "--json"
    )
    hits = json.loads(result.output)
    assert len(hits) == 10 and [h["rank"] for h in hits] == list(range(1, 11))
    assert hits[0]["id"] == lines[0].split()[2]


def test_cli_errors_are_clean(tiny_model_dir, folder, tmp_path):
    cases = [
        ("index", "--model", tiny_model_dir, "--out", tmp_path / "g"),  # neither --images nor --texts
        ("index", "--model", tmp_path / "nope", "--images", folder, "--out", tmp_path / "g2"),
        ("index", "--model", tiny_model_dir, "--images", tmp_path / "missing", "--out", tmp_path / "g3"),
        ("search", "--model", tiny_model_dir, "--gallery", tmp_path / "not-a-gallery", "--text", "x"),
        ("search", "--model", tiny_model_dir, "--gallery", tmp_path, "--text", "x", "--image", folder / "g00.jpg"),
        ("search", "--model", tiny_model_dir, "--gallery", tmp_path, "--image", folder / "broken.jpg"),
        ("search", "--model", tiny_model_dir, "--gallery", tmp_path, "--image", folder / "absent.jpg"),
        ("index", "--model", tiny_model_dir, "--images", folder, "--out", folder / "g00.jpg"),
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert isinstance(result.exception, SystemExit)
        assert "error:" in ANSI.sub("", result.output)


def test_index_help_names_env_vars():
    result = invoke("index", "--help")
    text = ANSI.sub("", result.output)
    # Settings read from the environment, each name meaning one thing in every command.
    for flag, env in (
        ("--model", "CMHASH_MODEL_DIR"),
        ("--decode-threads", "CMHASH_DECODE_THREADS"),
        ("--encode-batch", "CMHASH_ENCODE_BATCH"),
        ("--encoder-threads", "CMHASH_ENCODER_THREADS"),
        ("--device", "CMHASH_DEVICE"),
    ):
        assert flag in text and env in text, flag
    # What one invocation reads or writes is a flag only: a variable left set cannot leak into another run.
    for flag in ("--images", "--texts", "--out", "--remove", "--prune", "--rebuild"):
        assert flag in text and "CMHASH_" + flag[2:].upper() not in text, flag
    assert "<auto|cpu|cuda>" in text  # the choices are listed


def test_milvus_gallery_gives_the_faiss_gallery_results(tiny_model_dir, folder, tmp_path):
    pytest.importorskip("milvus_lite")
    from index.commands import MilvusTarget

    build_gallery(tiny_model_dir, tmp_path / "faiss", images=folder, progress=False)
    target = MilvusTarget(str(tmp_path / "milvus.db"), "tiny_images")
    report = build_gallery(tiny_model_dir, tmp_path / "milvus", images=folder, milvus=target, progress=False)
    assert report.added == 16 and Gallery.open(tmp_path / "milvus").info.backend == "milvus"
    again = build_gallery(tiny_model_dir, tmp_path / "milvus", images=folder, progress=False)
    assert (again.added, again.already_present) == (0, 16)
    for text in ("a red square", "yellow checks"):
        a = search_gallery(tiny_model_dir, tmp_path / "faiss", text=text, k=7).hits
        b = search_gallery(tiny_model_dir, tmp_path / "milvus", text=text, k=7).hits
        assert [(h.id, h.distance, h.metadata) for h in a] == [(h.id, h.distance, h.metadata) for h in b]
    with pytest.raises(UserError, match="rebuild"):
        build_gallery(tiny_model_dir, tmp_path / "milvus", images=folder, rebuild=True, progress=False)


def test_cli_search_warns_of_unknown_words_and_refuses_none_known(tiny_model_dir, folder, tmp_path):
    invoke("index", "--model", tiny_model_dir, "--images", folder, "--out", tmp_path / "g", "--no-progress")
    result = invoke("search", "--model", tiny_model_dir, "--gallery", tmp_path / "g", "--text", "a red xyzzy square")
    assert result.exit_code == 0, result.output
    assert "warning: words the model does not know (not used): xyzzy" in ANSI.sub("", result.output)
    result = invoke("search", "--model", tiny_model_dir, "--gallery", tmp_path / "g", "--text", "xyzzy plugh")
    assert result.exit_code == 2 and "no word of 'xyzzy plugh' is known to the model" in ANSI.sub("", result.output)


def test_cli_search_filter_is_the_ranking_restricted_to_matching_items(tiny_model_dir, tmp_path):
    """`--filter KEY=VALUE` (repeatable, all must match; a list value matches when it holds the
    value): the filtered ranking is the unfiltered one with the other items left out."""
    texts = tmp_path / "texts.jsonl"
    rows = [
        {
            "id": f"t{i:02d}",
            "text": item_text(i % 6),
            "labels": ["dog", "cat"][i % 2] if i % 3 else ["dog", "bird"],
            "n": i % 4,
            "odd": bool(i % 2),
        }
        for i in range(24)
    ]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_gallery(tiny_model_dir, tmp_path / "t", texts=texts, progress=False)
    every = search_gallery(tiny_model_dir, tmp_path / "t", text="a small red square", k=100).hits
    meta = {r["id"]: r for r in rows}
    for args, keep in (
        (["--filter", "labels=dog"], lambda m: "dog" in m["labels"]),  # a list holding it, or the string itself
        (["--filter", "labels=cat", "--filter", "odd=true"], lambda m: m["labels"] == "cat" and m["odd"]),
        (["--filter", "n=2"], lambda m: m["n"] == 2),
        (["--filter", 'n="2"'], lambda m: False),  # a quoted value is text: no stored n is the string "2"
    ):
        result = invoke(
            "search",
            "--model",
            tiny_model_dir,
            "--gallery",
            tmp_path / "t",
            "--text",
            "a small red square",
            "-k",
            "5",
            "--json",
            *args,
        )
        assert result.exit_code == 0, result.output
        want = [(h.id, h.distance) for h in every if keep(meta[h.id])][:5]
        assert [(h["id"], h["distance"]) for h in json.loads(result.output)] == want, args
    page = search_gallery(
        tiny_model_dir, tmp_path / "t", text="a small red square", k=3, radius=64, filter={"labels": "bird"}
    )
    birds = [(h.id, h.distance) for h in every if "bird" in meta[h.id]["labels"]]
    assert [(h.id, h.distance) for h in page.hits] == birds[:3] and page.found == len(birds)
    result = invoke(
        "search",
        "--model",
        tiny_model_dir,
        "--gallery",
        tmp_path / "t",
        "--text",
        "a red square",
        "--filter",
        "labels=fish",
    )
    assert result.exit_code == 0 and "no item matches the filter" in result.output
    for bad in ("labels", "=dog"):
        result = invoke(
            "search", "--model", tiny_model_dir, "--gallery", tmp_path / "t", "--text", "a red square", "--filter", bad
        )
        assert result.exit_code == 2 and "KEY=VALUE" in ANSI.sub("", result.output), result.output


# A server that journals one add and one delete and is killed before it compacts them.
_KILLED_SERVER = """
import os, sys
import numpy as np
from index.gallery import Gallery
from index.journal import JournaledGallery
g = JournaledGallery(Gallery.open(sys.argv[1]))
g.add(["api-x"], np.full((1, g.bits // 8), 0xAB, dtype=np.uint8), [{"via": "api"}])
g.remove(["c0"])
os._exit(0)  # no close, no compaction: the changes live only in journal.jsonl
"""


def test_index_after_a_killed_server_applies_its_journal_first(tiny_model_dir, tmp_path):
    """`cmhash search` sees what a killed server acknowledged; `cmhash index --prune` replays the
    server's journal before its own changes, so a later server start cannot undo them (the
    pruned API item stays gone, the re-listed item stays back)."""
    import subprocess
    import sys

    from index.journal import JOURNAL_FILE, JournaledGallery, read_journal

    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"id": f"c{i}", "text": item_text(i)}) for i in range(6)))
    gallery = tmp_path / "g"
    build_gallery(tiny_model_dir, gallery, texts=texts, progress=False)
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", _KILLED_SERVER, str(gallery)], check=True, cwd=root)
    assert [r["op"] for r in read_journal(gallery)] == ["add", "remove"]

    found = {h.id for h in search_gallery(tiny_model_dir, gallery, text=item_text(1), k=10).hits}
    assert found == {"api-x", "c1", "c2", "c3", "c4", "c5"}  # the journal, read without changing it
    assert len(read_journal(gallery)) == 2

    report = build_gallery(tiny_model_dir, gallery, texts=texts, prune=True, progress=False)
    assert (report.removed, report.added, report.gallery_size) == (1, 1, 6)
    assert (gallery / JOURNAL_FILE).read_bytes() == b""
    restarted = JournaledGallery(Gallery.open(gallery))  # what a server does on start
    try:
        assert sorted(restarted.ids()) == [f"c{i}" for i in range(6)]
    finally:
        restarted.close()
