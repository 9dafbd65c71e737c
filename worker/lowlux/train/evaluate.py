"""``lowlux eval``: our weights vs the authors' vs a classical pipeline, on a fixed evaluation set.

The evaluation set (see :mod:`.split` for what training never sees):

* the Canon 550D colour-chart raw, whole (1152 x 1728 after RGGB/32 alignment);
* two 512 x 512 crops from the held-out bottom band of every other raw;
* held-out photographs (every 6th of each folder), centre 480 x 480, unprocessed with the Sony
  α7S II colour matrix.

Each item is made dark once with a fixed seed: exposure ratio cycling through 100, 200, 300 and the
noise model of :mod:`.noise`. Targets are rendered the SID way (LibRaw for raws, its equivalent
:func:`~.unprocess.process` for photographs).

Every method is scored with two amplifications: the GT exposure ratio (paper Eq. 3) and our
amplifier (Eq. 5, m = 0.5). Scores: PSNR, SSIM and the paper's GT-GC (:mod:`.metrics`).

Methods: ``ours`` (any lowlux weights), ``authors`` (their released checkpoint, evaluation only)
and ``baseline``: the amplified raw written as a DNG, rendered by LibRaw exactly like the targets,
then denoised with OpenCV's non-local means (fastNlMeansDenoisingColored), its strength set from
the noise level estimated on the rendered image (:func:`noise_sigma`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..colour import render_srgb, white_balance_mosaic
from ..model import LINEAR_CAMERA_WB, SRGB
from . import noise
from .cache import LIBRAW_SID_RENDER
from .evalset import MODES, EvalItem, Restorer
from .metrics import gt_gc, psnr, ssim

log = logging.getLogger(__name__)

NLM_STRENGTH = 2.0
"""fastNlMeans h = NLM_STRENGTH x estimated noise sigma (8-bit units). Chosen on training crops (never
the evaluation set): mean PSNR 18.8 / 21.9 / 23.8 / 24.4 / 24.3 / 24.1 dB for 0.5 / 1 / 1.5 / 2 / 2.5 / 3."""


# ---------------------------------------------------------------------------------------------
# Methods




def net_input(item: EvalItem, space: str) -> np.ndarray:
    """The item's dark mosaic as a net of ``space`` reads it (white-balanced for the linear nets)."""
    return white_balance_mosaic(item.dark, item.colour.wb) if space == LINEAR_CAMERA_WB else item.dark


def as_srgb(out: np.ndarray, item: EvalItem, space: str) -> np.ndarray:
    """A net's output rendered to sRGB like the targets: the colour stage with the item's own colour."""
    return render_srgb(out, item.colour) if space == LINEAR_CAMERA_WB else out


def net_restorer(weights: Path, threads: int | None = None, anchor: bool = True, chroma: bool = True,
                 luma: bool = False) -> Restorer:
    """A restorer running lowlux's own inference engine with the given weights (CPU, float32: scores
    are of the weights, not of a faster numeric path), colour anchoring and fine smoothing as the
    engine does them by default (``luma``: brightness smoothing too, opt-in as in the engine)."""
    from ..engine import Engine, EngineConfig

    engine = Engine(EngineConfig(weights=weights, device="cpu", dtype="float32", threads=threads, anchor=anchor,
                                 chroma=chroma, luma=luma))
    space = engine.model.output_space
    return lambda item, amp: as_srgb(engine.restore(net_input(item, space), amp), item, space)


def model_restorer(model) -> Restorer:
    """A restorer for an in-memory model (training's periodic evaluation)."""
    import torch

    space = getattr(model, "output_space", SRGB)

    def restore(item: EvalItem, amp: float) -> np.ndarray:
        device = next(model.parameters()).device  # training may run on a GPU
        x = torch.from_numpy(net_input(item, space))[None, None].to(device).mul(float(amp)).clamp_(0, 1)
        with torch.no_grad():
            return as_srgb(model(x)[0].permute(1, 2, 0).cpu().numpy(), item, space)

    return restore


def libraw_render(item: EvalItem, amp: float) -> np.ndarray:
    """The amplified dark raw rendered by LibRaw the way the targets were (float32 sRGB)."""
    import rawpy

    from .synth import DarkRaw, write_dark_dng

    amplified = np.clip(item.dark * np.float32(amp), 0, 1)
    cfa = np.round(noise.SONY_BLACK + amplified * (noise.SONY_WHITE - noise.SONY_BLACK)).astype(np.uint16)
    raw = DarkRaw(cfa, noise.SONY_BLACK, noise.SONY_WHITE, item.colour.wb, item.colour.xyz_to_cam, item.ratio / amp)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dark_dng(Path(tmp) / "amplified.dng", raw)
        with rawpy.imread(str(path)) as lr:
            return lr.postprocess(**LIBRAW_SID_RENDER).astype(np.float32) / 65535


