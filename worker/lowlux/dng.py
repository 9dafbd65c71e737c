"""A minimal DNG writer: a Bayer mosaic plus the tags LibRaw needs to read it back exactly.

Used by the tests (synthetic raws of any pattern and level), by ``lowlux demo`` (a dark raw made
from a photograph) and by training to keep synthetic data in a standard format. LibRaw silently
guesses wrong when CFAPattern, AsShotNeutral, ColorMatrix1 or WhiteLevel are missing, so they are
always written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import replacing

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
    with replacing(path) as tmp:
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
    return path


# ---------------------------------------------------------------------------------------------
# Scene-referred linear DNG: lowlux's restoration as a raw-like file for darktable's
# scene-referred workflow (as darktable's own neural denoise and other raw denoisers deliver).

_LINEAR_RAW = 34892
_COLOUR_TAGS = {50721: "ColorMatrix1", 50722: "ColorMatrix2", 50778: "CalibrationIlluminant1",
                50779: "CalibrationIlluminant2", 50964: "ForwardMatrix1", 50965: "ForwardMatrix2"}
PREVIEW_SIDE = 256


def source_colour_tags(source: str | Path) -> list[tuple]:
    """The source DNG's own colour matrices and illuminants, as tifffile extratags; [] for other raws."""
    import tifffile

    try:
        with tifffile.TiffFile(source) as tif:
            tags = tif.pages[0].tags
            if 50706 not in tags:  # not a DNG
                return []
            out = []
            for code in _COLOUR_TAGS:
                if code in tags:
                    value = np.asarray(tags[code].value, dtype=np.float64).ravel()
                    if code in (50778, 50779):
                        out.append((code, "H", 1, int(value[0]), True))
                    else:
                        out.append((code, "2i", value.size // 2, tuple(int(v) for v in value), True))
            return out if any(t[0] == 50721 for t in out) else []
    except (tifffile.TiffFileError, OSError, ValueError, KeyError):
        return []


def _preview(linear_camera: np.ndarray, colour) -> np.ndarray:
    """An 8-bit sRGB thumbnail of the restored image (what file browsers and darktable show first)."""
    from .colour import render_srgb

    step = max(1, -(-max(linear_camera.shape[:2]) // PREVIEW_SIDE))
    small = linear_camera[::step, ::step].astype(np.float32) / np.float32(65535)
    rgb = render_srgb(small * np.asarray(colour.wb, dtype=np.float32), colour)
    return np.round(rgb * 255).astype(np.uint8)


def write_linear_dng(
    path: str | Path,
    linear_camera: np.ndarray,
    colour,
    *,
    source: str | Path | None = None,
    overwrite: bool = False,
    compression: str = "none",
) -> Path:
    """Write a restoration as a scene-referred linear DNG, atomically, with the raw's metadata.

    ``linear_camera`` is H x W x 3 uint16 linear camera RGB with the white balance *undone*, so a
    reader applies the shot's white balance (AsShotNeutral) as for any raw. The colour matrices are
    the source DNG's own (illuminants included); for other raws, LibRaw's D65 matrix. The values are
    already at the restored exposure, so BaselineExposure is 0. IFD0 holds an sRGB thumbnail of the
    restoration; the image itself is a LinearRaw sub-IFD (3 samples, 16 bits, no demosaic needed).
    """
    import tifffile

    from . import __version__
    from .tiff import COMPRESSIONS, write_output

    path = Path(path)
    if linear_camera.dtype != np.uint16 or linear_camera.ndim != 3 or linear_camera.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint16 image, got {linear_camera.dtype} {linear_camera.shape}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    colour_tags = source_colour_tags(source) if source is not None else []
    if not colour_tags:
        colour_tags = [(50721, "2i", 9, tuple(_rational(np.asarray(colour.xyz_to_cam).ravel())), True),
                       (50778, "H", 1, _D65_ILLUMINANT, True)]
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "lowlux linear", True),  # UniqueCameraModel
        (50728, "2I", 3, tuple(_rational(colour.as_shot_neutral, 1_000_000)), True),  # AsShotNeutral
        (50730, "2i", 1, (0, 1), True),  # BaselineExposure: the values are already at the restored exposure
        (50970, "I", 1, 2, True),  # PreviewColorSpace: sRGB
        *colour_tags,
    ]
    image_tags = [
        (50714, "I", 3, (0, 0, 0), True),  # BlackLevel
        (50717, "I", 1, 65535, True),  # WhiteLevel
    ]
    kwargs = {"compression": compression, "predictor": True} if compression != "none" else {}

    def write(tmp: Path) -> None:
        with tifffile.TiffWriter(tmp) as tif:
            tif.write(_preview(linear_camera, colour), photometric="rgb", subfiletype=1, subifds=1,
                      software=f"lowlux {__version__}", extratags=tags, metadata=None)
            tif.write(np.ascontiguousarray(linear_camera), photometric=_LINEAR_RAW, planarconfig="contig",
                      subfiletype=0, extratags=image_tags, metadata=None, **kwargs)

    return write_output(path, write, linear_camera.nbytes, source=source, overwrite=overwrite)
