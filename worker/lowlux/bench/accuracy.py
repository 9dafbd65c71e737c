"""How far a configuration's output is from the eager fp32 net's, in ``lowlux bench``.

Two figures per row: on the timing input against the reference row's saved output
(:func:`diff_to_saved`), and on a photograph against the engine's own net run eagerly
(:func:`photo_diff`). The timing input is noise, which flatters reduced precision; hence the
second figure.
"""

from __future__ import annotations

import copy


def photo_input():
    """A photograph as the net sees it (scikit-image's astronaut, 512 x 512): roughly linear light,
    camera-like channel gains, RGGB mosaic in [0, 1]. None without scikit-image.

    How far bf16 deviates here, on real raws and on the noise input: docs/benchmarks.md,
    "Why the defaults are what they are".
    """
    import numpy as np

    try:
        from skimage import data
    except ImportError:
        return None
    linear = (data.astronaut().astype(np.float32) / 255) ** 2.2 * np.array([0.5, 1.0, 0.6], np.float32)
    mosaic = linear[..., 1].copy()
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    return mosaic


def photo_diff(engine) -> float | None:
    """The engine's largest deviation from its own net run eagerly in fp32, on :func:`photo_input`."""
    import torch

    photo = photo_input()
    if photo is None:
        return None
    x = torch.from_numpy(photo)[None, None].to(engine.device)
    # A copy in the default layout: a channels-last backend must not be its own reference.
    model = copy.deepcopy(engine.model).float().to(memory_format=torch.contiguous_format)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        reference = model(x)
    return float((engine.forward(x) - reference).abs().max())


def diff_to_saved(engine, x, saved: str) -> float:
    """The largest deviation of the engine's output on ``x`` from the reference output saved at
    ``saved`` (``.npy``, H x W x 3). Compared piece by piece, memory-mapped, so the comparison
    needs no second full-size image."""
    import numpy as np

    ref = np.load(saved, mmap_mode="r")
    diff = 0.0
    for ys, xs, rgb in engine.pieces(x):
        diff = max(diff, float(np.abs(rgb[0].cpu().numpy() - ref[ys, xs]).max()))
    return diff


# ---------------------------------------------------------------------------------------------
# The accuracy rule: may a faster numeric path be chosen automatically?

RULE = {"psnr_db": 0.05, "ssim": 0.002, "delta_e00": 0.2, "levels_8bit": 2}
"""How much a faster numeric path may change the evaluation set's scores and outputs, against
float32 of the same backend, and still be chosen automatically (docs/benchmarks.md, "Round 2"):
mean PSNR by at most 0.05 dB, mean SSIM by 0.002, the colour chart's mean ΔE00 (worst camera) by
0.2, and no pixel of an 8-bit output (each output rounded to 1/255) by more than 2 levels.
The float outputs' largest difference is reported beside it (``max_diff_255``)."""


def shared_data() -> "Path":
    """The project's shared data folder (a checkout's sibling), as ``lowlux train`` finds it."""
    from pathlib import Path

    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


GROUPS = ("comparable", "new")
"""The evaluation groups the rule is measured on (:func:`lowlux.train.evalset.build_eval_set`): the 12
items every earlier measurement used, and the 24 held out since. The largest pixel difference is a
maximum, so it grows with the pixels looked at; a precision passes only where it passes on both."""


def eval_data(raw_dir=None, clean_dir=None, group: str = "comparable"):
    """``(items, charts, note)``: one group of the project's evaluation set and the colour charts, or
    ``([], [], reason)`` when the data (or the training extras that read it) are not here."""
    from pathlib import Path

    data = shared_data()
    wanted = (Path(raw_dir) if raw_dir else data / "raw", Path(clean_dir) if clean_dir else data / "clean")
    raw_dir, clean_dir = (d if d.is_dir() else None for d in wanted)
    if raw_dir is None and clean_dir is None:
        return [], [], f"skipped: no evaluation data ({wanted[0]} and {wanted[1]} are absent)"
    try:
        from ..train.chart import build_charts
        from ..train.evalset import build_eval_set

        items = build_eval_set(raw_dir, clean_dir, group=group)
        charts = build_charts(raw_dir=raw_dir)
    except ImportError as exc:
        return [], [], f"the evaluation set needs the training extras ({exc})"
    except ValueError as exc:
        return [], [], f"no evaluation set ({exc})"
    return items, charts, f"{len(items)} evaluation items ({group}), {len(charts)} charts"


