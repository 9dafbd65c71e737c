"""Unprocessing and the LibRaw-equivalent rendering that makes training targets."""

from __future__ import annotations

import numpy as np
import pytest
from lowlux.train.unprocess import (
    CameraColour,
    gamma_decode,
    gamma_encode,
    inverse_tone_curve,
    mosaic,
    process,
    random_colour,
    sony_colour,
    tone_curve,
    unprocess,
    unprocess_rgb,
)


def smooth_photo(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Gently varying, moderately saturated colours (in gamut for every camera matrix)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6, 3)
    img = np.stack([0.5 + 0.3 * np.sin(4 * xx + 3 * yy + p) for p in phase], axis=-1)
    grey = img.mean(axis=-1, keepdims=True)
    return (0.6 * img + 0.4 * grey).astype(np.float32)


def render_dng_with_libraw(path) -> np.ndarray:
    import rawpy
    from lowlux.train.cache import LIBRAW_SID_RENDER

    with rawpy.imread(str(path)) as raw:
        return raw.postprocess(**LIBRAW_SID_RENDER).astype(np.float32) / 65535


def test_curves_invert_each_other():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.allclose(gamma_decode(gamma_encode(x)), x, atol=1e-5)
    assert np.allclose(inverse_tone_curve(tone_curve(x)), x, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_process_inverts_unprocess(seed):
    rng = np.random.default_rng(seed)
    img = smooth_photo(seed=seed)
    colour = random_colour(rng)
    cam = unprocess_rgb(img, colour)
    assert cam.min() >= 0 and cam.max() <= 1
    assert np.abs(process(cam, colour, apply_tone=True) - img).max() < 2e-3
    # without the tone curve, the render is the photograph with its tone curve undone
    assert np.abs(process(cam, colour) - inverse_tone_curve(img)).max() < 2e-3


def test_white_balance_makes_raw_green_dominant():
    """A grey photograph must become a raw with R and B below G by the WB gains (cameras are green)."""
    colour = CameraColour(np.eye(3), (2.0, 1.0, 1.6))
    grey = np.full((4, 4, 3), 0.5, np.float32)
    cam = unprocess_rgb(grey, colour, invert_tone=False)
    r, g, b = cam[0, 0]
    assert r == pytest.approx(g / 2.0, rel=1e-4) and b == pytest.approx(g / 1.6, rel=1e-4)
    m = mosaic(cam)
    assert m[0, 0] == pytest.approx(r) and m[0, 1] == pytest.approx(g) and m[1, 1] == pytest.approx(b)


def test_gamma_matches_libraw(tmp_path):
    from lowlux.dng import write_dng

    lin = np.tile(np.linspace(0, 1, 512), (48, 1))
    cfa = np.round(512 + lin * (16383 - 512)).astype(np.uint16)
    path = write_dng(tmp_path / "ramp.dng", cfa, black=512, white=16383)  # camera RGB = linear sRGB, neutral WB
    rendered = render_dng_with_libraw(path)
    expected = gamma_encode(lin)
    assert np.abs(rendered[8:-8, 8:-8] - expected[8:-8, 8:-8, None]).max() < 1e-3


def test_targets_of_photographs_match_libraw_rendering_their_raw(tmp_path):
    """The target of an unprocessed photograph is what LibRaw makes of that raw (SID's ground truth)."""
    from lowlux.train.synth import DarkRaw, write_dark_dng

    img = smooth_photo(96, 128, seed=3)
    colour = sony_colour(np.random.default_rng(0))
    cam = unprocess_rgb(img, colour)
    cfa = np.round(512 + mosaic(cam) * (16383 - 512)).astype(np.uint16)
    path = write_dark_dng(tmp_path / "clean.dng", DarkRaw(cfa, 512, 16383, colour.wb, colour.xyz_to_cam, 1.0))
    rendered = render_dng_with_libraw(path)[4:-4, 4:-4]
    target = process(cam, colour)[4:-4, 4:-4]
    mse = np.mean((rendered - target) ** 2)
    assert 10 * np.log10(1 / mse) > 40  # only demosaicking differs


def test_unprocess_is_mosaic_of_unprocess_rgb():
    img = smooth_photo()
    colour = sony_colour()
    assert np.array_equal(unprocess(img, colour), mosaic(unprocess_rgb(img, colour)))
