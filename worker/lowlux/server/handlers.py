"""One request to one reply: the ten operations of the protocol (docs/protocol.md).

Kept apart from the loop, which only moves frames: everything here answers from the job table and
never waits on the net, and nothing a client sends may raise out of :meth:`Handlers.handle`.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from .. import __version__
from .. import protocol as proto
from ..jobs import FileTask, Job, QueueFull
from ..naming import client_basename, is_utf8, names_for_options, readable
from ..protocol import ProtocolError, Reply
from .job_options import build_options, check_targets_fit, local_path
from .memory import peak_rss_bytes, rss_bytes
from .sockets import Peer
from .waits import MAX_WAIT, WaitFor

log = logging.getLogger(__name__)

RECENT_SUBMITS = 256
"""Replies to submits remembered by request id, so a retried submit does not queue its job twice."""


class Handlers:
    """The worker's answers; reads and changes the job table, spool and stop state of ``server`` (a
    :class:`lowlux.server.loop.Server`, not imported here: it imports this module)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.scheduler = server.scheduler
        self.config = server.config
        self._recent_submits: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._ops: dict[str, Callable[[dict, list, Peer], Reply]] = {
            "ping": self.ping, "health": self.health, "submit": self.submit, "upload": self.upload,
            "status": self.status, "cancel": self.cancel, "fetch": self.fetch, "release": self.release,
            "jobs": self.jobs, "shutdown": self.shutdown,
        }

    def handle(self, header: Any, blobs: list, peer: Peer) -> Reply | WaitFor:
        """One request to one reply (or, for a waiting ``status``, what to wait for); nothing a client
        sends may raise out of here."""
        msg: dict[str, Any] | None = None
        try:
            if len(header) > proto.MAX_HEADER_BYTES:
                raise ProtocolError(proto.TOO_LARGE, f"request frame of {len(header)} bytes exceeds the limit "
                                                     f"of {proto.MAX_HEADER_BYTES} bytes")
            msg = proto.parse_request(as_bytes(header))
            return self._ops[msg["op"]](msg, blobs, peer)
        except Exception as exc:
            return self.error_reply(exc, msg, peer)

    def error_reply(self, exc: Exception, msg: dict[str, Any] | None, peer: Peer) -> Reply:
        """The reply to a request that raised: a refusal names its reason; anything else is logged and
        told as an internal error (to a remote client, without the details)."""
        if isinstance(exc, ProtocolError):
            log.info("refused request: %s", exc)
            return Reply(proto.error_reply(msg, exc.code, exc.message))
        log.error("internal error on %s", (msg or {}).get("op"), exc_info=exc)
        detail = exc.__class__.__name__ if peer.remote else f"{exc.__class__.__name__}: {exc}"
        return Reply(proto.error_reply(msg, proto.INTERNAL, f"internal error ({detail})"))

    # ---- the worker --------------------------------------------------------------------------------------

    def _liveness(self, peer: Peer) -> dict[str, Any]:
        """What ``ping`` tells: a remote client learns nothing of the worker's machine (no pid), nor of the
        cluster a front door restores on."""
        server = self.server
        alive = {"version": __version__, "protocol": proto.PROTOCOL_VERSION, "pid": os.getpid(),
                 "ready": server.ready, "stopping": server.stopping, "uptime": round(server.uptime, 3)}
        if peer.remote:
            del alive["pid"]
        elif server.cluster:
            alive["cluster"] = server.cluster
        return alive

    def ping(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        error = self.server.engine_error
        if error is not None and peer.remote:
            error = "the worker's engine could not load (its log says why)"
        return Reply(proto.ok_reply(msg, **self._liveness(peer), error=str(error) if error else None))

    def health(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        """A front door (``serve --cluster``) has no engine here: a local client is told of its cluster instead."""
        engine = self.server.engine.describe() if self.server.engine is not None else {}
        counts = self.scheduler.counts()
        local = {"rss": rss_bytes(), "peak_rss": peak_rss_bytes(), "endpoint": self.config.endpoint,
                 "remote": self.server.sockets.remote_listen}
        if self.server.cluster:
            local.update(self.server.pipeline.describe())
        if peer.remote:  # paths, pid, memory and other clients' jobs are the worker's own business
            engine = {k: v for k, v in engine.items() if k != "weights"}
            counts.pop("jobs", None)
            local = {}
        return Reply(proto.ok_reply(
            msg, **self._liveness(peer), **engine, **counts, **local,
            limits={"max_files_per_job": self.config.max_files_per_job,
                    "max_upload_bytes": self.config.max_upload_bytes,
                    "max_queued_files": self.config.max_queued_files,
                    "max_queued_per_peer": self.config.max_queued_per_peer,
                    "max_awaiting_upload_per_peer": self.config.max_awaiting_upload_per_peer}))

    def shutdown(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        if peer.remote:
            raise ProtocolError(proto.NOT_ALLOWED, "a remote client cannot shut the worker down")
        log.info("shutdown requested")
        self.server.stop(hurry=proto.field(msg, "now", bool, required=False, default=False))
        return Reply(proto.ok_reply(msg, pid=os.getpid(), **self.scheduler.counts()))

    # ---- jobs --------------------------------------------------------------------------------------------

    def submit(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        if self.server.stopping:
            raise ProtocolError(proto.SHUTTING_DOWN, "the worker is shutting down; submit to the next one")
        files = proto.string_list(msg, "files", limit=self.config.max_files_per_job)
        upload = proto.field(msg, "upload", bool, required=False, default=False)
        client = proto.field(msg, "client", str, required=False, default="")[:128]
        if peer.remote and not upload:
            raise ProtocolError(proto.NOT_ALLOWED, "this endpoint does not share the worker's disk: send the "
                                                   "files' bytes (\"upload\": true)")
        key = f"{peer.owner}/{msg.get('id')}"
        if msg.get("id") and key in self._recent_submits:  # a retried submit must not queue the job twice
            return Reply(self._recent_submits[key])
        wire = proto.check_options(msg.get("options"))
        check_targets_fit(wire, files)
        job = Job(client=peer.owner if peer.remote else (client or "anonymous"), options=None, owner=peer.owner)
        spool = self.server.spool
        if upload:
            if wire.get("out_dir"):
                raise ProtocolError(proto.NOT_ALLOWED, "out_dir cannot be set for uploaded files: the client "
                                                       "decides where the TIFFs it fetches go")
            job.options = build_options({**wire, "out_dir": None, "overwrite": True})
            job.spool = spool.new(job.id)
            job.add_files(spool.sources(job, files), files, uploaded=False)
            for task in job.tasks:
                task.names = names_for_options(client_basename(task.display), job.options)
        else:
            job.options = build_options(wire, local=True)
            job.add_files([local_path(f, "files") for f in files])
        try:
            self.scheduler.add(job)
        except QueueFull as exc:
            spool.remove(job)
            raise ProtocolError(proto.BUSY, str(exc)) from None
        if not upload:  # the decoder opens files by UTF-8 name: refuse such a file now, by name
            for task in job.tasks:
                if not is_utf8(task.source):
                    self.scheduler.finish(task, "failed", error=f"{readable(task.source)}: the file name is not "
                                          "valid UTF-8, which the raw decoder cannot open; rename the file")
        reply = proto.ok_reply(msg, job=job.id, total=len(job.tasks), state=job.state, upload=upload,
                               warnings=self._hint_warnings(msg.get("hints")))
        self._remember_submit(key, reply)
        log.info("job %s from %s: %d file(s)%s", job.id, job.client, len(job.tasks), " (upload)" if upload else "")
        return Reply(reply)

    def _remember_submit(self, key: str, reply: dict[str, Any]) -> None:
        self._recent_submits[key] = reply
        while len(self._recent_submits) > RECENT_SUBMITS:
            self._recent_submits.popitem(last=False)

    def _hint_warnings(self, hints: Any) -> list[str]:
        """The worker has one engine; a client's device/dtype wish it cannot honour is reported, not fatal."""
        if not isinstance(hints, dict) or self.server.engine is None:  # loading, or a front door
            return []
        engine = self.server.engine.describe()
        warnings = []
        for key in ("device", "dtype"):
            wanted = hints.get(key)
            if isinstance(wanted, str) and wanted not in ("", "auto") and not engine.get(key, "").startswith(wanted):
                warnings.append(f"this worker runs with {key} {engine.get(key)}; the hint {wanted!r} is ignored")
        return warnings

    def upload(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        job = self._owned_job(msg, peer)
        task = _task(job, msg)
        if job.spool is None:
            raise ProtocolError(proto.NOT_ALLOWED, f"job {job.id} reads its files from the worker's disk")
        problem = proto.field(msg, "error", str, required=False)
        if problem is not None:  # the client could not send this file; it fails with the client's reason
            if task.state == "queued":
                self.scheduler.finish(task, "failed", error=problem[:2000])
            return Reply(proto.ok_reply(msg, job=job.id, index=task.index, state=task.state))
        if len(blobs) != 1:
            raise ProtocolError(proto.BAD_REQUEST, f"an upload carries exactly one data frame, not {len(blobs)}")
        size = len(blobs[0])
        if size > self.config.max_upload_bytes:
            raise ProtocolError(proto.TOO_LARGE, f"{task.display}: {size} bytes exceed the upload limit of "
                                                 f"{self.config.max_upload_bytes}")
        if not task.uploaded and task.state == "queued":
            target = Path(task.source)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(as_bytes(blobs[0]))
            except OSError as exc:
                self.scheduler.finish(task, "failed", error=f"{task.display}: the worker cannot store the upload "
                                                            f"({exc.strerror or exc})")
            else:
                self.scheduler.mark_uploaded(task, str(target))
        return Reply(proto.ok_reply(msg, job=job.id, index=task.index, state=task.state, size=size))

    def status(self, msg: dict, blobs: list, peer: Peer) -> Reply | WaitFor:
        job = self._owned_job(msg, peer)
        wait = _wait_field(msg)
        since = proto.field(msg, "since", int, required=False)
        if since is not None and since < 0:
            raise ProtocolError(proto.BAD_REQUEST, "'since' must be a count >= 0")
        if self._may_wait(wait, peer):
            since = self.scheduler.progress(job.id)[0] if since is None else since
            if not self.moved_on(job.id, since, peer):
                return WaitFor(msg, peer, {job.id: since}, time.monotonic() + min(wait, MAX_WAIT))
        return self.status_now(msg, peer)

    def _may_wait(self, wait: float, peer: Peer) -> bool:
        """Whether a request that asks to wait may be held: not while the worker stops, and only while
        the client and the worker have room for another held request (else it is answered at once)."""
        return wait > 0 and not self.server.stopping and self.server.waits.room_for(peer.key)

    def status_now(self, msg: dict, peer: Peer) -> Reply:
        """The job's status as it is (a waiting ``status``'s answer once it is due)."""
        job = self._owned_job(msg, peer)
        snapshot = self.scheduler.snapshot(job.id)
        if snapshot["state"] in proto.TERMINAL_STATES and job.spool is None:  # uploads: told once released
            job.told = True
        return Reply(proto.ok_reply(msg, **snapshot))

    def cancel(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        job = self._owned_job(msg, peer)
        self.scheduler.cancel(job.id)
        log.info("job %s cancelled", job.id)
        return Reply(proto.ok_reply(msg, **self.scheduler.snapshot(job.id)))

    def fetch(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        """The TIFF bytes of one finished file of an upload job, one frame per output."""
        job = self._owned_job(msg, peer)
        task = _task(job, msg)
        if job.spool is None:
            raise ProtocolError(proto.NOT_ALLOWED, f"job {job.id} wrote its TIFFs to disk: {task.outputs}")
        if task.state != "done":
            raise ProtocolError(proto.NOT_READY, f"{task.display} is {task.state}" +
                                (f": {task.error}" if task.error else ""))
        try:
            size = sum(os.stat(p).st_size for p in task.outputs)
            refusal = self.server.fetches.refusal(peer.key, size)
            if refusal is not None:
                raise ProtocolError(proto.BUSY, refusal)
            data = [Path(p).read_bytes() for p in task.outputs]
        except OSError as exc:
            raise ProtocolError(proto.UNKNOWN_JOB, f"the TIFFs of {task.display} are gone ({exc.strerror})") from None
        return Reply(proto.ok_reply(msg, job=job.id, index=task.index, outputs=task.wire_outputs,
                                    sizes=[len(d) for d in data]), data)

    def release(self, msg: dict, blobs: list, peer: Peer) -> Reply:
        job = self._owned_job(msg, peer)
        if not job.terminal:
            self.scheduler.cancel(job.id, "cancelled: released by the client")
        self.server.spool.remove(job)
        job.told = True
        return Reply(proto.ok_reply(msg, job=job.id))

    def jobs(self, msg: dict, blobs: list, peer: Peer) -> Reply | WaitFor:
        """The jobs; with ``wait`` and ``since`` (job -> files seen finished), once one of those jobs has
        moved on: a client following several jobs (one per file) holds one request, not one per job."""
        wait = _wait_field(msg)
        since = _since_map(msg)
        if since and self._may_wait(wait, peer) and not any(self.moved_on(j, n, peer) for j, n in since.items()):
            return WaitFor(msg, peer, since, time.monotonic() + min(wait, MAX_WAIT), answer="jobs")
        return self.jobs_now(msg, peer)

    def jobs_now(self, msg: dict, peer: Peer) -> Reply:
        """The jobs as they are (a waiting ``jobs``'s answer once it is due)."""
        return Reply(proto.ok_reply(msg, jobs=self.scheduler.jobs(peer.owner if peer.remote else None)))

    def moved_on(self, job_id: str, seen: int, peer: Peer) -> bool:
        """More than ``seen`` files finished, or the job ended; a job that is gone or not the client's
        counts as moved on (there is nothing to wait for). What a waiting request waits for."""
        job = self.scheduler.get(job_id)
        if job is None or (peer.remote and job.owner != peer.owner):
            return True
        finished, ended = self.scheduler.progress(job_id)
        return ended or finished > seen

    def _owned_job(self, msg: dict, peer: Peer) -> Job:
        job_id = proto.job_field(msg)
        job = self.scheduler.get(job_id)
        if job is None or (peer.remote and job.owner != peer.owner):
            raise ProtocolError(proto.UNKNOWN_JOB, f"no job {job_id} on this worker (finished jobs are forgotten "
                                                   f"after {self.config.job_ttl:.0f} s; a restarted worker knows none)")
        return job


MAX_SINCE_JOBS = 1024
"""Jobs one waiting ``jobs`` request may name in ``since``."""


def _wait_field(msg: dict) -> float:
    """``wait``: seconds a request may be held (0: answer at once)."""
    wait = proto.field(msg, "wait", (int, float), required=False, default=0)
    if not proto.is_number(wait) or wait < 0:
        raise ProtocolError(proto.BAD_REQUEST, "'wait' must be a number of seconds >= 0")
    return float(wait)


def _since_map(msg: dict) -> dict[str, int]:
    """``jobs``'s ``since``: job id -> files the client has seen finished."""
    since = proto.field(msg, "since", dict, required=False, default={})
    if len(since) > MAX_SINCE_JOBS:
        raise ProtocolError(proto.BAD_REQUEST, f"'since' names {len(since)} jobs; at most {MAX_SINCE_JOBS}")
    for job_id, seen in since.items():
        if not isinstance(seen, int) or isinstance(seen, bool) or seen < 0:
            raise ProtocolError(proto.BAD_REQUEST, f"'since' must map job ids to counts >= 0, not "
                                                   f"{job_id[:64]!r}: {str(seen)[:64]}")
    return since


def as_bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _task(job: Job, msg: dict) -> FileTask:
    index = proto.field(msg, "index", int)
    if not 0 <= index < len(job.tasks):
        raise ProtocolError(proto.BAD_REQUEST, f"job {job.id} has files 0-{len(job.tasks) - 1}, not {index}")
    return job.tasks[index]
