"""model.runtime.image: the shared preprocessing (range, shape, crop geometry, EXIF, strict decoding)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.runtime.image import ImageDecodeError, ImagePreprocess, load_image, to_array


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
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
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


def test_truncation_is_not_hidden_by_load_truncated_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    assert issubclass(ImageDecodeError, ValueError)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
