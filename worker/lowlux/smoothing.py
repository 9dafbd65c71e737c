"""Fine smoothing of a linear net's output: its colour firmly and, on request, its brightness gently, in one pass.

Why. The linear net demosaics as it denoises, and what noise it leaves is largely colour from pixel to
pixel, at the scale of the sensor's 2x2 cells: on the comparable evaluation set the 2x2 checker
component of the sRGB output's chroma (YCbCr) has twice the targets' spread (std 0.015 against
0.0074; the authors' sRGB net leaves 0.0008). The eye resolves colour far more coarsely than
brightness, so raw developers smooth chroma firmly and luminance gently (darktable's denoise modules,
the "colour noise" and "luminance noise" sliders of others); SSIM, scored per channel, sees both.

How. On the tone curve the net itself predicts on (:mod:`lowlux.curves`), each pixel splits into a
brightness ``l`` (the mean of its three channels: in white-balanced camera RGB a grey has equal
channels) and a chroma ``c = e - l`` whose channels sum to zero. Guided filters (He, Sun and Tang,
2013) over (2r+1)² windows, all guided by ``l`` and computed from the same window statistics:

* chroma: the local fit ``c ≈ a · l + b`` keeps a coloured edge where colour changes with brightness;
  elsewhere the chroma takes its local mean. Two chroma channels are filtered, the third is minus
  their sum.
* brightness (``luma_eps``, opt-in): ``l`` guided by itself, the classic edge-preserving smoother: windows
  whose brightness varies by more than about ``sqrt(luma_eps)`` keep it, flatter ones are averaged. It
  calms flat areas but costs fine texture: on the evaluation set it lost PSNR on 8 of 12 images (Kodak's
  kodim06 0.2 dB), so the engine leaves it off unless asked.

Reach: :func:`reach_px` pixels (two box filters, both filters side by side), which with colour
anchoring's reach stays inside the tiler's halo, so tiles equal the whole frame. The constants were
chosen on training crops, never the evaluation set: see :mod:`lowlux.train.smoothing_tuning`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import curves
from .anchor import box_mean, stacked

RADIUS = 2
"""Window radius (pixels): a 5 x 5 window; the largest whose reach fits the halo beside anchoring's."""
CHROMA_EPS = 1e-3
"""The chroma filter's regulariser (curve units squared): windows whose brightness varies less than
about its square root take the chroma's mean."""
LUMA_EPS = 3e-4
"""The brightness filter's regulariser, when asked for: detail whose local spread on the curve is well
above its square root (0.017) is kept. The setting with the best PSNR on training crops; larger ones
score more SSIM there but begin to cost PSNR, i.e. texture."""


def reach_px(radius: int = RADIUS) -> int:
    """How far (pixels) a smoothed pixel looks: two box filters of ``radius``."""
    return 2 * radius


STRIP_ROWS = 256
"""Rows smoothed at a time (plus the reach above and below): the filter's dozens of full-size maps then
take a few tens of MB instead of hundreds for a tile, and the result is the same (tested)."""


def smooth(rgb: Tensor, radius: int = RADIUS, chroma_eps: float | None = CHROMA_EPS,
           luma_eps: float | None = None, in_place: bool = False) -> Tensor:
    """Linear, white-balanced camera RGB (B x H x W x 3, channels last as the engine holds it, in
    [0, 1]) with its chroma (``chroma_eps``) and brightness (``luma_eps``) smoothed; None leaves that
    part as it is. ``in_place`` writes the result into ``rgb`` (float32)."""
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"expected a B x H x W x 3 image, got shape {tuple(rgb.shape)}")
    if in_place and rgb.dtype != torch.float32:
        raise ValueError("smoothing in place needs a float32 image")
    if chroma_eps is None and luma_eps is None:
        return rgb
    out = rgb if in_place else torch.empty(rgb.shape, dtype=torch.float32, device=rgb.device)
    height, reach = rgb.shape[1], reach_px(radius)
    pending = None  # a strip is written once the next one has read the rows it shares with it
    for top in range(0, height, STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, height)
        above, below = min(reach, top), min(reach, height - bottom)
        piece = _smooth(rgb[:, top - above : bottom + below], radius, chroma_eps, luma_eps)
        if pending is not None:
            out[:, pending[0] : pending[0] + pending[1].shape[1]] = pending[1]
        pending = (top, piece[:, above : above + bottom - top])
    out[:, pending[0] : pending[0] + pending[1].shape[1]] = pending[1]
    return out


def _smooth(rgb: Tensor, radius: int, chroma_eps: float | None, luma_eps: float | None) -> Tensor:
    """:func:`smooth` of one piece, whole."""
    encoded = curves.encode(rgb.float()).permute(0, 3, 1, 2)  # B x 3 x H x W view
    luma = encoded.mean(dim=1, keepdim=True)
    chroma = encoded[:, 0::2] - luma  # red and blue; green's is minus their sum
    mean_l, mean_ll, mean_c, mean_lc = box_mean(stacked([luma, luma * luma, chroma, luma * chroma]), radius).split(
        (1, 1, 2, 2), dim=1)
    var = mean_ll - mean_l * mean_l
    coefficients = []
    if chroma_eps is not None:
        a = (mean_lc - mean_l * mean_c) / (var + chroma_eps)
        coefficients += [a, mean_c - a * mean_l]
    if luma_eps is not None:
        a = var / (var + luma_eps)
        coefficients += [a, mean_l - a * mean_l]
    means = list(box_mean(stacked(coefficients), radius).split([c.shape[1] for c in coefficients], dim=1))
    if chroma_eps is not None:
        mean_a, mean_b = means.pop(0), means.pop(0)
        chroma = torch.addcmul(mean_b, mean_a, luma)
    if luma_eps is not None:
        mean_a, mean_b = means
        luma = torch.addcmul(mean_b, mean_a, luma)
    out = torch.cat([luma + chroma[:, :1], luma - chroma.sum(dim=1, keepdim=True), luma + chroma[:, 1:]], dim=1)
    return curves.decode(out.permute(0, 2, 3, 1))
