"""The Python API: :class:`Client`, one connection to one worker, optionally starting it.

``from lowlux.client import Client`` (docs/protocol.md, *Python API*). Start-up time matters — the
darktable script runs ``lowlux client status`` on every poll — so the client imports neither torch,
nor rawpy, nor numpy: only pyzmq and the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .. import protocol as proto
from ..config import lock_path, resolve_endpoint
from ..errors import LowluxError
from ..naming import client_basename, names_for_options
from .autostart import AUTOSTART_IDLE_TIMEOUT, START_TIMEOUT, spawn_lock, start_and_wait
from .connection import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Connection, listening
from .errors import WorkerError, WorkerUnavailable
from .files import UPLOAD_RATE, upload_problem, write_atomic

log = logging.getLogger(__name__)

FETCH_PATIENCE = 120.0
"""Seconds a fetch is asked again while the worker answers ``busy`` (it bounds the TIFFs it sends at once)."""


STATUS_WAIT_POLL = 0.02
"""Longest pause between two looks when the worker does not hold a waiting ``status`` (seconds)."""


class Client:
    """A connection to one worker, optionally starting it. One per thread (ZeroMQ sockets are not thread-safe).

    ``keys`` (a :class:`lowlux.keys.CurveKeys`) selects the remote mode: the raws' bytes are uploaded
    and the TIFFs' bytes fetched back and written locally, as the worker does not share this disk.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, keys: Any = None, name: str | None = None,
                 autostart: bool = False, weights: str | Path | None = None, device: str | None = None,
                 start_timeout: float = START_TIMEOUT, idle_timeout: float = AUTOSTART_IDLE_TIMEOUT,
                 luma_smoothing: bool = False) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.keys = keys
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.autostart = autostart and keys is None  # a remote worker cannot be started from here
        self.weights, self.device, self.luma_smoothing = weights, device, luma_smoothing
        self.start_timeout, self.idle_timeout = start_timeout, idle_timeout
        self.conn = Connection(self.endpoint, timeout=timeout, retries=retries, keys=keys)
        self._checked = False
        self._naming: dict[str, dict[str, Any]] = {}
        """Upload jobs submitted here: the options their fetched TIFFs are named with."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @property
    def remote(self) -> bool:
        return self.keys is not None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.conn.request(op, **fields).body

    # ---- worker lifecycle --------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """The worker's ping reply; starts a worker first when ``autostart`` and none answers."""
        if self.autostart:
            return self.ensure_worker()
        return self.request("ping")

    def _quick_ping(self) -> dict[str, Any] | None:
        """A ping that gives up at once when nothing listens, and after one short try otherwise."""
        try:
            return self.conn.request("ping", retries=1, timeout=min(self.conn.timeout, 2.0)).body
        except WorkerUnavailable:
            return None

    def ensure_worker(self) -> dict[str, Any]:
        """Ping the worker, starting one (just one, whatever other clients do meanwhile) if none answers."""
        if listening(self.endpoint) is not False:
            try:
                reply = self.request("ping")
            except WorkerUnavailable as exc:
                probe = listening(self.endpoint)
                if probe is None or not self.autostart:
                    raise
                if probe:  # alive but silent: starting another would not help
                    raise WorkerUnavailable(f"{exc}; something listens there but does not answer (a hung "
                                            f"worker? its pid is in {lock_path(self.endpoint, 'serve')})") from None
            else:
                self._checked = True
                return reply
        if not self.autostart:
            raise WorkerUnavailable(f"no lowlux worker runs at {self.endpoint}")
        with spawn_lock(self.endpoint, self.start_timeout):
            reply = self._quick_ping()  # another client may have started one while we waited for the lock
            if reply is None:
                reply = start_and_wait(self.endpoint, self._quick_ping, weights=self.weights, device=self.device,
                                       idle_timeout=self.idle_timeout, start_timeout=self.start_timeout,
                                       luma_smoothing=self.luma_smoothing)
        self._checked = True
        return reply

    def _await_exit(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while listening(self.endpoint) is not False and time.monotonic() < deadline:
            time.sleep(0.1)

    def _ensure(self) -> None:
        if self.autostart and not self._checked:
            self.ensure_worker()

    def health(self) -> dict[str, Any]:
        self._ensure()
        return self.request("health")

    def shutdown(self, *, now: bool = False) -> dict[str, Any]:
        return self.request("shutdown", now=now)

    # ---- jobs --------------------------------------------------------------------------------------------

    def submit(self, files: Iterable[str | Path], options: dict[str, Any] | None = None, *,
               hints: dict[str, Any] | None = None) -> str:
        """Queue ``files`` with ``options`` (see docs/protocol.md); returns the job id at once."""
        options = dict(options or {})
        self._ensure()
        if self.remote:
            return self._submit_upload([Path(f) for f in files], options, hints)
        if options.get("out_dir"):
            options["out_dir"] = os.path.abspath(os.path.expanduser(str(options["out_dir"])))
        paths = [os.path.abspath(os.path.expanduser(str(f))) for f in files]
        try:
            body = self.request("submit", files=paths, options=options, client=self.name, hints=hints or {})
        except WorkerError as exc:
            if exc.code != proto.SHUTTING_DOWN or not self.autostart:
                raise
            self._await_exit()  # caught a worker on its way out (idle timeout): start the next one
            self.ensure_worker()
            body = self.request("submit", files=paths, options=options, client=self.name, hints=hints or {})
        for warning in body.get("warnings") or ():
            log.warning("%s", warning)
        return body["job"]

    def _submit_upload(self, files: list[Path], options: dict[str, Any], hints: dict | None) -> str:
        """Remote mode: queue the job, then send each raw's bytes (the worker starts on the first at once)."""
        local = {k: options.pop(k, None) for k in ("out_dir", "overwrite")}
        paths = [str(f.expanduser().absolute()) for f in files]
        body = self.request("submit", files=paths, options=options, client=self.name, hints=hints or {},
                            upload=True)
        job = body["job"]
        self._naming[job] = dict(options)
        max_bytes = self._upload_limit()
        for index, path in enumerate(paths):
            problem = upload_problem(Path(path), options, local, max_bytes)
            if problem:
                self.request("upload", job=job, index=index, error=problem)
                continue
            data = Path(path).read_bytes()
            try:
                self.conn.request("upload", job=job, index=index, blobs=[data],
                                  timeout=self.conn.timeout + len(data) / UPLOAD_RATE)
            except WorkerError as exc:
                message = exc.message if exc.message.startswith(path) else f"{path}: {exc.message}"
                self.request("upload", job=job, index=index, error=message)
        return job

    def _upload_limit(self) -> int | None:
        """The largest raw the worker takes (``health``'s ``limits``); None when it does not say."""
        limit = (self.request("health").get("limits") or {}).get("max_upload_bytes")
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def status(self, job: str, *, wait: float = 0.0, since: int | None = None) -> dict[str, Any]:
        """The job's status; with ``wait``, once more than ``since`` files (default: as many as at the
        first look) have finished, or the job has ended, or ``wait`` seconds have passed.

        The worker holds a waiting request until then, so a caller that starts a process per look (the
        darktable plugin) learns of a finished file at once, and nothing runs meanwhile. A worker that
        answers at once (one that predates waiting) is asked again every few milliseconds."""
        if wait <= 0:
            return self.request("status", job=job)
        fields: dict[str, Any] = {"job": job} if since is None else {"job": job, "since": since}

        def moved_on(status: dict[str, Any]) -> bool:
            seen = fields.setdefault("since", status["finished"])  # the first look's count, then asked for
            return status["finished"] > seen or status["state"] in proto.TERMINAL_STATES

        return self._held("status", wait, fields, moved_on)

    def cancel(self, job: str) -> dict[str, Any]:
        return self.request("cancel", job=job)

    def jobs(self, *, wait: float = 0.0, since: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """The jobs; with ``wait`` and ``since`` (job -> files seen finished), once one of those jobs has
        more finished files or has ended (or is gone), or ``wait`` seconds have passed.

        As with :meth:`status`, the worker holds the request meanwhile; one that answers at once (one
        that predates waiting) is asked again every few milliseconds."""
        if wait <= 0 or not since:
            return self.request("jobs")["jobs"]
        return self._held("jobs", wait, {"since": since}, lambda reply: _moved_on(reply["jobs"], since))["jobs"]

    def _held(self, op: str, wait: float, fields: dict[str, Any],
              moved_on: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Ask ``op`` with ``wait`` until ``moved_on(reply)`` or ``wait`` seconds have passed. The worker
        holds each request until something moved on; a worker that answers at once (one that predates
        waiting) is asked again every few milliseconds, then less often."""
        deadline = time.monotonic() + wait
        delay = 0.01
        while True:
            left = max(0.0, deadline - time.monotonic())
            reply = self.conn.request(op, wait=round(left, 3), timeout=left + self.conn.timeout, **fields).body
            if moved_on(reply):
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                return reply
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, STATUS_WAIT_POLL)

    def fetch(self, job: str, index: int, *, patience: float = FETCH_PATIENCE) -> tuple[list[str], list[bytes]]:
        """Names and bytes of the TIFFs of one finished file of an upload job. A worker busy sending
        other fetches (of this key's other connections, or of other clients) is asked again, for up to
        ``patience`` seconds."""
        deadline, delay = time.monotonic() + patience, 0.05
        while True:
            try:
                reply = self.conn.request("fetch", job=job, index=index, timeout=max(self.conn.timeout, 120.0))
            except WorkerError as exc:
                if exc.code != proto.BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            return reply.body["outputs"], reply.blobs

    def release(self, job: str) -> None:
        self._naming.pop(job, None)
        with contextlib.suppress(WorkerError):
            self.request("release", job=job)

    def iter_results(self, job: str, *, out_dir: str | Path | None = None, overwrite: bool = False,
                     poll: float = 2.0) -> Iterator[dict[str, Any]]:
        """Each file's final entry (state, source, outputs, error) as soon as it finishes.

        Remote mode fetches each TIFF as its file finishes and writes it next to the raw (or in
        ``out_dir``); the entry's ``outputs`` are then the local paths. Each status request waits in the
        worker for the next finished file for at most ``poll`` seconds: short enough that a worker that
        died is noticed soon.
        """
        reported: set[int] = set()
        seen: int | None = None
        while True:
            try:
                status = self.status(job) if seen is None else self.status(job, wait=poll, since=seen)
            except WorkerUnavailable as exc:
                raise WorkerUnavailable(f"the worker at {self.endpoint} stopped answering while job {job} was "
                                        f"running (dead? the next submit or ping starts a new one): {exc}") from None
            except WorkerError as exc:
                if exc.code == proto.UNKNOWN_JOB and reported:
                    raise WorkerError(exc.code, f"the worker at {self.endpoint} no longer knows job {job} "
                                                "(was it restarted?)") from None
                raise
            for entry in status["files"]:
                if entry["state"] in proto.TERMINAL_STATES and entry["index"] not in reported:
                    reported.add(entry["index"])
                    if self.remote and entry["state"] == "done":
                        entry = self._store_fetched(job, entry, out_dir, overwrite)
                    yield entry
            if status["state"] in proto.TERMINAL_STATES and len(reported) == len(status["files"]):
                if self.remote:
                    self.release(job)
                return
            seen = status["finished"]

    def wait(self, job: str, *, on_file: Callable[[dict[str, Any]], None] | None = None,
             **kwargs: Any) -> list[dict[str, Any]]:
        """Block until the job ends; returns every file's entry (``on_file`` sees each as it finishes)."""
        entries = []
        for entry in self.iter_results(job, **kwargs):
            entries.append(entry)
            if on_file:
                on_file(entry)
        return sorted(entries, key=lambda e: e["index"])

    def _local_names(self, job: str, source: Path, sent: list[str]) -> list[str]:
        """The fetched TIFFs' names by the one rule (:func:`lowlux.naming.output_names`) from this client's
        source name; for a job submitted elsewhere, the worker's names (the same rule), as bare names."""
        options = self._naming.get(job)
        if options is not None:
            return names_for_options(source, options)
        names = [client_basename(str(n)) for n in sent]
        if any(not n or n.startswith(".") for n in names):
            raise WorkerError(proto.BAD_REQUEST, f"the worker sent output names that are not plain file names: {sent}")
        return names

    def _store_fetched(self, job: str, entry: dict[str, Any], out_dir: str | Path | None,
                       overwrite: bool) -> dict[str, Any]:
        source = Path(entry["source"])
        folder = Path(out_dir) if out_dir else source.parent
        try:
            names, blobs = self.fetch(job, entry["index"])
            names = self._local_names(job, source, names)
            if len(names) != len(blobs):
                raise WorkerError(proto.BAD_REQUEST, f"the worker sent {len(blobs)} file(s) for {len(names)} "
                                                     "output name(s)")
            outputs = [str(write_atomic(folder / n, data, overwrite)) for n, data in zip(names, blobs)]
        except (OSError, LowluxError) as exc:
            message = exc.message if isinstance(exc, WorkerError) else str(exc)
            return {**entry, "state": "failed", "outputs": [], "error": f"{source}: {message}"}
        return {**entry, "outputs": outputs}


def _moved_on(jobs: list[dict[str, Any]], since: dict[str, int]) -> bool:
    """Whether a job in ``since`` has more finished files than seen there, has ended, or is gone."""
    listed = {j["job"]: j for j in jobs}
    for job_id, seen in since.items():
        job = listed.get(job_id)
        if job is None or job["finished"] > seen or job["state"] in proto.TERMINAL_STATES:
            return True
    return False
