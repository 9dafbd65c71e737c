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
