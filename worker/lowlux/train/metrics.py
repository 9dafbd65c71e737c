"""Image quality scores: PSNR, SSIM, and the paper's GT-GC variant (Table 2).

SSIM is Wang et al.'s (11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03) from pytorch-msssim,
on sRGB in [0, 1], averaged over the three channels.

GT-GC: several ground truths are acceptable for an extremely dark scene, so the reference is
gamma-corrected with gamma in 0.7, 0.73, ..., 1.3 and the best PSNR and best SSIM are reported.
"""

from __future__ import annotations

import numpy as np
import torch

GT_GC_GAMMAS = tuple(round(0.7 + 0.03 * i, 2) for i in range(21))


def psnr(out: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(out, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)))


def ssim(out: np.ndarray, target: np.ndarray) -> float:
    return float(ssim_batch(out, target[None])[0])


def ssim_batch(out: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """SSIM of one H x W x 3 image against each of N x H x W x 3 references."""
    from pytorch_msssim import ssim as _ssim

    ref = torch.stack([_chw(t) for t in targets])
    x = _chw(out)[None].expand_as(ref)
    with torch.no_grad():
        return _ssim(x, ref, data_range=1.0, size_average=False).numpy()


def gt_gc(out: np.ndarray, target: np.ndarray, gammas=GT_GC_GAMMAS) -> tuple[float, float]:
    """(best PSNR, best SSIM) over gamma-corrected references target ** gamma."""
    refs = np.stack([np.power(np.clip(target, 0, 1), g, dtype=np.float32) for g in gammas])
    best_psnr = max(psnr(out, r) for r in refs)
    return best_psnr, float(ssim_batch(out, refs).max())
