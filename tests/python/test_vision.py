"""The vision pipeline (``jp.preprocess``, ``Runtime.infer_images``, ``jarvis-perf run IMAGE``)
against Pillow and OpenCV on the real photos shipped inside installed packages.

Accuracy is counted in LSB of the 0–255 pixel scale: with ``mean=0, std=1`` the output is
``pixel / 255``, so ``out * 255`` compares directly with an 8-bit reference.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jarvis_performance as jp
from photos import MEAN, STD, photos

PHOTOS = photos()
#: Output sizes: square downscale, non-square, tiny, and an upscale of most photos.
SIZES = [(224, 224), (160, 300), (61, 97), (700, 600)]


def pixels(images: list[object], size: tuple[int, int] | int, **options: object) -> np.ndarray:
    """``preprocess`` in NHWC on the raw 0–255 scale (float64, for comparisons)."""
    out = jp.preprocess(images, size=size, mean=0.0, std=1.0, layout="NHWC", **options)
    return out.astype(np.float64) * 255.0


def within(ours: np.ndarray, reference: np.ndarray, lsb: float) -> float:
    """Fraction of values within ``lsb`` of the 8-bit reference."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float((np.abs(ours - reference.astype(np.float64)) <= lsb + 1e-3).mean())


def pil_resize(image: np.ndarray, size: tuple[int, int], method: Image.Resampling,
               box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    pil = Image.fromarray(image).convert("RGB")
    return np.asarray(pil.resize((size[1], size[0]), method, box=box, reducing_gap=None))


def test_photos_are_available() -> None:
    # The accuracy tests below are only meaningful on real photos.
    assert len(PHOTOS) >= 10


@pytest.mark.parametrize("size", SIZES)
def test_bilinear_matches_pillow_within_2_lsb(size: tuple[int, int]) -> None:
    for image in PHOTOS:
        ours = pixels([image], size)[0]
        reference = pil_resize(image, size, Image.Resampling.BILINEAR)
        assert within(ours, reference, 2) >= 0.99
        assert within(ours, reference, 1) >= 0.99  # measured: every value within 1 LSB


@pytest.mark.parametrize("size", SIZES)
def test_bilinear_cv2_matches_opencv_inter_linear(size: tuple[int, int]) -> None:
    cv2 = pytest.importorskip("cv2")
    for image in PHOTOS:
        ours = pixels([image], size, resize="bilinear_cv2")[0]
        reference = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        assert within(ours, reference, 1) >= 0.99


def test_bilinear_cv2_is_not_antialiased() -> None:
    # Guards against the exact mode silently being the antialiased one: on an 8x downscale
    # the two differ on most pixels of a photo.
    image = PHOTOS[0]
    plain = pixels([image], 64, resize="bilinear_cv2")[0]
    smooth = pixels([image], 64)[0]
    assert within(plain, smooth, 2) < 0.7


@pytest.mark.parametrize(("mode", "method"), [("nearest", Image.Resampling.NEAREST),
                                              ("area", Image.Resampling.BOX)])
def test_nearest_and_area_match_pillow(mode: str, method: Image.Resampling) -> None:
    for image in PHOTOS:
        for size in SIZES:
            ours = pixels([image], size, resize=mode)[0]
            reference = pil_resize(image, size, method)
            # Nearest picks Pillow's pixels exactly; the box filter's taps at the edge of
            # its window round differently on a few pixels (measured ≥ 99.5 % within 1 LSB).
            lsb, share = (0, 0.999) if mode == "nearest" else (1, 0.99)
            assert within(ours, reference, lsb) >= share, (mode, image.shape, size)


def test_normalization_layout_and_channel_order() -> None:
    image = PHOTOS[1]
    nchw = jp.preprocess([image], size=(120, 90), mean=MEAN, std=STD)
    assert nchw.dtype == np.float32 and nchw.shape == (1, 3, 120, 90)
    assert nchw.flags["C_CONTIGUOUS"]
    resized = pil_resize(image, (120, 90), Image.Resampling.BILINEAR).astype(np.float32) / 255
    expected = ((resized - MEAN) / STD).transpose(2, 0, 1)
    assert np.abs(nchw[0] - expected).max() <= 1.01 / 255 / STD.min()
    nhwc = jp.preprocess([image], size=(120, 90), mean=MEAN, std=STD, layout="NHWC")
    np.testing.assert_array_equal(nhwc[0], nchw[0].transpose(1, 2, 0))
    bgr = jp.preprocess([image], size=(120, 90), mean=MEAN[::-1].copy(), std=STD[::-1].copy(),
                        channels="BGR")
    np.testing.assert_allclose(bgr[0], nchw[0][::-1], atol=1e-6)


def test_grey_and_rgba_frames_convert_like_pillow() -> None:
    image = PHOTOS[2]
    grey = np.asarray(Image.fromarray(image).convert("L"))
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    for frame in (grey, grey[..., None], rgba):
        ours = pixels([frame], (100, 130))[0]
        reference = pil_resize(frame.squeeze() if frame.ndim == 3 and frame.shape[2] == 1
                               else frame, (100, 130), Image.Resampling.BILINEAR)
        assert within(ours, reference, 1) >= 0.99, frame.shape
    assert (pixels([grey], 32)[0].std(axis=2) < 1e-3).all()  # grey feeds all three channels


def test_center_crop_matches_pillow_box_resize() -> None:
    for image in PHOTOS[:6]:
        h, w = image.shape[:2]
        for size in [(224, 224), (100, 200)]:
            scale = max(size[1] / w, size[0] / h)
            bw, bh = size[1] / scale, size[0] / scale
            box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
            ours = pixels([image], size, crop="center")[0]
            reference = pil_resize(image, size, Image.Resampling.BILINEAR, box=box)
            assert within(ours, reference, 1) >= 0.99


def test_keep_aspect_letterboxes_with_the_pad_value() -> None:
    image = PHOTOS[3]  # 427 x 640, landscape
    h, w = image.shape[:2]
    ours = pixels([image], 256, keep_aspect=True, pad=114)[0]
    inner_h = round(h * 256 / w)
    top = (256 - inner_h) // 2
    reference = np.full((256, 256, 3), 114, np.uint8)
    reference[top:top + inner_h] = pil_resize(image, (inner_h, 256), Image.Resampling.BILINEAR)
    assert within(ours, reference, 1) >= 0.99
    margins = np.concatenate([ours[:top], ours[top + inner_h:]])
    assert margins.size and np.abs(margins - 114).max() < 1e-3


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "draft"), [("PNG", True), ("BMP", True), ("JPEG", False),
                                             ("JPEG", True)])
