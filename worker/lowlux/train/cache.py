"""Decode each training source once and keep it as .npy in a cache directory.

Decoding a raw and rendering its LibRaw target takes about a second per 12 MP file; a training
run samples hundreds of thousands of crops. Arrays are stored as plain .npy so data-loader
workers can memory-map them and read only the crop they need.

Entries are keyed by the source's absolute path, size and modification time, so an edited source
is decoded again and a stale entry is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import replacing
from ..mosaic import rggb_offset
from ..raw import read_raw
from ..colour import CameraColour, from_libraw

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("LOWLUX_CACHE", Path.home() / ".cache" / "lowlux")) / "train"
CACHE_VERSION = "3"

LIBRAW_SID_RENDER = dict(use_camera_wb=True, no_auto_bright=True, output_bps=16, user_flip=0, adjust_maximum_thr=0.0)
"""SID's ground-truth rendering (``user_flip=0`` keeps the sensor orientation so pixels align), at the
raw's true exposure: LibRaw's default ``adjust_maximum_thr=0.75`` rescales a raw whose brightest pixel
passes 75 % of the white level to that pixel (the Canon 550D chart's reference was 1.285x too bright)."""


def _key(path: Path, tag: str) -> str:
    st = path.stat()
    ident = f"{CACHE_VERSION}|{tag}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


LIBRAW_LINEAR_RENDER = dict(use_camera_wb=True, no_auto_bright=True, output_bps=16, user_flip=0, gamma=(1, 1),
                            adjust_maximum_thr=0.0)
"""The linear nets' target: demosaiced (AHD), white-balanced camera RGB in linear light, no brightening
and no rescaling to the frame's own maximum (``adjust_maximum_thr=0``: LibRaw otherwise rescales a raw
whose brightest pixel passes 75 % of the white level, which would shift the exposure)."""


def linear_render(lr, colour: CameraColour) -> np.ndarray:
    """LibRaw's demosaic of a clean raw as white-balanced linear camera RGB (H x W x 3 uint16).

    LibRaw divides the multipliers by the smallest; lowlux's are normalised to green = 1, which is
    the same unless red or blue is below green (then the render is scaled back)."""
    import rawpy

    out = lr.postprocess(output_color=rawpy.ColorSpace.raw, demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD,
                         **LIBRAW_LINEAR_RENDER)
    lowest = min(colour.wb)
    if lowest < 1.0:
        out = np.round(out * lowest).astype(np.uint16)
    return out


@dataclass(frozen=True)
class CachedRaw:
    """A raw decoded for training: RGGB-aligned clean mosaic and its LibRaw target, memory-mapped."""

    name: str
    mosaic_path: Path
    target_path: Path
    colour: CameraColour

    def mosaic(self) -> np.ndarray:
        """Normalised clean mosaic, H x W float32, starting on a red pixel, even sides."""
        return np.load(self.mosaic_path, mmap_mode="r")

    def target(self) -> np.ndarray:
        """LibRaw sRGB render, H x W x 3 uint16, pixel-aligned with :meth:`mosaic`."""
        return np.load(self.target_path, mmap_mode="r")

    @property
    def linear_path(self) -> Path:
        return self.target_path.with_name(self.target_path.name.replace(".target.npy", ".linear.npy"))

    def linear(self) -> np.ndarray:
        """White-balanced linear camera RGB (:func:`linear_render`), H x W x 3 uint16, aligned likewise."""
        return np.load(self.linear_path, mmap_mode="r")


def colour_from_libraw(raw) -> CameraColour:
    """The camera's colour as LibRaw applies it (see :func:`lowlux.colour.from_libraw`)."""
    return from_libraw(raw)


def cache_raw(path: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> CachedRaw:
    """Decode a raw once: clean normalised mosaic + SID-style LibRaw target (+ colour metadata)."""
    import rawpy

    path = Path(path)
    folder = Path(cache_dir) / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(path, "raw")
    mosaic_path, target_path, meta_path = (folder / f"{key}.{s}" for s in ("mosaic.npy", "target.npy", "json"))
    if meta_path.is_file() and mosaic_path.is_file() and target_path.is_file():
        meta = json.loads(meta_path.read_text())
        cached = CachedRaw(path.name, mosaic_path, target_path,
                           CameraColour(np.array(meta["xyz_to_cam"]), tuple(meta["wb"])))
        if not cached.linear_path.is_file():  # an entry from before the linear targets
            raw = read_raw(path)
            with rawpy.imread(str(path)) as lr:
                _save_atomic(cached.linear_path, _aligned(linear_render(lr, cached.colour), raw))
        return cached
    log.info("decoding %s into the training cache", path.name)
    raw = read_raw(path)
    with rawpy.imread(str(path)) as lr:
        target = lr.postprocess(**LIBRAW_SID_RENDER)
        colour = colour_from_libraw(lr)
        linear = linear_render(lr, colour)
    if target.shape[:2] != raw.shape or linear.shape[:2] != raw.shape:
        raise ValueError(f"{path}: LibRaw renders {target.shape[:2]} but the mosaic is {raw.shape}")
    cached = CachedRaw(path.name, mosaic_path, target_path, colour)
    _save_atomic(mosaic_path, _aligned(raw.normalised(), raw))
    _save_atomic(target_path, _aligned(target, raw))
    _save_atomic(cached.linear_path, _aligned(linear, raw))
    meta_path.write_text(json.dumps({"source": str(path), "xyz_to_cam": colour.xyz_to_cam.tolist(),
                                     "wb": list(colour.wb)}))
    return cached


def _aligned(image: np.ndarray, raw) -> np.ndarray:
    """The part of a full-frame array that starts on the mosaic's red pixel, with even sides."""
    oy, ox = rggb_offset(raw.pattern)
    h, w = (raw.shape[0] - oy) // 2 * 2, (raw.shape[1] - ox) // 2 * 2
    return np.ascontiguousarray(image[oy : oy + h, ox : ox + w])


def read_photo(path: Path) -> np.ndarray:
    """A photograph as H x W x 3 float32 sRGB in [0, 1] (8- or 16-bit PNG/TIFF)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return (img.astype(np.float32) / np.float32(scale)).clip(0, 1)


def cache_photo(path: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Decode a photograph once into an H x W x 3 uint16 .npy; returns its path."""
    path = Path(path)
    folder = Path(cache_dir) / "clean"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{_key(path, 'clean')}.npy"
    if not out.is_file():
        _save_atomic(out, np.round(read_photo(path) * 65535).astype(np.uint16))
    return out
