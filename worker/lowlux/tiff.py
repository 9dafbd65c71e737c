"""16-bit sRGB TIFF output: embedded ICC profile, the raw's Exif/XMP/IPTC, atomic writes.

Metadata is read from the raw with exiv2 (through pyexiv2): a maintained C++ library that reads the
metadata of every raw format LibRaw reads, runs in-process (no per-file subprocess as exiftool would
need, which matters in a batch), and ships as a wheel with no system dependency. exiv2 rewrites a
TIFF in memory to add tags (twice the image's size: 0.7 GB at 60 MP), so it writes them into a
one-pixel TIFF instead, and tifftools (which copies pixel data in 1 MB chunks) grafts that TIFF's
tags, Exif IFD included, onto the image's.

Each TIFF carries a small 8-bit copy of the image in a SubIFD marked as a reduced-resolution image
(NewSubfileType 1): exiv2's preview manager lists it, and darktable (``_init_8`` in its mipmap cache)
builds the lighttable thumbnail of an unedited image from such an embedded preview instead of running
its pixel pipe on the full 16-bit image. It is grafted in the same tifftools pass as the metadata,
so the image itself is still written by one ``tifffile.imwrite`` and stays IFD0.

Files are written to a temporary name in the target folder and moved into place only when
complete (:mod:`lowlux.atomic`), so a crash or a cancel never leaves a partial TIFF under the final name. Without
``overwrite`` the final move is a hard link, which fails if the name appeared meanwhile.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
from functools import lru_cache
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import EXISTS, move_into_place, temp_beside
from .errors import OutputError

log = logging.getLogger(__name__)

COMPRESSIONS = ("none", "deflate")
TEMP_SUFFIX = ".tmp.tif"
"""How an output's temporary names end, TIFF or DNG: :func:`lowlux.batch.remove_stale_temporaries` finds a
killed worker's leftovers by it."""

# Tags that describe the raw's pixel layout or point into its structure: never copied.
_SKIP_EXIF_PREFIXES = (
    "Exif.Image.",  # IFD0 of a raw describes the raw data; the useful entries are re-added below
    "Exif.Thumbnail.",
    "Exif.SubImage",
    "Exif.Photo.MakerNote",
    "Exif.MakerNote.",
    "Exif.Photo.PixelXDimension",
    "Exif.Photo.PixelYDimension",
    "Exif.Photo.ComponentsConfiguration",
    "Exif.Iop.",
)
_KEEP_IMAGE_TAGS = (
    "Exif.Image.Make",
    "Exif.Image.Model",
    "Exif.Image.DateTime",
    "Exif.Image.DateTimeOriginal",
    "Exif.Image.Artist",
    "Exif.Image.Copyright",
    "Exif.Image.ImageDescription",
    "Exif.Image.LensInfo",
    "Exif.Image.ExposureTime",
    "Exif.Image.FNumber",
    "Exif.Image.ISOSpeedRatings",
    "Exif.Image.FocalLength",
)
_SKIP_XMP_PREFIXES = ("Xmp.tiff.", "Xmp.exif.PixelXDimension", "Xmp.exif.PixelYDimension", "Xmp.crs.", "Xmp.darktable.")
_MAKER_NOTE_GROUPS = ("Exif.Canon", "Exif.Nikon", "Exif.Sony", "Exif.Olympus", "Exif.Panasonic", "Exif.Pentax",
                      "Exif.Fujifilm", "Exif.Samsung", "Exif.Minolta", "Exif.Sigma", "Exif.Casio", "Exif.Apple")


@lru_cache(maxsize=1)
def srgb_icc_profile() -> bytes:
    """The sRGB ICC profile (lcms2's built-in sRGB, through Pillow)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_uint16(rgb: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint16, rounding to nearest."""
    out = np.empty(rgb.shape, dtype=np.uint16)
    to_uint16_into(rgb, out)
    return out


BAND_BYTES = 1 << 18
"""Float bytes per band of :func:`to_uint16_into`: small enough that a band and its temporaries stay in
a core's L2 cache. With 13 MB bands (256 rows at 12 MP) the colour stage ran half as fast, bound by
memory (docs/benchmarks.md, round 2)."""

