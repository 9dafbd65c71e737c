"""The front door's pipeline: ``lowlux serve --cluster`` restores its queue on a Dask cluster.

:class:`ClusterPipeline` takes the place of :class:`lowlux.batch.WorkerPipeline` in the server, with
the same interface (``start``, ``lookahead``, ``drained``, ``join``) and the same
:class:`~lowlux.jobs.Scheduler`: it takes files in the scheduler's fair order (one client at a time in
turn) and submits each as one Dask task (:mod:`.submit`), at most ``window`` at a time (twice the
cluster's worker threads). The rest of the queue stays in the scheduler, so a cancel drops it at once
and a one-file export from darktable submitted during a long batch starts after the files in flight,
not after the batch.

A file is ``running`` from its submission until its result: stage ``inferring`` while it is on the
cluster, ``encoding`` while its outputs are written here (``upload`` mode). Its end is recorded as the
local pipeline records it: ``done`` with its outputs, or ``failed`` with the reason, naming the file as
the client knows it (never the worker's spool copy, see :func:`lowlux.batch.describe_failure`).

Cancelling reaches the pipeline the way it reaches the local one: :meth:`Scheduler.cancel` cancels a
job's queued files and flags the job; the pipeline looks at its files in flight every tick and cancels
the flagged jobs' futures, recording those files cancelled at once. A task already on a Dask worker
runs on (Dask does not interrupt a running task), but finds its job's hidden folders gone and
publishes nothing (:mod:`.staging`); with ``upload`` its result is simply not written. A graceful stop
lets the files in flight finish; a hurried one cancels them too.

Raws the server spooled for remote clients are read by the cluster's workers where they lie (shared
storage: the spool must be on it) or, with ``upload``, sent with each task as bytes; either way the
TIFFs end up in the spool, where the client fetches them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from ..batch import record_failure
from ..engine import EngineConfig
from ..errors import LowluxError
from ..jobs import FileTask, Job, Scheduler
from ..pipeline import output_paths
from . import staging
from .submit import DEFAULT_CONNECT_TIMEOUT, connect, outcome_of, prepare, submit_file

log = logging.getLogger(__name__)

TICK = 0.05
"""Seconds the pipeline's thread waits for a result or a file before it looks at cancels again."""
REFRESH_EVERY = 10.0
"""Seconds between two looks at the cluster's size (workers join and leave; the window follows)."""