def test_files_and_bytes_match_pillow_decode_and_resize(tmp_path: Path, fmt: str,
                                                        draft: bool) -> None:
    paths, encoded, references = [], [], []
    for i, image in enumerate(PHOTOS):
        data = _encode(image, fmt)
        path = tmp_path / f"{i}.{fmt.lower()}"
        path.write_bytes(data)
        paths.append(path)
        encoded.append(data)
        decoded = np.asarray(Image.open(path).convert("RGB"))
        references.append(pil_resize(decoded, (224, 224), Image.Resampling.BILINEAR))
    from_files = pixels(paths, 224, draft=draft)
    np.testing.assert_array_equal(pixels(encoded, 224, draft=draft), from_files)
    np.testing.assert_array_equal(pixels([str(p) for p in paths[:2]], 224, draft=draft),
                                  from_files[:2])
    # Lossless formats decode identically; JPEG decoders (and a reduced-scale decode) differ
    # from libjpeg-turbo by a little. Measured: PNG/BMP 100 % within 1 LSB, JPEG full decode
    # 99.999 % within 2 LSB, JPEG draft 99.9 %.
    assert within(from_files, np.stack(references), 2) >= 0.99


def test_non_contiguous_and_stacked_frames() -> None:
    image = PHOTOS[0]
    view = image[10:300:2, 5:400]  # strided rows
    np.testing.assert_array_equal(pixels([view], 64), pixels([np.ascontiguousarray(view)], 64))
    stack = np.stack([image[:200, :200], image[100:300, 100:300]])
    np.testing.assert_array_equal(pixels(stack, 50), pixels(list(stack), 50))


def test_out_array_is_filled_and_returned() -> None:
    frames = PHOTOS[:3]
    out = np.full((3, 3, 32, 48), np.nan, np.float32)
    result = jp.preprocess(frames, size=(32, 48), mean=MEAN, std=STD, out=out)
    assert result is out
    np.testing.assert_array_equal(out, jp.preprocess(frames, size=(32, 48), mean=MEAN, std=STD))
    with pytest.raises(jp.InputError, match="out"):
        jp.preprocess(frames, size=(32, 32), mean=MEAN, std=STD, out=out)


def test_empty_list_gives_an_empty_batch() -> None:
    batch = jp.preprocess([], size=(20, 30), mean=MEAN, std=STD)
    assert batch.shape == (0, 3, 20, 30) and batch.dtype == np.float32


