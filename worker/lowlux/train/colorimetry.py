"""Colour science for the ColorChecker evaluation: reference colours, CIE Lab, ΔE00 and chroma noise.

**Reference colours.** The 24 patches of the ColorChecker (colour-science's ``ColorChecker24 - After
November 2014``, xyY under D50) in XYZ, adapted to D65 (Bradford), perfect white Y = 1; their CIE Lab
with the D65 white is what a chart's patches are compared with. **ΔE00** is colour-science's
``delta_E(..., method='CIE 2000')``.

**Chroma noise** (:func:`chroma_noise`): low-frequency colour blotches, the artefact that survives
a denoiser's smoothing. Output and target are converted per pixel to CIE Lab (D65 white, Y = 1 at
the image's full scale) and their a*, b* difference is blurred with a 16-px box; flat regions are
the pixels where the target's local gradient magnitude (of its Lab image after the same blur) is in
its lowest 25 %. ``chroma_noise = sqrt(var(Δa*) + var(Δb*))`` over those pixels, in ΔE-like (Lab)
units: the spread of the output's chroma error, not its mean (a uniform cast is scored by ΔE00, not
here). It is 0 for the target itself. Colour errors that vary across the frame (a cast that differs
between objects) count too; on the chart, where each patch is flat, the spread is taken within each
patch's central half and pooled over the patches (:meth:`.chart.Chart.chroma_noise`), so it is noise alone.

Kept apart from :mod:`.chart` (the virtual cameras and the chart made and scored with them): these
are functions of colours and images alone, with no camera, noise model or evaluation item; and
colour-science, a large package, is imported here only, when first needed.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np

from .. import curves
from ..colour import D65_XYZ, RGB_TO_XYZ

CHART = "ColorChecker24 - After November 2014"
BLUR = 16
FLAT_FRACTION = 0.25


def _colour_science():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # colour-science warns about optional plotting packages
        import colour

    return colour


@cache
def patch_xyz() -> np.ndarray:
    """The 24 patches' XYZ under D65 (Bradford from the chart's D50), perfect white Y = 1 (24 x 3)."""
    cs = _colour_science()
    chart = cs.CCS_COLOURCHECKERS[CHART]
    xyz_d50 = cs.xyY_to_XYZ(np.array(list(chart.data.values()), dtype=np.float64))
    white_d50 = cs.xy_to_XYZ(np.asarray(chart.illuminant, dtype=np.float64))
    xyz = cs.chromatic_adaptation(xyz_d50, white_d50, D65_XYZ, method="Von Kries", transform="Bradford")
    xyz.setflags(write=False)
    return xyz


def patch_names() -> list[str]:
    return list(_colour_science().CCS_COLOURCHECKERS[CHART].data)


def xyz_to_lab(xyz: np.ndarray) -> np.ndarray:
    """XYZ (white Y = 1) -> CIE Lab with the D65 white (L* in 0..100)."""
    cs = _colour_science()
    return cs.XYZ_to_Lab(np.asarray(xyz, dtype=np.float64), cs.XYZ_to_xy(D65_XYZ))


def reference_lab() -> np.ndarray:
    """The chart's known colours: Lab (D65 white) of :func:`patch_xyz` (24 x 3)."""
    return xyz_to_lab(patch_xyz())


def delta_e00(lab: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CIEDE2000 per row (colour-science)."""
    return np.asarray(_colour_science().delta_E(lab, reference, method="CIE 2000"), dtype=np.float64)


def box_blur(image: np.ndarray, size: int = BLUR) -> np.ndarray:
    """Mean over a size x size window around each pixel (edges repeated), H x W (x C) float64."""
    x = np.asarray(image, dtype=np.float64)
    lo, hi = size // 2, size - size // 2
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (lo + 1, hi - 1)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis)
        n = x.shape[axis]
        x = (np.take(c, np.arange(size, size + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / size
    return x


def srgb_to_lab(srgb: np.ndarray) -> np.ndarray:
    """Curve-encoded sRGB (lowlux's/LibRaw's curve) -> per-pixel Lab, D65 white at full scale."""
    lin = np.asarray(curves.decode(np.asarray(srgb, dtype=np.float32)), dtype=np.float64)
    return xyz_to_lab(lin @ RGB_TO_XYZ.T)


def chroma_noise(out: np.ndarray, target: np.ndarray, blur: int = BLUR, flat: float = FLAT_FRACTION) -> float:
    """Spread of the output's low-frequency chroma error in the target's flat regions (Lab units);
    see the module docstring."""
    lab_out, lab_target = srgb_to_lab(out), srgb_to_lab(target)
    diff = box_blur(lab_out[..., 1:] - lab_target[..., 1:], blur)
    smooth = box_blur(lab_target, blur)
    gy, gx = np.gradient(smooth, axis=(0, 1))
    gradient = np.sqrt((gy**2 + gx**2).sum(axis=-1))
    mask = gradient <= np.quantile(gradient, flat)
    d = diff[mask]
    return float(np.sqrt(d[:, 0].var() + d[:, 1].var()))
