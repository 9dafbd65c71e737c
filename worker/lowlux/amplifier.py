"""The amplifier: how much to brighten a dark raw, estimated from the raw alone (paper Sec. 3.2).

A plain mean (Eq. 4) is dragged down by saturated highlights, so the paper uses a weighted mean
(Eq. 5) whose weights fall off exponentially with intensity over log-spaced bins (Eq. 6-7):

    Amp = target / (sum(x * w) / sum(w)),   clamped to [1, 300] (SID's largest exposure ratio).

Two variants exist and both are kept because they differ a lot in brightness:

``paper``
    Eq. 6-7 as printed, n = 128: edges b_0 = 0, b_k = 2^(8k/n) / 2^8 (k = 1..n), bin k
    (b_(k-1) < x <= b_k, x = 0 counted in bin 1) weighted 2^(8(n-k+1)/n) / 2^8 (1 down to 2^(8/n)/256).
    target = m.

``authors``
    The constants of the authors' released code: 128 edges (2^(8k/127) - 1) / 255 (k = 0..127),
    bin k (e_k <= x < e_(k+1)) weighted 10^(5(126-k)/126) / 10^5 (1 down to 1e-5), saturated pixels
    (x >= 1) weight 0. Their knob is a = 1..9 with target = 0.01 * a; the paper's m = 0.1..0.9 maps
    to a = 10 m, so target = 0.1 * m.

The estimate is always computed once on the whole (normalised, black-subtracted) image, never per
tile, so a tiled restoration has one consistent exposure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MIN_AMPLIFICATION = 1.0
MAX_AMPLIFICATION = 300.0
DEFAULT_BRIGHTNESS = 0.5
BRIGHTNESS_RANGE = (0.1, 0.9)
VARIANTS = ("paper", "authors")
DEFAULT_VARIANT = "authors"
N_BINS = 128


@dataclass(frozen=True)
class BinTable:
    """Bin edges, per-bin weights, and how a pixel value finds its bin."""

    edges: np.ndarray  # float32, increasing
    weights: np.ndarray  # float64, one per bin
    right_closed: bool  # bins are (e_(k-1), e_k] when True, [e_k, e_(k+1)) when False
    target_per_m: float  # target weighted mean = target_per_m * m


@lru_cache(maxsize=None)
def bin_table(variant: str) -> BinTable:
    """The constants of a variant (see the module docstring)."""
    if variant == "paper":
        n = N_BINS
        k = np.arange(1, n + 1, dtype=np.float64)
        edges = np.concatenate(([0.0], 2.0 ** (8 * k / n) / 2**8)).astype(np.float32)
        weights = 2.0 ** (8 * (n - k + 1) / n) / 2**8
        return BinTable(edges, weights, right_closed=True, target_per_m=1.0)
    if variant == "authors":
        edges = (np.logspace(0, 8, N_BINS, base=2) - 1).astype(np.float32) / np.float32(255)
        w = np.logspace(0, 5, N_BINS - 1, base=10).astype(np.float32)
        weights = (w / w.max())[::-1].astype(np.float64)
        return BinTable(edges, weights, right_closed=False, target_per_m=0.1)
    raise ValueError(f"unknown amplifier variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def check_brightness(m: float) -> float:
    lo, hi = BRIGHTNESS_RANGE
    if not (lo <= m <= hi):
        raise ValueError(f"brightness m={m} is outside the paper's range {lo}-{hi}")
    return float(m)


def _bin_sums(x: np.ndarray, table: BinTable, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin pixel counts and intensity sums; pixels outside every bin are dropped.

    ``counts``, if given, says how many pixels have each value of ``x`` (a histogram of the image).
    """
    x = np.ascontiguousarray(x, dtype=np.float32).ravel()
    if counts is not None:
        return _bin_sums_weighted(x, np.asarray(counts, dtype=np.float64).ravel(), table)
    n_bins = len(table.weights)
    if table.right_closed:
        idx = np.searchsorted(table.edges, x, side="left") - 1
        idx[x <= table.edges[0]] = 0  # x = 0 belongs to the first bin
    else:
        idx = np.searchsorted(table.edges, x, side="right") - 1
    inside = (idx >= 0) & (idx < n_bins)
    if not inside.all():
        x, idx = x[inside], idx[inside]
    counts = np.bincount(idx, minlength=n_bins)[:n_bins].astype(np.float64)
    sums = np.bincount(idx, weights=x.astype(np.float64), minlength=n_bins)[:n_bins]
    return counts, sums


def _bin_sums_weighted(x: np.ndarray, counts: np.ndarray, table: BinTable) -> tuple[np.ndarray, np.ndarray]:
    n_bins = len(table.weights)
    if table.right_closed:
        idx = np.searchsorted(table.edges, x, side="left") - 1
        idx[x <= table.edges[0]] = 0
    else:
        idx = np.searchsorted(table.edges, x, side="right") - 1
    inside = (idx >= 0) & (idx < n_bins)
    x, idx, counts = x[inside], idx[inside], counts[inside]
    bin_counts = np.bincount(idx, weights=counts, minlength=n_bins)[:n_bins]
    sums = np.bincount(idx, weights=x.astype(np.float64) * counts, minlength=n_bins)[:n_bins]
    return bin_counts, sums


def weighted_mean(x: np.ndarray, variant: str = DEFAULT_VARIANT) -> float:
    """Eq. 5's weighted mean intensity of a normalised raw; NaN when no pixel carries weight."""
    table = bin_table(variant)
    counts, sums = _bin_sums(x, table)
    total_w = float(np.dot(counts, table.weights))
    if total_w == 0.0:
        return float("nan")
    return float(np.dot(sums, table.weights)) / total_w


def amplification_unclamped(x: np.ndarray, m: float = DEFAULT_BRIGHTNESS, variant: str = DEFAULT_VARIANT,
                            *, counts: np.ndarray | None = None) -> float:
    """target / weighted mean without the clamp (inf for a black image, NaN when all saturated)."""
    table = bin_table(variant)
    counts, sums = _bin_sums(x, table, counts)
    num = float(np.dot(counts, table.weights)) * table.target_per_m * m
    den = float(np.dot(sums, table.weights))
    if den == 0.0:
        return float("nan") if num == 0.0 else float("inf")
    return num / den


def estimate_amplification(
    x: np.ndarray, m: float = DEFAULT_BRIGHTNESS, variant: str = DEFAULT_VARIANT, *, counts: np.ndarray | None = None
) -> float:
    """The brightening factor for a normalised raw, clamped to [1, 300].

    A black image gets the largest factor; an image with every pixel saturated (no weight at all)
    needs no brightening and gets 1 instead of the NaN a literal reading would give. ``x`` may
    also be the distinct values of the image with their pixel ``counts``
    (:meth:`lowlux.raw.RawImage.normalised_histogram`): the same estimate, much faster.
    """
    amp = amplification_unclamped(x, check_brightness(m), variant, counts=counts)
    if np.isnan(amp):
        return MIN_AMPLIFICATION
    return float(np.clip(np.float32(amp), MIN_AMPLIFICATION, MAX_AMPLIFICATION))
