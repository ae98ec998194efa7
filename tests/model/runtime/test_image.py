"""model.runtime.image: the shared preprocessing (range, shape, crop geometry, EXIF, strict decoding)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.runtime.errors import UserError
from model.runtime.image import (
    ImageDecodeError,
    ImagePreprocess,
    ImageTooLargeError,
    check_dimensions,
    load_for_model,
    load_image,
    reduced_scale,
    to_array,
)


def test_default_resize_and_json_round_trip() -> None:
    pre = ImagePreprocess()
    assert (pre.size, pre.resize) == (224, 256)
    assert ImagePreprocess(size=260).resize == 297
    assert ImagePreprocess.from_json(pre.to_json()) == pre
    assert ImagePreprocess(224) == ImagePreprocess(224, 256)  # resolved default compares equal
    with pytest.raises(ValueError):
        ImagePreprocess(size=224, resize=200)
    with pytest.raises(ValueError):
        ImagePreprocess.from_json({"size": 224, "mean": 0.5})


def test_output_shape_dtype_and_range() -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    x = to_array(noise, ImagePreprocess())
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    black = to_array(Image.new("RGB", (50, 80), (0, 0, 0)), ImagePreprocess(size=32))
    white = to_array(Image.new("RGB", (50, 80), (255, 255, 255)), ImagePreprocess(size=32))
    assert np.all(black == -1.0) and np.all(white == 1.0)


def test_centre_crop_without_resize_keeps_the_middle_rows() -> None:
    # 8 wide x 16 high, row r has grey level 10 * r; shorter side already equals resize.
    rows = np.repeat((np.arange(16, dtype=np.uint8) * 10)[:, None], 8, axis=1)
    img = Image.fromarray(np.stack([rows] * 3, axis=-1))
    x = to_array(img, ImagePreprocess(size=8, resize=8))
    expected = (np.arange(4, 12, dtype=np.float32) * 10 / 255) * 2 - 1
    np.testing.assert_allclose(x[0, :, 0], expected, atol=1e-6)
    np.testing.assert_allclose(x[1], x[0])


def test_resize_then_centre_crop_geometry() -> None:
    # 400 x 200 black image with a centred 100 x 100 white square: resize x1.28 then crop 224
    # leaves a centred 128 x 128 square (pixels 48..175).
    arr = np.zeros((200, 400, 3), dtype=np.uint8)
    arr[50:150, 150:250] = 255
    x = to_array(Image.fromarray(arr), ImagePreprocess(size=224, resize=256))[0]
    white = x > 0
    ys, xs = np.nonzero(white)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (48, 175, 48, 175)
    assert x[112, 112] == pytest.approx(1.0) and x[0, 0] == pytest.approx(-1.0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, left half red; orientation 6 = display rotated 90 degrees
    # clockwise, so the upright image is 20 x 40 with red on top.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40) and img.mode == "RGB"
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_load_image_converts_sources_to_rgb(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", (10, 12), 128).save(buf, format="PNG")
    from_bytes = load_image(buf.getvalue())
    assert from_bytes.mode == "RGB" and from_bytes.size == (10, 12)
    assert np.asarray(from_bytes)[0, 0].tolist() == [128, 128, 128]
    assert load_image(Image.new("RGBA", (4, 4), (1, 2, 3, 0))).getpixel((0, 0)) == (1, 2, 3)


def _truncated_jpeg(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "truncated.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    path = _truncated_jpeg(tmp_path)
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        load_image(path)


def test_truncation_is_not_hidden_by_load_truncated_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _truncated_jpeg(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_non_image_inputs_raise_decode_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        load_image(text)
    with pytest.raises(ImageDecodeError, match="bytes in memory"):
        load_image(b"\x89PNG\r\n\x1a\n garbage")
    assert issubclass(ImageDecodeError, ValueError) and issubclass(ImageDecodeError, UserError)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")


# ----------------------------------------------------------------------------- load_for_model


def streamed_png(width: int, height: int) -> bytes:
    """A valid all-grey 8-bit greyscale PNG of any size, compressed row by row (never held decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    rows_per_piece = max(1, (1 << 20) // len(row))
    parts = [z.compress(row * min(rows_per_piece, height - y)) for y in range(0, height, rows_per_piece)]
    idat = b"".join(parts) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def smooth(width: int, height: int, seed: int = 3) -> Image.Image:
    """Low-frequency content (8 x 8-pixel noise upscaled bicubically): no detail finer than 1/8 scale."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 75), max(2, width // 75), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the images `load_for_model` hands to `to_array` (what was actually decoded)."""
    import model.runtime.image as image_module

    seen: list[tuple[int, int]] = []

    def spy(img: Image.Image, pre: ImagePreprocess) -> np.ndarray:
        seen.append(img.size)
        return to_array(img, pre)

    monkeypatch.setattr(image_module, "to_array", spy)
    return seen


@pytest.mark.parametrize(("fmt", "kw"), [("PNG", {}), ("JPEG", {"quality": 92}), ("WEBP", {"lossless": True})])
def test_load_for_model_equals_the_reference_path_for_normal_images(fmt: str, kw: dict) -> None:
    """Shorter side under 2 x resize: no draft, no reduce, bit-identical to to_array(load_image(...))."""
    pre = ImagePreprocess()
    for size in ((500, 333), (333, 500), (511, 700), (64, 40)):
        data = encoded(smooth(*size), fmt, **kw)
        np.testing.assert_array_equal(load_for_model(data, pre), to_array(load_image(data), pre))
    palette = encoded(smooth(400, 300).convert("P"), "PNG", transparency=3)
    np.testing.assert_array_equal(load_for_model(palette, pre), to_array(load_image(palette), pre))


def test_exif_orientation_with_and_without_reduction(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    pre = ImagePreprocess(size=32)  # resize 37: the 600 x 300 file is decoded at 1/8 scale
    for width, height in ((40, 20), (600, 300)):
        arr = np.zeros((height, width, 3), dtype=np.uint8)
        arr[:, : width // 2] = (255, 0, 0)  # left half red: the top half once upright
        arr[:, width // 2 :] = (0, 0, 255)
        path = tmp_path / f"rotated{width}.jpg"
        Image.fromarray(arr).save(path, exif=exif, quality=95)
        new, old = load_for_model(path, pre), to_array(load_image(path), pre)
        assert new.shape == old.shape == (3, 32, 32)
        assert new[0, :12].mean() > 0.9 and new[2, :12].mean() < -0.8  # red on top
        assert new[2, -12:].mean() > 0.9 and new[0, -12:].mean() < -0.8  # blue below
        assert np.abs(new - old).mean() < 4 / 127.5  # as the reference, but for resampling at the edge


def test_large_jpeg_is_decoded_at_reduced_scale_close_to_the_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """2400 x 1800 -> draft 1/4 (the largest scale keeping the shorter side >= 256): 600 x 450 decoded.

    Tolerance: the reference low-passes with PIL's antialiased bilinear (triangle) filter, the
    draft with libjpeg's scaled IDCT (about an 4 x 4 box average) before the same bilinear resize;
    on content with no detail finer than the reduction both round to within a few grey levels
    (measured: max 3, mean 0.4 levels of 255), so max 6 levels and mean under 1 level."""
    pre = ImagePreprocess()
    data = encoded(smooth(2400, 1800), "JPEG", quality=95)
    assert reduced_scale(2400, 1800, pre) == 4
    seen = decoded_sizes(monkeypatch)
    new = load_for_model(data, pre)
    assert seen == [(600, 450)]  # decoded at 1/4 scale: 16 x fewer pixels than the file's 2400 x 1800
    old = to_array(load_image(data), pre)
    diff = np.abs(new - old) * 127.5  # in grey levels of 255
    assert diff.max() <= 6 and diff.mean() < 1
    np.testing.assert_array_equal(load_for_model(data, pre), new)  # deterministic


def test_other_formats_are_reduced_by_the_same_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = ImagePreprocess()
    data = encoded(smooth(2400, 1800), "PNG", compress_level=1)
    seen = decoded_sizes(monkeypatch)
    new = load_for_model(data, pre)
    assert seen == [(600, 450)]  # Image.reduce(4) after the decode
    diff = np.abs(new - to_array(load_image(data), pre)) * 127.5
    assert diff.max() <= 6 and diff.mean() < 1


def test_limits_are_checked_from_the_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = ImagePreprocess()
    strip, line = streamed_png(96, 400_000), streamed_png(1, 39_000_000)
    assert len(strip) < 200_000 and len(line) < 200_000
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded despite a limit"))
    with pytest.raises(ImageTooLargeError, match=r"4167:1, more than the 100:1 aspect-ratio limit"):
        load_for_model(strip, pre)  # the default aspect bound outside the service
    with pytest.raises(ImageTooLargeError, match=r"1x39000000 pixels, an aspect ratio of .*20:1 aspect-ratio limit"):
        load_for_model(line, pre, max_aspect=20, name="line.png")
    with pytest.raises(ImageTooLargeError, match="more than the 1000000-pixel limit"):
        load_for_model(streamed_png(2000, 1000), pre, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError, match=r"decodes to 5000x4000 pixels, more than the 16000000-pixel decoding"):
        load_for_model(streamed_png(5000, 4000), pre, max_decoded_pixels=16_000_000)
    assert issubclass(ImageTooLargeError, ImageDecodeError)
    check_dimensions(2000, 100, max_pixels=200_000, max_aspect=20)  # exactly at both limits: fine
    with pytest.raises(ImageTooLargeError):
        check_dimensions(2001, 100, max_aspect=20)


def test_a_huge_jpeg_passes_the_decoding_limit_thanks_to_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(Image.new("RGB", (6000, 4000), (30, 60, 90)), "JPEG", quality=80)
    seen = decoded_sizes(monkeypatch)
    x = load_for_model(data, ImagePreprocess(), max_decoded_pixels=16_000_000)  # 24 Mpixels in the header
    assert seen == [(750, 500)] and x.shape == (3, 224, 224)
    with pytest.raises(ImageTooLargeError, match="decodes to 3000x2000"):  # resize 1143: only 1/2 scale
        load_for_model(data, ImagePreprocess(size=1000), max_decoded_pixels=5_000_000)


def test_strict_decoding_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _truncated_jpeg(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match=r"truncated\.jpg"):
        load_for_model(path, ImagePreprocess(size=32))
    with pytest.raises(ImageDecodeError, match="bytes in memory"):
        load_for_model(b"\x89PNG\r\n\x1a\n garbage", ImagePreprocess())
    big = encoded(smooth(1200, 900), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg"):  # truncated and decoded at reduced scale
        load_for_model(big[: len(big) // 2], ImagePreprocess(), name="cut.jpg")


MEMORY_PROBE = """
import re, sys
from model.runtime.image import ImagePreprocess, load_for_model, load_image, to_array
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = kib("VmRSS")
if sys.argv[2] == "new":
    load_for_model(data, ImagePreprocess())
else:
    to_array(load_image(data), ImagePreprocess())
print((kib("VmHWM") - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_decoding_a_huge_jpeg_stays_small_in_memory(tmp_path: Path) -> None:
    """Peak RSS growth (VmHWM reset, fresh process) of one 6000 x 6000 JPEG: the full decode holds
    a 144 MB image (RGBX) and its copies; the draft decode 750 x 750 (2 MB)."""
    path = tmp_path / "huge.jpg"
    path.write_bytes(encoded(Image.new("RGB", (6000, 6000), (200, 100, 50)), "JPEG", quality=80))
    grown = {}
    for how in ("new", "old"):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(path), how],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        grown[how] = int(out.stdout.split()[-1])  # MiB
    assert grown["new"] < 32, grown
    assert grown["old"] > 130, grown  # the probe does see a full decode
