"""One worker per endpoint: the flock a running worker holds, so a second ``lowlux serve`` is refused
with the first one's pid, and a crashed worker never blocks the next (the kernel drops the lock)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, lock_path


class ServeLock:
    """An flock held for the worker's lifetime: one worker per endpoint, released even on SIGKILL.

    The file is removed on a clean exit. A rival may have opened it just before; so after locking,
    the lock counts only if the path still names the file we locked (else we retry on the new one).
    """

    def __init__(self, endpoint: str) -> None:
        self.path = lock_path(endpoint, "serve")
        self._fh = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the bind itself guards tcp endpoints
            return
        for _ in range(10):
            try:
                fh = open(self.path, "a+")
            except OSError as exc:
                raise ConfigError(f"cannot create the worker lock {self.path} ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                pid = fh.read().strip() or "?"
                fh.close()
                raise ConfigError(f"another lowlux worker (pid {pid}) already serves this endpoint") from None
            if _same_file(fh, self.path):
                break
            fh.close()  # locked a file its owner just removed: try again on the current one
        else:
            raise ConfigError(f"cannot take the worker lock {self.path}")
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    @property
    def held(self) -> bool:
        return self._fh is not None

    def ensure(self) -> bool:
        """Still ours? A tmp cleaner that removes the socket may take the lock file beside it too: then
        lock a new one, so a second worker cannot start on this endpoint. False if another took it."""
        if self._fh is None or _same_file(self._fh, self.path):
            return True
        old, self._fh = self._fh, None
        try:
            self.acquire()
        except ConfigError:
            return False
        finally:
            old.close()
        return True

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                if _same_file(self._fh, self.path):
                    self.path.unlink()
            self._fh.close()
            self._fh = None


def _same_file(fh: Any, path: Path) -> bool:
    try:
        a, b = os.fstat(fh.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
