"""Reading camera raw files into a :class:`RawImage` (LibRaw, through rawpy).

Only what the net needs is kept: the visible Bayer mosaic, its per-channel black levels and white
level *from the file* (never a camera's hard-coded values), the CFA pattern at the visible origin,
the orientation, and the raw's own colour: its as-shot white balance and colour matrix, as LibRaw
applies them (:mod:`lowlux.colour`). Everything that cannot be read as a
2x2 RGB Bayer mosaic is refused with a reason that names the file and the sensor layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colour import RGB_TO_XYZ, CameraColour, from_libraw
from .errors import InputError, UnsupportedSensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawImage:
    """A Bayer raw as read from the file, before any processing."""

    path: Path
    cfa: np.ndarray
    """Visible mosaic, H x W, the sensor's integer values (uint16)."""
    black: np.ndarray
    """Black level per 2x2 position (2 x 2, float32), aligned with ``cfa``'s origin."""
    white: float
    pattern: str
    """Colours of the 2x2 tile at the visible origin, row-major, e.g. 'RGGB' or 'GBRG'."""
    flip: int = 0
    """LibRaw orientation code: bit 4 transpose, then bit 2 flip rows, bit 1 flip columns."""
    colour: CameraColour = CameraColour(np.linalg.inv(RGB_TO_XYZ), (1.0, 1.0, 1.0))
    """The raw's colour matrix and as-shot white balance (G = 1); by default a camera whose RGB is
    linear sRGB, with no white balance."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.cfa.shape  # type: ignore[return-value]

    @property
    def wb(self) -> tuple[float, float, float]:
        """As-shot white balance multipliers for R, G, B (G = 1)."""
        return self.colour.wb

    def _lookup(self, row: int, col: int) -> np.ndarray:
        """The normalised value of every possible sensor value at one 2x2 position (65536 float32).

        The same float32 arithmetic as a direct computation, so the results are bit-identical.
        """
        black = np.float32(self.black[row, col])
        scale = np.float32(1.0) / (np.float32(self.white) - black)
        lut = (np.arange(65536, dtype=np.float32) - black) * scale
        return np.clip(lut, 0.0, 1.0, out=lut)

    def tables(self) -> np.ndarray:
        """Normalised value of every sensor code at each 2x2 position: 2 x 2 x 65536 float32."""
        out = np.empty((2, 2, 65536), dtype=np.float32)
        for row in range(2):
            for col in range(2):
                out[row, col] = self._lookup(row, col)
        return out

    def normalised(self) -> np.ndarray:
        """Black-subtracted, white-scaled mosaic in [0, 1] (float32).

        A table lookup per 2x2 position (the mosaic holds 16-bit integers): one pass over the
        frame instead of several float passes.
        """
        out = np.empty(self.cfa.shape, dtype=np.float32)
        for row in range(min(2, out.shape[0])):
            for col in range(min(2, out.shape[1])):
                out[row::2, col::2] = self._lookup(row, col)[self.cfa[row::2, col::2]]
        return out

    def normalised_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, counts)``: each normalised value that occurs and how many pixels have it.

        Statistics over the whole frame (the amplifier) then cost 4 x 65536 values instead of a
        pass over every pixel.
        """
        values, counts = [], []
        for row in range(min(2, self.cfa.shape[0])):
            for col in range(min(2, self.cfa.shape[1])):
                n = np.bincount(self.cfa[row::2, col::2].ravel(), minlength=65536)
                present = np.flatnonzero(n)
                values.append(self._lookup(row, col)[present])
                counts.append(n[present])
        return np.concatenate(values), np.concatenate(counts)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, not a raw file")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")


