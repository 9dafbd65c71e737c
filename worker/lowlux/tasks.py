"""A job and its files as the worker holds them: what a ``status`` reply shows, and what the
:class:`~lowlux.jobs.Scheduler` queues. The scheduler changes them under its lock; these classes only
hold the state and say what it means."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import TERMINAL_STATES, new_id

LOCAL = "local"
"""The owner of every job from the local endpoint; a remote job's owner is its client's CURVE key."""


@dataclass(eq=False)
class FileTask:
    """One raw file of a job, as the pipeline processes it."""

    job: Job
    index: int
    source: str
    """Path on the worker's disk (for uploads: the spooled copy)."""
    display: str
    """The path as the client named it; shown in status and error messages."""
    state: str = "queued"
    stage: str | None = None
    """decoding, inferring or encoding while running."""
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    uploaded: bool = True
    """False while an upload job waits for this file's bytes; such a file is not yet schedulable."""
    started: float | None = None
    finished: float | None = None
    pixels: int = 0
    """The frame's size counted in flight until the file ends: expected when the file is taken, the
    decoded frame's once known (see Scheduler.next_task)."""
    names: list[str] = field(default_factory=list)
    """Upload jobs: the outputs' names as the client names them (from its own source name)."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def schedulable(self) -> bool:
        return self.state == "queued" and self.uploaded

    @property
    def wire_outputs(self) -> list[str]:
        """What a client is told of the outputs: paths, or for uploads the names it gave them."""
        if self.job.spool is None:
            return list(self.outputs)
        if self.outputs and len(self.names) == len(self.outputs):  # not the worker's spool names
            return list(self.names)
        return [Path(p).name for p in self.outputs]

    def to_wire(self) -> dict[str, Any]:
        outputs = self.wire_outputs
        return {"index": self.index, "state": self.state, "stage": self.stage, "source": self.display,
                "outputs": list(outputs), "error": self.error, "started": self.started, "finished": self.finished}


@dataclass(eq=False)
class Job:
    client: str
    options: Any
    """The ``EnhanceOptions`` every file of the job uses."""
    owner: str = "local"
    """Who may see and cancel it: "local", or the CURVE key of a remote peer."""
    spool: Path | None = None
    """Folder holding an upload job's raws and TIFFs on the worker."""
    id: str = field(default_factory=new_id)
    tasks: list[FileTask] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    cancel_requested: bool = False
    error: str | None = None
    """A failure of the job as a whole (its files could not even be queued)."""
    finished_at: float | None = None
    last_activity: float = field(default_factory=time.monotonic)
    told: bool = False
    """A client has heard how the job ended (a status showing it finished; for uploads, its release):
    a stopping worker waits for that, a little while (see ``ServerConfig.linger``)."""

    def add_files(self, sources: list[str], displays: list[str] | None = None, *, uploaded: bool = True) -> None:
        displays = displays or sources
        self.tasks = [FileTask(self, i, s, d, uploaded=uploaded) for i, (s, d) in enumerate(zip(sources, displays))]

    @property
    def finished_count(self) -> int:
        return sum(t.terminal for t in self.tasks)

    @property
    def terminal(self) -> bool:
        return all(t.terminal for t in self.tasks)

    @property
    def state(self) -> str:
        """queued, running, then done (even if some files failed), failed (the job itself), or cancelled."""
        if self.terminal:
            if self.error:
                return "failed"
            return "cancelled" if self.cancel_requested else "done"
        if any(t.state != "queued" for t in self.tasks):
            return "running"
        return "queued"

    def summary(self) -> dict[str, Any]:
        total, finished = len(self.tasks), self.finished_count
        counts = collections.Counter(t.state for t in self.tasks)
        return {"job": self.id, "state": self.state, "finished": finished, "total": total,
                "percent": round(100.0 * finished / total, 1) if total else 100.0,
                "counts": {s: counts.get(s, 0) for s in ("queued", "running", "done", "failed", "cancelled")},
                "client": self.client, "created": self.created, "error": self.error}

    def to_wire(self) -> dict[str, Any]:
        return {**self.summary(), "files": [t.to_wire() for t in self.tasks]}
