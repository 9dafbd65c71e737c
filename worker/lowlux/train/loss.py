"""The training loss of the paper (Sec. 3.1): 0.8 * L1 + 0.2 * (1 - MS-SSIM).

MS-SSIM is pytorch-msssim's with its defaults (11-tap Gaussian window, sigma 1.5, the five scale
weights of Wang et al.), computed here with fewer convolutions (:func:`msssim`; equal to it,
tested). Five scales need the smaller crop side to exceed
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


def _gaussian_window(dtype: torch.dtype, device: torch.device, sigma: float = 1.5) -> Tensor:
    """The 1-D Gaussian of pytorch-msssim's window (:data:`WINDOW` taps, sums to 1)."""
    taps = torch.arange(WINDOW, dtype=torch.float32) - WINDOW // 2  # float32, as the library makes it
    g = torch.exp(-(taps ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _ssim_and_cs(x: Tensor, y: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel SSIM and contrast-structure (B x C), as pytorch-msssim's ``_ssim`` computes them, with
    its five Gaussian-filtered maps stacked into one grouped convolution per direction, channels last:
    on the CPU these filters then take a fifth of the library's time, forward and backward (they had been
    most of a training step)."""
    from torch.nn import functional as F

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    channels = x.shape[1]
    # channels last: oneDNN's depthwise convolutions run two to three times faster so, both ways
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1).contiguous(memory_format=torch.channels_last)
    groups = maps.shape[1]
    maps = F.conv2d(maps, window.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)  # along H, then W
    maps = F.conv2d(maps, window.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    mu1, mu2, xx, yy, xy = maps.split(channels, dim=1)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    cs_map = (2 * (xy - mu1_mu2) + c2) / ((xx - mu1_sq) + (yy - mu2_sq) + c2)
    ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def msssim(x: Tensor, y: Tensor, levels: int = len(MSSSIM_WEIGHTS)) -> Tensor:
    """MS-SSIM (data range 1) over the ``levels`` finest scales: pytorch-msssim's ``ms_ssim`` at five
    (tested), and with fewer, their weights renormalised (its ``ms_ssim`` insists on all five)."""
    from torch.nn import functional as F

    weights = torch.tensor(MSSSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    if levels < len(MSSSIM_WEIGHTS):
        weights = weights / weights.sum()
    window = _gaussian_window(x.dtype, x.device)
    factors = []
    for i in range(levels):
        ssim_c, cs = _ssim_and_cs(x, y, window)
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

    compile: bool = False
    """Run the loss through ``torch.compile``: it is mostly elementwise work on the rendered images (the
    colour stage, the tone curve, MS-SSIM's maps), which the compiler fuses into a few loops. The same
    loss within float rounding (tested); on the 2-core CPU about a third less time for the loss, a
    training step 5-15 % faster (docs/training.md). The first step compiles (about a minute; seconds
    once the compiler's cache is warm)."""

    def __post_init__(self) -> None:
        self._levels_logged: int | None = None
        self._terms = self._eager_terms
        if self.compile:
            import warnings

            # curves.constants is a cached pure function of two floats: traced through, it folds to constants
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
            self._terms = torch.compile(self._eager_terms)

    def __call__(self, out: Tensor, target: Tensor, cam_to_rgb: Tensor | None = None,
                 gain: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        if self.render and (cam_to_rgb is None or gain is None):
            raise ValueError("a rendered loss needs each example's colour matrix and gain")
        if self.msssim_weight:
            self._check_msssim_size(out)
        try:
            total, terms = self._terms(out, target, cam_to_rgb, gain)
        except Exception as exc:  # the compiler's own failure (no C++ compiler, an unsupported op)
            if self._terms == self._eager_terms:  # eager already: a real error, not the compiler's
                raise
            log.warning("torch.compile could not compile the loss (%s: %s); going on without it, the same "
                        "loss, slower", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self._terms = self._eager_terms
            total, terms = self._terms(out, target, cam_to_rgb, gain)
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def _check_msssim_size(self, out: Tensor) -> None:
        if min(out.shape[-2:]) < WINDOW:
            raise ValueError(f"crops of {tuple(out.shape[-2:])} are smaller than the SSIM window {WINDOW}")
        levels = msssim_levels(min(out.shape[-2:]))
        if levels != self._levels_logged:
            log.info("MS-SSIM on %d scale(s) for %dx%d crops", levels, *out.shape[-2:])
            self._levels_logged = levels

    def _eager_terms(self, out: Tensor, target: Tensor, cam_to_rgb: Tensor | None,
                     gain: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The total and its terms, tensors only (so that torch.compile takes it whole)."""
        terms: dict[str, Tensor] = {}
        extra = out.new_zeros(())
        if self.render:
            from .. import curves
            from ..colour import render_srgb_batch

            if self.camera_weight:
                camera = (curves.encode(out) - curves.encode(target)).abs().mean()
                extra = self.camera_weight * camera
                terms["camera_l1"] = camera
            out, target = render_srgb_batch(out, cam_to_rgb, gain), render_srgb_batch(target, cam_to_rgb, gain)
        l1 = (out - target).abs().mean()
        total = self.l1_weight * l1 + extra
        terms["l1"] = l1
        if self.colour_weight:
            from torch.nn import functional as F

            cell = min(COLOUR_CELL, *out.shape[-2:])
            colour = (F.avg_pool2d(out, cell) - F.avg_pool2d(target, cell)).abs().mean()
            total = total + self.colour_weight * colour
            terms["colour_l1"] = colour
        if self.msssim_weight:
            ms = msssim(out, target, msssim_levels(min(out.shape[-2:])))
            total = total + self.msssim_weight * (1 - ms)
            terms["msssim"] = ms
        return total, terms
