"""The fixed split between training data and the evaluation set; training never reads eval data.

* Raws: any raw named in :data:`EVAL_RAWS` (the Canon 550D colour chart) is held out whole. Every
  other raw gives its bottom :data:`HOLDOUT_ROWS` rows to evaluation; training crops come only
  from the rows above (a crop window never reaches into the band).
* Photographs: in each folder, sorted by name, every :data:`CLEAN_HOLDOUT_EVERY`-th file
  (the 6th, 12th, ...) is held out whole. The held-out photographs of :data:`COMPARABLE_FOLDERS`
  (every folder but :data:`NEW_FOLDERS`), with the raws' regions (all but :data:`NEW_RAWS`), are the
  evaluation set every weights' numbers are compared on (with the shared data: 12 images, the Canon
  chart, two GoPro raws' crops, Kodak and McMaster photographs); the held-out parts of data added
  later form a second group, reported beside it.
"""

from __future__ import annotations

from pathlib import Path

EVAL_RAWS = frozenset({"canon-550d-colorchart"})
HOLDOUT_ROWS = 768
CLEAN_HOLDOUT_EVERY = 6
RAW_SUFFIXES = frozenset({".dng", ".arw", ".cr2", ".cr3", ".nef", ".orf", ".rw2", ".raf", ".pef", ".srw"})
NEW_RAWS = frozenset({"gopro-fusion-back-GPBK7066", "gopro-hero7-GOPR9231"})
NEW_FOLDERS = frozenset({"cid22-training-pexels", "cid22-validation", "clic2025-test", "clic2025-validation", "gb82"})
EVAL_GROUPS = ("comparable", "new")
PHOTO_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})


def list_raws(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in RAW_SUFFIXES)


def list_photos(folder: Path) -> list[Path]:
    """Photographs in ``folder`` and its direct subfolders (e.g. clean/kodak24, clean/mcmaster)."""
    folder = Path(folder)
    dirs = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    return [p for d in dirs for p in sorted(d.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES]


def raw_is_eval_only(path: Path) -> bool:
    return Path(path).stem in EVAL_RAWS


def raw_training_rows(height: int) -> int:
    """How many rows from the top training may use (even)."""
    return max(0, (height - HOLDOUT_ROWS) // 2 * 2)


def photo_is_held_out(path: Path) -> bool:
    """Every CLEAN_HOLDOUT_EVERY-th photograph of its folder (sorted by name)."""
    path = Path(path)
    siblings = sorted(p.name for p in path.parent.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    return siblings.index(path.name) % CLEAN_HOLDOUT_EVERY == CLEAN_HOLDOUT_EVERY - 1


def split_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """(training, held out) photographs of a folder tree."""
    photos = list_photos(folder)
    held = [p for p in photos if photo_is_held_out(p)]
    return [p for p in photos if p not in held], held


def eval_group(path: Path) -> str:
    """Which evaluation group a held-out photograph or raw belongs to (see the module docstring)."""
    path = Path(path)
    return "new" if path.parent.name in NEW_FOLDERS or path.stem in NEW_RAWS else "comparable"
