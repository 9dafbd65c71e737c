"""Training pairs: (amplified dark RGGB mosaic, target), from three kinds of source.

Targets come in the net's output space (:data:`lowlux.model.OUTPUT_SPACES`): the paper's sRGB
(rendered as SID rendered its ground truth), or lowlux's linear white-balanced camera RGB, for
which the dark mosaic is white-balanced with the shot's multipliers before amplification. Noise
is always added in the sensor's domain, before white balance, so its statistics are the sensor's.

``raw``
    Real raw files, made dark synthetically: the clean mosaic divided by an exposure ratio plus the
    physics-based noise of :mod:`.noise`; the target is the clean raw rendered by LibRaw as SID
    rendered its ground truth.
``clean``
    Photographs unprocessed into raws (:mod:`.unprocess`, random camera colour), then the same
    noise; the target is that raw rendered the LibRaw way (no tone curve), so targets of both
    kinds are consistent.
``sid``
    The SID layout (``Sony/short``, ``Sony/long`` and list files such as ``Sony_train_list.txt``):
    real dark/long exposure pairs, the dark one amplified by the GT exposure ratio (paper Eq. 3,
    capped at 300 as SID does).

Each sample is a pure function of (seed, sample index): a resumed run draws exactly the batches an
uninterrupted run would have, whatever the number of data workers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..colour import CameraColour, rggb_gains, stage_gain
from ..model import LINEAR_CAMERA_WB, OUTPUT_SPACES, SRGB
from . import noise
from .augment import dihedral, random_geometry
from .cache import DEFAULT_CACHE_DIR, CachedRaw, cache_photo, cache_raw
from .split import list_raws, raw_is_eval_only, raw_training_rows, split_photos
from .unprocess import REAL_XYZ_TO_CAMS, camera_colour, mosaic, process, random_colour, sony_colour, unprocess_rgb
from .unprocess import white_balanced

log = logging.getLogger(__name__)

SID_MAX_RATIO = 300.0


@dataclass
class Pair:
    """One training example before batching."""

    dark: np.ndarray
    """Normalised dark mosaic (H x W float32, RGGB), not yet amplified."""
    ratio: float
    target: np.ndarray
    """Target in the source's output space, H x W x 3 float32 in [0, 1]."""
    wb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """White balance the input gets before amplification (linear space; ones for sRGB)."""
    colour: CameraColour | None = None
    """Linear space: the camera colour whose stage renders the target for the user (the loss's view)."""


class Source(Protocol):
    name: str
    space: str

    def sample(self, rng: np.random.Generator, size: int) -> Pair: ...


