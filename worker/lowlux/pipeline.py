"""One raw file to its TIFF(s) or DNG(s): decode -> white balance, amplify -> net -> colour -> encode.

What the net outputs decides the colour stage: the paper's sRGB nets are written as they are;
lowlux's linear nets read a white-balanced mosaic and their linear camera RGB goes through the
raw's own colour (:mod:`lowlux.colour`) to sRGB for a TIFF, or back to camera-native linear
values for a scene-referred DNG.

The stages are separate functions so a batch runner (the worker) can overlap them: decode the
next file while the net runs on this one, encode on a thread pool. :func:`enhance_file` chains
them for the simple case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .amplifier import DEFAULT_BRIGHTNESS, DEFAULT_VARIANT, check_brightness, estimate_amplification
from .colour import CameraColour, camera_native, render_srgb, render_srgb_on_device, rggb_gains
from .dng import write_linear_dng
from .errors import InputError
from .model import LINEAR_CAMERA_WB, SRGB
from .mosaic import CodedMosaic, Crop, apply_orientation, coded_for_net, orientation_canvas
from .naming import EXTENSIONS, FORMATS, check_targets, output_names
from .raw import read_raw
from .tiff import check_output, to_uint16_into, write_tiff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnhanceOptions:
    """What the user asked for; shared by the CLI, the worker protocol and the darktable script."""

    brightness: Sequence[float] = (DEFAULT_BRIGHTNESS,)
    """One value, or several for a bracket (one TIFF each)."""
    amplification: float | None = None
    """Fixed factor instead of the amplifier's estimate (Eq. 3's GT-exposure mode)."""
    variant: str = DEFAULT_VARIANT
    out_dir: Path | None = None
    """Folder for the TIFFs; None writes next to the raw."""
    overwrite: bool = False
    compression: str = "none"
    format: str = "tiff"
    """``tiff``: 16-bit sRGB; ``dng``: scene-referred linear DNG (lowlux's linear weights only)."""
    targets: tuple[str, ...] = ()
    """File names a client chose for the outputs of a single file, one per brightness value;
    empty: the default names (:mod:`lowlux.naming`)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.targets:
            object.__setattr__(self, "targets", check_targets(self.targets, len(self.brightness), self.format))
        if not self.brightness:
            raise ValueError("at least one brightness value is needed")
        for m in self.brightness:
            check_brightness(m)
        if self.amplification is not None and not (1.0 <= self.amplification <= 1000.0):
            raise ValueError(f"amplification {self.amplification} is outside 1-1000")

    @property
    def bracketed(self) -> bool:
        return len(self.brightness) > 1


def output_paths(source: Path, options: EnhanceOptions) -> list[Path]:
    """The outputs of ``source``, named by :func:`lowlux.naming.output_names` (or the options' ``targets``),
    in ``out_dir`` or next to the raw."""
    folder = options.out_dir if options.out_dir is not None else source.parent
    names = output_names(source, options.brightness, options.targets, EXTENSIONS[options.format])
    return [folder / name for name in names]


@dataclass
class Decoded:
    """A raw ready for the net: padded mosaic, where to crop, how to turn, how much to amplify."""

    source: Path
    mosaic: CodedMosaic
    crop: Crop
    flip: int
    amplifications: list[float]
    outputs: list[Path]
    brightness: list[float] = field(default_factory=list)
    colour: CameraColour | None = None
    """The raw's colour (white balance before the net, the colour stage after it)."""
    format: str = "tiff"


def decode(source: str | Path, options: EnhanceOptions, *, admit: Callable[[int], None] | None = None) -> Decoded:
    """Read and prepare one raw; checks the outputs first so no work is wasted on a doomed file.
    ``admit``: see :func:`lowlux.raw.read_raw`."""
    source = Path(source)
    outputs = output_paths(source, options)
    for out in outputs:
        if out.resolve() == source.resolve():
            raise InputError(source, "output would replace the source file")
        check_output(out, options.overwrite)
    raw = read_raw(source, admit=admit)
    if options.amplification is not None:
        amps = [float(options.amplification)] * len(options.brightness)
    else:
        # Once, on the whole frame: a tiled restoration must not get per-tile exposures. From the
        # frame's histogram (the same estimate as from its pixels, without a pass over them).
        values, counts = raw.normalised_histogram()
        amps = [estimate_amplification(values, m, options.variant, counts=counts) for m in options.brightness]
    # Kept as 16-bit codes (half a float mosaic): normalised crop by crop as the net takes them.
    mosaic, crop = coded_for_net(raw.cfa, raw.tables(), raw.pattern)
    log.debug("%s: %s, %dx%d, amplification %s", source.name, raw.pattern, *raw.shape[::-1], amps)
    return Decoded(source, mosaic, crop, raw.flip, amps, outputs, list(options.brightness), raw.colour,
                   options.format)


def output_space(engine) -> str:
    """What an engine's net outputs (the paper's sRGB unless it says otherwise)."""
    model = getattr(engine, "model", None)
    return getattr(model, "output_space", getattr(engine, "output_space", SRGB))


def _finisher(decoded: Decoded, space: str, fmt: str):
    """The colour stage for one output, applied band by band before quantisation (None: as is)."""
    if space == SRGB:
        if fmt != "tiff":
            raise InputError(decoded.source, "a DNG needs lowlux's linear weights (output space linear-camera-wb); "
                                             "these weights output sRGB (the paper's mode): write a TIFF instead")
        return None
    colour = decoded.colour
    if fmt == "tiff":
        return lambda band: render_srgb(band, colour)
    undo = camera_native(colour)
    return lambda band: band * undo


def _device_finisher(decoded: Decoded, fmt: str):
    """:func:`_finisher`'s colour stage as tensor operations, for pieces still on the net's device."""
    colour = decoded.colour
    if fmt == "tiff":
        return lambda rgb: render_srgb_on_device(rgb, colour)
    undo = camera_native(colour)
    return lambda rgb: rgb * rgb.new_tensor(undo)


def _net_mosaic(decoded: Decoded, space: str) -> CodedMosaic:
    """The mosaic as the net reads it: white-balanced for the linear nets (only the tables change)."""
    if space != LINEAR_CAMERA_WB or decoded.colour is None:
        return decoded.mosaic
    gains = rggb_gains(decoded.colour.wb)  # the padded mosaic starts on red
    return CodedMosaic(decoded.mosaic.codes, decoded.mosaic.tables * gains[..., None])


def infer(engine, decoded: Decoded) -> list[np.ndarray]:
    """Output images (uint16, oriented, exactly the visible frame), one per amplification."""
    space = output_space(engine)
    finish = _finisher(decoded, space, decoded.format)
    mosaic = _net_mosaic(decoded, space)
    images = []
    for amp in decoded.amplifications:
        if hasattr(engine, "restore_tiles"):
            images.append(_restore_uint16(engine, decoded, mosaic, amp, finish))
        else:  # any object with restore() will do (the worker wraps engines)
            rgb = decoded.crop.apply(engine.restore(mosaic, amp))
            out = np.empty(rgb.shape, dtype=np.uint16)
            to_uint16_into(rgb, out, transform=finish)
            images.append(apply_orientation(out, decoded.flip))
    return images


def _restore_uint16(engine, decoded: Decoded, mosaic: CodedMosaic, amp: float, finish) -> np.ndarray:
    """The engine's output piece by piece (whole, or tile by tile), cropped, through the colour stage,
    converted to uint16 and written straight into the turned image: the float image is never held whole."""
    crop, flip = decoded.crop, decoded.flip
    shape = (crop.width, crop.height, 3) if flip & 4 else (crop.height, crop.width, 3)
    image = np.empty(shape, dtype=np.uint16)
    canvas = orientation_canvas(image, flip)
    # On a GPU the colour stage and the quantisation run there: half the bytes to copy back, no host pass.
    on_gpu = engine.device.type == "cuda"
    device_finish = _device_finisher(decoded, decoded.format) if on_gpu and finish is not None else None
    for ys, xs, rgb in engine.restore_tiles(mosaic, amp, uint16=on_gpu, transform=device_finish):
        y0, y1 = max(ys.start, crop.top), min(ys.stop, crop.top + crop.height)
        x0, x1 = max(xs.start, crop.left), min(xs.stop, crop.left + crop.width)
        if y0 >= y1 or x0 >= x1:
            continue
        src = rgb[y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start]
        dst = canvas[y0 - crop.top : y1 - crop.top, x0 - crop.left : x1 - crop.left]
        if src.dtype == np.uint16:
            np.copyto(dst, src)
        else:
            to_uint16_into(src, dst, transform=finish)
    return image


def encode(decoded: Decoded, images: list[np.ndarray], options: EnhanceOptions) -> list[Path]:
    if options.format == "dng":
        return [
            write_linear_dng(out, img, decoded.colour, source=decoded.source, overwrite=options.overwrite,
                             compression=options.compression)
            for out, img in zip(decoded.outputs, images)
        ]
    return [
        write_tiff(out, img, source=decoded.source, overwrite=options.overwrite, compression=options.compression)
        for out, img in zip(decoded.outputs, images)
    ]


def enhance_file(engine, source: str | Path, options: EnhanceOptions = EnhanceOptions()) -> list[Path]:
    """Restore one raw file and write its output(s); returns the paths written."""
    decoded = decode(source, options)
    return encode(decoded, infer(engine, decoded), options)
