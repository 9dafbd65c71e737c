"""Colour from the raw itself: white balance before the net, the exact colour stage after it.

A raw file states what the net cannot know: the shot's white balance and the camera's colour
matrix. lowlux's own nets are therefore given a white-balanced mosaic and predict linear,
white-balanced *camera* RGB; this module turns that into output colour with the file's own data,
exactly as LibRaw does for its default render (so colour is right for any camera, including ones
no training image came from).

Conventions (LibRaw's): ``xyz_to_cam`` is a DNG-style ColorMatrix for D65 (XYZ -> camera RGB);
``wb`` are the as-shot multipliers normalised to green = 1; camera RGB times ``wb`` is
white-balanced camera RGB, which :attr:`CameraColour.cam_to_rgb` maps to linear sRGB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import curves

log = logging.getLogger(__name__)

RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
"""Linear sRGB (D65) -> XYZ, LibRaw's ``xyz_rgb``."""

D65_XYZ = RGB_TO_XYZ.sum(axis=1)
"""The D65 white point in XYZ (Y = 1)."""


@dataclass(frozen=True)
class CameraColour:
    """How a camera's raw RGB relates to colour, and the shot's white balance."""

    xyz_to_cam: np.ndarray
    """3 x 3 XYZ -> camera (a DNG ColorMatrix for D65; rows need not be normalised)."""
    wb: tuple[float, float, float]
    """As-shot white-balance multipliers R, G, B (G = 1)."""

    @property
    def rgb_to_cam(self) -> np.ndarray:
        """sRGB -> camera with rows summing to 1, as LibRaw normalises it (white stays white)."""
        m = self.xyz_to_cam @ RGB_TO_XYZ
        return m / m.sum(axis=1, keepdims=True)

    @property
    def cam_to_rgb(self) -> np.ndarray:
        """White-balanced camera RGB -> linear sRGB (LibRaw's ``rgb_cam``)."""
        return np.linalg.inv(self.rgb_to_cam)

    @property
    def as_shot_neutral(self) -> tuple[float, float, float]:
        """The DNG AsShotNeutral that makes a reader apply ``wb``."""
        return tuple(float(1.0 / g) for g in self.wb)  # type: ignore[return-value]

    @property
    def daylight_wb(self) -> tuple[float, float, float]:
        """The multipliers that make D65 white neutral (G = 1): the fallback when a file has none."""
        neutral = self.xyz_to_cam @ D65_XYZ
        wb = neutral[1] / neutral
        return (float(wb[0]), 1.0, float(wb[2]))


def normalised_wb(multipliers, where: str | Path = "") -> tuple[float, float, float] | None:
    """R, G, B(, G2) multipliers -> (R/G, 1, B/G), or None when they are missing or not positive."""
    wb = np.asarray(multipliers, dtype=np.float64)[:3]
    if wb.shape != (3,) or not np.all(np.isfinite(wb)) or not np.all(wb > 0):
        return None
    return (float(wb[0] / wb[1]), 1.0, float(wb[2] / wb[1]))


def from_libraw(raw, path: str | Path = "") -> CameraColour:
    """The colour LibRaw applies to this raw (a rawpy object): its ``rgb_cam`` as a D65 ColorMatrix
    and the as-shot white balance, falling back to the matrix's D65 neutral (with a warning).

    Reading LibRaw's final matrix rather than the file's tags works the same for every format
    (rawpy's ``rgb_xyz_matrix`` is zero for DNGs) and reproduces LibRaw's render exactly.
    """
    rgb_cam = np.asarray(raw.color_matrix, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(rgb_cam)) or abs(np.linalg.det(rgb_cam)) < 1e-9:
        log.warning("%s: the raw has no usable colour matrix; using sRGB primaries (colour will be approximate)",
                    Path(path).name)
        rgb_cam = np.eye(3)
    xyz_to_cam = np.linalg.inv(rgb_cam) @ np.linalg.inv(RGB_TO_XYZ)
    daylight = normalised_wb(raw.daylight_whitebalance)
    if daylight is not None:
        # rgb_cam's rows are normalised, which loses the camera's D65 neutral; LibRaw keeps it as
        # its daylight multipliers. Scaling the rows brings it back and changes no rendered colour.
        xyz_to_cam = xyz_to_cam / np.asarray(daylight)[:, None]
    wb = normalised_wb(raw.camera_whitebalance)
    if wb is None:
        colour = CameraColour(xyz_to_cam, (1.0, 1.0, 1.0))
        wb = colour.daylight_wb
        log.warning("%s: no as-shot white balance in the file; using the camera's daylight (D65) balance %s",
                    Path(path).name, tuple(round(v, 3) for v in wb))
    return CameraColour(xyz_to_cam, wb)


