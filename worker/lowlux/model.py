"""The restoration net of Lamba & Mitra, "Restoring Extremely Dark Images in Real Time" (CVPR 2021).

The net maps an amplified Bayer mosaic (B x 1 x H x W, RGGB, H and W multiples of 32) to an RGB
image (B x 3 x H x W, in [0, 1]) in one of two output spaces (:data:`OUTPUT_SPACES`): the paper's
sRGB, or lowlux's linear white-balanced camera RGB, which an exact colour stage turns into any
output (see :mod:`lowlux.colour`). Three encoders read the packed raw directly, so they are independent
of one another and may run concurrently (paper Sec. 3.1.2):

    LSE  1/2  one 5x5 conv on the packed raw           -> low-level detail
    MSE  1/8  a residual block                          -> medium-frequency detail
    HSE  1/32 grouped conv, three RDB* blocks, fusion   -> global context, upsampled to 1/8

Fuse Block 1 merges MSE and HSE at 1/8, Fuse Block 2 merges the result with LSE at 1/2 and
pixel-shuffles to full resolution (paper Fig. 3).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import curves

LEAKY_SLOPE = 0.2
"""LeakyReLU slope used throughout, as in SID and the paper (Sec. 3.1)."""

SRGB = "srgb"
LINEAR_CAMERA_WB = "linear-camera-wb"
OUTPUT_SPACES = (SRGB, LINEAR_CAMERA_WB)
"""What the net's output means. ``srgb``: display-ready sRGB (the paper; the authors' weights).
``linear-camera-wb``: linear light in the camera's own RGB, white-balanced with the shot's
multipliers (the input mosaic is white-balanced the same way)."""

# Scales, relative to the packed raw at 1/2, and channel widths (paper Fig. 3).
BAYER_CHANNELS = 4
"""The packed raw at 1/2: R, G1, G2, B."""
MSE_SCALE = 4
"""MSE works at 1/8: the packed raw unshuffled by 4."""
HSE_SCALE = 16
"""HSE works at 1/32: the packed raw unshuffled by 16."""
CONTEXT_SCALE = 2 * HSE_SCALE
"""Full-resolution pixels per 1/32 cell."""
MSE_CHANNELS = BAYER_CHANNELS * MSE_SCALE**2
"""64: the 1/8 packing, which MSE keeps (and HSE matches, for Fuse Block 1)."""
HSE_IN_CHANNELS = BAYER_CHANNELS * HSE_SCALE**2
"""1024: the 1/32 packing."""
HEAD_CHANNELS = 128
"""Output of the HSE's first (grouped) conv: one per group of 8 packed channels."""
FEATURES = 64
"""The HSE's working width at 1/32 (RDB* blocks), and so the 1/32 context's channels."""
GROWTH = 32
"""Channels each RDB* dense layer adds."""
LSE_CHANNELS = 12
"""LSE's output at 1/2, and Fuse Block 1's after its pixel shuffle."""
FULL_PRECISION_BLOCKS = ("lse",)
"""Blocks OpenVINO's reduced precision keeps in float32 (:mod:`lowlux.backends.openvino_backend`; torch's
autocast, used on GPUs and in training, runs them like the rest). The LSE's 5x5 conv reads the raw mosaic
at the finest scale and feeds Fuse Block 2 straight away, so in bf16 the measurement itself would be
rounded to 8 bits of mantissa; it is 7 % of the net's work. Measured (docs/benchmarks.md, "bf16 with the
LSE in float32"): the largest deviation from float32 falls by a fifth; the time stays within its scatter."""
FB1_CHANNELS = 32
"""Fuse Block 1's bottleneck width."""
FB1_GROUPS = 4
RGB_CHANNELS = 3


