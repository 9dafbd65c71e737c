"""Choosing fine smoothing's constants (:mod:`lowlux.smoothing`) on training crops.

``python -m lowlux.train.smoothing_tuning --weights W`` draws the crops colour anchoring was tuned on
(:func:`.anchor_tuning.crops`: the training split, the noise bank, a seed training never uses),
restores them with ``W`` and colour anchoring as the engine runs it, and scores settings on the
rendered picture: PSNR, SSIM and the chroma-noise figure. The evaluation set is never read.

Two rules, one per part. Chroma first (brightness left alone): the best SSIM among the settings whose
reach, added to anchoring's and the net's own, fits the tiler's halo; colour noise is what the eye
forgives least and fidelity barely moves. Then brightness, with that chroma setting: the best PSNR,
because smoothing brightness trades texture for calm and PSNR is the score that counts the texture.
The numbers are in README, "Fine smoothing".
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from .. import anchor, smoothing
from ..colour import render_srgb_batch
from ..model import LINEAR_CAMERA_WB
from ..tiling import HALO, LOCAL_REACH
from ..weights import load_model
from .anchor_tuning import crops, tuning_main
from .colorimetry import chroma_noise
from .metrics import psnr, ssim

log = logging.getLogger(__name__)

CHROMA_GRID = {"radius": (1, 2, 3), "chroma_eps": (1e-4, 1e-3, 1e-2)}
LUMA_GRID = (1e-4, 3e-4, 1e-3, 3e-3)


def fits_the_halo(radius: int) -> bool:
    """Whether tiles still equal the whole frame with this radius (see :mod:`lowlux.tiling`)."""
    return anchor.reach_px() + smoothing.reach_px(radius) + LOCAL_REACH <= HALO


def scores(out: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor,
           gain: torch.Tensor) -> tuple[float, float, float]:
    """(PSNR dB, SSIM, chroma noise) of one crop (3 x H x W linear), rendered as the loss sees it."""
    a = render_srgb_batch(out[None], matrix[None], gain[None])[0].permute(1, 2, 0).numpy()
    b = render_srgb_batch(target[None], matrix[None], gain[None])[0].permute(1, 2, 0).numpy()
    return psnr(a, b), ssim(a, b), chroma_noise(a, b)


def _row(pairs: list, outputs: list, setting: dict | None) -> dict:
    """One setting's mean scores (None: anchored alone)."""
    with torch.inference_mode():
        values = [scores((out if setting is None else smoothing.smooth(out, **setting))[0].permute(2, 0, 1),
                         target, matrix, gain)
                  for (x, target, matrix, gain), out in zip(pairs, outputs)]
    p, s, c = (sum(v[k] for v in values) / len(values) for k in range(3))
    row = {"setting": setting or "anchored alone", "psnr": round(p, 3), "ssim": round(s, 4),
           "chroma_noise": round(c, 3), "fits_halo": setting is None or fits_the_halo(setting["radius"])}
    log.info("%s: PSNR %.3f dB, SSIM %.4f, chroma noise %.3f", row["setting"], p, s, c)
    return row


def tune(weights: Path, count: int, size: int) -> list[dict]:
    """Every row scored, the chosen chroma and brightness settings marked ``chosen``."""
    model = load_model(weights).eval()
    if getattr(model, "output_space", None) != LINEAR_CAMERA_WB:
        raise SystemExit(f"{weights}: fine smoothing is for linear weights")
    pairs = crops(count, size)
    with torch.inference_mode():
        outputs = [anchor.anchor(model(x[None]).permute(0, 2, 3, 1), x[None]) for x, *_ in pairs]
    rows = [_row(pairs, outputs, None)]
    chroma_rows = [_row(pairs, outputs, dict(zip(CHROMA_GRID, v), luma_eps=None))
                   for v in itertools.product(*CHROMA_GRID.values())]
    best_chroma = max((r for r in chroma_rows if r["fits_halo"]), key=lambda r: r["ssim"])
    best_chroma["chosen"] = "chroma"
    luma_rows = [_row(pairs, outputs, dict(best_chroma["setting"], luma_eps=e)) for e in LUMA_GRID]
    best_luma = max(luma_rows + [best_chroma], key=lambda r: r["psnr"])
    best_luma["chosen"] = "chroma and brightness" if best_luma is best_chroma else "brightness"
    return rows + chroma_rows + luma_rows


def _line(r: dict) -> str:
    note = ("" if r["fits_halo"] else "  (reach beyond the halo)") + (f"  <- {r['chosen']}" if "chosen" in r else "")
    return f"{r['psnr']:7.3f} dB  {r['ssim']:.4f}  {r['chroma_noise']:6.3f}  {r['setting']}{note}"


def main(argv: list[str] | None = None) -> None:
    tuning_main(__doc__.split("\n\n")[0], tune, 64, _line, argv)


if __name__ == "__main__":
    main()
