"""Where uploaded raws and their TIFFs live on the worker: one private folder per upload job, under
one temporary root that goes with the worker. Uploads come from clients that do not share the
worker's disk, so their names are reduced to harmless basenames here."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ..jobs import Job


def safe_name(name: str) -> str:
    """A client's file name reduced to a harmless basename (kept: the extension tells LibRaw the format)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base)[-120:]
    return base if base and not base.startswith(".") else f"_{base or 'upload'}"


class Spool:
    """Upload folders, created on first use under ``base`` (default: the system's temporary folder)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base
        self.root: Path | None = None
        """The worker's spool folder, once the first upload job made it."""

    def new(self, job_id: str) -> Path:
        if self.root is None:
            if self.base is not None:
                self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="lowlux-spool-", dir=self.base))
        folder = self.root / job_id
        folder.mkdir(mode=0o700)
        return folder

    def sources(self, job: Job, names: list[str]) -> list[str]:
        """Where each of an upload job's raws will be stored (one subfolder per file: names may repeat)."""
        assert job.spool is not None
        return [str(job.spool / f"{i:04d}" / safe_name(name)) for i, name in enumerate(names)]

    @staticmethod
    def remove(job: Job) -> None:
        if job.spool is not None and job.spool.exists():
            shutil.rmtree(job.spool, ignore_errors=True)

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
