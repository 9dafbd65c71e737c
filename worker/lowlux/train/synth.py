"""Dark raw files made from photographs: unprocess, then the sensor noise model.

Used by ``lowlux demo`` (a dark DNG for newcomers without a raw at hand) and by the evaluation
set. The virtual camera is the SID camera: Sony α7S II colour matrix and 14-bit levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dng import write_dng
from . import noise
from .unprocess import CameraColour, sony_colour, unprocess


@dataclass(frozen=True)
class DarkRaw:
    """A synthetic dark RGGB raw and what a DNG needs to describe it."""

    cfa: np.ndarray
    """H x W uint16 sensor values (black included)."""
    black: float
    white: float
    wb: tuple[float, float, float]
    xyz_to_cam: np.ndarray
    ratio: float
    """How many times darker than the photograph's exposure."""

    @property
    def colour(self) -> CameraColour:
        return CameraColour(self.xyz_to_cam, self.wb)

    def normalised(self) -> np.ndarray:
        return np.clip((self.cfa.astype(np.float32) - np.float32(self.black)) / np.float32(self.white - self.black),
                       0.0, 1.0)


def as_float_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float image (H x W x 3, or grey H x W) -> float32 sRGB in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def make_dark_raw(
    image: np.ndarray,
    ratio: float = 100.0,
    rng: np.random.Generator | None = None,
    colour: CameraColour | None = None,
    params: noise.NoiseParams | None = None,
) -> DarkRaw:
    """A photograph -> the raw a Sony α7S II would record ``ratio`` times too dark (noise included).

    Odd sides are trimmed by one pixel so the mosaic is whole RGGB tiles. ``params`` fixes the
    camera state (``ratio`` is then ignored); by default it is drawn like the training data's.
    """
    rng = np.random.default_rng() if rng is None else rng
    rgb = as_float_rgb(image)
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    colour = sony_colour(rng) if colour is None else colour
    clean = unprocess(rgb[:h, :w], colour)
    params = noise.sample_params(rng, ratio=ratio) if params is None else params
    cfa = noise.to_raw_dn(noise.dark_dn(clean, params, rng), params)
    return DarkRaw(cfa, params.black, params.white, colour.wb, colour.xyz_to_cam, float(params.ratio))


def write_dark_dng(path: str | Path, dark: DarkRaw, exif: dict[str, str] | None = None) -> Path:
    """Write a :class:`DarkRaw` as a DNG that LibRaw (and lowlux) read back exactly."""
    return write_dng(
        path,
        dark.cfa,
        pattern="RGGB",
        black=dark.black,
        white=int(dark.white),
        color_matrix=dark.xyz_to_cam,
        as_shot_neutral=dark.colour.as_shot_neutral,
        make="lowlux",
        model="Synthetic dark (Sony ILCE-7SM2 noise model)",
        exif=exif,
    )