_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """The threads :func:`to_uint16_into` shares its bands with (one per core, at most 4)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(min(os.cpu_count() or 1, 4), thread_name_prefix="lowlux-quantise")
        return _POOL


def to_uint16_into(rgb: np.ndarray, out: np.ndarray, rows: int | None = None, transform=None,
                   threads: int | None = None) -> None:
    """:func:`to_uint16` written into ``out`` (any view, e.g. a turned one), in bands of ``rows`` rows
    (default: about :data:`BAND_BYTES` of floats) so the float temporaries stay small and in cache.
    ``transform`` (band -> band), if given, is applied to each band first (the colour stage). The
    bands are shared among ``threads`` threads (default: one per core; numpy releases the GIL while it
    computes); every band gets the same operations whatever the split, so the result is the same."""
    if rgb.shape != out.shape:
        raise ValueError(f"shape mismatch: {rgb.shape} into {out.shape}")
    height = rgb.shape[0]
    if height == 0:
        return
    row_bytes = max(1, rgb[:1].size * 4)
    rows = rows or max(1, BAND_BYTES // row_bytes)
    threads = threads or min(os.cpu_count() or 1, 4)
    # Whole bands per thread; at least a few bands each, or the hand-over costs more than it saves.
    per_thread = -(-height // threads)
    per_thread = max(-(-per_thread // rows) * rows, 4 * rows)
    chunks = [(y, min(y + per_thread, height)) for y in range(0, height, per_thread)]

    def convert(y0: int, y1: int) -> None:
        tmp = np.empty((min(rows, y1 - y0), *rgb.shape[1:]), dtype=np.float32)
        for y in range(y0, y1, rows):
            end = min(y + rows, y1)
            src = rgb[y:end] if transform is None else transform(rgb[y:end])
            t = tmp[: end - y]
            np.clip(src, 0.0, 1.0, out=t)
            t *= np.float32(65535.0)
            t += np.float32(0.5)
            np.copyto(out[y:end], t, casting="unsafe")

    if len(chunks) == 1:
        convert(*chunks[0])
        return
    for f in [_pool().submit(convert, *c) for c in chunks]:
        f.result()


PREVIEW_SIDE = 1024
"""The embedded preview's longest side is at least this (and under twice it): large enough for
darktable's thumbnails up to its 720 x 450 mip, which is what the lighttable shows; larger ones it
still renders from the image."""


def preview_of(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray | None:
    """An 8-bit copy of the uint16 sRGB image, every n-th pixel (n the largest that keeps the longest
    side at least ``side``): a strided view costs nothing next to the write, where a filtered resize
    of 12 MP takes about 0.2 s, and darktable scales it down again for the thumbnail. None when the
    image is under twice ``side`` across: such an image is quick to render from itself."""
    step = max(rgb.shape[:2]) // side
    if step < 2:
        return None
    small = rgb[step // 2::step, step // 2::step]
    return ((small.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def check_output(path: Path, overwrite: bool) -> None:
    """Fail early, before any work, if the TIFF cannot be written (or its folder cannot be made)."""
    folder = path.parent
    if path.exists() and not overwrite:
        raise OutputError(path, EXISTS)
    if path.is_dir():
        raise OutputError(path, "is a directory")
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "output folder is a file")
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(folder, "output folder is not writable")
    if not folder.exists():  # it will be made: its nearest existing ancestor must allow that
        ancestor = next(p for p in folder.parents if p.exists() or p == p.parent)
        if not ancestor.is_dir():
            raise OutputError(folder, f"cannot create the output folder ({ancestor} is a file)")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OutputError(folder, f"cannot create the output folder ({ancestor} is not writable)")


def _copyable_exif(exif: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in exif.items():
        if key in _KEEP_IMAGE_TAGS or not (key.startswith(_SKIP_EXIF_PREFIXES) or key.startswith(_MAKER_NOTE_GROUPS)):
            out[key] = value
    return out


def _modify(setter, items: dict) -> None:
    """Apply metadata in one call, falling back to one key at a time so one odd tag costs one tag."""
    try:
        setter(items)
    except Exception:
        for key, value in items.items():
            try:
                setter({key: value})
            except Exception as exc:  # exiv2 refuses some vendor values; skip them
                log.debug("metadata %s not copied: %s", key, exc)


_PIXEL_LAYOUT_TAGS = frozenset({254, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 338, 339})
"""NewSubfileType, sizes, bits, compression, photometric, strips, samples, planar, predictor, extra
samples, sample format: the image's own, never taken from the one-pixel carrier."""


def metadata_tags(source: Path) -> dict[int, dict]:
    """The raw's Exif, XMP and IPTC as TIFF IFD0 tags (tifftools' form), Exif IFD included.

    Pixels are already oriented, so Orientation is 1. Empty when the raw's metadata is unreadable
    (the TIFF is then written without it: losing metadata must not lose the image).
    """
    import pyexiv2
    import tifffile
    import tifftools

    try:
        with pyexiv2.Image(str(source)) as src:
            exif, xmp, iptc = src.read_exif(), src.read_xmp(), src.read_iptc()
    except Exception as exc:
        log.warning("%s: metadata not readable, TIFF written without it (%s)", source, exc)
        return {}
    exif = _copyable_exif(exif)
    exif.update({"Exif.Image.Orientation": "1", "Exif.Image.Software": f"lowlux {__version__}"})
    xmp = {k: v for k, v in xmp.items() if not k.startswith(_SKIP_XMP_PREFIXES)}
    carrier = io.BytesIO()
    tifffile.imwrite(carrier, np.zeros((1, 1, 3), dtype=np.uint16), photometric="rgb", metadata=None)
    with pyexiv2.ImageData(carrier.getvalue()) as dst:
        _modify(dst.modify_exif, exif)
        if xmp:
            _modify(dst.modify_xmp, xmp)
        if iptc:
            _modify(dst.modify_iptc, iptc)
        tagged = dst.get_bytes()
    ifd = tifftools.read_tiff(io.BytesIO(tagged))["ifds"][0]
    return {tag: value for tag, value in ifd["tags"].items() if tag not in _PIXEL_LAYOUT_TAGS}


