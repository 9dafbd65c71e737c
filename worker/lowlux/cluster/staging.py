"""Outputs under their final names exactly once, whatever Dask reruns.

Dask reruns a task when the worker running it dies, and also when the worker holding a finished
task's result dies before the client fetched it. A rerun must neither leave a second copy nor fail
because its own earlier attempt already wrote the file (without ``overwrite`` an existing output is
refused, as in a local batch).

So each attempt restores into its own hidden folder beside the outputs,
``<folder>/.lowlux-<job>/<index>-<attempt>/``, under the final names. It is on the same filesystem,
so publishing is atomic, and whatever a killed attempt left half-written stays in the hidden folder,
never under a final name. Without ``overwrite`` an output is published as a hard link (atomic, and it
refuses to clobber) and the staged name stays behind as a receipt: an attempt that finds the final
name taken looks for a file staged *by this job for this file* that is the same inode. If it finds
one, the output is its own and counts as written; if not, the name belongs to someone else and the
file fails as it would locally. On filesystems without hard links the receipt is the content: a
byte-identical file staged by this job for this file. With ``overwrite`` the staged file replaces
the final one (``os.replace``), which a rerun may repeat harmlessly.

The client removes a job's hidden folders once every result is in (:func:`remove_job_dirs`); the
receipts are hard links, so they never cost disk space meanwhile.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..atomic import EXISTS
from ..errors import OutputError

JOB_DIR_PREFIX = ".lowlux-"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def check_job_id(job_id: str) -> str:
    """Job ids become folder names: letters, digits, ``-`` and ``_`` only."""
    if not _SAFE_ID.match(job_id):
        raise ValueError(f"job id {job_id!r} is not usable in a folder name")
    return job_id


def job_dir(folder: Path, job_id: str) -> Path:
    return Path(folder) / f"{JOB_DIR_PREFIX}{check_job_id(job_id)}"


def attempt_dir(folder: Path, job_id: str, index: int) -> Path:
    """A fresh hidden folder for one attempt at file ``index`` of the job (created here)."""
    path = job_dir(folder, job_id) / f"{index}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def _attempts(folder: Path, job_id: str, index: int) -> list[Path]:
    parent = job_dir(folder, job_id)
    return sorted(parent.glob(f"{index}-*")) if parent.is_dir() else []


def attempted(final: Path, job_id: str, index: int, *, besides: Path | None = None) -> bool:
    """Whether an attempt at file ``index`` of this job (other than ``besides``) already began."""
    return any(a != besides for a in _attempts(final.parent, job_id, index))


def written_by_job(final: Path, job_id: str, index: int) -> bool:
    """Whether ``final`` is this job's own output for file ``index``: the same inode as a receipt."""
    if not final.is_file():
        return False
    for attempt in _attempts(final.parent, job_id, index):
        with contextlib.suppress(OSError):
            if os.path.samefile(attempt / final.name, final):
                return True
    return False


def publish(staged: Path, final: Path, *, overwrite: bool, job_id: str, index: int) -> None:
    """Give ``staged`` its final name atomically; an earlier attempt's output counts as done."""
    if overwrite:
        os.replace(staged, final)
        return
    try:
        os.link(staged, final)  # atomic, refuses to clobber; the staged name stays as the receipt
        return
    except FileExistsError:
        if written_by_job(final, job_id, index):
            return
    except OSError:  # no hard links here (some network and FUSE filesystems): no receipts either
        if not final.exists():
            os.replace(staged, final)
            return
        if attempted(final, job_id, index, besides=staged.parent) and _same_content(staged, final):
            return  # an earlier attempt's: without receipts, byte-identical output of this file counts
    raise OutputError(final, EXISTS)


def _same_content(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return filecmp.cmp(a, b, shallow=False)
    return False


def remove_job_dirs(folders: Iterable[Path], job_id: str) -> int:
    """Delete the job's hidden folders (receipts and anything a killed attempt left); returns how many."""
    removed = 0
    for folder in {Path(f) for f in folders}:
        path = job_dir(folder, job_id)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
