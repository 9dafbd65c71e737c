"""Unprocessing photographs into raw mosaics (Brooks et al., CVPR 2019, "Unprocessing Images for
Learned Raw Denoising"), and the matching forward rendering.

The forward rendering :func:`process` is the one LibRaw applies when SID's ground truth is made
(``postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16)``): white-balance gains
normalised to the smallest one, clip, camera RGB -> linear sRGB, clip, LibRaw's default BT.709-style
gamma curve (power 1/2.222, toe slope 4.5). Brooks' smoothstep tone curve is optional; LibRaw has
none, so training targets are rendered without it.

:func:`unprocess` inverts all of that in reverse order (tone curve, gamma, colour matrix, white
balance), then :func:`mosaic` keeps one colour per pixel in RGGB order.
"""

from __future__ import annotations

import numpy as np

from .. import curves
from ..colour import CameraColour

# XYZ -> camera matrices used by Brooks et al. for random colour matrices.
BROOKS_XYZ_TO_CAMS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
])

# Sony ILCE-7S / α7S II (the SID camera), LibRaw's adobe_coeff table (x 1/10000).
SONY_A7S2_XYZ_TO_CAM = np.array([[5838, -1430, -246], [-3497, 11477, 2297], [-748, 1885, 5778]]) / 10000.0

RED_GAIN_RANGE = (1.9, 2.4)
BLUE_GAIN_RANGE = (1.5, 1.9)
"""White-balance gain ranges of Brooks et al. (green gain 1)."""

LIBRAW_GAMMA = (curves.POWER, curves.TOE)


def random_colour(rng: np.random.Generator) -> CameraColour:
    """Brooks et al.: a random convex combination of camera matrices and random R/B gains."""
    weights = rng.uniform(1e-8, 1.0, len(BROOKS_XYZ_TO_CAMS))
    xyz_to_cam = np.tensordot(weights / weights.sum(), BROOKS_XYZ_TO_CAMS, axes=1)
    wb = (float(rng.uniform(*RED_GAIN_RANGE)), 1.0, float(rng.uniform(*BLUE_GAIN_RANGE)))
    return CameraColour(xyz_to_cam, wb)


REAL_XYZ_TO_CAMS = (SONY_A7S2_XYZ_TO_CAM, *BROOKS_XYZ_TO_CAMS)
"""Real cameras' matrices built in: the SID camera and the four of Brooks et al. Training adds the
matrices of its raws (:class:`~.data.CleanSource`); the Canon 550D's never enters training."""

REAL_CAMERA_SHARE = 0.75
"""Fraction of photographs given one real camera's matrix (the rest: a Brooks mixture)."""


def illuminant_wb(daylight: tuple[float, float, float], rng: np.random.Generator) -> tuple[float, float, float]:
    """As-shot multipliers for a random light: the camera's daylight balance moved along a warm-cool
    axis (tungsten needs less red gain and more blue; shade the opposite) with a little tint."""
    t = rng.uniform(-0.6, 1.0)  # > 0 warmer than daylight: night scenes are often lit by lamps
    red = daylight[0] * np.exp(-0.35 * t + rng.normal(0.0, 0.05))
    blue = daylight[2] * np.exp(0.55 * t + rng.normal(0.0, 0.05))
    return (float(red), 1.0, float(blue))


def camera_colour(rng: np.random.Generator, matrices=REAL_XYZ_TO_CAMS) -> CameraColour:
    """A colour for unprocessing a photograph: a real camera's matrix (or a Brooks mixture) and the
    as-shot white balance of a random light for that camera."""
    if rng.random() < REAL_CAMERA_SHARE:
        xyz_to_cam = np.asarray(matrices[int(rng.integers(len(matrices)))], dtype=np.float64)
    else:
        xyz_to_cam = random_colour(rng).xyz_to_cam
    daylight = CameraColour(xyz_to_cam, (1.0, 1.0, 1.0)).daylight_wb
    return CameraColour(xyz_to_cam, illuminant_wb(daylight, rng))


