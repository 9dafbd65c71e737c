"""The one tone curve lowlux encodes light with: LibRaw's BT.709-style gamma (power 1/2.222, toe 4.5).

It serves four places that must agree exactly: the sRGB TIFF's encoding (the curve LibRaw's default
render uses, so a restoration and a LibRaw render of the same raw compare pixel for pixel), the
rendering of training targets, the training loss (linear light compared on this curve, so shadows
count as much as the eye says they do) and the net's own output stage (the net predicts values on the
curve and :func:`decode` turns them into linear light). Both functions accept numpy arrays and torch
tensors.
"""

from __future__ import annotations

from functools import cache

import numpy as np

POWER = 1 / 2.222
TOE = 4.5
"""rawpy's default ``gamma=(2.222, 4.5)``: LibRaw's power and toe slope."""


@cache
def constants(power: float = POWER, toe: float = TOE) -> tuple[float, float]:
    """LibRaw's ``gamma_curve``: the linear/power junction g3 and offset g4, found by bisection."""
    bounds = [0.0, 1.0]
    g2 = 0.0
    for _ in range(48):
        g2 = (bounds[0] + bounds[1]) / 2
        bounds[int(((g2 / toe) ** -power - 1) / power - 1 / g2 > -1)] = g2
    return g2 / toe, g2 * (1 / power - 1)


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def encode(linear, power: float = POWER, toe: float = TOE):
    """Linear light in [0, 1] -> curve values in [0, 1] (values outside are clipped first)."""
    g3, g4 = constants(power, toe)
    if _is_tensor(linear):
        import torch

        x = linear.clamp(0.0, 1.0)
        return torch.where(x < g3, x * toe, (1 + g4) * x.clamp_min(g3).pow(power) - g4)
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x < g3, x * toe, (1 + g4) * np.power(np.maximum(x, g3), power) - g4).astype(np.float32)


def decode(encoded, power: float = POWER, toe: float = TOE):
    """Inverse of :func:`encode`: curve values in [0, 1] -> linear light in [0, 1]."""
    g3, g4 = constants(power, toe)
    if _is_tensor(encoded):
        import torch

        y = encoded.clamp(0.0, 1.0)
        return torch.where(y < g3 * toe, y / toe, ((y.clamp_min(g3 * toe) + g4) / (1 + g4)).pow(1 / power))
    y = np.clip(encoded, 0.0, 1.0)
    return np.where(y < g3 * toe, y / toe, np.power((np.maximum(y, g3 * toe) + g4) / (1 + g4), 1 / power)).astype(
        np.float32
    )