def _sensor_layout(raw, path: Path) -> str:
    """The 2x2 tile at the visible origin, or UnsupportedSensor with the layout named."""
    import rawpy

    desc = raw.color_desc.decode("ascii", "replace")
    if raw.num_colors == 1:
        raise UnsupportedSensor(path, "monochrome sensor (no colour filter array)")
    if raw.raw_type != rawpy.RawType.Flat:
        raise UnsupportedSensor(
            path, f"sensor layout '{raw.raw_type.name}' (linear/demosaiced or Foveon data, no Bayer mosaic)"
        )
    pattern = raw.raw_pattern
    if raw.num_colors < 3 or pattern is None:
        raise UnsupportedSensor(path, "monochrome sensor (no colour filter array)")
    if pattern.shape != (2, 2):
        h, w = pattern.shape
        raise UnsupportedSensor(path, f"{h}x{w} colour filter array (X-Trans-like), only 2x2 Bayer is supported")
    tile = "".join(desc[c] for c in raw.raw_colors_visible[:2, :2].ravel())
    if sorted(tile) != ["B", "G", "G", "R"]:
        raise UnsupportedSensor(path, f"colour filter array '{tile}' ({desc}), only RGB Bayer is supported")
    return tile


def _message(exc: Exception) -> str:
    """LibRaw's message without the bytes repr rawpy gives it."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


MAX_RAW_PIXELS = 500_000_000
"""More than any camera's sensor (the largest hold about 150 MP)."""
MAX_PIXELS_PER_BYTE = 32
"""No raw codec packs more than 32 pixels into a byte (a quarter of a bit each): a file that declares
more pixels than that for its size is corrupt or forged."""


def _check_declared_size(raw, path: Path) -> int:
    """Refuse a raw whose declared size its file cannot hold, before LibRaw allocates for it: a 10 KB
    file that declares 60000x60000 pixels must not cost gigabytes. Returns the declared pixels."""
    sizes = raw.sizes  # read from the header; nothing is unpacked yet
    pixels = int(sizes.raw_width) * int(sizes.raw_height)
    size = path.stat().st_size
    declared = f"declares {sizes.raw_width}x{sizes.raw_height} pixels ({pixels / 1e6:.0f} MP)"
    if pixels > size * MAX_PIXELS_PER_BYTE:
        raise InputError(path, f"{declared} in a file of only {max(1, size // 1024)} KB: corrupt or forged")
    if pixels > MAX_RAW_PIXELS:
        raise InputError(path, f"{declared}, more than any camera's sensor (at most {MAX_RAW_PIXELS // 1_000_000} MP)")
    return pixels


def read_raw(path: str | Path, *, admit: Callable[[int], None] | None = None) -> RawImage:
    """Read a raw file; raises InputError / UnsupportedSensor naming the file and the reason.

    ``admit`` is called with the frame's declared pixels once the header is read and before the data
    is unpacked: a batch with several decoders waits there until the frame fits its memory bound.
    """
    import rawpy

    path = Path(path)
    _check_path(path)
    try:
        with rawpy.imread(str(path)) as raw:
            pixels = _check_declared_size(raw, path)  # before anything unpacks (allocates) the raw data
            if admit is not None:
                admit(pixels)
            pattern = _sensor_layout(raw, path)
            cfa = np.array(raw.raw_image_visible, dtype=np.uint16, copy=True)
            colors = raw.raw_colors_visible[:2, :2]
            per_channel = np.asarray(raw.black_level_per_channel, dtype=np.float32)
            black = per_channel[colors]
            white = float(raw.white_level)
            flip = int(raw.sizes.flip)
            colour = from_libraw(raw, path)
    except (InputError, UnsupportedSensor):
        raise
    except rawpy.LibRawFileUnsupportedError as exc:
        raise InputError(path, f"not a raw file LibRaw can read ({_message(exc)})") from exc
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise InputError(path, f"corrupt or truncated raw file ({_message(exc)})") from exc
    if cfa.shape[0] < 2 or cfa.shape[1] < 2:
        raise InputError(path, f"image is too small ({cfa.shape[1]}x{cfa.shape[0]})")
    if not white > float(black.max()):
        raise InputError(path, f"white level {white:g} is not above the black level {float(black.max()):g}")
    return RawImage(
        path=path,
        cfa=cfa,
        black=black,
        white=white,
        pattern=pattern,
        flip=flip,
        colour=colour,
    )

