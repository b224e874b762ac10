"""Decoding and MNIST-style preprocessing of pictures (runtime/images.py)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.models import digit
from PIL import Image

from mnist_edge.runtime.arrays import is_array_file, open_array_file
from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.idx import write_idx
from mnist_edge.runtime.images import (
    ImageError,
    ImageOptions,
    decode_image,
    decode_image_bytes,
    load_batch,
    load_bytes_batch,
    load_image,
    needs_inversion,
    preprocess,
)
from mnist_edge.runtime.inputs import MAX_PIXELS


def _center_of_mass(img: np.ndarray) -> tuple[float, float]:
    total = img.astype(np.float64).sum()
    ys, xs = np.indices(img.shape)
    return float((ys * img).sum() / total), float((xs * img).sum() / total)


def _ink_box(img: np.ndarray, level: int = 50) -> tuple[int, int]:
    rows = np.flatnonzero((img > level).any(axis=1))
    cols = np.flatnonzero((img > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_mnist_style_28x28_passes_through_unchanged():
    img = digit(3)
    assert np.array_equal(preprocess(img), img)


@pytest.mark.parametrize(
    ("mode", "inverted_input", "expect_inverted"),
    [
        ("auto", False, False),
        ("auto", True, True),
        ("always", False, True),
        ("never", True, False),
    ],
    ids=["auto-dark-bg", "auto-light-bg", "always", "never"],
)
def test_inversion_modes(mode, inverted_input, expect_inverted):
    img = digit(1)
    source = 255 - img if inverted_input else img
    out = preprocess(source, ImageOptions(invert=mode))
    flipped = 255 - source
    assert np.array_equal(out, flipped if expect_inverted else source)


def test_needs_inversion_reads_the_border():
    assert needs_inversion(np.full((40, 40), 230, np.uint8))
    assert not needs_inversion(digit(0))


def test_large_offset_dark_on_light_picture_is_cropped_scaled_and_centred():
    canvas = np.full((300, 200), 235, np.uint8)  # light paper
    stroke = np.asarray(Image.fromarray(255 - digit(2)).resize((90, 90), Image.Resampling.BICUBIC))
    canvas[10:100, 100:190] = np.minimum(canvas[10:100, 100:190], stroke)  # dark digit, top right
    out = preprocess(canvas)
    assert out.shape == (28, 28)
    assert out.dtype == np.uint8
    cy, cx = _center_of_mass(out)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6  # where MNIST puts it
    assert max(_ink_box(out, level=0)) <= 21  # fitted into 20x20 (plus anti-aliasing)
    # the same digit, white on black and elsewhere on the page, gives (nearly) the same result
    clean = np.zeros((300, 200), np.uint8)
    clean[150:240, 20:110] = 255 - stroke
    corr = np.corrcoef(out.ravel().astype(float), preprocess(clean).ravel().astype(float))[0, 1]
    assert corr > 0.95


def test_aspect_ratio_is_kept():
    tall = np.zeros((100, 100), np.uint8)
    tall[10:90, 45:55] = 255  # an "1": 80 tall, 10 wide
    out = preprocess(tall)
    height, width = _ink_box(out)
    assert height == 20
    assert width <= 4


def test_blank_picture_gives_a_blank_digit():
    assert not preprocess(np.zeros((50, 40), np.uint8)).any()


def _save(img: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    img.save(path, format=fmt, **kwargs)
    return path


@pytest.mark.parametrize(
    ("suffix", "fmt", "kwargs"),
    [
        (".png", "PNG", {}),
        (".bmp", "BMP", {}),
        (".gif", "GIF", {}),
        (".tiff", "TIFF", {}),
        (".webp", "WEBP", {"lossless": True}),
    ],
    ids=["png", "bmp", "gif", "tiff", "webp"],
)
def test_lossless_formats_decode_exactly(tmp_path, suffix, fmt, kwargs):
    img = digit(4)
    path = _save(Image.fromarray(img), tmp_path / f"d{suffix}", fmt, **kwargs)
    assert np.array_equal(load_image(path), img)


def test_jpeg_decodes_close(tmp_path):
    img = digit(4)
    path = _save(Image.fromarray(img), tmp_path / "d.jpg", "JPEG", quality=95)
    assert np.abs(load_image(path).astype(int) - img).mean() < 8


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_pixel_modes(tmp_path, mode):
    img = digit(5)
    binary = np.where(img > 127, 255, 0).astype(np.uint8)  # mode "1" keeps only 0/255
    pil = Image.fromarray(binary)
    if mode == "I;16":
        pil = Image.fromarray(binary.astype(np.uint16) * 257)
        assert pil.mode.startswith("I;16")
    elif mode == "RGBA":
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., :3] = 255  # white ink ...
        rgba[..., 3] = binary  # ... on a transparent background
        pil = Image.fromarray(rgba, "RGBA")
    else:
        pil = pil.convert(mode)
    path = _save(pil, tmp_path / f"m{mode.replace(';', '')}.png", "PNG")
    assert np.array_equal(load_image(path), binary)


def test_rgba_dark_ink_on_transparent_is_composited_and_inverted(tmp_path):
    binary = np.where(digit(6) > 127, 255, 0).astype(np.uint8)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = binary  # black ink, transparent elsewhere
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "ink.png", "PNG")
    assert np.array_equal(load_image(path), binary)


def test_exif_orientation_is_applied(tmp_path):
    img = digit(7)
    pil = Image.fromarray(np.rot90(img, k=1).copy())  # stored rotated ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 clockwise to display"
    path = tmp_path / "rot.jpg"
    pil.save(path, format="JPEG", quality=100, exif=exif)
    assert np.abs(load_image(path).astype(int) - img).mean() < 6


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("zero.png", b"", "empty file"),
        ("text.png", b"hello, not a picture\n" * 10, "not an image"),
        ("bomb.png", _png_header_only(30000, 30000), "decompression bomb"),
        ("big.png", _png_header_only(12000, 11000), "over the limit"),
    ],
    ids=["zero-byte", "non-image", "bomb", "over-limit"],
)
def test_bad_files_raise_image_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        decode_image(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, not a picture\n" * 10, "not an image"),
        (_png_header_only(30000, 30000), "decompression bomb"),
        (_png_header_only(12000, 11000), "over the limit"),
    ],
    ids=["zero-byte", "non-image", "bomb", "over-limit"],
)
def test_bad_bytes_raise_the_same_image_errors(content, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image_bytes(content)


@pytest.mark.parametrize(
    ("width", "height"),
    [(12000, 11000), (30000, 30000)],  # over MAX_PIXELS; over twice PIL's default limit
    ids=["over-the-limit", "far-over"],
)
def test_pictures_over_the_limit_quote_one_number(width, height):
    """Our limit, never PIL's own (89,478,485 / 178,956,970), whichever check fires first."""
    with pytest.raises(ImageError) as info:
        decode_image_bytes(_png_header_only(width, height))
    message = str(info.value)
    assert f"over the limit of {MAX_PIXELS:,} pixels" in message
    assert "max_pixels" in message
    for pil_number in ("89478485", "89,478,485", "178956970", "178,956,970"):
        assert pil_number not in message