def sony_colour(rng: np.random.Generator | None = None) -> CameraColour:
    """The SID camera's matrix with Brooks-range gains (mid-range when no rng is given)."""
    if rng is None:
        wb = (float(np.mean(RED_GAIN_RANGE)), 1.0, float(np.mean(BLUE_GAIN_RANGE)))
    else:
        wb = (float(rng.uniform(*RED_GAIN_RANGE)), 1.0, float(rng.uniform(*BLUE_GAIN_RANGE)))
    return CameraColour(SONY_A7S2_XYZ_TO_CAM, wb)


def gamma_encode(linear: np.ndarray, power: float = LIBRAW_GAMMA[0], toe: float = LIBRAW_GAMMA[1]) -> np.ndarray:
    """Linear [0, 1] -> LibRaw's gamma-encoded output (see :mod:`lowlux.curves`)."""
    return curves.encode(linear, power, toe)


def gamma_decode(encoded: np.ndarray, power: float = LIBRAW_GAMMA[0], toe: float = LIBRAW_GAMMA[1]) -> np.ndarray:
    """Inverse of :func:`gamma_encode`."""
    return curves.decode(encoded, power, toe)


def tone_curve(x: np.ndarray) -> np.ndarray:
    """Brooks et al.'s global tone curve (smoothstep)."""
    x = np.clip(x, 0.0, 1.0)
    return (3 * x**2 - 2 * x**3).astype(np.float32)


def inverse_tone_curve(y: np.ndarray) -> np.ndarray:
    """Inverse smoothstep: 0.5 - sin(asin(1 - 2y) / 3)."""
    y = np.clip(y, 0.0, 1.0)
    return (0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)).astype(np.float32)


def _apply_matrix(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.einsum("...c,rc->...r", image, matrix.astype(np.float32), optimize=True).astype(np.float32)


def _wb_multipliers(colour: CameraColour) -> np.ndarray:
    """LibRaw divides the multipliers by the smallest, so no channel is ever darkened."""
    wb = np.asarray(colour.wb, dtype=np.float32)
    return wb / wb.min()


def unprocess_rgb(srgb: np.ndarray, colour: CameraColour, invert_tone: bool = True) -> np.ndarray:
    """sRGB image (H x W x 3 in [0, 1]) -> linear camera RGB before white balance (H x W x 3)."""
    x = np.asarray(srgb, dtype=np.float32)
    if invert_tone:
        x = inverse_tone_curve(x)
    linear = gamma_decode(x)
    cam = _apply_matrix(linear, colour.rgb_to_cam)
    return np.clip(cam / _wb_multipliers(colour), 0.0, 1.0)


def mosaic(cam: np.ndarray) -> np.ndarray:
    """H x W x 3 -> H x W RGGB mosaic (H, W even)."""
    out = np.empty(cam.shape[:2], dtype=np.float32)
    out[0::2, 0::2] = cam[0::2, 0::2, 0]
    out[0::2, 1::2] = cam[0::2, 1::2, 1]
    out[1::2, 0::2] = cam[1::2, 0::2, 1]
    out[1::2, 1::2] = cam[1::2, 1::2, 2]
    return out


def unprocess(srgb: np.ndarray, colour: CameraColour, invert_tone: bool = True) -> np.ndarray:
    """sRGB photograph -> the clean normalised RGGB raw a camera with ``colour`` would record."""
    return mosaic(unprocess_rgb(srgb, colour, invert_tone))


def white_balanced(cam: np.ndarray, colour: CameraColour) -> np.ndarray:
    """Linear camera RGB (before WB) -> the linear white-balanced camera RGB lowlux's nets predict."""
    return np.clip(np.asarray(cam, dtype=np.float32) * np.asarray(colour.wb, dtype=np.float32), 0.0, 1.0)


def process(cam: np.ndarray, colour: CameraColour, apply_tone: bool = False) -> np.ndarray:
    """Linear camera RGB (H x W x 3, before WB) -> rendered sRGB in [0, 1], LibRaw's way."""
    x = np.clip(np.asarray(cam, dtype=np.float32) * _wb_multipliers(colour), 0.0, 1.0)
    rgb = np.clip(_apply_matrix(x, colour.cam_to_rgb), 0.0, 1.0)
    out = gamma_encode(rgb)
    return tone_curve(out) if apply_tone else out
