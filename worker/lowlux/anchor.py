"""Colour anchoring: the restored picture's local means follow the raw's own, where the raw can tell.

Why. A net trained pixel by pixel pulls flat, saturated colours towards grey: on the virtual-camera
ColorChecker (:mod:`lowlux.train.chart`) the linear weights leave a mean ΔE00 of about 5 where the
data's own noise floor is about 1. The white-balanced mosaic the net reads is an unbiased measurement
of the scene: averaged over a window it gives the local colour exactly, as long as the window's mean
stands well above its noise (black-level clipping biases it only near black).

How. A guided filter (He, Sun and Tang, *Guided Image Filtering*, 2013) per channel, with the net's
output as the guide (sampled as the sensor would, :func:`sampled_cells`) and the mosaic's 2x2 cells
(R, mean G, B) as the data: in each window it fits
``data ≈ a · net + b``, so the result keeps the net's structure and takes the raw's local mean. Where
the raw cannot tell, a trust weight keeps the net (``a -> 1, b -> 0``): where the window mean's
standard error is above :data:`TOLERANCE` of the mean, or where the mean is within
:data:`BLACK_MARGIN` noise deviations of black, or where a cell is clipped. The coefficients are
found once per :data:`BLOCK` x :data:`BLOCK` block and bilinearly upsampled (He and Sun's *Fast Guided
Filter*, 2015) to the 2x2 cells, each applied to its cell's four pixels: in flat regions the output takes
the raw's local mean, which also calms the net's low-frequency mottling. The price is at hard edges: the
pixels beside a sharp step move by up to a sixth of it (softer on the 2x2 grid, a slight overshoot off
it), a cost the evaluation's scores include.

Reach: :func:`reach_px` full-resolution pixels; it stays inside the tiler's halo
(:data:`lowlux.tiling.HALO` minus :data:`~lowlux.tiling.LOCAL_REACH`), so tiles anchored one by one
equal the whole frame anchored at once. Only linear, white-balanced outputs are anchored: the
paper's sRGB mode is the authors' and stays as they made it.

The constants were chosen on training crops, never the evaluation set: see
:mod:`lowlux.train.anchor_tuning`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 4
"""The fit's grid (raw pixels): each window is made of BLOCK x BLOCK blocks of the mosaic, and the
coefficients are found once per block (2 would fit per 2x2 cell, four times the work)."""
RADIUS = 2
"""Window radius in blocks: a (2r+1)² window of blocks (20 x 20 raw pixels)."""
EPS = 1e-3
"""The guided filter's regulariser (linear units): windows flatter than this take the raw's mean."""
TOLERANCE = 0.02
"""Anchor fully while the window mean's standard error is within this fraction of the mean, not at
all beyond twice it: a noisier mean would add colour mottling of its own."""
BLACK_MARGIN = 2.0
"""Anchor only where the window mean is this many noise deviations (of one 2x2 cell) above black."""
CLIPPED = 0.999
"""A cell at or above this (the net's input is clipped at 1) is clipped: no anchoring in its windows."""


def reach_px(radius: int = RADIUS, block: int = BLOCK) -> int:
    """How far (full-resolution pixels) a pixel's anchored value looks: two box filters of ``radius``
    blocks, one block more for the bilinear upsampling and one for the block itself."""
    return block * (2 * radius + 2)


def mosaic_cells(mosaic: Tensor) -> Tensor:
    """B x 1 x H x W RGGB mosaic -> B x 3 x H/2 x W/2: each 2x2 cell's R, mean G, B (an unbiased demosaic)."""
    r = mosaic[:, :, 0::2, 0::2]
    g = (mosaic[:, :, 0::2, 1::2] + mosaic[:, :, 1::2, 0::2]) * 0.5
    b = mosaic[:, :, 1::2, 1::2]
    return torch.cat([r, g, b], dim=1)


def sampled_cells(rgb: Tensor) -> Tensor:
    """B x H x W x 3 image -> B x 3 x H/2 x W/2: what an RGGB sensor would record of it, celled like
    :func:`mosaic_cells`. The guide is sampled like the data, so an edge that cuts a cell mixes both
    the same way (a plain 2x2 mean of the image would leave colour fringes at such edges)."""
    r = rgb[:, 0::2, 0::2, 0]
    g = (rgb[:, 0::2, 1::2, 1] + rgb[:, 1::2, 0::2, 1]) * 0.5
    b = rgb[:, 1::2, 1::2, 2]
    return torch.stack([r, g, b], dim=1)


def box_mean(x: Tensor, radius: int) -> Tensor:
    """Mean over a (2r+1)² window, of the pixels inside the frame (separable: cost independent of r²).

    On the CPU OpenCV's running-sum box filter does it, about six times faster than torch's pooling
    on the full-resolution maps of fine smoothing; elsewhere (a GPU, a tensor that needs gradients)
    torch pools. Both agree within float rounding (tested). Many maps are best given channels last
    (:func:`stacked`): either path then reads them without a copy."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] <= OPENCV_MAX_CHANNELS \
            and not (x.requires_grad and torch.is_grad_enabled()):
        return _box_mean_opencv(x, radius)
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


OPENCV_MAX_CHANNELS = 512
"""OpenCV's limit on the channels of one image (CV_CN_MAX)."""


def _window_counts(size: int, radius: int) -> np.ndarray:
    """How many of a window's pixels along one axis lie inside the frame, position by position."""
    i = np.arange(size)
    return (np.minimum(i + radius, size - 1) - np.maximum(i - radius, 0) + 1).astype(np.float32)


def _box_mean_opencv(x: Tensor, radius: int) -> Tensor:
    """:func:`box_mean` by ``cv2.boxFilter``: window sums with zeros outside, divided by the counts."""
    import cv2

    k = 2 * radius + 1
    height, width = x.shape[-2:]
    images = x.detach().permute(0, 2, 3, 1).contiguous().numpy()  # B x H x W x C, a view when channels last
    out = np.empty_like(images)
    for image, sums in zip(images, out):
        cv2.boxFilter(image, -1, (k, k), dst=sums, normalize=False, borderType=cv2.BORDER_CONSTANT)
    out *= (1.0 / np.outer(_window_counts(height, radius), _window_counts(width, radius)))[:, :, None]
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def stacked(maps: list[Tensor]) -> Tensor:
    """B x C_i x h x w maps -> one B x sum(C_i) x h x w tensor laid out channels last."""
    return torch.cat(maps, dim=1).contiguous(memory_format=torch.channels_last)


def anchor_coefficients(guide: Tensor, data: Tensor, radius: int = RADIUS, block: int = BLOCK,
                        eps: float = EPS, tolerance: float = TOLERANCE,
                        black_margin: float = BLACK_MARGIN) -> tuple[Tensor, Tensor]:
    """Per-block ``(A, B)`` so that ``A · guide + B`` is anchored (B x 3 x h/s x w/s, s = block / 2).

    ``guide`` (the net's output) and ``data`` (the raw's cells) are B x 3 x h x w at half resolution.
    The window statistics are means over whole cells, so the noise figures are those of one cell.
    """
    def blocks(x: Tensor) -> Tensor:  # cell maps -> block means, one at a time (less memory)
        return F.avg_pool2d(x, block // 2) if block > 2 else x

    clipped = (data >= CLIPPED).to(data.dtype)
    moments = [blocks(m) for m in (guide, data)]
    moments += [blocks(guide * data), blocks(guide * guide), blocks(data * data), blocks(clipped)]
    stats = box_mean(stacked(moments), radius)
    mean_g, mean_d, mean_gd, mean_gg, mean_dd, any_clipped = stats.split(guide.shape[1], dim=1)
    cov = mean_gd - mean_g * mean_d
    a = cov / (mean_gg - mean_g * mean_g + eps)
    b = mean_d - a * mean_g
    residual = (mean_dd - mean_d * mean_d - a * cov).clamp_(min=0.0)  # what the guide does not explain: noise
    cells = ((2 * radius + 1) * max(1, block // 2)) ** 2
    std_error = torch.sqrt(residual / float(cells))
    trust = (2.0 - std_error / (tolerance * mean_d.clamp(min=1e-6))).clamp_(0.0, 1.0)
    trust = trust * (mean_d > black_margin * residual.sqrt()) * (any_clipped == 0)  # a clipped cell biases the mean
    smooth = box_mean(stacked([trust * a + (1.0 - trust), trust * b]), radius)
    return smooth.split(guide.shape[1], dim=1)


def anchor(rgb: Tensor, mosaic: Tensor, radius: int = RADIUS, block: int = BLOCK, in_place: bool = False,
           **kwargs) -> Tensor:
    """The net's linear output ``rgb`` (B x H x W x 3, channels last as the backends give it) anchored
    to the amplified, white-balanced ``mosaic`` it was restored from (B x 1 x H x W; sides divisible by
    ``block``), like the net's own output in [0, 1]. ``in_place`` writes it into ``rgb`` (float32; the
    engine's own buffer: no second full-size image)."""
    if in_place and rgb.dtype != torch.float32:
        raise ValueError("anchoring in place needs a float32 image")
    rgb = rgb.float()  # variances need float32, whatever the net ran in
    cells = sampled_cells(rgb)
    a, b = anchor_coefficients(cells, mosaic_cells(mosaic.to(rgb.dtype)), radius, block, **kwargs)
    # Upsampled to the 2x2 cells (bilinear) and applied to each cell's four pixels: the full-resolution
    # coefficients are never made (they cost more than the whole fit).
    ab = F.interpolate(torch.cat([a, b], dim=1), size=cells.shape[-2:], mode="bilinear", align_corners=False)
    ab = ab.permute(0, 2, 3, 1).unsqueeze(2).unsqueeze(4)  # B x H/2 x 1 x W/2 x 1 x 6
    height, width = rgb.shape[1:3]
    pixels = rgb.unflatten(1, (height // 2, 2)).unflatten(3, (width // 2, 2))  # B x H/2 x 2 x W/2 x 2 x 3
    if in_place:
        torch.addcmul(ab[..., 3:], ab[..., :3], pixels, out=pixels)
        return rgb.clamp_(0.0, 1.0)
    return torch.addcmul(ab[..., 3:], ab[..., :3], pixels).clamp_(0.0, 1.0).reshape(rgb.shape)