@dataclass
class RawSource:
    """Real raws, made dark with the noise model; eval rows and eval-only files are excluded."""

    raws: list[CachedRaw]
    name: str = "raw"
    space: str = SRGB
    bank: noise.NoiseBank | None = None
    """Noise of many cameras (linear space); None: the SID camera's alone, as the paper's nets were trained."""
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, folder: Path, cache_dir: Path, space: str = SRGB,
                    bank: noise.NoiseBank | None = None) -> RawSource:
        raws = [cache_raw(p, cache_dir) for p in list_raws(folder) if not raw_is_eval_only(p)]
        if not raws:
            raise ValueError(f"{folder}: no training raws (eval-only files are skipped)")
        return cls(raws, space=space, bank=bank)

    def _open(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._arrays:  # opened lazily, once per worker process
            raw = self.raws[i]
            self._arrays[i] = (raw.mosaic(), raw.linear() if self.space == LINEAR_CAMERA_WB else raw.target())
        return self._arrays[i]

    def sample(self, rng: np.random.Generator, size: int) -> Pair:
        i = int(rng.integers(len(self.raws)))
        mos, tgt = self._open(i)
        geo = random_geometry(rng, raw_training_rows(mos.shape[0]), mos.shape[1], size)
        clean = geo.apply(mos).astype(np.float32)
        target = geo.apply(tgt).astype(np.float32) / np.float32(65535)
        params = self.bank.sample(rng) if self.bank is not None else noise.sample_params(rng)
        dark = noise.make_dark(clean, params, rng)
        if self.space != LINEAR_CAMERA_WB:
            return Pair(dark, params.ratio, target)
        colour = self.raws[i].colour
        return Pair(dark, params.ratio, target, colour.wb, colour)


@dataclass
class CleanSource:
    """Photographs unprocessed into raws; held-out photographs are excluded."""

    photos: list[Path]
    sony_share: float = 0.25
    """sRGB space: fraction of samples given the SID camera's colour matrix instead of a random Brooks one."""
    name: str = "clean"
    space: str = SRGB
    bank: noise.NoiseBank | None = None
    matrices: tuple = REAL_XYZ_TO_CAMS
    """Linear space: the real cameras' XYZ -> camera matrices photographs are unprocessed with."""
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, folder: Path, cache_dir: Path, space: str = SRGB, bank: noise.NoiseBank | None = None,
                    matrices: Sequence[np.ndarray] = ()) -> CleanSource:
        train, _ = split_photos(folder)
        if not train:
            raise ValueError(f"{folder}: no training photographs")
        return cls([cache_photo(p, cache_dir) for p in train], space=space, bank=bank,
                   matrices=(*REAL_XYZ_TO_CAMS, *matrices))

    def sample(self, rng: np.random.Generator, size: int) -> Pair:
        i = int(rng.integers(len(self.photos)))
        if i not in self._arrays:
            self._arrays[i] = np.load(self.photos[i], mmap_mode="r")
        photo = self._arrays[i]
        h, w = photo.shape[:2]
        if h < size or w < size:
            raise ValueError(f"{self.photos[i]}: {w}x{h} is smaller than the crop {size}")
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        rgb = dihedral(photo[top : top + size, left : left + size], rng).astype(np.float32) / np.float32(65535)
        if self.space == LINEAR_CAMERA_WB:
            colour = camera_colour(rng, self.matrices)
            cam = unprocess_rgb(rgb, colour)
            params = self.bank.sample(rng) if self.bank is not None else noise.sample_params(rng)
            return Pair(noise.make_dark(mosaic(cam), params, rng), params.ratio, white_balanced(cam, colour),
                        colour.wb, colour)
        colour = sony_colour(rng) if rng.random() < self.sony_share else random_colour(rng)
        cam = unprocess_rgb(rgb, colour)
        params = noise.sample_params(rng)
        return Pair(noise.make_dark(mosaic(cam), params, rng), params.ratio, process(cam, colour))


_EXPOSURE = re.compile(r"_(\d+(?:\.\d+)?)s\.\w+$")


def sid_exposure(path: str) -> float:
    """Exposure time from a SID file name: '00001_00_0.04s.ARW' -> 0.04."""
    m = _EXPOSURE.search(path)
    if not m:
        raise ValueError(f"{path}: no exposure time in the name (SID names end in _<seconds>s.ARW)")
    return float(m.group(1))


def read_sid_list(list_file: Path) -> list[tuple[Path, Path, float]]:
    """(short, long, GT ratio) per line of a SID list file; paths are relative to its folder."""
    root = list_file.parent
    pairs = []
    for line in list_file.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        short, long_ = (root / p for p in parts[:2])
        ratio = min(sid_exposure(parts[1]) / sid_exposure(parts[0]), SID_MAX_RATIO)
        pairs.append((short, long_, ratio))
    if not pairs:
        raise ValueError(f"{list_file}: no pairs")
    return pairs


@dataclass
class SidSource:
    """Real SID pairs; each file is decoded once (dark mosaics and LibRaw-rendered long exposures)."""

    pairs: list[tuple[CachedRaw, CachedRaw, float]]
    name: str = "sid"
    space: str = SRGB
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_list(cls, list_file: Path, cache_dir: Path) -> SidSource:
        decoded: dict[Path, CachedRaw] = {}

        def get(p: Path) -> CachedRaw:
            if p not in decoded:
                decoded[p] = cache_raw(p, cache_dir)
            return decoded[p]

        return cls([(get(short), get(long_), r) for short, long_, r in read_sid_list(Path(list_file))])

    def sample(self, rng: np.random.Generator, size: int) -> Pair:
        i = int(rng.integers(len(self.pairs)))
        if i not in self._arrays:
            short, long_, _ = self.pairs[i]
            self._arrays[i] = (short.mosaic(), long_.target())
        dark, tgt = self._arrays[i]
        h, w = min(dark.shape[0], tgt.shape[0]), min(dark.shape[1], tgt.shape[1])
        geo = random_geometry(rng, h, w, size)
        return Pair(geo.apply(dark).astype(np.float32), self.pairs[i][2],
                    geo.apply(tgt).astype(np.float32) / np.float32(65535))


