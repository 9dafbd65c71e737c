"""Choosing colour anchoring's constants (:mod:`lowlux.anchor`) on training crops.

``python -m lowlux.train.anchor_tuning --weights W`` draws crops exactly as training does (the
training split of the shared raws and photographs, the noise bank, GT-ratio amplification; a seed
training never uses), restores them with ``W`` and scores every setting of a small grid: PSNR, the
mean error of 8-px cell means (the low-frequency colour error) and the chroma-noise figure, all on the
rendered picture (the colour stage and tone curve, as the loss sees it). The evaluation set is never read.

The rule: the best PSNR among the settings whose reach fits the tiler's halo (:func:`lowlux.anchor.reach_px`)
and that raise the chroma-noise figure (:func:`.colorimetry.chroma_noise`) by at most 1 %: a mean
trusted too early adds low-frequency colour mottling of its own, which PSNR barely sees. With the
shipped weights, 256 crops of 256 px: the net alone 24.930 dB, cell error 8.370, chroma noise 4.580;
chosen, block 4, radius 2, tolerance 0.02, margin 2: 25.043 dB, 8.259, 4.607 (+0.6 %). That grid (``GRID``)
was scored with a 2x2 mean of the net's output as the guide; the guide sampled like the sensor
(:func:`lowlux.anchor.sampled_cells`, fewer colour fringes at edges) then scored 25.044 dB, 8.257, 4.608 for
the same setting and made the same choice among radius 1-2 and tolerance 0.01-0.04. The best PSNR
overall, per 2x2 cell, radius 2, tolerance 0.06, margin 2, scored 25.137 dB (cell error 8.197) at four
times the work; per block, tolerance 0.04 gave 25.088-25.101 dB but chroma noise 4.67-4.71 (+2-3 %);
radius 3 does not fit the halo. Pulling the flat-window slope towards 1 or the ratio of the means
instead of 0, or a regulariser of 1e-4, cost 0.09-0.10 dB.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import anchor
from ..colour import render_srgb_batch
from ..model import LINEAR_CAMERA_WB
from ..weights import load_model
from .cache import DEFAULT_CACHE_DIR
from .cli import SHARED_DATA, _default_sources
from .colorimetry import chroma_noise
from .data import PairDataset, SourceSpec, open_sources
from .loss import COLOUR_CELL
from .noise import NoiseBank, darktable_profiles_path

log = logging.getLogger(__name__)

SEED = 9_999
"""Crops' seed: training runs use others (their default is 0)."""
GRID = {"block": (4,), "radius": (1, 2, 3), "tolerance": (0.005, 0.01, 0.02, 0.04), "black_margin": (2.0, 4.0, 8.0)}


def crops(count: int, size: int, cache_dir: Path = DEFAULT_CACHE_DIR) -> list[tuple]:
    specs = [SourceSpec.parse(s) for s in _default_sources()]
    bank = NoiseBank.load(SHARED_DATA / "noise" / "eld", darktable_profiles_path())
    sources, weights = open_sources(specs, cache_dir, LINEAR_CAMERA_WB, bank)
    data = PairDataset(sources, weights, size, SEED)
    return [data[i] for i in range(count)]


def scores(out: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor,
           gain: torch.Tensor) -> tuple[float, float, float]:
    """(PSNR dB, mean |cell mean error| x 255, chroma noise) of one rendered crop."""
    a = render_srgb_batch(out[None], matrix[None], gain[None])
    b = render_srgb_batch(target[None], matrix[None], gain[None])
    psnr = float(-10 * torch.log10(F.mse_loss(a, b)))
    cells = (F.avg_pool2d(a, COLOUR_CELL) - F.avg_pool2d(b, COLOUR_CELL)).abs().mean()
    chroma = chroma_noise(a[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy())
    return psnr, float(cells) * 255, chroma


def tune(weights: Path, count: int, size: int) -> list[dict]:
    model = load_model(weights).eval()
    if getattr(model, "output_space", None) != LINEAR_CAMERA_WB:
        raise SystemExit(f"{weights}: anchoring is for linear weights")
    pairs = crops(count, size)
    with torch.inference_mode():
        outputs = [model(x[None]).permute(0, 2, 3, 1) for x, *_ in pairs]
    settings = [None] + [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    rows = []
    for setting in settings:
        values = []
        with torch.inference_mode():
            for (x, target, matrix, gain), out in zip(pairs, outputs):
                y = out if setting is None else anchor.anchor(out, x[None], **setting)
                values.append(scores(y[0].permute(2, 0, 1), target, matrix, gain))
        psnr, colour, chroma = (sum(v[k] for v in values) / len(values) for k in range(3))
        rows.append({"setting": setting or "net alone", "psnr": round(psnr, 3), "cell_error": round(colour, 3),
                     "chroma_noise": round(chroma, 3)})
        log.info("%s: PSNR %.3f dB, cell error %.3f, chroma noise %.3f", setting or "net alone", psnr, colour, chroma)
    return rows


def tuning_main(description: str, tune_fn: Callable[[Path, int, int], list[dict]], count: int,
                line: Callable[[dict], str], argv: list[str] | None = None) -> None:
    """The command line of a tuning on training crops: score its settings, print a line for each, and
    write the table as JSON on request."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--count", type=int, default=count)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = tune_fn(args.weights, args.count, args.size)
    for r in rows:
        print(line(r))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


def main(argv: list[str] | None = None) -> None:
    def line(r: dict) -> str:
        return f"{r['psnr']:7.3f} dB  {r['cell_error']:6.3f}  {r['chroma_noise']:6.3f}  {r['setting']}"

    tuning_main(__doc__.split("\n\n")[0], tune, 96, line, argv)


if __name__ == "__main__":
    main()