def test_a_small_limit_refuses_and_a_raised_one_lets_through(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)  # 2,000 pixels
    with pytest.raises(ImageError, match=r"50x40 = 2,000 pixels, over the limit of 1,999 pixels"):
        decode_image(path, max_pixels=1999)
    assert decode_image(path, max_pixels=2000).shape == (40, 50)
    _, errors = load_batch([str(path)], ImageOptions(max_pixels=1999))
    assert errors[0] is not None and "over the limit of 1,999 pixels" in errors[0]
    # A 201-megapixel header (a 200 MP phone photo) passes a raised limit, PIL's own
    # included, and fails only for what it is: a header with no picture data.
    with pytest.raises(ImageError, match=r"truncated|corrupt|cannot read") as info:
        decode_image_bytes(_png_header_only(16384, 12288), max_pixels=210_000_000)
    assert "over the limit" not in str(info.value)


@pytest.mark.parametrize(
    "bad", [0, -1, 2.5, True, "many"], ids=["0", "negative", "float", "bool", "text"]
)
def test_max_pixels_must_be_a_count(bad):
    with pytest.raises(ConfigError, match="max_pixels must be a whole number >= 1"):
        ImageOptions(max_pixels=bad)
    with pytest.raises(ConfigError, match="max_pixels must be a whole number >= 1"):
        decode_image_bytes(b"x", max_pixels=bad)


