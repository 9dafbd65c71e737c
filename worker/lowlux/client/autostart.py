"""Starting a worker when none answers: ``lowlux serve`` detached, its log in the private runtime
folder, and a lock file so that concurrent clients start exactly one.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import lock_path, log_path
from .errors import WorkerStartError

log = logging.getLogger(__name__)

START_TIMEOUT = 180.0
AUTOSTART_IDLE_TIMEOUT = 1800.0
"""An auto-started worker exits after half an hour without work; the next client call starts another."""


@contextlib.contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock, waited for up to ``timeout`` seconds (a no-op where flock does not exist)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"another client has been starting a worker for {timeout:.0f} s "
                                           f"(lock {path})") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def spawn_worker(endpoint: str, *, weights: str | Path | None = None, device: str | None = None,
                 idle_timeout: float = AUTOSTART_IDLE_TIMEOUT, luma_smoothing: bool = False
                 ) -> tuple[subprocess.Popen, Path]:
    """Start ``lowlux serve`` detached from this process (own session, log file); returns it and its log."""
    cmd = [sys.executable, "-m", "lowlux.cli", "-v", "serve", "--endpoint", endpoint,
           "--idle-timeout", f"{idle_timeout:g}"]
    if weights:
        cmd += ["--weights", str(Path(weights).expanduser().resolve())]
    if device and device != "auto":
        cmd += ["--device", device]
    if luma_smoothing:
        cmd += ["--luma-smoothing"]
    log_file = log_path(endpoint)
    with contextlib.suppress(OSError):
        if log_file.stat().st_size > 4 << 20:
            log_file.replace(log_file.with_suffix(".log.1"))
    with open(log_file, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/", close_fds=True)
    log.info("started a worker (pid %d) on %s; log: %s", proc.pid, endpoint, log_file)
    return proc, log_file


def spawn_lock(endpoint: str, timeout: float) -> contextlib.AbstractContextManager[None]:
    """Held by the one client that starts a worker for ``endpoint``; the others wait, then ping it."""
    return file_lock(lock_path(endpoint, "spawn"), timeout)


def start_and_wait(endpoint: str, ping: Callable[[], dict[str, Any] | None], *, weights: str | Path | None,
                   device: str | None, idle_timeout: float, start_timeout: float,
                   luma_smoothing: bool = False) -> dict[str, Any]:
    """Start a worker and wait until its net is loaded; ``ping`` is a quick ping (None: no answer)."""
    proc, log_file = spawn_worker(endpoint, weights=weights, device=device, idle_timeout=idle_timeout,
                                  luma_smoothing=luma_smoothing)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        reply = ping()
        if reply is not None and reply.get("error"):
            raise WorkerStartError(f"the worker started at {endpoint} cannot work: {reply['error']}")
        if reply is not None and reply.get("ready"):
            return reply
        code = proc.poll()
        if code is not None:
            reply = ping()  # lost a race with a worker started by hand? then use that one
            if reply is not None:
                return reply
            raise WorkerStartError(f"the worker started for {endpoint} exited with status {code}; "
                                   f"end of its log ({log_file}):\n{log_tail(log_file)}")
        time.sleep(0.1)
    raise WorkerStartError(f"the worker started for {endpoint} (pid {proc.pid}) was not ready after "
                           f"{start_timeout:.0f} s; see {log_file}")