@dataclass(frozen=True)
class SourceSpec:
    """``KIND=PATH[@WEIGHT]`` from the command line, e.g. ``raw=../shared/data/raw@1``."""

    kind: str
    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        kind, sep, rest = text.partition("=")
        if not sep or kind not in SOURCE_KINDS:
            raise ValueError(f"source {text!r}: expected KIND=PATH[@WEIGHT] with KIND in {', '.join(SOURCE_KINDS)}")
        path, _, weight = rest.partition("@")
        return cls(kind, Path(path).expanduser(), float(weight) if weight else 1.0)

    def open(self, cache_dir: Path, space: str = SRGB, bank: noise.NoiseBank | None = None,
             matrices: Sequence[np.ndarray] = ()) -> Source:
        if self.kind == "raw":
            return RawSource.from_folder(self.path, cache_dir, space, bank)
        if self.kind == "clean":
            return CleanSource.from_folder(self.path, cache_dir, space, bank, matrices)
        if space != SRGB:
            raise ValueError("SID pairs are rendered to sRGB only: use them with --output-space srgb")
        return SidSource.from_list(self.path, cache_dir)


SOURCE_KINDS = ("raw", "clean", "sid")


class PairDataset(Dataset):
    """Index -> (amplified input 1 x S x S, target 3 x S x S, colour-stage matrix 3 x 3, its gain);
    deterministic in (seed, index). sRGB pairs get the identity and 1 (their target is the picture)."""

    def __init__(self, sources: Sequence[Source], weights: Sequence[float], crop: int, seed: int) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per source and at least one source")
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"source weights {list(weights)} must be >= 0 with a positive sum")
        self.sources = list(sources)
        self.probs = w / w.sum()
        self.crop = crop
        self.seed = seed

    def __len__(self) -> int:
        return 2**62

    def pair(self, index: int) -> Pair:
        rng = np.random.default_rng([self.seed, index])
        source = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
        return source.sample(rng, self.crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.pair(index)
        dark = p.dark
        if p.wb != (1.0, 1.0, 1.0):
            dark = dark * np.tile(rggb_gains(p.wb), (dark.shape[0] // 2, dark.shape[1] // 2))
        x = np.clip(dark * np.float32(p.ratio), 0.0, 1.0)  # GT-ratio amplification, clipped as SID does
        target = torch.from_numpy(np.ascontiguousarray(p.target.transpose(2, 0, 1)))
        if p.colour is None:
            matrix, gain = np.eye(3), 1.0
        else:
            matrix, gain = p.colour.cam_to_rgb, stage_gain(p.colour.wb)
        return (torch.from_numpy(x[None]), target, torch.from_numpy(matrix.astype(np.float32)),
                torch.tensor(gain, dtype=torch.float32))


class SequentialFrom(Sampler[int]):
    """Sample indices start, start + 1, ... (endless): batch b of a run is always the same samples."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i
            i += 1


def open_sources(specs: Sequence[SourceSpec], cache_dir: Path = DEFAULT_CACHE_DIR, space: str = SRGB,
                 bank: noise.NoiseBank | None = None) -> tuple[list[Source], list[float]]:
    """Open every source; in linear space the photographs are also unprocessed with the colour
    matrices of the training raws (real cameras beyond the built-in ones)."""
    if space not in OUTPUT_SPACES:
        raise ValueError(f"output space {space!r} is not one of {', '.join(OUTPUT_SPACES)}")
    raws = [s.open(Path(cache_dir), space, bank) for s in specs if s.kind == "raw"]
    matrices = [r.colour.xyz_to_cam for src in raws for r in src.raws]
    by_kind = iter(raws)
    sources = [next(by_kind) if s.kind == "raw" else s.open(Path(cache_dir), space, bank, matrices) for s in specs]
    for spec, src in zip(specs, sources):
        log.info("source %s: %s (weight %g)", spec.kind, spec.path, spec.weight)
    return sources, [s.weight for s in specs]
