"""A front door's fan-out: a job's files go to the cluster, each file's end comes back as a call.

For a program with its own job table (``lowlux serve --cluster`` itself draws its files from the
server's scheduler with :class:`~lowlux.cluster.pipeline.ClusterPipeline`). The runner knows
nothing of its caller: it takes a job id, the files and the options, and calls
``on_file_done(job_id, index, state, outputs, error)`` as each file ends, with the states the
server's scheduler records (``done``, ``failed``, ``cancelled``); :meth:`ClusterRunner.cancel`
cancels what has not finished.

Files are submitted at most ``window`` at a time over all jobs (uploads hold a raw in memory each);
the rest wait in the runner, in order, and a cancel drops them at once. Callbacks are made one at
a time (from the runner's collector thread, or from the caller's for a file that never reached the
cluster: cancelled while waiting, refused before upload), so the server's bookkeeping needs no more
locking than for its own pipeline; a callback must not block for long.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import EngineConfig
from ..errors import LowluxError
from ..pipeline import EnhanceOptions
from . import staging
from .submit import DEFAULT_CONNECT_TIMEOUT, connect, outcome_of, prepare, submit_file

log = logging.getLogger(__name__)

FileDone = Callable[[str, int, str, list[str], "str | None"], None]
"""``on_file_done(job_id, index, state, outputs, error)``."""


@dataclass(eq=False)
class _Job:
    job_id: str
    files: list[Path]
    options: EnhanceOptions
    on_file_done: FileDone
    upload: bool
    remaining: int = 0
    futures: dict = field(default_factory=dict)
    """future -> file index, for the files on the cluster now."""
    cancelled: bool = False


class ClusterRunner:
    """Runs front-door jobs on the Dask cluster at ``address`` with one engine configuration."""

    def __init__(self, address: str, engine_config: EngineConfig, *, upload: bool = False, security=None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, window: int | None = None, client=None) -> None:
        self.address, self.engine_config, self.upload = address, engine_config, upload
        self._own = client is None
        self.client = client or connect(address, security=security, timeout=connect_timeout)
        try:
            prepare(self.client, engine_config, address, timeout=connect_timeout)
        except Exception:
            if self._own:
                self.client.close()
            raise
        self.window = window or 2 * max(1, sum(self.client.nthreads().values()))
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._waiting: collections.deque[tuple[_Job, int]] = collections.deque()
        self._in_flight = 0
        self._done: queue.Queue = queue.Queue()
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._calls = threading.Lock()
        self._collector = threading.Thread(target=self._collect, name="lowlux-cluster-collector", daemon=True)
        self._collector.start()

    # ---- the interface the server's scheduler uses ---------------------------------------------------

    def submit(self, job_id: str, files: Sequence[str | Path], options: EnhanceOptions, on_file_done: FileDone,
               *, upload: bool | None = None) -> None:
        """Queue a job's files (returns at once); ``on_file_done`` is called once per file."""
        staging.check_job_id(job_id)
        job = _Job(job_id, [Path(f) for f in files], options, on_file_done,
                   self.upload if upload is None else upload, remaining=len(files))
        with self._lock:
            if self._closed:
                raise RuntimeError("the cluster runner is closed")
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} is already running")
            self._jobs[job_id] = job
            self._waiting.extend((job, i) for i in range(len(job.files)))
        self._fill()
        if not files:
            self._end(job)

    def cancel(self, job_id: str) -> int:
        """Cancel the job's unfinished files; returns how many (each still gets its callback)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return 0
            job.cancelled = True
            dropped = [(j, i) for j, i in self._waiting if j is job]
            self._waiting = collections.deque((j, i) for j, i in self._waiting if j is not job)
            futures = list(job.futures)
        for _, index in dropped:
            self._report(job, index, "cancelled", [], f"{job.files[index]}: cancelled")
        for future in futures:
            future.cancel()
        return len(dropped) + len(futures)

    def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Block until every file of the job has had its callback; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: job_id not in self._jobs, timeout)

    def close(self) -> None:
        """Cancel every job, stop the collector and disconnect (if the runner opened the connection)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        for job_id in jobs:
            self.cancel(job_id)
        with self._idle:  # every cancelled file gets its callback before the collector stops
            self._idle.wait_for(lambda: not self._jobs, timeout=10)
        self._done.put(None)
        if getattr(self, "_collector", None) is not None and self._collector is not threading.current_thread():
            self._collector.join(timeout=10)
        if self._own:
            self.client.close()

    def __enter__(self) -> ClusterRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- inside ----------------------------------------------------------------------------------------

    def _fill(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or self._in_flight >= self.window:
                    return
                job, index = self._waiting.popleft()
                self._in_flight += 1
            try:
                future = submit_file(self.client, job.files[index], index, job.job_id, job.options,
                                     self.engine_config, job.upload)
            except LowluxError as exc:
                with self._lock:
                    self._in_flight -= 1
                self._report(job, index, "failed", [], str(exc))
                continue
            with self._lock:
                job.futures[future] = index
                cancelled = job.cancelled
            future.add_done_callback(self._done.put)
            if cancelled:  # cancelled while this file was being submitted
                future.cancel()

    def _collect(self) -> None:
        while True:
            future = self._done.get()
            if future is None:
                return
            with self._lock:
                owner = next((j for j in self._jobs.values() if future in j.futures), None)
                if owner is None:
                    continue
                index = owner.futures.pop(future)
                self._in_flight -= 1
            try:
                if future.cancelled():
                    self._report(owner, index, "cancelled", [], f"{owner.files[index]}: cancelled")
                else:
                    outcome = outcome_of(future, owner.files[index], owner.options, owner.upload)
                    future.release()
                    if isinstance(outcome, LowluxError):
                        self._report(owner, index, "failed", [], str(outcome))
                    else:
                        self._report(owner, index, "done", [str(p) for p in outcome], None)
            except Exception:  # the collector must outlive any one file or callback
                log.exception("cluster job %s, file %d: result not handled", owner.job_id, index)
            self._fill()

    def _report(self, job: _Job, index: int, state: str, outputs: list[str], error: str | None) -> None:
        try:
            with self._calls:
                job.on_file_done(job.job_id, index, state, outputs, error)
        except Exception:
            log.exception("cluster job %s: the file callback failed", job.job_id)
        with self._lock:
            job.remaining -= 1
            finished = job.remaining == 0
        if finished:
            self._end(job)

    def _end(self, job: _Job) -> None:
        if not job.upload:  # the job's hidden folders, removed by a worker (it sees the shared storage)
            from distributed import fire_and_forget

            from .submit import job_folders

            fire_and_forget(self.client.submit(staging.remove_job_dirs, job_folders(job.files, job.options),
                                               job.job_id, key=f"lowlux-{job.job_id}-cleanup", pure=False))
        with self._idle:
            self._jobs.pop(job.job_id, None)
            self._idle.notify_all()
