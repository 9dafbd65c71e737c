"""Status requests that wait inside the worker.

``status`` with ``wait`` is answered once more than ``since`` of the job's files have finished, the job
has ended, the wait is over, or the worker stops; ``jobs`` with ``wait`` likewise once any of the jobs
in its ``since`` (job -> files seen finished) has moved on. A client that wants to learn of a finished
file at once then has one request in flight instead of a look every few milliseconds: the worker does
nothing for it while nothing changes, and the pipeline's threads keep the CPU and the GIL.

The pipeline wakes the request loop through a pipe (``wake`` is safe from any thread; a full pipe is
already a pending wake-up); the loop polls the pipe's read end beside its sockets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MAX_WAIT = 60.0
"""Longest a request may wait (seconds); a longer ``wait`` is cut to this."""
MAX_WAITING_PER_PEER = 16
"""Requests one client may have waiting at once; beyond that they are answered at once."""
MAX_WAITING = 1024
"""Requests all clients together may have waiting (each local connection is a client of its own)."""


@dataclass
class WaitFor:
    """What a handler returns instead of a reply: answer ``msg`` later, once one of the jobs in
    ``seen`` has more finished files than seen there, or has ended, or ``deadline`` (monotonic) has
    passed. ``answer`` names the request whose reply is then sent (``status`` or ``jobs``)."""

    msg: dict[str, Any]
    peer: Any
    seen: dict[str, int]
    deadline: float
    answer: str = "status"


@dataclass
class Waiting:
    """A parked request: where its reply goes, and what it waits for."""

    sock: Any
    envelope: list[bytes]
    wait: WaitFor


class Waits:
    """The parked requests of one worker, and the pipe that wakes the loop for them."""

    def __init__(self) -> None:
        self._waiting: list[Waiting] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        """The end the request loop polls."""
        return self._read

    def wake(self) -> None:
        """Something changed in the job table (any thread)."""
        if self._write < 0:
            return
        try:
            os.write(self._write, b"\0")
        except OSError:  # full: a wake-up is already pending
            pass

    def drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except OSError:  # empty (BlockingIOError), or closed
            pass

    def room_for(self, peer_key: Any) -> bool:
        """Whether another request of this client may wait (else it is answered at once)."""
        if len(self._waiting) >= MAX_WAITING:
            return False
        return sum(1 for w in self._waiting if w.wait.peer.key == peer_key) < MAX_WAITING_PER_PEER

    def park(self, sock: Any, envelope: list[bytes], wait: WaitFor) -> None:
        self._waiting.append(Waiting(sock, envelope, wait))

    def __len__(self) -> int:
        return len(self._waiting)

    def timeout_ms(self, longest: int) -> int:
        """How long the loop may poll before the next deadline (at most ``longest`` ms)."""
        if not self._waiting:
            return longest
        left = min(w.wait.deadline for w in self._waiting) - time.monotonic()
        return max(0, min(longest, int(left * 1000) + 1))

    def due(self, ready: Callable[[WaitFor], bool], *, all_of_them: bool = False) -> Iterator[Waiting]:
        """Take out and yield the requests to answer now: ``ready`` ones, those past their deadline, or
        every one (``all_of_them``: the worker stops)."""
        now = time.monotonic()
        keep: list[Waiting] = []
        due: list[Waiting] = []
        for w in self._waiting:
            (due if all_of_them or now >= w.wait.deadline or ready(w.wait) else keep).append(w)
        self._waiting = keep
        yield from due

    def close(self) -> None:
        self._waiting.clear()
        fds, self._read, self._write = (self._read, self._write), -1, -1  # never a write to a reused number
        for fd in fds:
            if fd >= 0:
                os.close(fd)
