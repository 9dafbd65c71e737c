"""Jobs, their files, and the fair queue the worker's pipeline draws from.

Every state change happens under one condition variable, so the request loop (status, cancel) and the
pipeline threads (decode, net, encode) always see a consistent picture. Fairness: each client (a
name the client sends, or the CURVE key of a remote peer) has its own FIFO of jobs, and the pipeline
takes one file from each client with queued work in turn, so a 500-file batch does not make a
one-file export from darktable wait for the whole batch. The job and file records themselves are
:mod:`lowlux.tasks`'s. Local and remote clients' queued files are counted apart, and each remote client
against its own share, so no remote client can make the worker ``busy`` for the others.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .tasks import LOCAL, FileTask, Job

__all__ = ["LOCAL", "MAX_AWAITING_UPLOAD_PER_PEER", "MAX_PIXELS_IN_FLIGHT", "MAX_QUEUED_FILES", "MAX_QUEUED_PER_PEER",
           "FileTask", "Job", "QueueFull", "Scheduler"]

MAX_PIXELS_IN_FLIGHT = 50_000_000
"""Decoded frames held at once (waiting, on the net, being written) before the next raw is decoded."""
MAX_QUEUED_FILES = 10_000
"""Files waiting at once on a worker, counted apart for local and for remote clients (so remote ones
never crowd out local ones); a submit beyond that is refused as busy."""
MAX_QUEUED_PER_PEER = 3000
"""Files one remote client (CURVE key) may have waiting at once."""
MAX_AWAITING_UPLOAD_PER_PEER = 2000
"""Files one remote client may have announced and not yet sent: they hold places until they arrive
(or for ``upload_timeout``), so a client that never sends cannot hold many."""


class QueueFull(Exception):
    """Accepting the job would exceed the worker's bound on queued files."""


