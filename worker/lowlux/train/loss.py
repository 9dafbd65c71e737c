"""The training loss of the paper (Sec. 3.1): 0.8 * L1 + 0.2 * (1 - MS-SSIM).

MS-SSIM comes from pytorch-msssim with its defaults (11-tap Gaussian window, sigma 1.5, the five
scale weights of Wang et al.). Five scales need the smaller crop side to exceed
(11 - 1) * 2^4 = 160 px; the default 256 px crop fits. Smaller crops (tests, quick runs) use as
many of the finest scales as fit, with their weights renormalised; the count is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
COLOUR_CELL = 8
"""Side of the cells the low-frequency colour term compares (px)."""
WINDOW = 11


def msssim_levels(side: int, window: int = WINDOW) -> int:
    """How many MS-SSIM scales fit a crop of ``side`` px (at least 1)."""
    levels = len(MSSSIM_WEIGHTS)
    while levels > 1 and side <= (window - 1) * 2 ** (levels - 1):
        levels -= 1
    return levels


def fewer_scales_msssim(x: Tensor, y: Tensor, levels: int) -> Tensor:
    """MS-SSIM over the ``levels`` finest scales, weights renormalised (pytorch-msssim's algorithm;
    its ``ms_ssim`` insists on all five scales)."""
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim
    from torch.nn import functional as F

    weights = torch.tensor(MSSSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    win = _fspecial_gauss_1d(WINDOW, 1.5).repeat([x.shape[1], 1, 1, 1]).to(x)
    factors = []
    for i in range(levels):
        ssim_c, cs = _ssim(x, y, data_range=1.0, win=win, size_average=False, K=(0.01, 0.03))
        if i < levels - 1:
            factors.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stacked = torch.stack(factors + [torch.relu(ssim_c)], dim=0)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean()


@dataclass
class RestorationLoss:
    """The paper's loss. Linear nets (``render``) are scored on the picture a user sees: each example's
    output and target go through that example's colour stage and lowlux's tone curve
    (:func:`lowlux.colour.render_srgb_batch`), so an error in the shadows counts as the eye sees it and
    an error the camera's matrix amplifies (up to 3x for a strongly saturating sensor) counts as much
    as it shows.

    ``camera_weight`` adds an L1 on the tone curve in camera RGB: the render clips out-of-gamut
    colours, and there the camera-space term still says which way to go.

    ``colour_weight`` adds an L1 between the two images averaged over :data:`COLOUR_CELL`-px cells: a
    restoration that shrinks chroma towards grey (a denoiser's easy answer under heavy noise) loses
    little per pixel but shifts every flat area's colour, and that shift is what ΔE00 on a colour chart
    sees."""

    l1_weight: float = 0.8
    msssim_weight: float = 0.2
    render: bool = False
    camera_weight: float = 0.2
    colour_weight: float = 0.0

    def __post_init__(self) -> None:
        self._levels_logged: int | None = None

    def msssim(self, out: Tensor, target: Tensor) -> Tensor:
        from pytorch_msssim import ms_ssim

        levels = msssim_levels(min(out.shape[-2:]))
        if levels != self._levels_logged:
            log.info("MS-SSIM on %d scale(s) for %dx%d crops", levels, *out.shape[-2:])
            self._levels_logged = levels
        if min(out.shape[-2:]) < WINDOW:
            raise ValueError(f"crops of {tuple(out.shape[-2:])} are smaller than the SSIM window {WINDOW}")
        if levels == len(MSSSIM_WEIGHTS):
            return ms_ssim(out, target, data_range=1.0, size_average=True)
        return fewer_scales_msssim(out, target, levels)

    def __call__(self, out: Tensor, target: Tensor, cam_to_rgb: Tensor | None = None,
                 gain: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        parts: dict[str, float] = {}
        extra = out.new_zeros(())
        if self.render:
            from .. import curves
            from ..colour import render_srgb_batch

            if cam_to_rgb is None or gain is None:
                raise ValueError("a rendered loss needs each example's colour matrix and gain")
            if self.camera_weight:
                camera = (curves.encode(out) - curves.encode(target)).abs().mean()
                extra = self.camera_weight * camera
                parts["camera_l1"] = float(camera.detach())
            out, target = render_srgb_batch(out, cam_to_rgb, gain), render_srgb_batch(target, cam_to_rgb, gain)
        l1 = (out - target).abs().mean()
        total = self.l1_weight * l1 + extra
        parts["l1"] = float(l1.detach())
        if self.colour_weight:
            from torch.nn import functional as F

            cell = min(COLOUR_CELL, *out.shape[-2:])
            colour = (F.avg_pool2d(out, cell) - F.avg_pool2d(target, cell)).abs().mean()
            total = total + self.colour_weight * colour
            parts["colour_l1"] = float(colour.detach())
        if self.msssim_weight:
            ms = self.msssim(out, target)
            total = total + self.msssim_weight * (1 - ms)
            parts["msssim"] = float(ms.detach())
        return total, parts