def test_bytes_batch_equals_file_batch(tmp_path):
    """Uploads and object-store blobs are decoded and preprocessed exactly as files are."""
    rng = np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(28, 28), (64, 40), (300, 200)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(paths[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    paths.append(str(bad))
    images, errors = load_batch(paths)
    blob_images, blob_errors = load_bytes_batch([Path(p).read_bytes() for p in paths])
    assert np.array_equal(images, blob_images)
    assert errors == blob_errors and errors[:3] == [None] * 3 and "not an image" in errors[3]


def test_truncated_png_is_an_error(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError):
        load_image(path)


def test_directory_and_missing_file_are_errors(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        decode_image(tmp_path)
    with pytest.raises(ImageError, match="cannot read"):
        decode_image(tmp_path / "missing.png")


def test_array_files(tmp_path):
    stack = np.stack([digit(i) for i in range(3)])  # (3, 28, 28)
    np.save(tmp_path / "a.npy", stack[:, None].astype(np.float32) / 255)  # (3, 1, 28, 28) floats
    write_idx(tmp_path / "b-images-idx3-ubyte", stack)
    assert is_array_file(tmp_path / "a.npy") and is_array_file(tmp_path / "b-images-idx3-ubyte.gz")
    assert not is_array_file(tmp_path / "a.png")
    assert np.array_equal(open_array_file(tmp_path / "b-images-idx3-ubyte"), stack)
    assert open_array_file(tmp_path / "a.npy").shape == (3, 28, 28)
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(ImageError, match="not images"):
        open_array_file(tmp_path / "bad.npy")
    (tmp_path / "junk-idx3-ubyte").write_bytes(b"\x01\x02")
    with pytest.raises(ImageError, match="corrupt"):
        open_array_file(tmp_path / "junk-idx3-ubyte")


def test_preprocessing_recreates_real_mnist_digits_from_photo_like_pictures(mnist):
    """A real test digit, inverted, enlarged 3x and put off-centre on a page, comes back as itself."""
    from mnist_edge.export.pictures import variants

    pixels = np.rint(mnist.test_images[:100, 0].numpy() * 255).astype(np.uint8)
    corr = []
    for img in pixels:
        page = np.asarray(variants(img)["large.png"][0])  # (120, 160) dark digit on white
        out = preprocess(page)
        corr.append(np.corrcoef(out.ravel().astype(float), img.ravel().astype(float))[0, 1])
    assert np.median(corr) > 0.93
    assert np.percentile(corr, 10) > 0.8


def test_model_preprocessing_settings_are_followed():
    from mnist_edge.runtime.metadata import Preprocessing

    img = digit(8)
    flipped = preprocess(img, ImageOptions(Preprocessing(foreground="black-on-white")))
    assert np.array_equal(flipped, 255 - img)
    bar = np.zeros((60, 60), np.uint8)
    bar[5:45, 5:15] = 255
    bar[5:15, 5:45] = 255  # an "L" rotated: the centre of mass is off the box centre
    com = preprocess(bar)
    box = preprocess(bar, ImageOptions(Preprocessing(centering="bbox")))
    assert not np.array_equal(com, box)
    rows = np.flatnonzero(box.any(axis=1))
    assert rows[0] + rows[-1] in (26, 27, 28)  # the box is centred
    with pytest.raises(ValueError, match="unsupported preprocessing"):
        ImageOptions(Preprocessing(centering="spiral"))


def test_permission_denied_is_an_image_error(tmp_path, monkeypatch):
    """Root reads mode-0 files, so the CLI test cannot always provoke EACCES: simulate it."""
    from mnist_edge.runtime import images as images_mod

    path = tmp_path / "secret.png"
    Image.new("L", (28, 28)).save(path)

    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images_mod.Image, "open", denied)
    with pytest.raises(images_mod.ImageError, match="cannot read image: Permission denied"):
        images_mod.decode_image(path)
