"""What can go wrong talking to a worker, as the client's callers see it (``lowlux client`` maps these
to its exit status: unavailable 3, refused 2)."""

from __future__ import annotations

from ..errors import LowluxError


class WorkerUnavailable(LowluxError):
    """No worker answered (none running, dead, hung, or refusing our keys)."""


class WorkerStartError(WorkerUnavailable):
    """A worker was started but did not come up; the message carries the end of its log."""


class WorkerError(LowluxError):
    """The worker answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class OutputExists(LowluxError):
    """A fetched TIFF would replace a file here, and overwriting was not asked for."""