def noise_sigma(image: np.ndarray) -> float:
    """Donoho's robust noise estimate: median |finest diagonal Haar detail| / 0.6745, mean over channels."""
    x = np.asarray(image, np.float64)
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    detail = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    return float(np.mean(np.median(np.abs(detail.reshape(-1, x.shape[-1])), axis=0)) / 0.6745)


def classical_restore(item: EvalItem, amp: float, strength: float = NLM_STRENGTH) -> np.ndarray:
    """LibRaw rendering + OpenCV non-local means with h from the estimated noise level."""
    import cv2

    rendered = libraw_render(item, amp)
    img8 = np.round(rendered * 255).astype(np.uint8)
    sigma = noise_sigma(rendered) * 255
    h = max(1.0, strength * sigma)
    out = cv2.fastNlMeansDenoisingColored(img8, None, h, h, 7, 21)
    return out.astype(np.float32) / 255


# ---------------------------------------------------------------------------------------------
# Scoring


def score(out: np.ndarray, target: np.ndarray, with_gc: bool = True) -> dict[str, float]:
    s = {"psnr": psnr(out, target), "ssim": ssim(out, target)}
    if with_gc:
        s["gtgc_psnr"], s["gtgc_ssim"] = gt_gc(out, target)
    return s


def quick_scores(model, items: Sequence[EvalItem], charts: Sequence = ()) -> dict[str, float]:
    """Mean PSNR/SSIM of an in-memory model, GT ratio only (the training curve), and with ``charts``
    (:mod:`.chart`) the mean ColorChecker ΔE00 over the cameras."""
    restore = model_restorer(model)
    scores = [score(restore(it, it.ratio), it.target, with_gc=False) for it in items]
    out = {k: float(np.mean([s[k] for s in scores])) for k in ("psnr", "ssim")}
    if charts:
        out["chart_de00"] = float(np.mean([ch.delta_e(restore(ch, ch.ratio)).mean() for ch in charts]))
    return out


