"""Geometry between a camera's mosaic and the net: RGGB alignment, padding, orientation.

The net assumes an RGGB tile and sides that are multiples of 32. Rather than cropping pixels away
(as the authors' demo does), the mosaic is reflect-padded: a reflection by k pixels copies the
pixel 2k away, which has the same CFA colour, so padding one row/column at the top/left moves the
origin onto the red pixel without breaking the pattern. The output is cropped back to exactly
the visible frame, so no pixel is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NET_MULTIPLE = 32


@dataclass(frozen=True)
class Crop:
    """Where the visible frame sits inside the padded mosaic."""

    top: int
    left: int
    height: int
    width: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Crop an H x W (x C) array."""
        return image[self.top : self.top + self.height, self.left : self.left + self.width]

    def apply_chw(self, image):
        """Crop the last two axes of a ... x H x W array or tensor."""
        return image[..., self.top : self.top + self.height, self.left : self.left + self.width]


def rggb_offset(pattern: str) -> tuple[int, int]:
    """Rows and columns to pad at the top/left so the tile starts on red: 'GBRG' -> (1, 0)."""
    if len(pattern) != 4 or sorted(pattern) != ["B", "G", "G", "R"]:
        raise ValueError(f"not a Bayer pattern: {pattern!r}")
    r = pattern.index("R")
    return r // 2, r % 2


def padded_size(size: int, offset: int, multiple: int = NET_MULTIPLE) -> int:
    return -(-(size + offset) // multiple) * multiple


def pad_for_net(mosaic: np.ndarray, pattern: str, multiple: int = NET_MULTIPLE) -> tuple[np.ndarray, Crop]:
    """Reflect-pad an H x W mosaic so it starts on an R pixel and both sides divide ``multiple``."""
    h, w = mosaic.shape
    oy, ox = rggb_offset(pattern)
    ph, pw = padded_size(h, oy, multiple), padded_size(w, ox, multiple)
    pad = ((oy, ph - h - oy), (ox, pw - w - ox))
    if max(pad[0][1], pad[1][1]) >= min(h, w):
        # numpy's reflect needs the pad to be shorter than the side; repeat reflecting for tiny images.
        out = mosaic
        while out.shape[0] < ph - oy or out.shape[1] < pw - ox:
            out = np.pad(out, ((0, min(out.shape[0] - 1, ph - oy - out.shape[0])),
                               (0, min(out.shape[1] - 1, pw - ox - out.shape[1]))), mode="reflect")
        out = np.pad(out, ((oy, 0), (ox, 0)), mode="reflect")[:ph, :pw]
    else:
        out = np.pad(mosaic, pad, mode="reflect")
    return np.ascontiguousarray(out), Crop(oy, ox, h, w)


@dataclass(frozen=True)
class CodedMosaic:
    """A padded RGGB mosaic kept as the sensor's 16-bit codes, normalised crop by crop.

    Half the memory of a float32 mosaic, and the crop's normalisation and amplification are one
    table lookup: ``tables[r, c, code]`` is the normalised value of ``code`` at 2x2 position
    ``(r, c)`` of the padded (RGGB-aligned) mosaic.
    """

    codes: np.ndarray
    """H x W uint16, both sides multiples of the net's 32."""
    tables: np.ndarray
    """2 x 2 x 65536 float32."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return self.codes.size

    def amplified(self, amplification: float) -> CodedMosaic:
        """The same codes read as ``amplification`` times their value, clipped to [0, 1] (as the
        net's input is); only the tables are new."""
        tables = np.clip(self.tables * np.float32(amplification), 0.0, 1.0)
        return CodedMosaic(self.codes, tables)

    def normalised(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The crop's values (float32, a new array).

        Crops start on even rows and columns, so the 2x2 positions stay those of the whole mosaic.
        """
        r0, c0 = (s.start or 0 for s in (rows, cols))
        if r0 % 2 or c0 % 2 or rows.step not in (None, 1) or cols.step not in (None, 1):
            raise ValueError("crops of a mosaic must start on even rows and columns, with step 1")
        codes = self.codes[rows, cols]
        out = np.empty(codes.shape, dtype=np.float32)
        for r in range(min(2, out.shape[0])):
            for c in range(min(2, out.shape[1])):
                out[r::2, c::2] = self.tables[r, c][codes[r::2, c::2]]  # faster than np.take(out=) here
        return out


def coded_for_net(codes: np.ndarray, tables: np.ndarray, pattern: str,
                  multiple: int = NET_MULTIPLE) -> tuple[CodedMosaic, Crop]:
    """:func:`pad_for_net` for sensor codes: the padded codes, with ``tables`` (2 x 2 x 65536, per
    position of the unpadded mosaic) moved to the padded mosaic's positions."""
    padded, crop = pad_for_net(codes, pattern, multiple)
    moved = np.empty_like(tables)
    for r in range(2):
        for c in range(2):
            moved[(r + crop.top) % 2, (c + crop.left) % 2] = tables[r, c]
    return CodedMosaic(padded, moved), crop


def apply_orientation(image: np.ndarray, flip: int) -> np.ndarray:
    """Turn an H x W x C image the way LibRaw's ``sizes.flip`` says.

    LibRaw's code maps output to input positions, so as image operations the mirrors (bit 2 rows,
    bit 1 columns) come first and the transpose (bit 4) last: 6 turns 90 degrees clockwise.
    """
    if flip & 2:
        image = image[::-1]
    if flip & 1:
        image = image[:, ::-1]
    if flip & 4:
        image = image.transpose(1, 0, *range(2, image.ndim))
    return np.ascontiguousarray(image)


def orientation_canvas(oriented: np.ndarray, flip: int) -> np.ndarray:
    """A view of ``oriented`` in the un-turned geometry: writing an image ``img`` into it leaves
    ``oriented`` equal to ``apply_orientation(img, flip)``, without a turned copy."""
    view = oriented
    if flip & 4:
        view = view.transpose(1, 0, *range(2, view.ndim))
    if flip & 2:
        view = view[::-1]
    if flip & 1:
        view = view[:, ::-1]
    return view