def rggb_gains(wb: tuple[float, float, float]) -> np.ndarray:
    """The multiplier of each 2x2 position of an RGGB mosaic (2 x 2 float32)."""
    r, g, b = (np.float32(v) for v in wb)
    return np.array([[r, g], [g, b]], dtype=np.float32)


def white_balance_mosaic(mosaic: np.ndarray, wb: tuple[float, float, float]) -> np.ndarray:
    """An RGGB mosaic (H x W, even origin) times the white-balance multipliers (a new float32 array)."""
    gains = rggb_gains(wb)
    out = np.array(mosaic, dtype=np.float32, copy=True)
    for r in range(2):
        for c in range(2):
            out[r::2, c::2] *= gains[r, c]
    return out


def _apply(matrix: np.ndarray, image: np.ndarray) -> np.ndarray:
    # einsum's own loop: 2.4x faster on image bands than its optimize=True path (which searches a
    # contraction order on every call and hands a 3-wide product to BLAS)
    out = np.einsum("...c,rc->...r", image, matrix.astype(np.float32))
    return out.astype(np.float32, copy=False)


def linear_srgb(linear_wb: np.ndarray, colour: CameraColour) -> np.ndarray:
    """White-balanced linear camera RGB (H x W x 3) -> linear sRGB, clipped to [0, 1], LibRaw's way.

    LibRaw scales the multipliers so the smallest is 1 (no channel is ever darkened); with G = 1
    multipliers that is a no-op unless R or B is below 1.
    """
    x = np.asarray(linear_wb, dtype=np.float32)
    gain = stage_gain(colour.wb)
    if gain != 1.0:
        x = x * np.float32(gain)
        np.clip(x, 0.0, 1.0, out=x)
    else:
        x = np.clip(x, 0.0, 1.0)
    out = _apply(colour.cam_to_rgb, x)
    return np.clip(out, 0.0, 1.0, out=out)


def stage_gain(wb: tuple[float, float, float]) -> float:
    """The colour stage's gain before its matrix: LibRaw never darkens a channel, so when a
    multiplier is below 1 it scales them all until the smallest is 1."""
    return 1.0 / min(min(wb), 1.0)


def render_srgb_batch(linear_wb, cam_to_rgb, gain):
    """:func:`render_srgb` for a batch of tensors (N x 3 x H x W, per-image N x 3 x 3 ``cam_to_rgb``
    and N ``gain``), differentiable: training scores a linear net on the picture a user sees, each
    example through its own camera's matrix (which can amplify a residual error in camera RGB
    threefold)."""
    import torch

    x = (linear_wb * gain.to(linear_wb).view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    rgb = torch.einsum("nrc,nchw->nrhw", cam_to_rgb.to(linear_wb), x).clamp(0.0, 1.0)
    return curves.encode(rgb)


def render_srgb_on_device(rgb, colour: CameraColour):
    """:func:`render_srgb` of one h x w x 3 tensor where it lies: on a GPU the colour stage then runs
    beside the net, and only the quantised image crosses to the host (half the bytes of floats, and
    no per-pixel work left for the host's cores). The same operations as :func:`render_srgb_batch`;
    the host's result within float32 rounding (one 16-bit level at most, tested)."""
    import torch

    matrix = torch.as_tensor(np.asarray(colour.cam_to_rgb, dtype=np.float32), device=rgb.device)
    gain = torch.tensor([stage_gain(colour.wb)], dtype=torch.float32, device=rgb.device)
    return render_srgb_batch(rgb.permute(2, 0, 1)[None], matrix[None], gain)[0].permute(1, 2, 0)


def camera_native(colour: CameraColour) -> np.ndarray:
    """The multipliers that undo the white balance (3 x float32): a scene-referred DNG holds camera-native
    linear values, and its reader applies AsShotNeutral itself."""
    return np.float32(1.0) / np.asarray(colour.wb, dtype=np.float32)


def _encode_in_place(x: np.ndarray) -> np.ndarray:
    """:func:`lowlux.curves.encode` of ``x`` (float32, already in [0, 1]) computed in place: the same
    float32 operations in the same order, without its temporaries (the colour stage's largest cost)."""
    g3, g4 = curves.constants()
    toe = x < g3
    low = x * np.float32(curves.TOE)  # a whole band and a masked copy: faster than gathering the toe
    np.maximum(x, g3, out=x)
    np.power(x, np.float32(curves.POWER), out=x)
    x *= np.float32(1 + g4)
    x -= np.float32(g4)
    np.copyto(x, low, where=toe)
    return x


def render_srgb(linear_wb: np.ndarray, colour: CameraColour) -> np.ndarray:
    """White-balanced linear camera RGB -> the sRGB image lowlux writes (float32, [0, 1]).

    The matrix is LibRaw's and the tone curve is LibRaw's default (:mod:`lowlux.curves`), so a
    restoration and LibRaw's render of the clean raw agree wherever the net is right.
    """
    return _encode_in_place(linear_srgb(linear_wb, colour))