def evaluate(items: Sequence[EvalItem], methods: dict[str, Restorer], modes: Sequence[str] = MODES,
             with_gc: bool = True) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Scores of every method x mode x item, their means, and the GT-ratio outputs (for the sheet)."""
    results: dict = {"items": [{"name": it.name, "ratio": it.ratio, "shape": list(it.target.shape[:2])}
                               for it in items], "methods": {}}
    outputs: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    for name, restore in methods.items():
        results["methods"][name] = {}
        for mode in modes:
            t = time.time()
            per_item = {}
            chroma = {}
            for it in items:
                amp = it.amplification(mode)
                out = restore(it, amp)
                per_item[it.name] = {"amplification": amp, **score(out, it.target, with_gc)}
                chroma[it.name] = chroma_noise(out, it.target)
                if mode == "gt":
                    outputs[name][it.name] = out
            keys = [k for k in next(iter(per_item.values())) if k != "amplification"]
            mean = {k: float(np.mean([v[k] for v in per_item.values()])) for k in keys}
            results["methods"][name][mode] = {"mean": mean, "per_item": per_item, "seconds": time.time() - t}
            results["methods"][name][mode]["chroma_noise"] = float(np.mean(list(chroma.values())))
            results["methods"][name][mode]["chroma_noise_per_item"] = chroma
            log.info("%s / %s: PSNR %.2f dB, SSIM %.4f", name, mode, mean["psnr"], mean["ssim"])
    return results, outputs


def markdown_table(results: dict) -> str:
    lines = ["| method | amplification | PSNR (dB) | SSIM | GT-GC PSNR (dB) | GT-GC SSIM |",
             "|---|---|---|---|---|---|"]
    for name, by_mode in results["methods"].items():
        for mode, r in by_mode.items():
            m = r["mean"]
            label = "GT exposure ratio" if mode == "gt" else "amplifier (m = 0.5)"
            gc = (f"{m['gtgc_psnr']:.2f} | {m['gtgc_ssim']:.4f}") if "gtgc_psnr" in m else "- | -"
            lines.append(f"| {name} | {label} | {m['psnr']:.2f} | {m['ssim']:.4f} | {gc} |")
    return "\n".join(lines) + "\n"


def _display_input(item: EvalItem, gain: float = 20.0) -> np.ndarray:
    """The dark mosaic x gain as a quick RGB (half resolution, nearest upsampled): no restoration."""
    d = np.clip(item.dark * gain, 0, 1)
    rgb = np.stack([d[0::2, 0::2], (d[0::2, 1::2] + d[1::2, 0::2]) / 2, d[1::2, 1::2]], axis=-1)
    return rgb.repeat(2, axis=0).repeat(2, axis=1)


def contact_sheet(path: Path, items: Sequence[EvalItem], outputs: dict[str, dict[str, np.ndarray]],
                  tile_height: int = 192) -> Path:
    """One row per item: input x20, each method's output (GT ratio), target."""
    from PIL import Image, ImageDraw

    columns = ["input x20"] + list(outputs) + ["target"]
    rows = []
    for it in items:
        images = [_display_input(it)] + [outputs[m][it.name] for m in outputs] + [it.target]
        scale = tile_height / it.target.shape[0]
        size = (max(1, round(it.target.shape[1] * scale)), tile_height)
        tiles = [Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
                 for im in images]
        rows.append(tiles)
    width = max(sum(t.width for t in r) for r in rows) + 4 * len(columns)
    header = 20
    sheet = Image.new("RGB", (width, header + sum(r[0].height + 4 for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    y = header
    for it, tiles in zip(items, rows):
        x = 0
        for col, tile in zip(columns, tiles):
            sheet.paste(tile, (x, y))
            if y == header:
                draw.text((x + 4, 4), col, fill="black")
            x += tile.width + 4
        draw.text((4, y + 4), f"{it.name} x{it.ratio:g}", fill="yellow")
        y += tiles[0].height + 4
    sheet.save(path)
    return path


NOISE_NAMES = {"sid": "the SID camera's noise", "eld": "the ELD cameras' noise",
               "darktable": "noise from darktable's profiles"}
"""How eval.md names whose noise darkened the images (``lowlux eval --noise``)."""


def run_eval(items: Sequence[EvalItem], weights: Path | None, authors: Path | None, out_dir: Path,
             baseline: bool = True, threads: int | None = None, with_gc: bool = True,
             charts: Sequence | None = None, anchor: bool = True, noise: str = "sid",
             chroma: bool = True, luma: bool = False) -> dict:
    """Evaluate the methods available, write eval.json, eval.md and contact_sheet.png in ``out_dir``
    (``noise``: whose noise darkened the items, recorded with the scores)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    methods: dict[str, Restorer] = {}
    if baseline:
        methods["baseline"] = classical_restore
    if weights is not None:
        methods["ours"] = net_restorer(weights, threads, anchor, chroma, luma)
    if authors is not None:
        methods["authors"] = net_restorer(authors, threads)
    if not methods:
        raise ValueError("nothing to evaluate: no weights, no authors' checkpoint and no baseline")
    results, outputs = evaluate(items, methods, with_gc=with_gc)
    results["weights"] = {"ours": str(weights) if weights else None, "authors": str(authors) if authors else None}
    results["anchor"] = anchor
    results["chroma_smoothing"] = chroma
    results["luma_smoothing"] = luma
    results["noise"] = noise
    results["baseline"] = f"LibRaw render + OpenCV fastNlMeansDenoisingColored, h = {NLM_STRENGTH} x estimated sigma"
    if charts:
        results["chart"] = chart_scores(methods, MODES, charts)
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2))
    noise_line = "" if noise == "sid" else f"Images darkened with {NOISE_NAMES[noise]}.\n\n"
    (out_dir / "eval.md").write_text(noise_line + markdown_table(results)
                                     + ("\n" + chart_table(results) if charts else ""))
    contact_sheet(out_dir / "contact_sheet.png", items, outputs)
    return results


# ---------------------------------------------------------------------------------------------
# The virtual-camera ColorChecker and the chroma-noise figure (:mod:`.chart`)


def chroma_noise(out: np.ndarray, target: np.ndarray) -> float:
    """Low-frequency chroma noise of an output in the target's flat regions (:func:`.chart.chroma_noise`)."""
    from .chart import chroma_noise as measure

    return measure(out, target)


def chart_scores(methods: dict[str, Restorer], modes: Sequence[str] = MODES, cameras: Sequence | None = None,
                 **options) -> dict:
    """ColorChecker ΔE00 per method x mode x camera, with the noise floor (:func:`.chart.chart_scores`).

    ``cameras``: camera names, :class:`~.chart.ChartCamera` or ready :class:`~.chart.Chart` items
    (default: every available one)."""
    from .chart import chart_scores as score_charts

    return score_charts(methods, modes, cameras, **options)


def chart_table(results: dict) -> str:
    """The second markdown table: ColorChecker ΔE00 per camera, and chroma noise."""
    from .chart import chart_table as table

    return table(results)
