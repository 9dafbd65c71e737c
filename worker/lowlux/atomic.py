"""Files written under a temporary name beside their final one, then moved into place.

Whatever stops a write halfway (a crash, a cancel, a full disk) leaves at most a hidden temporary
file, never a partial file under the final name that a later run or a user would take for whole.
The temporary name is in the same folder, so the move is a rename on one filesystem, which is atomic.
Where an existing file must not be replaced, the move is a hard link: it fails if the name appeared
since it was checked, where a rename would clobber whatever another writer put there meanwhile.

Only the standard library is used: ``lowlux client`` writes its fetched outputs through this module
and must start without numpy.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

EXISTS = "already exists (use --overwrite to replace it)"
"""Why an output is refused when its name is taken and overwriting was not asked for."""


def temp_beside(path: Path, tag: str = "", suffix: str | None = None) -> Path:
    """A temporary name in ``path``'s folder that no other write (this process's or another's) uses.

    It is hidden, and names the writer's pid so a clean-up can tell a dead writer's leftovers from a
    live one's: ``.<name>.<pid>.<unique><tag>.tmp``. A ``suffix`` stands in for the name's own suffix,
    ``.<stem>.<pid>.<unique><tag><suffix>``, for callers whose leftovers are found by a pattern
    (:func:`lowlux.batch.remove_stale_temporaries` looks for ``.tmp.tif``)."""
    unique = f"{os.getpid()}.{uuid.uuid4().hex[:8]}{tag}"
    if suffix is None:
        return path.with_name(f".{path.name}.{unique}.tmp")
    return path.with_name(f".{path.stem}.{unique}{suffix}")


def move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the complete file ``tmp`` the name ``path``; without ``overwrite`` a taken name is an
    ``OutputError`` and is left as it is.

    Without ``overwrite``, ``tmp`` is still there afterwards (a hard link gives a second name): the
    caller removes it, as it does on failure."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and refuses to clobber
    except FileExistsError as exc:
        raise OutputError(path, EXISTS) from exc
    except OSError:
        # Filesystems without hard links (some network and FUSE ones): check again, then rename.
        if path.exists():
            raise OutputError(path, EXISTS) from None
        os.replace(tmp, path)


@contextlib.contextmanager
def _temporary(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary name beside ``path``, removed however the block ends (after a move it is gone already)."""
    tmp = temp_beside(path)
    try:
        if mode is not None:
            _create(tmp, mode)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _create(tmp: Path, mode: int) -> None:
    """An empty file with ``mode`` from the start: a secret is never readable by others, not even briefly.
    Writers that open the name later truncate it and keep its mode."""
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    os.chmod(tmp, mode)  # the umask may have taken bits away


@contextlib.contextmanager
def replacing(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """``with replacing(path) as tmp:`` write ``tmp``; when the block ends without an exception it
    replaces ``path``, otherwise it is removed and ``path`` stays as it was.

    For files that are always replaced (weights, caches, checkpoints, keys). ``mode`` creates the
    temporary file with those permissions before the block writes it."""
    path = Path(path)
    with _temporary(path, mode) as tmp:
        yield tmp
        os.replace(tmp, path)


def write_bytes(path: str | Path, data: bytes, *, overwrite: bool, fsync: bool = True) -> Path:
    """Write ``data`` as ``path`` (creating its folder), never replacing a file unless ``overwrite``.

    ``fsync`` puts the bytes on disk before the name appears, so a power cut cannot leave an empty
    file under it. Any failure is an ``OutputError`` naming ``path``, and leaves no temporary file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(path, EXISTS)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _temporary(path) as tmp:
            _write(tmp, data, fsync)
            move_into_place(tmp, path, overwrite)
    except OSError as exc:
        raise OutputError(path, f"cannot write ({exc.strerror or exc})") from exc
    return path


def _write(tmp: Path, data: bytes, fsync: bool) -> None:
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