class ClusterPipeline:
    """One thread that drains a :class:`Scheduler` onto the Dask cluster at ``address``; start once,
    stop once. Connecting and loading the engine on the workers happen here, so a cluster that cannot
    be used raises :class:`~lowlux.cluster.ClusterError` (naming the address) before anything is served."""

    def __init__(self, scheduler: Scheduler, address: str, engine_config: EngineConfig, *, upload: bool = False,
                 security: Any = None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, window: int | None = None,
                 client: Any = None) -> None:
        self.scheduler = scheduler
        self.address, self.engine_config, self.upload = address, engine_config, upload
        self._fixed_window = window
        self.workers = self.threads = 0
        self.window = window or 2
        self._own = client is None
        self.client = client or connect(address, security=security, timeout=connect_timeout)
        try:
            prepare(self.client, engine_config, address, timeout=connect_timeout)
            self._refresh()
        except BaseException:
            if self._own:
                self.client.close()
            raise
        self._flight: dict[Any, FileTask] = {}
        """future -> its file, for the files on the cluster now (only this pipeline's thread changes it)."""
        self._done: queue.Queue = queue.Queue()
        self._staged: dict[Job, set[str]] = {}
        """Shared storage: the jobs with files sent, and the folders their hidden staging folders are in."""
        self._thread = threading.Thread(target=self._run, name="lowlux-cluster", daemon=True)
        self._closed = False

    # ---- the interface of WorkerPipeline ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def lookahead(self) -> int:
        """Files taken from the scheduler at most (those on the cluster); a job submitted meanwhile starts
        after these."""
        return self.window

    @property
    def drained(self) -> bool:
        """True once, after ``scheduler.stop()``, every file sent has ended and been recorded."""
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the pipeline to drain after ``scheduler.stop()``, then disconnect; True when it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if not self._closed:
            self._closed = True
            if self._own:
                with contextlib.suppress(Exception):
                    self.client.close()
        return True

    def describe(self) -> dict[str, Any]:
        """What ``health`` tells a local client of the cluster, beside its address (which ``ping`` tells too)."""
        return {"cluster_upload": self.upload, "cluster_workers": self.workers,
                "cluster_threads": self.threads, "cluster_window": self.window, "cluster_in_flight": len(self._flight)}

    # ---- the thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_refresh = time.monotonic() + REFRESH_EVERY
        try:
            while True:
                try:
                    full = len(self._flight) >= self.window
                    self._collect(TICK if full or self.scheduler.stopping else 0.0)
                    self._cancel_flagged()
                    self._clean_ended_jobs()
                    if self.scheduler.stopping:
                        if not self._flight:
                            return
                        continue
                    if not full:
                        task = self.scheduler.next_task(timeout=TICK)
                        if task is not None:
                            self._send(task)
                    if time.monotonic() > next_refresh:
                        next_refresh = time.monotonic() + REFRESH_EVERY
                        self._refresh()
                except Exception:  # nothing a file or the cluster does may end the front door's pipeline
                    log.exception("cluster pipeline: unexpected error (going on)")
                    time.sleep(TICK)
        finally:
            self._give_up_in_flight()
            self._clean_ended_jobs(everything=True)

    def _refresh(self) -> None:
        try:
            nthreads = self.client.nthreads()
        except Exception as exc:
            log.warning("cannot ask the scheduler at %s for its workers: %s", self.address, exc)
            return
        self.workers, self.threads = len(nthreads), sum(nthreads.values())
        self.window = self._fixed_window or 2 * max(1, self.threads)

    def _send(self, task: FileTask) -> None:
        """Submit one file; a file that cannot even be sent (an upload that cannot be read) fails by name."""
        if not self.scheduler.start_stage(task, "inferring"):  # its job was cancelled meanwhile
            return
        source, options = Path(task.source), task.job.options
        try:
            if not self.upload:  # where its attempts stage their outputs: removed when the job ends
                self._staged.setdefault(task.job, set()).add(str(output_paths(source, options)[0].parent))
            future = submit_file(self.client, source, task.index, task.job.id, options, self.engine_config,
                                 self.upload)
        except Exception as exc:
            self._fail(task, exc)
            return
        self._flight[future] = task
        future.add_done_callback(self._done.put)

    def _collect(self, wait: float) -> None:
        """Record every result that has come in, waiting up to ``wait`` seconds for the first."""
        try:
            future = self._done.get(timeout=wait) if wait > 0 else self._done.get_nowait()
        except queue.Empty:
            return
        while True:
            self._settle(future)
            try:
                future = self._done.get_nowait()
            except queue.Empty:
                return

    def _settle(self, future: Any) -> None:
        task = self._flight.pop(future, None)
        if task is None:  # cancelled here already, and recorded so
            return
        try:
            if future.cancelled():
                self.scheduler.finish(task, "cancelled", error=f"{task.display}: cancelled on the cluster")
                return
            if self.upload and not self.scheduler.start_stage(task, "encoding"):
                return  # cancelled while on the cluster: its TIFFs are not written
            outcome = outcome_of(future, Path(task.source), task.job.options, self.upload)
        except Exception as exc:
            self._fail(task, exc)
            return
        finally:
            with contextlib.suppress(Exception):
                future.release()  # a result in hand: never recomputed if its worker dies now
        if isinstance(outcome, LowluxError):
            self._fail(task, outcome)
            return
        self.scheduler.finish(task, "done", outputs=[str(p) for p in outcome])
        log.info("%s -> %s (on the cluster)", task.display, ", ".join(Path(p).name for p in outcome))

    def _cancel_flagged(self) -> None:
        """Cancel the futures of files whose job was cancelled (or all of them, in a hurried stop)."""
        hurry = self.scheduler.hurrying
        flagged = [(f, t) for f, t in self._flight.items() if hurry or t.job.cancel_requested]
        if not flagged:
            return
        for future, task in flagged:
            del self._flight[future]
            self.scheduler.start_stage(task, "encoding")  # records the cancellation and its reason
        try:
            self.client.cancel([f for f, _ in flagged])
        except Exception as exc:
            log.warning("cannot cancel %d file(s) on the cluster at %s: %s", len(flagged), self.address, exc)

    def _give_up_in_flight(self) -> None:
        """The thread is ending with files still on the cluster (only after an unexpected error)."""
        if not self._flight:
            return
        flight, self._flight = list(self._flight.items()), {}
        for _, task in flight:
            self.scheduler.finish(task, "failed", error=f"{task.display}: lost: the worker's cluster pipeline stopped")
        with contextlib.suppress(Exception):
            self.client.cancel([f for f, _ in flight])

    def _clean_ended_jobs(self, everything: bool = False) -> None:
        """Remove the hidden staging folders of jobs that ended (shared storage), once none of their
        files is on the cluster: a cancelled file's task that still runs there then publishes nothing."""
        if not self._staged:
            return
        busy = {task.job for task in self._flight.values()}
        for job in [j for j in self._staged if everything or (j.terminal and j not in busy)]:
            folders = sorted(self._staged.pop(job))
            with contextlib.suppress(Exception):  # by a worker too, in case this machine sees less of the storage
                from distributed import fire_and_forget

                fire_and_forget(self.client.submit(staging.remove_job_dirs, folders, job.id,
                                                   key=f"lowlux-{job.id}-cleanup", pure=False))
            with contextlib.suppress(OSError):
                staging.remove_job_dirs(folders, job.id)

    def _fail(self, task: FileTask, exc: BaseException) -> None:
        record_failure(self.scheduler, task, exc)