def conv(in_ch: int, out_ch: int, kernel: int, *, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    """A 'same'-padded convolution, the only kind of convolution the net uses."""
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias, groups=groups)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channel groups so a following grouped conv sees every source (ShuffleNet)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DenseLayer(nn.Module):
    """One layer of RDB*: conv over the block's running concatenation.

    The concatenation keeps the *un-rectified* outputs; the rectification is applied to the layer's
    input instead. That is what lets the block's final 1x1 conv see both rectified and
    un-rectified features (paper Sec. 3.1.1, Fig. 3c).
    """

    def __init__(self, in_ch: int, growth: int, slope: float | None) -> None:
        super().__init__()
        self.slope = slope
        self.conv = conv(in_ch, growth, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.slope is None else F.leaky_relu(x, self.slope)
        return self.conv(y)


class RDBStar(nn.Module):
    """RDB*, the paper's residual dense block with un-rectified dense connections.

    The first dense layer reads the block input as is, the middle ones rectify their input, and the
    last one again reads it as is (slope 1); a 1x1 conv fuses everything back to the block width.
    """

    def __init__(self, channels: int = FEATURES, layers: int = 5, growth: int = GROWTH) -> None:
        super().__init__()
        slopes = [None] + [LEAKY_SLOPE] * (layers - 2) + [None]
        self.dense = nn.ModuleList(
            DenseLayer(channels + i * growth, growth, slope) for i, slope in enumerate(slopes)
        )
        self.fuse = conv(channels + layers * growth, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        features = x
        for layer in self.dense:
            features = torch.cat((features, layer(features)), dim=1)
        return self.fuse(features) + x


class HSE(nn.Module):
    """High scale-space encoder at 1/32: most of the net's capacity, on the fewest pixels.

    Three stages, which exact tiled inference (:mod:`lowlux.tiling`) runs separately:

    :meth:`head`
        The 1024 channels of the 1/32 packing reduced by a grouped conv whose groups each see all
        four Bayer colours (the unshuffle of the 1/2 packing orders channels that way). Local: each
        1/32 cell sees only its neighbours.
    :meth:`context`
        Three RDB* blocks in sequence, fused with a global residual: the only part that needs the
        whole frame.
    :meth:`upsample`
        Pixel shuffle to 1/8 and a 3x3 conv, for Fuse Block 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Sequential(conv(HSE_IN_CHANNELS, HEAD_CHANNELS, 3, groups=HEAD_CHANNELS),
                                    conv(HEAD_CHANNELS, FEATURES, 3))
        self.rdb1 = RDBStar(FEATURES, layers=4)
        self.rdb2 = RDBStar(FEATURES, layers=5)
        self.rdb3 = RDBStar(FEATURES, layers=5)
        self.fuse = conv(3 * FEATURES, FEATURES, 1, bias=False)
        up = HSE_SCALE // MSE_SCALE
        self.expand = conv(FEATURES // up**2, MSE_CHANNELS, 3)

    def head(self, packed: Tensor) -> Tensor:
        """Packed raw -> the first conv at 1/32 (:data:`HEAD_CHANNELS`).

        The grouped conv (128 groups of 8 inputs, one output each) runs as a depthwise conv over
        the 1024 inputs and a sum over each group's 8: the same products summed in another order
        (~1e-7 apart), in a form the runtimes run faster than a grouped conv this narrow.
        """
        first = self.reduce[0]
        x = F.pixel_unshuffle(packed, HSE_SCALE)
        y = F.conv2d(x, first.weight.reshape(HSE_IN_CHANNELS, 1, *first.kernel_size), padding=first.padding,
                     groups=HSE_IN_CHANNELS)
        return y.unflatten(1, (HEAD_CHANNELS, HSE_IN_CHANNELS // HEAD_CHANNELS)).sum(2) + first.bias[:, None, None]

    def context(self, head: Tensor) -> Tensor:
        """:meth:`head`'s output -> the 1/32 context (:data:`FEATURES` channels)."""
        h = self.reduce[1](head)
        r1 = self.rdb1(h)
        r2 = self.rdb2(r1)
        r3 = self.rdb3(r2)
        return self.fuse(torch.cat((r1, r2, r3), dim=1)) + h

    def upsample(self, context: Tensor) -> Tensor:
        """1/32 context -> the encoder's output at 1/8."""
        return self.expand(F.pixel_shuffle(context, HSE_SCALE // MSE_SCALE))

    def forward(self, packed: Tensor) -> Tensor:
        return self.upsample(self.context(self.head(packed)))


class MSE(nn.Module):
    """Medium scale-space encoder at 1/8: one residual block on the 1/8 packing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv(MSE_CHANNELS, MSE_CHANNELS, 3)
        self.conv2 = conv(MSE_CHANNELS, MSE_CHANNELS, 3)

    def forward(self, packed: Tensor) -> Tensor:
        x = F.pixel_unshuffle(packed, MSE_SCALE)
        return self.conv2(F.leaky_relu(self.conv1(x), LEAKY_SLOPE)) + x


class LSE(nn.Module):
    """Low scale-space encoder at 1/2: a single 5x5 conv keeps the fine detail cheap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv(BAYER_CHANNELS, LSE_CHANNELS, 5)

    def forward(self, packed: Tensor) -> Tensor:
        return self.conv(packed)


class FuseBlock1(nn.Module):
    """Fuses MSE and HSE at 1/8 and upsamples to 1/2.

    The channel shuffle interleaves MSE and HSE channels so each group of the grouped conv sees
    both encoders (paper Sec. 3.1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduce = conv(2 * MSE_CHANNELS, FB1_CHANNELS, 3, groups=FB1_GROUPS)
        self.expand = conv(FB1_CHANNELS, LSE_CHANNELS * MSE_SCALE**2, 3)

    def forward(self, mse: Tensor, hse: Tensor) -> Tensor:
        # reduce(channel_shuffle(cat(mse, hse), 2)) without the concatenation, which runtimes copy:
        # the shuffle puts mse[i] at 2i and hse[i] at 2i + 1, so each group of the grouped conv reads
        # its even inputs from the MSE and its odd ones from the HSE, and the conv is the sum of one
        # grouped conv on each (the same products; sums ~1e-7 apart).
        w = self.reduce.weight
        x = (F.conv2d(mse, w[:, 0::2], self.reduce.bias, padding=self.reduce.padding, groups=FB1_GROUPS)
             + F.conv2d(hse, w[:, 1::2], None, padding=self.reduce.padding, groups=FB1_GROUPS))
        x = F.leaky_relu(self.expand(x), LEAKY_SLOPE)
        return F.pixel_shuffle(x, MSE_SCALE)


class FuseBlock2(nn.Module):
    """Fuses LSE with Fuse Block 1 at 1/2 and produces the full-resolution image, clamped to [0, 1].

    The clamp stays for the linear output too: the input is clipped at 1 after white balance, so
    anything the net might say above 1 would be a guess, and [0, 1] is exactly a DNG's white level.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv(2 * LSE_CHANNELS, RGB_CHANNELS * 4, 5)

    def forward(self, lse: Tensor, fb1: Tensor) -> Tensor:
        # conv(cat(lse, fb1)) without the concatenation: one conv on each part's slice of the weight.
        w, pad = self.conv.weight, self.conv.padding
        x = (F.conv2d(lse, w[:, :LSE_CHANNELS], self.conv.bias, padding=pad)
             + F.conv2d(fb1, w[:, LSE_CHANNELS:], None, padding=pad))
        return F.pixel_shuffle(x, 2).clamp(0.0, 1.0)


class LinearLight(nn.Module):
    """Output stage of the linear nets: the net predicts values on lowlux's tone curve and this
    parameter-free stage turns them into linear light.

    Predicting on the curve spends the last conv's precision where the eye does (the curve is
    what the loss compares on), and keeps the architecture the paper's.
    """

    def forward(self, x: Tensor) -> Tensor:
        return curves.decode(x)


class LowLightNet(nn.Module):
    """The whole net (paper Fig. 3): amplified Bayer mosaic in, RGB in ``output_space`` out.

    Besides :meth:`forward`, the net offers the parts other ways of running it need, each built
    from the same blocks: :meth:`fuse` (everything after the encoders, for encoders run
    concurrently) and :meth:`head`, :meth:`context` and :meth:`local`, the three graphs of exact
    tiled inference (:mod:`lowlux.tiling`): ``local(raw, context(head(raw)))`` is ``forward(raw)``.
    """

    def __init__(self, output_space: str = SRGB) -> None:
        super().__init__()
        if output_space not in OUTPUT_SPACES:
            raise ValueError(f"output space {output_space!r} is not one of {', '.join(OUTPUT_SPACES)}")
        self.output_space = output_space
        self.lse = LSE()
        self.mse = MSE()
        self.hse = HSE()
        self.fb1 = FuseBlock1()
        self.fb2 = FuseBlock2()
        self.output = LinearLight() if output_space == LINEAR_CAMERA_WB else nn.Identity()

    @staticmethod
    def pack(raw: Tensor) -> Tensor:
        """B x 1 x H x W RGGB mosaic -> B x 4 x H/2 x W/2 (R, G1, G2, B)."""
        return F.pixel_unshuffle(raw, 2)

    def forward(self, raw: Tensor) -> Tensor:
        packed = self.pack(raw)
        return self.fuse(self.lse(packed), self.mse(packed), self.hse(packed))

    def fuse(self, lse: Tensor, mse: Tensor, hse: Tensor) -> Tensor:
        """The three encoders' outputs -> the image: Fuse Block 1, Fuse Block 2, the output stage."""
        return self.output(self.fb2(lse, self.fb1(mse, hse)))

    def head(self, raw: Tensor) -> Tensor:
        """Mosaic -> the HSE's first conv at 1/32 (local: tiled inference runs it per tile)."""
        return self.hse.head(self.pack(raw))

    def context(self, head: Tensor) -> Tensor:
        """The whole-frame part: :meth:`head`'s output (gathered for the frame) -> the 1/32 context."""
        return self.hse.context(head)

    def local(self, raw: Tensor, context: Tensor) -> Tensor:
        """The tileable rest: mosaic (crop) and its 1/32 context (crop) -> image (crop).

        LSE, MSE, the HSE's upsampling and :meth:`fuse`: every op is local (see :mod:`lowlux.tiling`).
        """
        packed = self.pack(raw)
        return self.fuse(self.lse(packed), self.mse(packed), self.hse.upsample(context))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def apply_weight_norm(model: nn.Module) -> nn.Module:
    """Condition every conv with weight normalisation (dim 0), as the paper trains (Sec. 4.1)."""
    for m in _convs(model):
        if not nn.utils.parametrize.is_parametrized(m, "weight"):
            nn.utils.parametrizations.weight_norm(m, name="weight", dim=0)
    return model


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Replace weight-norm parametrisations by plain weights for inference (exact)."""
    for m in _convs(model):
        if nn.utils.parametrize.is_parametrized(m, "weight"):
            nn.utils.parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def msra_init(model: nn.Module) -> nn.Module:
    """MSRA (He) initialisation of every conv, zero biases (paper Sec. 4.1)."""
    for m in _convs(model):
        nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