def test_corrupt_truncated_and_missing_files_name_their_index(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(_encode(PHOTOS[0], "PNG"))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(_encode(PHOTOS[1], "JPEG")[:2000])
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    for index, bad in [(1, truncated), (1, junk), (1, tmp_path / "missing.jpg")]:
        with pytest.raises(jp.ImageError, match=rf"image {index} \(.*{bad.name}\)"):
            jp.preprocess([good, bad, good], size=64, mean=0, std=1)
    with pytest.raises(jp.ImageError, match=r"image 0 \(5000 bytes\)"):
        jp.preprocess([np.random.default_rng(1).bytes(5000)], size=64, mean=0, std=1)
    # Every failure is reported, not only the first.
    with pytest.raises(jp.ImageError, match=r"image 1 .*and 1 more image\(s\) failed: 2"):
        jp.preprocess([good, junk, truncated], size=64, mean=0, std=1)
    with pytest.raises(jp.ImageError, match="empty"):
        jp.preprocess([b""], size=64, mean=0, std=1)


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((8, 8, 3), np.float64), "expected dtype uint8"),
    (np.zeros((8, 8, 3), np.float32), r"\* 255"),
    (np.zeros((8, 8, 2), np.uint8), "C = 1, 3 or 4"),
    (np.zeros((8,), np.uint8), "C = 1, 3 or 4"),
    (np.zeros((0, 8, 3), np.uint8), "empty frame"),
    (12345, "expected a uint8 NumPy array"),
])
def test_bad_frames_raise_image_error(image: object, message: str) -> None:
    with pytest.raises(jp.ImageError, match=message):
        jp.preprocess([PHOTOS[0], image], size=16, mean=0, std=1)
    with pytest.raises(jp.ImageError, match="image 1"):
        jp.preprocess([PHOTOS[0], image], size=16, mean=0, std=1)


@pytest.mark.parametrize(("options", "error"), [
    ({"size": 0}, jp.ConfigError),
    ({"size": (10, 20, 30)}, jp.ConfigError),
    ({"std": 0.0}, jp.ConfigError),
    ({"mean": (0.1, 0.2)}, jp.ConfigError),
    ({"layout": "NCWH"}, jp.ConfigError),
    ({"resize": "bicubic"}, jp.ConfigError),
    ({"crop": "top"}, jp.ConfigError),
    ({"channels": "RGBA"}, jp.ConfigError),
    ({"dtype": np.float64}, jp.ConfigError),
    ({"dtype": "not a dtype"}, jp.ConfigError),
])
def test_bad_options_raise(options: dict[str, object], error: type[Exception]) -> None:
    kwargs: dict[str, object] = {"size": 16, "mean": 0.0, "std": 1.0, **options}
    with pytest.raises(error):
        jp.preprocess([PHOTOS[0]], **kwargs)  # type: ignore[arg-type]


def test_images_must_be_a_list() -> None:
    for images in ("photo.jpg", b"\xff\xd8", PHOTOS[0]):
        with pytest.raises(jp.InputError, match="list"):
            jp.preprocess(images, size=16, mean=0, std=1)  # type: ignore[arg-type]
    assert jp.preprocess([PHOTOS[0]], size=16, mean=0, std=1, dtype="float32").shape[0] == 1


def test_infer_images_equals_infer_of_preprocess(model_path: Callable[[str], Path]) -> None:
    rt = jp.Runtime.load(model_path("mobilenet_v2"))
    frames = PHOTOS[:4]
    logits = rt.infer_images(frames, mean=MEAN, std=STD)  # size and layout from the model
    expected = rt.infer(jp.preprocess(frames, size=224, mean=MEAN, std=STD))
    np.testing.assert_array_equal(logits, expected)
    with pytest.raises(jp.InputError):
        rt.infer_images(frames, mean=MEAN, std=STD, size=200)
    with pytest.raises(jp.InputError, match="no images"):
        rt.infer_images([], mean=MEAN, std=STD)


def test_infer_images_needs_a_size_when_the_model_has_none(model_path: Callable[[str], Path]) -> None:
    rt = jp.Runtime.load(model_path("digits_cnn"))  # (N, 1, 8, 8): not an RGB image input
    with pytest.raises(jp.ConfigError, match="size"):
        rt.infer_images(PHOTOS[:1], mean=0, std=1)
    with pytest.raises(jp.InputError):
        rt.infer_images(PHOTOS[:1], mean=0, std=1, size=8)


def test_cli_run_accepts_image_files(tmp_path: Path, model_path: Callable[[str], Path]) -> None:
    from test_cli import jarvis_perf

    model = model_path("mobilenet_v2")
    files = []
    for i, image in enumerate(PHOTOS[:2]):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(_encode(image, "PNG"))
    out = tmp_path / "logits.npy"
    mean, std = ",".join(map(str, MEAN)), ",".join(map(str, STD))
    result = jarvis_perf("run", str(model), "--input", f"input={files[0]},{files[1]}",
                         "--mean", mean, "--std", std, "--center-crop", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rt = jp.Runtime.load(model)
    expected = rt.infer_images(files, mean=MEAN, std=STD, crop="center")
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
    bad = jarvis_perf("run", str(model), "--input", f"input={tmp_path / 'nope.jpg'}")
    assert bad.returncode == 1 and "image 0" in bad.stderr and "nope.jpg" in bad.stderr
