"""The fixed evaluation set: which held-out images, cut how, made dark with which seeds.

Every method :mod:`.evaluate` scores and the virtual-camera charts of :mod:`.chart` run on these
items; they are a pure function of the data and the seeds below, so scores compare across weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..amplifier import estimate_amplification
from . import noise
from .cache import DEFAULT_CACHE_DIR, cache_photo, cache_raw
from .split import EVAL_GROUPS, HOLDOUT_ROWS, eval_group, list_raws, raw_is_eval_only, split_photos
from .unprocess import CameraColour, process, sony_colour, unprocess_rgb
from .unprocess import mosaic as to_mosaic

log = logging.getLogger(__name__)

EVAL_SEED = 20210619
EVAL_RATIOS = (100.0, 200.0, 300.0)
RAW_CROP = 512
PHOTO_CROP = 480
MODES = ("gt", "amp")
"""Amplification by the GT exposure ratio, or by our amplifier (m = 0.5, authors' constants)."""
@dataclass
class EvalItem:
    name: str
    dark: np.ndarray
    """Normalised dark mosaic (H x W float32, RGGB, sides multiples of 32)."""
    ratio: float
    target: np.ndarray
    """H x W x 3 float32 sRGB in [0, 1]."""
    colour: CameraColour

    def amplification(self, mode: str) -> float:
        if mode == "gt":
            return self.ratio
        return estimate_amplification(self.dark, 0.5, "authors")


def _centre(length: int, size: int) -> int:
    return (length - size) // 4 * 2


def _darken(clean: np.ndarray, index: int, ratio: float, family: str = "sid",
            bank: noise.NoiseBank | None = None) -> np.ndarray:
    rng = np.random.default_rng([EVAL_SEED, index])
    if family == "sid":  # every comparable score so far: the same draws as ever
        params = noise.sample_params(rng, ratio=ratio)
    else:
        params = (bank or noise.NoiseBank()).sample_family(rng, family, ratio)
    return noise.make_dark(clean, params, rng)


def raw_items(folder: Path, cache_dir: Path,
              group: str = "comparable") -> list[tuple[str, np.ndarray, np.ndarray, CameraColour]]:
    """(name, clean mosaic, target, colour) per eval region of each raw of one group in ``folder``."""
    out = []
    for path in (p for p in list_raws(folder) if eval_group(p) == group):
        cached = cache_raw(path, cache_dir)
        mos, tgt = cached.mosaic(), cached.target()
        h, w = mos.shape
        if raw_is_eval_only(path):
            eh, ew = h // 32 * 32, w // 32 * 32
            top, left = _centre(h, eh), _centre(w, ew)
            regions = [("", top, left, eh, ew)]
        else:
            band = min(HOLDOUT_ROWS, h)
            size = min(RAW_CROP, band // 32 * 32, w // 2 // 32 * 32)
            if size < 32:
                log.warning("%s: too small for evaluation crops, skipped", path.name)
                continue
            top = h - band + _centre(band, size)
            lefts = [min(max(0, (c - size // 2) // 2 * 2), w - size) for c in (w // 4, 3 * w // 4)]
            regions = [(f"#{i}", top, left, size, size) for i, left in enumerate(lefts)]
        for suffix, top, left, eh, ew in regions:
            clean = np.array(mos[top : top + eh, left : left + ew], dtype=np.float32)
            target = np.array(tgt[top : top + eh, left : left + ew], dtype=np.float32) / 65535
            out.append((f"{path.stem}{suffix}", clean, target, cached.colour))
    return out


def photo_items(folder: Path, cache_dir: Path,
                group: str = "comparable") -> list[tuple[str, np.ndarray, np.ndarray, CameraColour]]:
    """(name, clean mosaic, target, colour) per held-out photograph of one evaluation group."""
    out = []
    held = [p for p in split_photos(folder)[1] if eval_group(p) == group]
    first = 0 if group == "comparable" else 1000  # the comparable group keeps the seeds it always had
    for i, path in enumerate(held, start=first):
        photo = np.load(cache_photo(path, cache_dir)).astype(np.float32) / 65535
        h, w = photo.shape[:2]
        size = min(PHOTO_CROP, h // 32 * 32, w // 32 * 32)
        top, left = _centre(h, size), _centre(w, size)
        colour = sony_colour(np.random.default_rng([EVAL_SEED, 1000 + i]))
        cam = unprocess_rgb(photo[top : top + size, left : left + size], colour)
        out.append((f"{path.parent.name}/{path.stem}", to_mosaic(cam), process(cam, colour), colour))
    return out


def build_eval_set(raw_dir: Path | None, clean_dir: Path | None,
                   cache_dir: Path = DEFAULT_CACHE_DIR, group: str = "comparable",
                   noise_family: str = "sid", bank: noise.NoiseBank | None = None) -> list[EvalItem]:
    """The fixed evaluation items of one group (deterministic: fixed seeds and ratios).

    ``comparable``: the raws and the photographs every earlier evaluation used; ``new``: the held-out
    parts of the raws and photographs added since (see :mod:`.split`). ``noise_family``: whose noise
    darkens them: the SID camera's (``sid``, the scores to compare), or one camera state per item drawn
    from ``bank``'s ELD cameras (``eld``) or darktable's profiles (``darktable``): a blind net trained on
    many cameras is then scored on more than the one the paper's data came from.
    """
    if noise_family not in noise.NOISE_FAMILIES:
        raise ValueError(f"noise family {noise_family!r} is not one of {', '.join(noise.NOISE_FAMILIES)}")
    if group not in EVAL_GROUPS:
        raise ValueError(f"evaluation group {group!r} is not one of {', '.join(EVAL_GROUPS)}")
    clean = []
    if raw_dir is not None:
        clean += raw_items(Path(raw_dir), Path(cache_dir), group)
    if clean_dir is not None:
        clean += photo_items(Path(clean_dir), Path(cache_dir), group)
    items = []
    first = 0 if group == "comparable" else 10_000
    for i, (name, mos, target, colour) in enumerate(clean, start=first):
        ratio = EVAL_RATIOS[i % len(EVAL_RATIOS)]
        items.append(EvalItem(name, _darken(mos, i, ratio, noise_family, bank), ratio, target, colour))
    if not items:
        raise ValueError("empty evaluation set: give a raw and/or a photograph folder")
    return items


Restorer = Callable[["EvalItem", float], np.ndarray]
"""A method under evaluation: (item, amplification) -> sRGB image."""
