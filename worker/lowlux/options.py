"""What the commands share: argument helpers, options built from them, exit codes, the summary line.

``lowlux enhance``, ``serve``, ``client``, ``demo`` and ``enhance --via-worker`` all need some of these;
keeping them here lets those commands live in their own modules without importing each other (or the
``lowlux`` command, :mod:`lowlux.cli`, which only dispatches). Light on purpose: the client imports
this on every darktable poll, so heavy modules are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
"""A file failed (or was cancelled); the others were restored."""
EXIT_USAGE = 2
"""A bad option or configuration, or a request the worker refused."""
EXIT_UNAVAILABLE = 3
"""No worker answers."""
EXIT_INTERRUPTED = 130


def brightness_list(text: str) -> list[float]:
    """argparse type for --bracket: '0.3,0.5,0.7' -> [0.3, 0.5, 0.7]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("empty bracket")
    return values


def brightness(text: str) -> float:
    """argparse type for a single brightness whose range the worker checks."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def positive_count(text: str) -> int:
    """argparse type for a count of at least one (threads, files)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--weights", type=Path, help="weights file (.safetensors, or the authors' .pt); default: shipped weights")
    g.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto (default): bfloat16 where the weights were measured to meet lowlux's accuracy rule "
                        "on this CPU's bf16 units, else float32; float32: the exact path; bfloat16: faster on CPUs "
                        "with bf16 instructions; float16: CUDA only")
    g.add_argument("--concurrent", action="store_true", help="run the three encoders concurrently")
    g.add_argument("--threads", type=int, help="CPU threads for the net (default: one per core)")
    g.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"],
                   help="how the net runs (default auto: the fastest installed for the device and dtype)")
    g.add_argument("--tile", type=int, help="restore in tiles of at most N x N pixels (0: never; default: "
                   "automatic, when the frame would exceed the engine's memory budget)")
    g.add_argument("--no-anchor", dest="anchor", action="store_false",
                   help="linear weights: give the net's output alone, without anchoring its local colour to the "
                        "raw's own means (see README: colour anchoring)")
    g.add_argument("--no-chroma-smoothing", dest="chroma", action="store_false",
                   help="linear weights: keep the net's pixel-scale colour noise instead of smoothing it "
                        "(see README: fine smoothing)")
    g.add_argument("--luma-smoothing", dest="luma", action="store_true",
                   help="linear weights: also smooth the brightness of flat areas gently (calmer, at some cost in "
                        "fine texture; see README: fine smoothing)")


def add_enhance_options(p: argparse.ArgumentParser) -> None:
    from .amplifier import DEFAULT_BRIGHTNESS, DEFAULT_VARIANT, VARIANTS

    g = p.add_argument_group("exposure and output")
    g.add_argument("--brightness", "-m", type=float, default=DEFAULT_BRIGHTNESS,
                   help=f"amplifier brightness m in 0.1-0.9 (default {DEFAULT_BRIGHTNESS})")
    g.add_argument("--bracket", type=brightness_list, metavar="M1,M2,...",
                   help="several brightness values from one decode, one TIFF each (e.g. 0.3,0.5,0.7)")
    g.add_argument("--amplification", "-a", type=float,
                   help="fixed amplification factor instead of the amplifier's estimate")
    g.add_argument("--variant", choices=VARIANTS, default=DEFAULT_VARIANT,
                   help=f"amplifier constants (default {DEFAULT_VARIANT}; see README)")
    g.add_argument("--out-dir", "-o", type=Path, help="folder for the TIFFs (default: next to each raw)")
    g.add_argument("--overwrite", action="store_true", help="replace existing TIFFs")
    g.add_argument("--compress", action="store_true", help="deflate-compress the outputs (lossless; smaller, slower)")
    g.add_argument("--format", "--output-format", dest="format", choices=("tiff", "dng"), default="tiff",
                   help="tiff: 16-bit sRGB (default); dng: scene-referred linear DNG for darktable's scene-referred "
                        "workflow (camera-native linear RGB, the raw's colour matrices; needs lowlux's linear weights)")


def enhance_options_from_args(args: argparse.Namespace) -> Any:
    """The ``EnhanceOptions`` of ``add_enhance_options``' flags; a value out of range raises ``ValueError``."""
    from .pipeline import EnhanceOptions

    return EnhanceOptions(
        brightness=tuple(args.bracket) if args.bracket else (args.brightness,),
        amplification=args.amplification,
        variant=args.variant,
        out_dir=args.out_dir,
        overwrite=args.overwrite,
        compression="deflate" if args.compress else "none",
        format=args.format,
    )


def engine_config_from_args(args: argparse.Namespace) -> Any:
    """The ``EngineConfig`` of ``add_engine_arguments``' flags."""
    from .engine import EngineConfig

    return EngineConfig(weights=args.weights, device=args.device, dtype=args.dtype,
                        concurrent=args.concurrent, threads=args.threads,
                        backend=getattr(args, "backend", "auto"), tile=getattr(args, "tile", None),
                        anchor=getattr(args, "anchor", True), chroma=getattr(args, "chroma", True),
                        luma=getattr(args, "luma", False))


def summary_line(total: int, failed: int, written: int | None = None) -> str:
    """``3 of 4 file(s) restored, 6 output(s) written, 1 failed``, the last line of a batch on stderr."""
    return (f"{total - failed} of {total} file(s) restored"
            + (f", {written} output(s) written" if written is not None else "")
            + (f", {failed} failed" if failed else ""))
