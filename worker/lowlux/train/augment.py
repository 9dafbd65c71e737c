"""Random crops and flips that keep a Bayer mosaic RGGB and aligned with its target.

A crop must start on an even row and column (the mosaic given here starts on red). A mirror turns
RGGB into GRBG (columns) or GBRG (rows); cutting the window one pixel larger and dropping the
first column/row after the mirror brings red back to the origin. A transpose keeps RGGB as is
(R and B stay on the diagonal), so all eight dihedral variants are available.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """One random crop + dihedral transform, applicable to a mosaic and its target alike."""

    top: int
    left: int
    size: int
    flip_rows: bool
    flip_cols: bool
    transpose: bool

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Crop and transform an H x W (x C) array; returns a contiguous size x size (x C) copy."""
        s = self.size
        window = image[self.top : self.top + s + 2, self.left : self.left + s + 2]
        if self.flip_rows:
            window = window[::-1][1:]
        if self.flip_cols:
            window = window[:, ::-1][:, 1:]
        window = window[:s, :s]
        if self.transpose:
            window = window.swapaxes(0, 1)
        return np.ascontiguousarray(window)


def random_geometry(
    rng: np.random.Generator, height: int, width: int, size: int, augment: bool = True
) -> Geometry:
    """A crop of ``size`` (even) whose (size + 2) window fits in an H x W region, at even offsets."""
    if size % 2:
        raise ValueError(f"crop size {size} must be even")
    max_top, max_left = height - size - 2, width - size - 2
    if max_top < 0 or max_left < 0:
        raise ValueError(f"crop {size} does not fit in {height}x{width}")
    top = 2 * int(rng.integers(0, max_top // 2 + 1))
    left = 2 * int(rng.integers(0, max_left // 2 + 1))
    flips = rng.integers(0, 2, 3).astype(bool) if augment else np.zeros(3, bool)
    return Geometry(top, left, size, bool(flips[0]), bool(flips[1]), bool(flips[2]))


def dihedral(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random one of the eight flips/transposes of a full-colour image (no CFA to keep)."""
    k = int(rng.integers(0, 8))
    if k & 1:
        image = image[::-1]
    if k & 2:
        image = image[:, ::-1]
    if k & 4:
        image = image.swapaxes(0, 1)
    return image