def _preview_ifd(preview: np.ndarray) -> dict:
    """``preview`` as a tifftools IFD marked as a reduced-resolution image (NewSubfileType 1, what
    exiv2 looks for in a SubIFD), its pixels in a TIFF in memory that the IFD refers to. Always
    uncompressed, whatever the image's compression: darktable 4.2 decodes a TIFF preview (as exiv2
    extracts it) with GraphicsMagick, which read an uncompressed one but failed on a deflated one (with
    or without predictor), and darktable then rendered the full image after all."""
    import tifffile
    import tifftools

    buf = io.BytesIO()
    tifffile.imwrite(buf, preview, photometric="rgb", subfiletype=1, software=False, metadata=None)
    buf.seek(0)
    return tifftools.read_tiff(buf)["ifds"][0]


def copy_metadata(source: Path | None, target: Path, dest: Path,
                  preview: Callable[[], dict | None] | None = None) -> bool:
    """Write ``target`` with the raw's metadata and ``preview()`` (an IFD, as a SubIFD) added as
    ``dest``; False (nothing written) if there is neither, or they cannot be carried over (then the
    image goes out without them, with a warning: neither is worth losing the image for)."""
    import tifftools

    try:
        tags = metadata_tags(source) if source is not None else {}
        extra = preview() if preview is not None else None
        if not tags and extra is None:
            return False
        info = tifftools.read_tiff(str(target))
        ifd0 = info["ifds"][0]["tags"]
        ifd0.update(tags)
        if extra is not None:
            ifd0[int(tifftools.Tag.SubIFD)] = {"datatype": tifftools.Datatype.IFD, "ifds": [[extra]]}
        tifftools.write_tiff(info, str(dest), allowExisting=True)
    except OSError:
        raise  # the disk, not the metadata: the caller reports it
    except Exception as exc:  # an odd vendor tag must not cost the image
        lost = " and ".join(what for what, tried in (("metadata not copied", source is not None),
                                                    ("preview not added", preview is not None)) if tried)
        log.warning("%s: %s; the TIFF goes out without them (%s: %s)", source or target, lost, exc.__class__.__name__, exc)
        dest.unlink(missing_ok=True)
        return False
    return True


def _write_failure(exc: OSError, nbytes: int) -> str:
    """Why an output could not be written; a full disk says how much room writing one takes."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write ({exc.strerror or exc}): writing an output needs about twice its size free, here "
                f"{2 * nbytes / 1e6:.0f} MB (the image, then a copy with the raw's metadata, before the first "
                "is removed)")
    return f"cannot write ({exc.strerror or exc})"


def write_tiff(
    path: str | Path,
    rgb: np.ndarray,
    *,
    source: str | Path | None = None,
    overwrite: bool = False,
    compression: str = "none",
) -> Path:
    """Write an H x W x 3 uint16 sRGB image as TIFF, atomically, with metadata from ``source`` and an
    embedded 8-bit preview (:func:`preview_of`) for darktable's thumbnails."""
    import tifffile

    path = Path(path)
    if rgb.dtype != np.uint16 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint16 image, got {rgb.dtype} {rgb.shape}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    kwargs = {}
    if compression != "none":
        kwargs = {"compression": compression, "predictor": True}

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, rgb, photometric="rgb", iccprofile=srgb_icc_profile(),
                         software=f"lowlux {__version__}", metadata=None, **kwargs)

    def preview() -> dict | None:
        small = preview_of(rgb)
        return None if small is None else _preview_ifd(small)

    return write_output(path, write, rgb.nbytes, source=source, overwrite=overwrite, preview=preview)


def write_output(path: Path, write: Callable[[Path], None], nbytes: int, *, source: str | Path | None = None,
                 overwrite: bool = False, preview: Callable[[], dict | None] | None = None) -> Path:
    """The one way lowlux writes an output file (TIFF or DNG): ``write(tmp)`` writes the image to a
    temporary name in the target folder, the raw's metadata and ``preview()`` (a tifftools IFD, added
    as a SubIFD) are added in one more pass, and the file is moved into place atomically; a disk error
    is an ``OutputError`` naming the file, and nothing partial is left."""
    check_output(path, overwrite)
    tmp, tagged = temp_beside(path, suffix=TEMP_SUFFIX), temp_beside(path, "m", suffix=TEMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        done = tmp
        if (source is not None or preview is not None) and copy_metadata(
                None if source is None else Path(source), tmp, tagged, preview):
            done = tagged
            tmp.unlink()
        move_into_place(done, path, overwrite)
    except OSError as exc:
        raise OutputError(path, _write_failure(exc, nbytes)) from exc
    finally:
        tmp.unlink(missing_ok=True)
        tagged.unlink(missing_ok=True)
    return path