class Scheduler:
    """The job table and the fair queue; thread-safe."""

    def __init__(self, max_pending_files: int = MAX_QUEUED_FILES, *, per_peer: int = MAX_QUEUED_PER_PEER,
                 awaiting_per_peer: int = MAX_AWAITING_UPLOAD_PER_PEER) -> None:
        self.max_pending_files = max_pending_files
        self.per_peer = per_peer
        self.awaiting_per_peer = awaiting_per_peer
        self._pending_by_owner: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, collections.deque[Job]] = {}
        self._turn: collections.deque[str] = collections.deque()
        self._pending = 0
        self._running = 0
        self._pixels_in_flight = 0
        self._expected_pixels = 0
        """The last decoded frame's size: the guess for the next one (0: none decoded yet)."""
        self._waiting_for_room = 0
        """Decoders waiting in :meth:`admit_pixels`: while one waits, no new file is taken."""
        self._stopping = False
        self._stopping_hard = False
        self.on_change: Callable[[], None] | None = None
        """Called (under the lock, from any thread) whenever a file reaches its final state."""

    # ---- requests ----------------------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("the worker is shutting down")
            self._check_room_locked(job)
            self._jobs[job.id] = job
            self._pending += len(job.tasks)
            self._pending_by_owner[job.owner] += len(job.tasks)
            self._enqueue(job)
            self._cond.notify_all()

    def _unpend(self, task: FileTask) -> None:
        self._pending -= 1
        owner = task.job.owner
        self._pending_by_owner[owner] -= 1
        if not self._pending_by_owner[owner]:
            del self._pending_by_owner[owner]

    def _check_room_locked(self, job: Job) -> None:
        """Local jobs count against local ones only; a remote client against its own share and all
        remote clients' together."""
        count = len(job.tasks)
        if job.owner == LOCAL:
            local = self._pending_by_owner[LOCAL]
            if local + count > self.max_pending_files:
                raise QueueFull(f"{local} files are queued; the limit is {self.max_pending_files}")
            return
        mine = self._pending_by_owner[job.owner]
        if mine + count > self.per_peer:
            raise QueueFull(f"you have {mine} files queued; a remote client may have {self.per_peer}")
        awaiting = sum(1 for other in self._jobs.values() if other.owner == job.owner
                       for t in other.tasks if t.state == "queued" and not t.uploaded)
        new = sum(1 for t in job.tasks if not t.uploaded)
        if new and awaiting + new > self.awaiting_per_peer:
            raise QueueFull(f"you have {awaiting} files awaiting upload; a remote client may have "
                            f"{self.awaiting_per_peer} (send their bytes, or cancel those jobs)")
        remote = self._pending - self._pending_by_owner[LOCAL]
        if remote + count > self.max_pending_files:
            raise QueueFull(f"remote clients have {remote} files queued; the limit is {self.max_pending_files}")

    def _enqueue(self, job: Job) -> None:
        queue = self._queues.get(job.client)
        if queue is None:
            queue = self._queues[job.client] = collections.deque()
            self._turn.append(job.client)
        queue.append(job)

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def snapshot(self, job_id: str) -> dict[str, Any] | None:
        with self._cond:
            job = self._jobs.get(job_id)
            return job.to_wire() if job else None

    def progress(self, job_id: str) -> tuple[int, bool]:
        """(files in a final state, whether the job has ended); a forgotten job counts as ended."""
        with self._cond:
            job = self._jobs.get(job_id)
            return (job.finished_count, job.terminal) if job else (0, True)

    def jobs(self, owner: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [j.summary() for j in self._jobs.values() if owner is None or j.owner == owner]

    def mark_uploaded(self, task: FileTask, source: str) -> None:
        with self._cond:
            task.source = source
            task.uploaded = True
            task.job.last_activity = time.monotonic()
            self._cond.notify_all()

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job | None:
        """Queued files are cancelled now; a file already running finishes its current stage, then stops."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if not job.terminal:
                job.cancel_requested = True
                self._cond.notify_all()  # a decoder waiting for room for one of its files goes on
            for task in job.tasks:
                if task.state == "queued":
                    self._finish_locked(task, "cancelled", error=reason)
            return job

    def fail_job(self, job: Job, reason: str) -> None:
        """The job as a whole failed (e.g. its upload could not be spooled)."""
        with self._cond:
            job.error = reason
            for task in job.tasks:
                if task.state == "queued":
                    self._finish_locked(task, "failed", error=reason)

    def fail_stale_uploads(self, max_age: float) -> int:
        """Files whose bytes never arrived (the client went away mid-upload) fail, so the job can end."""
        now, count = time.monotonic(), 0
        with self._cond:
            for job in self._jobs.values():
                if job.spool is None or now - job.last_activity < max_age:
                    continue
                for task in job.tasks:
                    if task.state == "queued" and not task.uploaded:
                        self._finish_locked(task, "failed", error=f"{task.display}: the upload never arrived")
                        count += 1
        return count

    # ---- the pipeline ------------------------------------------------------------------------------------

    def next_task(self, timeout: float | None = None, *, max_pixels_in_flight: int | None = None) -> FileTask | None:
        """The next file, one client at a time in turn; None once stopping (or after ``timeout``).

        With ``max_pixels_in_flight``, waits while the frames in flight (being decoded, decoded and
        not yet finished) plus the next one's would exceed it, unless none is in flight: decoding
        ahead must not hold several 60 MP frames at once. The next frame is expected to be the size of
        the last one decoded, and that is reserved the moment the file is taken (:meth:`admit_pixels`
        and :meth:`hold_pixels` put the real size in its place), so several decoders never start more
        than the bound between them; before any frame is known the guess is the whole bound, so the
        first file decodes alone.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._stopping:
                need = self._expected_pixels or max_pixels_in_flight or 0
                crowded = max_pixels_in_flight is not None and (
                    self._waiting_for_room > 0
                    or self._pixels_in_flight > 0 and self._pixels_in_flight + need > max_pixels_in_flight)
                task = None if crowded else self._pick_locked()
                if task is not None:
                    task.state, task.stage, task.started = "running", "decoding", time.time()
                    self._unpend(task)
                    self._running += 1
                    if max_pixels_in_flight is not None:
                        task.pixels = need
                        self._pixels_in_flight += need
                    return task
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining if remaining is not None else 1.0)
            return None

    def _pick_locked(self) -> FileTask | None:
        for _ in range(len(self._turn)):
            client = self._turn[0]
            self._turn.rotate(-1)
            queue = self._queues[client]
            task = self._first_schedulable(queue)
            if task is not None:
                return task
            if not queue:  # nothing left for this client
                del self._queues[client]
                self._turn.remove(client)
        return None

    @staticmethod
    def _first_schedulable(queue: collections.deque[Job]) -> FileTask | None:
        while queue and not any(t.state == "queued" for t in queue[0].tasks):
            queue.popleft()  # finished or cancelled jobs leave the queue
        for job in queue:
            for task in job.tasks:
                if task.schedulable:
                    return task
        return None

    def hold_pixels(self, task: FileTask, pixels: int) -> None:
        """Count a decoded frame in flight until its file ends (done, failed or cancelled), in place of
        what was reserved for it when it was taken."""
        with self._cond:
            if task.terminal:
                return
            self._pixels_in_flight += pixels - task.pixels
            task.pixels = self._expected_pixels = pixels
            self._cond.notify_all()  # a smaller frame than reserved leaves room for the next decoder

    def admit_pixels(self, task: FileTask, pixels: int, max_pixels_in_flight: int | None) -> None:
        """Wait until a frame of ``pixels`` fits beside the others in flight, then count it.

        Called by a decoder between reading the raw's header and unpacking it, in place of the guess
        made when the file was taken: a 60 MP frame behind a batch of 12 MP ones waits here rather than
        decode beside another. While it waits it holds nothing, so decoders waiting together never
        block each other, and no decoder takes a new file, so what is in flight drains and the frame
        is never starved by smaller ones. It goes ahead when it fits or when nothing else is in flight,
        and at once when the worker stops or its job ends (the next stage boundary then cancels it).
        """
        with self._cond:
            self._pixels_in_flight -= task.pixels
            task.pixels = 0
            self._waiting_for_room += 1
            try:
                while (max_pixels_in_flight is not None and not self._stopping and not task.terminal
                       and not task.job.cancel_requested and self._pixels_in_flight > 0
                       and self._pixels_in_flight + pixels > max_pixels_in_flight):
                    self._cond.wait(1.0)
            finally:
                self._waiting_for_room -= 1
                self._cond.notify_all()
            if not task.terminal:
                task.pixels = pixels
                self._pixels_in_flight += pixels

    @property
    def pixels_in_flight(self) -> int:
        return self._pixels_in_flight

    def start_stage(self, task: FileTask, stage: str) -> bool:
        """Enter the next stage, or False (and the file is cancelled) if it should not go on.

        A cancelled job stops at the next boundary. On a graceful stop only the file already on the net
        goes on (to its TIFF); files waiting for the net are cancelled. In a hurry, encoding is skipped too.
        """
        with self._cond:
            reason = None
            if task.job.cancel_requested:
                reason = "cancelled by request"
            elif self._stopping_hard or (self._stopping and stage == "inferring"):
                reason = "cancelled: the worker is shutting down"
            if reason:
                self._finish_locked(task, "cancelled", error=reason)
                return False
            task.stage = stage
            return True

    def finish(self, task: FileTask, state: str, *, outputs: list[str] | None = None, error: str | None = None) -> None:
        with self._cond:
            self._finish_locked(task, state, outputs=outputs, error=error)

    def _finish_locked(self, task: FileTask, state: str, *, outputs: list[str] | None = None,
                       error: str | None = None) -> None:
        if task.terminal:
            return
        if task.state == "queued":
            self._unpend(task)
        else:
            self._running -= 1
        self._pixels_in_flight -= task.pixels
        task.state, task.stage, task.finished = state, None, time.time()
        task.outputs = list(outputs or ())
        task.error = error
        job = task.job
        job.last_activity = time.monotonic()
        if job.terminal:
            job.finished_at = time.monotonic()
        self._cond.notify_all()
        if self.on_change is not None:
            self.on_change()

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def stop(self, *, hurry: bool = False, reason: str = "cancelled: the worker is shutting down") -> None:
        """Cancel every queued file and wake the pipeline; ``hurry`` also cancels files between stages."""
        with self._cond:
            self._stopping = True
            self._stopping_hard = self._stopping_hard or hurry
            for job in self._jobs.values():
                for task in job.tasks:
                    if task.state == "queued":
                        self._finish_locked(task, "cancelled", error=reason)
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def hurrying(self) -> bool:
        return self._stopping_hard

    def counts(self) -> dict[str, int]:
        with self._cond:
            return {"queued_files": self._pending, "running_files": self._running, "jobs": len(self._jobs)}

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._pending == 0 and self._running == 0

    def purge(self, *, ttl: float, keep: int) -> list[Job]:
        """Forget finished jobs older than ``ttl`` seconds, and the oldest beyond ``keep``; keeps memory flat."""
        now = time.monotonic()
        with self._cond:
            finished = [j for j in self._jobs.values() if j.finished_at is not None and j.terminal]
            finished.sort(key=lambda j: j.finished_at)
            excess = len(finished) - keep
            gone = [j for i, j in enumerate(finished) if i < excess or now - j.finished_at > ttl]
            for job in gone:
                del self._jobs[job.id]
            return gone

    def __iter__(self) -> Iterator[Job]:
        with self._cond:
            return iter(list(self._jobs.values()))
