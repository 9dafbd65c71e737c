"""The work every row of ``lowlux bench`` does: the same input, and its size in multiply-accumulates.

Every configuration runs in its own process, so the input is made there from a fixed seed rather
than passed along: each process builds the identical mosaic, and the rows' outputs compare.
"""

from __future__ import annotations


def count_macs(height: int, width: int) -> float:
    """Multiply-accumulates of one forward pass at this size (conv layers; exact for this net)."""
    import torch

    from ..model import LowLightNet

    model = LowLightNet().eval()
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    # Every layer scales with the area, so a small multiple-of-32 probe gives the exact count.
    with torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    return total * (height * width) / (64 * 64)


def bench_input(height: int, width: int):
    """The benchmark's input mosaic: uniform noise in [0, 0.3), made in place (no full-size temporaries)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((height, width), dtype=np.float32)
    x *= np.float32(0.3)
    return x


def pad32(x):
    """``x`` (H x W) reflect-padded to multiples of 32, as the net needs; ``x`` itself when it is."""
    import numpy as np

    h, w = x.shape
    if h % 32 == 0 and w % 32 == 0:
        return x
    return np.pad(x, ((0, -h % 32), (0, -w % 32)), mode="reflect")
