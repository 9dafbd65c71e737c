"""A minimal DNG writer: a Bayer mosaic plus the tags LibRaw needs to read it back exactly.

Used by the tests (synthetic raws of any pattern and level), by ``lowlux demo`` (a dark raw made
from a photograph) and by training to keep synthetic data in a standard format. LibRaw silently
guesses wrong when CFAPattern, AsShotNeutral, ColorMatrix1 or WhiteLevel are missing, so they are
always written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

CFA_CODES = {"R": 0, "G": 1, "B": 2}

# sRGB(D65) -> XYZ inverted, i.e. XYZ -> sRGB: a camera whose raw RGB *is* linear sRGB.
XYZ_TO_SRGB = np.array(
    [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]]
)

_D65_ILLUMINANT = 21
_ORIENTATION_FROM_FLIP = {0: 1, 1: 2, 3: 3, 2: 4, 5: 8, 6: 6, 4: 5, 7: 7}


def _rational(values: Sequence[float], denom: int = 10000) -> list[int]:
    out: list[int] = []
    for v in values:
        out += [int(round(v * denom)), denom]
    return out


def write_dng(
    path: str | Path,
    cfa: np.ndarray,
    *,
    pattern: str = "RGGB",
    black: float | Sequence[float] = 0,
    white: int = 65535,
    color_matrix: np.ndarray = XYZ_TO_SRGB,
    as_shot_neutral: Sequence[float] = (1.0, 1.0, 1.0),
    make: str = "lowlux",
    model: str = "Synthetic",
    orientation: int = 1,
    cfa_repeat: tuple[int, int] = (2, 2),
    exif: dict[str, str] | None = None,
) -> Path:
    """Write ``cfa`` (H x W uint16) as an uncompressed CFA DNG, atomically.

    ``pattern`` lists the colour of each tile position row-major ("RGGB", "GBRG", ..., or longer
    for ``cfa_repeat`` other than 2x2). ``black`` is one value or one per 2x2 position.
    ``color_matrix`` maps XYZ to camera RGB (DNG's ColorMatrix1). ``orientation`` is the TIFF
    Orientation tag (1 = as stored, 6 = rotate 90 CW, ...). ``exif`` holds extra Exif keys in
    exiv2 naming (e.g. ``{"Exif.Photo.ExposureTime": "1/30"}``).
    """
    import tifffile

    cfa = np.ascontiguousarray(cfa, dtype=np.uint16)
    if cfa.ndim != 2:
        raise ValueError("cfa must be a 2-D mosaic")
    ry, rx = cfa_repeat
    if len(pattern) != ry * rx:
        raise ValueError(f"pattern {pattern!r} does not fill a {ry}x{rx} tile")
    blacks = [float(black)] if np.isscalar(black) else [float(b) for b in black]  # type: ignore[arg-type]
    black_dim = (1, 1) if len(blacks) == 1 else (2, 2)
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, f"{make} {model}", True),  # UniqueCameraModel
        (271, "s", 0, make, True),  # Make
        (272, "s", 0, model, True),  # Model
        (274, "H", 1, orientation, True),  # Orientation
        (33421, "H", 2, (ry, rx), True),  # CFARepeatPatternDim
        (33422, "B", ry * rx, tuple(CFA_CODES[c] for c in pattern), True),  # CFAPattern
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout: rectangular
        (50713, "H", 2, black_dim, True),  # BlackLevelRepeatDim
        (50714, "2I", len(blacks), tuple(_rational(blacks, 1)), True),  # BlackLevel
        (50717, "I", 1, int(white), True),  # WhiteLevel
        (50721, "2i", 9, tuple(_rational(np.asarray(color_matrix).ravel())), True),  # ColorMatrix1
        (50778, "H", 1, _D65_ILLUMINANT, True),  # CalibrationIlluminant1
        (50728, "2I", 3, tuple(_rational(as_shot_neutral)), True),  # AsShotNeutral
    ]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tifffile.imwrite(
            tmp,
            cfa,
            photometric=32803,  # CFA
            planarconfig="contig",
            compression=None,
            subfiletype=0,
            extratags=tags,
            metadata=None,
        )
        if exif:
            import pyexiv2

            with pyexiv2.Image(str(tmp)) as img:
                img.modify_exif(exif)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
