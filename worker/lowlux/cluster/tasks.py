"""What a Dask worker runs for one file: restore it with the process's warm engine.

Two ways in. With shared storage the worker reads the raw where the client named it and writes the
outputs itself, next to it or in ``out_dir`` (:func:`restore_shared`), through :mod:`.staging` so a
rerun of the task never duplicates or refuses its own output. With ``upload`` the raw arrives as
bytes (:func:`restore_upload`): the worker restores it in a private temporary folder and returns the
outputs' bytes, and the client writes them atomically. Either way the files are those a local
``lowlux enhance`` writes: the same pipeline, the same names, the raw's metadata.

A task never raises for a file's own problem: it returns a :class:`FileResult` whose error names the
file and the reason, because one bad file must not stop the batch, and because lowlux's exceptions
(which take the path and the reason apart) are not meant to cross a process boundary. Only the loss
of the worker reaches the client as a failed future.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..engine import EngineConfig
from ..errors import InputError, LowluxError, OutputError
from ..pipeline import EnhanceOptions, decode, encode, enhance_file, infer, output_paths
from . import staging
from .engines import worker_engine

HOLD_ENV = "LOWLUX_CLUSTER_TEST_HOLD"
"""Test hook: a folder; a file ``<raw name>.<point>`` there holds the task at that point (``staged``:
restored, not yet published; ``published``: under the final names, result not yet returned) until
the file is removed, after writing ``<raw name>.<point>.<pid>.held``. Lets a test kill the worker there."""


@dataclass
class FileResult:
    """One file's outcome, as a worker sends it back."""

    source: str
    """The raw as the client named it."""
    outputs: list[str] = field(default_factory=list)
    """Final paths (shared storage) or file names (upload) of the written outputs."""
    error: str | None = None
    """The file and the reason, when it failed."""
    data: list[bytes] | None = None
    """Upload mode: each output's bytes, in the order of ``outputs``."""
    seconds: float = 0.0
    host: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def _hold(source: Path, point: str) -> None:
    folder = os.environ.get(HOLD_ENV)
    if not folder or not (Path(folder) / f"{source.name}.{point}").exists():
        return
    hold = Path(folder) / f"{source.name}.{point}"
    marker = Path(folder) / f"{source.name}.{point}.{os.getpid()}.held"
    staged = marker.with_name(f".{marker.name}")
    staged.write_text(str(os.getpid()))
    staged.replace(marker)  # whole or absent: a watcher never reads it half-written
    deadline = time.monotonic() + 120
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _message(exc: BaseException, display: str, replacements: dict[str, str]) -> str:
    """The reason, naming the file as the client knows it (never a worker's private folder)."""
    text = str(exc) if isinstance(exc, LowluxError) else f"internal error ({exc.__class__.__name__}: {exc})"
    for private, public in replacements.items():
        text = text.replace(private, public)
    return text if display in text else f"{display}: {text}"


def _job_still_open(attempt: Path, made: int) -> bool:
    """False when the client removed the job's folders meanwhile (the job ended or was cancelled: this
    attempt is a leftover whose result nobody awaits). The writers recreate a removed folder, hence
    the inode; the recreated folders are removed here so nothing is left behind."""
    try:
        if attempt.stat().st_ino == made:
            return True
    except FileNotFoundError:
        return False
    shutil.rmtree(attempt, ignore_errors=True)
    with contextlib.suppress(OSError):
        attempt.parent.rmdir()  # only if empty: other leftovers remove their own
    return False


def _host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def restore_shared(source: str, index: int, job_id: str, options: EnhanceOptions,
                   config: EngineConfig) -> FileResult:
    """Restore ``source`` (a path the worker sees) and publish its outputs, once per job and file."""
    start = time.perf_counter()
    src = Path(source)
    attempt: Path | None = None
    published = 0
    try:
        finals = output_paths(src, options)
        folder = finals[0].parent
        for out in finals:
            if out.resolve() == src.resolve():
                raise InputError(src, "output would replace the source file")
        todo = finals if options.overwrite else [f for f in finals if not staging.written_by_job(f, job_id, index)]
        if todo and not options.overwrite:
            for out in todo:  # fail before any work, as locally, unless a killed attempt of ours got there
                if out.exists() and not staging.attempted(out, job_id, index):
                    raise OutputError(out, staging.EXISTS)
        if todo:
            engine = worker_engine(config)
            try:
                attempt = staging.attempt_dir(folder, job_id, index)
            except OSError as exc:
                raise OutputError(folder, f"cannot write here ({exc.strerror or exc})") from exc
            made = attempt.stat().st_ino
            local = replace(options, out_dir=attempt, overwrite=True)
            decoded = decode(src, local)
            images = infer(engine, decoded)
            keep = [i for i, out in enumerate(finals) if out in todo]
            decoded.outputs = [decoded.outputs[i] for i in keep]
            staged = encode(decoded, [images[i] for i in keep], local)
            _hold(src, "staged")
            if not _job_still_open(attempt, made):
                raise LowluxError(f"{source}: cancelled (its job ended while it was being restored)")
            for path, final in zip(staged, todo):
                staging.publish(path, final, overwrite=options.overwrite, job_id=job_id, index=index)
                published += 1
            _hold(src, "published")
        return FileResult(source, [str(f) for f in finals], seconds=time.perf_counter() - start, host=_host())
    except Exception as exc:
        if attempt is not None and not published:
            shutil.rmtree(attempt, ignore_errors=True)
        public = {str(attempt): str(attempt.parent.parent)} if attempt is not None else {}
        return FileResult(source, error=_message(exc, source, public), seconds=time.perf_counter() - start,
                          host=_host())


def restore_upload(name: str, data: bytes, display: str, options: EnhanceOptions,
                   config: EngineConfig) -> FileResult:
    """Restore a raw sent as bytes; return the outputs' names and bytes (the client writes them)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lowlux-upload-") as tmp:
        src = Path(tmp) / "in" / Path(name).name
        out_dir = Path(tmp) / "out"
        try:
            src.parent.mkdir()
            src.write_bytes(data)
            del data
            outs = enhance_file(worker_engine(config), src, replace(options, out_dir=out_dir, overwrite=True))
            _hold(src, "published")
            return FileResult(display, [p.name for p in outs], data=[p.read_bytes() for p in outs],
                              seconds=time.perf_counter() - start, host=_host())
        except Exception as exc:
            public = {str(src): display, str(out_dir) + os.sep: ""}
            return FileResult(display, error=_message(exc, display, public), seconds=time.perf_counter() - start,
                              host=_host())