def restore_all(engine, items, mode: str = "gt") -> list:
    """Each item restored by ``engine`` and rendered to sRGB, as :func:`lowlux.train.evaluate.net_restorer`
    does (the colour stage for the linear nets), amplified by its GT exposure ratio (``gt``) or by the
    amplifier (``amp``, as the pipeline does)."""
    from ..train.evaluate import as_srgb, net_input

    space = engine.model.output_space
    return [as_srgb(engine.restore(net_input(it, space), it.amplification(mode)), it, space) for it in items]


MODES = ("gt", "amp")


def measure_rule(weights, device: str, pairs: list[tuple[str, str]], raw_dir=None, clean_dir=None,
                 groups: tuple[str, ...] = GROUPS) -> dict:
    """In a bench child: the :data:`RULE` figures of each (backend, precision) in ``pairs`` against
    float32 of the same backend, on each of the evaluation ``groups`` with the charts, worst of both
    amplifications.

    ``{"note": ..., "rows": [{"backend", "dtype", "group", "seconds", "figures", "per_mode"}]}``; no rows
    (and the reason in ``note``) without the evaluation data.
    """
    import time

    from ..engine import EngineConfig
    from .engines import make_engine

    rows, notes = [], []
    for group in groups:
        items, charts, note = eval_data(raw_dir, clean_dir, group)
        notes.append(note)
        if not items:
            continue
        every = list(items) + list(charts)
        references: dict[str, dict[str, list]] = {}
        for backend, dtype in pairs:
            if backend not in references:
                engine = make_engine(EngineConfig(weights=weights, device=device, dtype="float32", backend=backend))
                references[backend] = {m: restore_all(engine, every, m) for m in MODES}
                engine.close()
            t0 = time.perf_counter()
            engine = make_engine(EngineConfig(weights=weights, device=device, dtype=dtype, backend=backend))
            outputs = {m: restore_all(engine, every, m) for m in MODES}
            seconds = time.perf_counter() - t0
            runtime = engine.describe()["backend"]
            engine.close()
            per_mode = {m: rule_figures(references[backend][m], outputs[m], items, charts) for m in MODES}
            worst = {k: max(f[k] for f in per_mode.values()) for k in (*RULE, "max_abs_diff")}
            worst["max_diff_255"] = worst["max_abs_diff"] * 255
            worst["passes"] = all(f["passes"] for f in per_mode.values())
            rows.append({"backend": backend, "dtype": dtype, "group": group, "runtime": runtime,
                         "seconds": seconds, "figures": worst, "per_mode": per_mode, "data": note})
    return {"note": "; ".join(dict.fromkeys(notes)), "rows": rows}


def rule_figures(reference: list, outputs: list, items, charts) -> dict:
    """The four figures of :data:`RULE` for ``outputs`` against ``reference`` (both sRGB, one per
    item of ``items`` then one per chart of ``charts``), and the verdict ``passes``."""
    import numpy as np

    from ..train.metrics import psnr, ssim

    n = len(items)
    psnr_ref = [psnr(o, it.target) for o, it in zip(reference[:n], items)]
    psnr_out = [psnr(o, it.target) for o, it in zip(outputs[:n], items)]
    ssim_ref = [ssim(o, it.target) for o, it in zip(reference[:n], items)]
    ssim_out = [ssim(o, it.target) for o, it in zip(outputs[:n], items)]
    de_ref = [float(ch.delta_e(o).mean()) for o, ch in zip(reference[n:], charts)]
    de_out = [float(ch.delta_e(o).mean()) for o, ch in zip(outputs[n:], charts)]

    def levels(a, b):
        return int(np.abs(np.round(np.clip(a, 0, 1) * 255) - np.round(np.clip(b, 0, 1) * 255)).max())

    fig = {
        "psnr_db": abs(float(np.mean(psnr_out)) - float(np.mean(psnr_ref))) if n else None,
        "ssim": abs(float(np.mean(ssim_out)) - float(np.mean(ssim_ref))) if n else None,
        "delta_e00": max((abs(a - b) for a, b in zip(de_out, de_ref)), default=None),
        "levels_8bit": max(levels(a, b) for a, b in zip(outputs, reference)),
        "max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(outputs, reference)),
        "psnr_db_worst_item": max((abs(a - b) for a, b in zip(psnr_out, psnr_ref)), default=None),
        "psnr_ref_db": float(np.mean(psnr_ref)) if n else None,
        "ssim_ref": float(np.mean(ssim_ref)) if n else None,
        "delta_e00_ref": float(np.mean(de_ref)) if de_ref else None,
    }
    fig["max_diff_255"] = fig["max_abs_diff"] * 255  # reported beside it: how close to the bound
    # The pixel bound as the rule states it: on 8-bit outputs (each rounded to 1/255).
    fig["passes"] = all(fig[k] is not None and fig[k] <= limit for k, limit in RULE.items())
    return fig
