"""The work every row of ``lowlux bench`` does: the same input, and its size in multiply-accumulates.

Every configuration runs in its own process, so the input is made there from a fixed seed rather
than passed along: each process builds the identical mosaic, and the rows' outputs compare.
"""

from __future__ import annotations


def count_macs(height: int, width: int) -> float:
    """Multiply-accumulates of one forward pass at this size: the convolutions the net's forward
    actually runs, whatever their form (a module, or ``F.conv2d`` on a slice of a module's weight),
    counted by torch's FLOP counter (two FLOPs per MAC; exact for this net)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import LowLightNet

    model = LowLightNet().eval()
    counter = FlopCounterMode(display=False)
    # Every layer scales with the area, so a small multiple-of-32 probe gives the exact count.
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, 64, 64))
    convs = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    return convs / 2 * (height * width) / (64 * 64)


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
