"""``lowlux demo``: a first run for someone with no dark raw at hand.

A public-domain photograph that ships with scikit-image (the astronaut) is turned into the raw a
Sony α7S II at high ISO would record 100 times too dark (unprocessing + the sensor noise model used
for training), written as a DNG, and restored like any raw file (the amplifier picks the exposure). The
side-by-side PNG shows the dark input brightened naively, the restoration as written, the restoration
at the true exposure (the demo knows how dark it made the raw), and the photograph: those last two
compare like for like, as the amplifier's brightness is its own choice, not the photograph's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .options import EXIT_OK, EXIT_USAGE, add_engine_arguments, engine_config_from_args

log = logging.getLogger(__name__)

DARK_NAME = "demo_dark.dng"
PANEL_NAME = "demo_side_by_side.png"


def load_photo() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit("lowlux demo needs scikit-image for its sample photograph: pip install scikit-image") from exc
    return data.astronaut()


def naive_brightening(dng: Path, amplification: float) -> np.ndarray:
    """What plain amplification gives: LibRaw's rendering of the dark raw, multiplied up (8-bit)."""
    import rawpy

    with rawpy.imread(str(dng)) as raw:
        return raw.postprocess(use_camera_wb=True, no_auto_bright=True, bright=float(amplification), output_bps=8)


def side_by_side(panels: list[np.ndarray], labels: list[str], path: Path) -> Path:
    from PIL import Image, ImageDraw

    h = min(p.shape[0] for p in panels)
    strip = np.concatenate([p[:h] for p in panels], axis=1)
    img = Image.fromarray(strip)
    draw = ImageDraw.Draw(img)
    x = 0
    for panel, label in zip(panels, labels):
        draw.rectangle([x + 6, 6, x + 12 + 7 * len(label), 24], fill=(0, 0, 0))
        draw.text((x + 10, 9), label, fill=(255, 255, 255))
        x += panel.shape[1]
    img.save(path)
    return path


def run_demo(out_dir: Path, ratio: float, seed: int, engine_config: Any) -> list[Path]:
    from .engine import Engine
    from .pipeline import EnhanceOptions, decode, encode, infer
    from .train.noise import typical_params
    from .train.synth import make_dark_raw, write_dark_dng

    out_dir.mkdir(parents=True, exist_ok=True)
    photo = load_photo()
    # A typical high-ISO night state rather than a random one, so every demo shows real noise.
    dark = make_dark_raw(photo, rng=np.random.default_rng(seed), params=typical_params(ratio))
    dng = write_dark_dng(out_dir / DARK_NAME, dark)
    engine = Engine(engine_config)
    options = EnhanceOptions(out_dir=out_dir, overwrite=True)
    decoded = decode(dng, options)
    images = infer(engine, decoded)
    (tiff,) = encode(decoded, images, options)
    amp = decoded.amplifications[0]
    restored = (images[0] >> 8).astype(np.uint8)
    exact = decode(dng, EnhanceOptions(out_dir=out_dir, overwrite=True, amplification=ratio))
    at_ratio = (infer(engine, exact)[0] >> 8).astype(np.uint8)
    panel = side_by_side([naive_brightening(dng, ratio), restored, at_ratio,
                          photo[: restored.shape[0], : restored.shape[1]]],
                         [f"dark input x{ratio:.0f}", f"lowlux (amplifier: x{amp:.0f})",
                          f"lowlux x{ratio:.0f} (true exposure)", "original photograph"], out_dir / PANEL_NAME)
    log.info("demo: ratio %.0f, estimated amplification %.1f", ratio, amp)
    return [dng, tiff, panel]


def cmd_demo(args: argparse.Namespace) -> int:
    from .errors import LowluxError

    try:
        paths = run_demo(args.out_dir, args.ratio, args.seed, engine_config_from_args(args))
    except LowluxError as exc:
        print(f"lowlux demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for p in paths:
        print(p)
    return EXIT_OK


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="make a dark raw from a sample photo and restore it",
                       description="Writes demo_dark.dng, demo_dark_lowlux.tif and demo_side_by_side.png.")
    p.add_argument("--out-dir", "-o", type=Path, default=Path("lowlux-demo"), help="default: ./lowlux-demo")
    p.add_argument("--ratio", type=float, default=100.0, help="how many times too dark (default 100)")
    p.add_argument("--seed", type=int, default=0)
    add_engine_arguments(p)
    p.set_defaults(func=cmd_demo)
