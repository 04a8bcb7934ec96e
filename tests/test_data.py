"""zfnet.data: safe image opening, folder order, preprocessing, batches that skip bad files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zfnet.data import (
    ImageBatches,
    ImageFolder,
    ImageReadError,
    Transform,
    TransformConfig,
    denormalize,
    normalize,
    open_image,
    resize_and_crop,
    to_rgb,
)
from zfnet.errors import ConfigError, DataError, ShapeError


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height but whose data is a few bytes.

    The shape of a decompression bomb: a tiny file claiming a huge image.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _rng_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """A folder with good, odd and broken files, in class subfolders and at the top."""
    root = tmp_path / "imgs"
    (root / "b_class" / "nested").mkdir(parents=True)
    (root / "a_class").mkdir()
    good = Image.fromarray(_rng_image(30, 40))
    good.save(root / "a_class" / "good.jpg", quality=90)
    buf = io.BytesIO()
    Image.fromarray(_rng_image(64, 64, 1)).save(buf, "JPEG", quality=95)
    (root / "a_class" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "a_class" / "text.jpg").write_text("this is not a JPEG\n")
    (root / "a_class" / "empty.png").write_bytes(b"")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(root / "b_class" / "one.png")
    Image.new("CMYK", (8, 6), (0, 255, 0, 0)).save(root / "b_class" / "cmyk.jpg", quality=100)
    Image.fromarray(np.full((5, 7), 65535 // 3, np.uint16)).save(root / "b_class" / "grey16.png")
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[:3] = (255, 0, 0, 255)  # opaque red top half, transparent bottom half
    Image.fromarray(rgba, "RGBA").save(root / "b_class" / "nested" / "rgba.png")
    Image.fromarray(np.full((9, 9), 77, np.uint8), "L").save(root / "b_class" / "grey.png")
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(root / "palette.gif")
    (root / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (root / "between.png").write_bytes(_png_header_only(10_000, 10_000))  # Pillow would only warn
    (root / "README.txt").write_text("not listed: not an image extension")
    (root / ".hidden.jpg").write_text("not listed: hidden")
    return root


EXPECTED_ORDER = [
    "a_class/empty.png",
    "a_class/good.jpg",
    "a_class/text.jpg",
    "a_class/truncated.jpg",
    "b_class/cmyk.jpg",
    "b_class/grey.png",
    "b_class/grey16.png",
    "b_class/nested/rgba.png",
    "b_class/one.png",
    "between.png",
    "bomb.png",
    "palette.gif",
]

EXPECTED_SKIPS = {
    "a_class/empty.png": "empty",
    "a_class/text.jpg": "not-an-image",
    "a_class/truncated.jpg": "corrupt",
    "between.png": "too-large",
    "bomb.png": "too-large",
}


def test_folder_order_is_sorted_relative_posix_paths(odd_folder: Path) -> None:
    folder = ImageFolder(odd_folder)
    assert folder.paths == EXPECTED_ORDER
    assert folder.ignored == 1  # README.txt; the hidden file is not even counted
    assert folder.classes == ["a_class", "b_class"]
    assert folder.label(EXPECTED_ORDER.index("palette.gif")) == ""
    assert ImageFolder(odd_folder).paths == folder.paths  # deterministic


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        ImageFolder(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_skip_every_bad_file_with_its_reason(odd_folder: Path, workers: int) -> None:
    cfg = TransformConfig(input_size=4, resize=4)
    batches = ImageBatches(odd_folder, cfg, batch_size=3, workers=workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning (DecompressionBomb, palette) escapes
        got = list(batches)
    indices = np.concatenate([b.indices for b in got])
    paths = [p for b in got for p in b.paths]
    good = [p for p in EXPECTED_ORDER if p not in EXPECTED_SKIPS]
    assert paths == good
    assert indices.tolist() == [EXPECTED_ORDER.index(p) for p in good]
    assert all(b.images.shape[1:] == (3, 4, 4) and b.images.dtype == np.float32 for b in got)
    assert {s.path: s.kind for s in batches.skipped} == EXPECTED_SKIPS
    assert [s.index for s in batches.skipped] == sorted(s.index for s in batches.skipped)
    assert all(s.detail for s in batches.skipped)
    assert batches.n_read == len(good)
    assert "b_class/one.png" in {n.path for n in batches.notes}  # 1 x 1 loads, and is noted
    text = batches.summary()
    for path, kind in EXPECTED_SKIPS.items():
        assert path in text and kind in text


def test_batches_start_stop_and_workers_agree(odd_folder: Path) -> None:
    cfg = TransformConfig(input_size=4, resize=4)
    serial = list(ImageBatches(odd_folder, cfg, batch_size=2, start=3, stop=10))
    threaded = list(ImageBatches(odd_folder, cfg, batch_size=5, start=3, stop=10, workers=3))
    a = np.concatenate([b.images for b in serial])
    b = np.concatenate([b.images for b in threaded])
    np.testing.assert_array_equal(a, b)
    assert np.concatenate([x.indices for x in serial]).tolist() == [4, 5, 6, 7, 8]
    with pytest.raises(ConfigError):
        ImageBatches(odd_folder, cfg, start=5, stop=3)


def test_max_pixels_guard(odd_folder: Path) -> None:
    with pytest.raises(ImageReadError, match="max_pixels") as info:
        open_image(odd_folder / "a_class" / "good.jpg", max_pixels=100)
    assert info.value.kind == "too-large"
    assert isinstance(info.value, DataError)
    assert open_image(odd_folder / "a_class" / "good.jpg", max_pixels=1200).size == (40, 30)


def test_mode_conversions(odd_folder: Path) -> None:
    rgba = np.asarray(open_image(odd_folder / "b_class" / "nested" / "rgba.png"))
    assert (rgba[:3] == (255, 0, 0)).all() and (rgba[3:] == 255).all()  # transparent -> white
    black = np.asarray(open_image(odd_folder / "b_class" / "nested" / "rgba.png", background="black"))
    assert (black[3:] == 0).all()
    g16 = np.asarray(open_image(odd_folder / "b_class" / "grey16.png"))
    assert (g16 == round((65535 // 3) / 257)).all() and g16.shape == (5, 7, 3)
    cmyk = np.asarray(open_image(odd_folder / "b_class" / "cmyk.jpg"))
    assert cmyk.shape == (6, 8, 3)
    assert np.abs(cmyk.astype(int) - (255, 0, 255)).max() <= 3  # M=255 -> magenta
    grey = np.asarray(open_image(odd_folder / "b_class" / "grey.png"))
    assert (grey == 77).all()
    pal = np.asarray(open_image(odd_folder / "palette.gif"))
    assert (pal == (0, 0, 255)).all()
    # In-memory modes that are awkward to write to disk.
    la = Image.fromarray(np.dstack([np.full((2, 2), 100, np.uint8), np.array([[0, 255], [255, 0]], np.uint8)]), "LA")
    assert np.asarray(to_rgb(la))[:, :, 0].tolist() == [[255, 100], [100, 255]]
    i32 = Image.fromarray(np.array([[-5, 5]], np.int32), "I")
    assert np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 255]  # out of 16-bit range: stretched
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128, 255]  # unit floats: x 255
    bilevel = Image.new("1", (2, 1), 1)
    assert np.asarray(to_rgb(bilevel)).tolist() == [[[255, 255, 255], [255, 255, 255]]]
    p_trans = Image.new("P", (2, 1), 0)
    p_trans.putpalette([9, 9, 9, 200, 0, 0] + [0] * 762)
    p_trans.putpixel((1, 0), 1)
    p_trans.info["transparency"] = 0
    assert np.asarray(to_rgb(p_trans)).tolist() == [[[255, 255, 255], [200, 0, 0]]]


def test_preprocessing_matches_hand_computation() -> None:
    # A 4 x 6 (H x W) picture; short side already S = 4, so no resampling happens
    # and the 2 x 2 centre crop starts at top = round(1.0) = 1, left = round(2.0) = 2.
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    cfg = TransformConfig(input_size=2, resize=4, channel_order="BGR", mean=(0.5, 0.25, 0.125),
                          std=(0.5, 0.25, 2.0), scale=1 / 255)
    x = Transform(cfg)(rgb)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    # Top-left output pixel is input pixel (1, 2); its B, G, R values:
    r, g, b = (int(v) for v in rgb[1, 2])
    assert (r, g, b) == (24 * 3, 25 * 3, 26 * 3)
    expected = [(b / 255 - 0.5) / 0.5, (g / 255 - 0.25) / 0.25, (r / 255 - 0.125) / 2.0]
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-6)
    # And the whole crop, the same formula vectorised:
    crop = rgb[1:3, 2:4].astype(np.float64)[:, :, ::-1] / 255
    want = ((crop - [0.5, 0.25, 0.125]) / [0.5, 0.25, 2.0]).transpose(2, 0, 1)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(denormalize(x, cfg), rgb[1:3, 2:4])


def test_resize_geometry_follows_torchvision_rules() -> None:
    # 10 x 25 (H x W): short side 10 -> S = 8, long side int(8 * 25 / 10) = 20;
    # crop 6 x 6 at top round(1.0) = 1, left round(7.0) = 7.
    im = Image.fromarray(_rng_image(10, 25, 3))
    out = resize_and_crop(im, TransformConfig(input_size=6, resize=8))
    ref = im.resize((20, 8), Image.Resampling.BILINEAR).crop((7, 1, 13, 7))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    straight = resize_and_crop(im, TransformConfig(input_size=(5, 7), resize=None))
    assert straight.size == (7, 5)


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(1, 40), w=st.integers(1, 40), crop=st.integers(1, 12), extra=st.integers(0, 5),
    bgr=st.booleans(), seed=st.integers(0, 2**16),
)
def test_transform_shape_and_inverse(h: int, w: int, crop: int, extra: int, bgr: bool, seed: int) -> None:
    cfg = TransformConfig(input_size=crop, resize=crop + extra, channel_order="BGR" if bgr else "RGB",
                          mean=(104, 117, 123), std=1, scale=1)
    t = Transform(cfg)
    rgb = _rng_image(h, w, seed)
    x = t(rgb)
    assert x.shape == (3, crop, crop)
    np.testing.assert_array_equal(t.inverse(x), t.geometry(rgb))
    np.testing.assert_array_equal(normalize(t.geometry(rgb), cfg), x)


def test_config_validation_and_metadata_round_trip() -> None:
    meta = {"crop": 227, "resize": 256, "channel_order": "bgr", "mean": [104, 117, 123], "std": 1,
            "scale": 1, "arch": "squeezenet1_0"}
    cfg = TransformConfig.from_dict(meta)
    assert cfg.input_size == (227, 227) and cfg.channel_order == "BGR" and cfg.std == (1.0, 1.0, 1.0)
    assert TransformConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"channel_order": "GBR"}, {"mean": [1, 2]}, {"std": [1, 0, 1]}, {"scale": 0},
                {"input_size": 300, "resize": 256}, {"interpolation": "cubic"}, {"input_size": "big"},
                {"crop": 224, "input_size": 227}):
        with pytest.raises(ConfigError):
            TransformConfig.from_dict(bad)
    with pytest.raises(ShapeError):
        Transform()(np.zeros((4, 4, 3), np.float32))


def test_shared_imagenette_greyscale_is_converted(shared_dir: Path) -> None:
    val = shared_dir / "data" / "imagenette" / "val"
    folder = ImageFolder(val)
    assert len(folder) == 3925
    batches = ImageBatches(folder, TransformConfig(), batch_size=16, stop=16)
    assert sum(len(b.indices) for b in batches) == 16 and not batches.skipped
