"""The client's side of a remote worker's files: what to refuse before uploading a raw, and how a
fetched TIFF is written here (atomically, never replacing a file unless asked to). A remote worker
does not share this disk, so these checks cannot be left to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..atomic import EXISTS, write_bytes
from ..errors import OutputError
from ..naming import names_for_options
from .errors import OutputExists

UPLOAD_RATE = 4 << 20
"""Bytes per second assumed when scaling the timeout of an upload or a download."""


def size_text(n: int) -> str:
    """A byte count as people read it: 512 bytes, 64 KiB, 1.5 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def upload_problem(path: Path, options: dict[str, Any], local: dict[str, Any],
                   max_bytes: int | None = None) -> str | None:
    """Reasons to fail a file before sending it: unreadable, larger than the worker takes (``max_bytes``,
    from its ``health``: a frame over it would be dropped by the socket, unanswered), or its TIFF would
    clobber one here."""
    if not path.exists():
        return f"{path}: no such file"
    if not path.is_file():
        return f"{path}: is not a file"
    if not os.access(path, os.R_OK):
        return f"{path}: is not readable"
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        return (f"{path}: {size_text(size)} exceed the worker's upload limit of {size_text(max_bytes)} "
                "(lowlux serve --max-upload-mb)")
    if not local.get("overwrite"):
        folder = Path(local["out_dir"]) if local.get("out_dir") else path.parent
        for name in names_for_options(path, options):
            if (folder / name).exists():
                return f"{folder / name}: {EXISTS}"
    return None


def write_atomic(path: Path, data: bytes, overwrite: bool) -> Path:
    """Write a fetched TIFF atomically (:func:`lowlux.atomic.write_bytes`). A taken name is the client's
    own ``OutputExists``, part of its API; a file that cannot be written is an ``OutputError`` naming it."""
    try:
        return write_bytes(path, data, overwrite=overwrite)
    except OutputError as exc:
        if exc.reason == EXISTS:
            raise OutputExists(str(exc)) from None
        raise
