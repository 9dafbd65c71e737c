"""``lowlux serve``: the persistent worker. The net stays loaded and warm; requests come over ZeroMQ.

One ROUTER socket on a local-only endpoint (ipc socket, mode 0600, in a private folder; or loopback
tcp), and optionally a second, CURVE-authenticated one for the network (``--listen``). The main
thread only answers requests — it never waits on the net — so ``status`` and ``ping`` are answered
at once even while a 50-megapixel raw is being restored. The work runs on :class:`lowlux.batch.Pipeline`.

Shutdown (``shutdown`` request, SIGTERM, SIGINT) cancels the queued files and those waiting for the
net, lets the file on the net finish and be written (a second signal cancels it before encoding
instead), and never leaves a partial TIFF: TIFFs are written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import zmq

from . import __version__
from . import config as cfg
from . import protocol as proto
from .errors import LowluxError
from .jobs import MAX_PIXELS_IN_FLIGHT, Job, QueueFull, Scheduler
from .protocol import ProtocolError

log = logging.getLogger(__name__)

MiB = 1 << 20
LOCAL_MAX_FRAME = 128 * MiB
"""Frames above this are dropped by ZeroMQ itself (the peer is disconnected); smaller junk gets a reply."""


@dataclass
class ServerConfig:
    endpoint: str
    listen: str | None = None
    """Network endpoint (CURVE only), e.g. tcp://0.0.0.0:5592."""
    keys_dir: Path | None = None
    """Holds server.key_secret and authorized/ (client public keys) for ``listen``."""
    engine: Any = None
    """``EngineConfig`` used to load the engine (unless one is handed to :class:`Server`)."""
    encode_threads: int = 2
    queue_size: int = 1
    max_pixels_in_flight: int = MAX_PIXELS_IN_FLIGHT
    """Decoded frames held at once before decoding the next raw waits (see :mod:`lowlux.batch`)."""
    max_queued_files: int = 10_000
    max_files_per_job: int = proto.MAX_FILES_PER_JOB
    max_upload_bytes: int = 512 * MiB
    job_ttl: float = 3600.0
    keep_jobs: int = 1000
    upload_timeout: float = 600.0
    idle_timeout: float = 0.0
    """Exit after this many seconds with no request and no work (0: never); auto-started workers use it."""
    spool_dir: Path | None = None


@dataclass(frozen=True)
class Peer:
    remote: bool
    owner: str = "local"


@dataclass
class _Reply:
    body: dict[str, Any]
    blobs: list[bytes] = field(default_factory=list)


class ServeLock:
    """An flock held for the worker's lifetime: one worker per endpoint, released even on SIGKILL.

    The file is removed on a clean exit. A rival may have opened it just before; so after locking,
    the lock counts only if the path still names the file we locked (else we retry on the new one).
    """

    def __init__(self, endpoint: str) -> None:
        self.path = cfg.lock_path(endpoint, "serve")
        self._fh = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the bind itself guards tcp endpoints
            return
        for _ in range(10):
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                pid = fh.read().strip() or "?"
                fh.close()
                raise cfg.ConfigError(f"another lowlux worker (pid {pid}) already serves this endpoint") from None
            if _same_file(fh, self.path):
                break
            fh.close()  # locked a file its owner just removed: try again on the current one
        else:
            raise cfg.ConfigError(f"cannot take the worker lock {self.path}")
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    @property
    def held(self) -> bool:
        return self._fh is not None

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


def safe_name(name: str) -> str:
    """A client's file name reduced to a harmless basename (kept: the extension tells LibRaw the format)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base)[-120:]
    return base if base and not base.startswith(".") else f"_{base or 'upload'}"


class Server:
    """The worker: sockets, request handlers, job table and pipeline. ``serve_forever`` runs it."""

    def __init__(self, config: ServerConfig, engine: Any = None) -> None:
        self.config = config
        self.scheduler = Scheduler(config.max_queued_files)
        self._engine = engine
        self._engine_ready = threading.Event()
        self._engine_error: BaseException | None = None
        if engine is not None:
            self._engine_ready.set()
        from .batch import Pipeline

        self.pipeline = Pipeline(self.scheduler, self._get_engine, encode_threads=config.encode_threads,
                                 queue_size=config.queue_size, max_pixels_in_flight=config.max_pixels_in_flight)
        self._ctx: zmq.Context | None = None
        self._sockets: dict[zmq.Socket, Peer] = {}
        self._auth = None
        self._lock = ServeLock(config.endpoint)
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._reload_keys = threading.Event()
        self._started = time.monotonic()
        self._last_request = time.monotonic()
        self._spool_root: Path | None = None
        self._recent_submits: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.bound = threading.Event()
        self.exit_code = 0
        self._handlers: dict[str, Callable[[dict, list[bytes], Peer], _Reply]] = {
            "ping": self._op_ping, "health": self._op_health, "submit": self._op_submit, "upload": self._op_upload,
            "status": self._op_status, "cancel": self._op_cancel, "fetch": self._op_fetch,
            "release": self._op_release, "jobs": self._op_jobs, "shutdown": self._op_shutdown,
        }

    # ---- start-up ----------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Claim the endpoint(s); raises ``ConfigError`` (another worker, unsafe endpoint, missing keys)."""
        endpoint = cfg.check_endpoint(self.config.endpoint)
        if not cfg.is_local(endpoint):
            raise cfg.ConfigError(f"{endpoint} is reachable from the network; the plain endpoint must be local "
                                  "(ipc:// or tcp://127.0.0.1). Use --listen with CURVE keys for remote clients.")
        remote = self._remote_keys() if self.config.listen else None
        self._lock.acquire()
        try:
            self._ctx = zmq.Context()
            self._bind_local(endpoint)
            if remote is not None:
                self._bind_remote(*remote)
        except BaseException:
            self._close_sockets()
            self._lock.release()
            raise
        self.bound.set()

    def _bind_local(self, endpoint: str) -> None:
        path = cfg.ipc_path(endpoint)
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = self._router(max(LOCAL_MAX_FRAME, self.config.max_upload_bytes + MiB))
        umask = os.umask(0o177) if path is not None else None  # the socket is born 0600, no window
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise cfg.ConfigError(f"cannot listen on {endpoint}: {exc}") from None
        finally:
            if umask is not None:
                os.umask(umask)
        if path is not None:
            os.chmod(path, 0o600)
        self._sockets[sock] = Peer(remote=False)
        log.info("listening on %s", endpoint)

    def _remote_keys(self) -> tuple[str, bytes, bytes, Path]:
        from .keys import load_server_keys

        listen = cfg.check_endpoint(self.config.listen)
        if not listen.startswith("tcp://"):
            raise cfg.ConfigError(f"--listen takes a tcp endpoint (tcp://0.0.0.0:PORT), not {listen}")
        public, secret, authorized = load_server_keys(self.config.keys_dir)
        return listen, public, secret, authorized

    def _bind_remote(self, listen: str, public: bytes, secret: bytes, authorized: Path) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("lowlux.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(authorized))
        sock = self._router(self.config.max_upload_bytes + proto.MAX_HEADER_BYTES + 64 * 1024)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        try:
            sock.bind(listen)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise cfg.ConfigError(f"cannot listen on {listen}: {exc}") from None
        self._sockets[sock] = Peer(remote=True, owner="")
        count = len(list(authorized.glob("*.key")))
        log.warning("listening for CURVE-authenticated clients on %s (%d authorized key(s) in %s)",
                    listen, count, authorized)

    def _router(self, max_frame: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        return sock

    def start_engine(self, engine_config: Any) -> None:
        """Load the net on a thread: the worker answers ping (``ready: false``) while it loads."""
        def load() -> None:
            try:
                from .engine import Engine

                engine = Engine(engine_config)
                warm_up(engine)
                self._engine = engine
                log.info("engine ready: %s", engine.describe())
            except BaseException as exc:  # reported to clients, then the worker exits
                self._engine_error = exc
                log.error("cannot load the engine: %s", exc)
            finally:
                self._engine_ready.set()

        threading.Thread(target=load, name="lowlux-engine-load", daemon=True).start()

    def _get_engine(self) -> Any:
        self._engine_ready.wait()
        if self._engine is None:
            raise LowluxError(f"the worker has no engine ({self._engine_error})")
        return self._engine

    @property
    def ready(self) -> bool:
        return self._engine_ready.is_set() and self._engine is not None

    # ---- the loop ----------------------------------------------------------------------------------------

    def stop(self, *, hurry: bool = False) -> None:
        """Ask the loop to shut down gracefully (thread- and signal-safe)."""
        if hurry:
            self._hurry.set()
        self._stop.set()

    def reload_keys(self) -> None:
        self._reload_keys.set()

    def serve_forever(self) -> int:
        """Answer requests until stopped and drained; returns the exit status."""
        if not self.bound.is_set():
            self.bind()
        self.pipeline.start()
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        draining, last_chores = False, 0.0
        try:
            while True:
                for sock, _ in poller.poll(100):
                    self._drain_socket(sock)
                if self._stop.is_set() and not draining:
                    draining = True
                    log.info("shutting down: cancelling queued files, finishing the one on the net")
                    self.scheduler.stop(hurry=self._hurry.is_set())
                elif draining and self._hurry.is_set() and not self.scheduler.hurrying:
                    self.scheduler.stop(hurry=True)
                if draining and self.pipeline.drained:
                    break
                if time.monotonic() - last_chores > 1.0:
                    last_chores = time.monotonic()
                    try:
                        self._chores()
                    except Exception:  # housekeeping must never take the worker down
                        log.exception("housekeeping failed")
        finally:
            self.close()
        return self.exit_code

    def _chores(self) -> None:
        """Forget old jobs, fail abandoned uploads, notice a failed engine or an idle timeout."""
        for job in self.scheduler.purge(ttl=self.config.job_ttl, keep=self.config.keep_jobs):
            self._remove_spool(job)
        self.scheduler.fail_stale_uploads(self.config.upload_timeout)
        if self._engine_error is not None and not self._stop.is_set():
            self.exit_code = 1
            self.stop(hurry=True)
        idle_for = time.monotonic() - self._last_request
        if self.config.idle_timeout and idle_for > self.config.idle_timeout and self.scheduler.idle:
            log.info("idle for %.0f s: exiting", idle_for)
            self.stop()
        self._check_socket_file()
        if self._reload_keys.is_set() and self._auth is not None:
            self._reload_keys.clear()
            try:
                self._auth.configure_curve(domain="*", location=str(load_authorized_dir(self.config.keys_dir)))
                log.warning("authorized client keys reloaded")
            except LowluxError as exc:
                log.error("keys not reloaded, the previous ones stay in force: %s", exc)

    def _check_socket_file(self) -> None:
        """Bind again if the ipc socket file was removed (a tmp cleaner, a careless rm): else no client
        could reach this worker, and none could replace it while it holds the lock."""
        path = cfg.ipc_path(self.config.endpoint)
        if path is None or path.is_socket() or self._stop.is_set():
            return
        log.warning("%s disappeared: listening again", path)
        sock = next(s for s, peer in self._sockets.items() if not peer.remote)
        try:
            with contextlib.suppress(zmq.ZMQError):
                sock.unbind(self.config.endpoint)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            sock.bind(self.config.endpoint)
            os.chmod(path, 0o600)
        except (zmq.ZMQError, OSError) as exc:
            log.error("cannot listen on %s again (%s): exiting", self.config.endpoint, exc)
            self.exit_code = 1
            self.stop()

    def _drain_socket(self, sock: zmq.Socket) -> None:
        for _ in range(64):  # bounded, so one chatty client cannot starve the other socket
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer = self._sockets[sock]
            if peer.remote:
                peer = Peer(remote=True, owner=frames[-1].get("User-Id") or "?")
            reply = self._dispatch_frames(frames, peer)
            if reply is not None:
                try:
                    sock.send_multipart(reply, zmq.NOBLOCK, copy=False)
                except zmq.ZMQError as exc:  # the peer went away or its pipe is full: drop the reply
                    log.debug("reply dropped: %s", exc)

    def _dispatch_frames(self, frames: list, peer: Peer) -> list | None:
        """Unwrap the ROUTER envelope (REQ peers add an empty delimiter, DEALER peers do not)."""
        if len(frames) < 2:
            return None
        envelope = [frames[0]]
        body = frames[1:]
        if len(body[0]) == 0:
            envelope.append(b"")
            body = body[1:]
        self._last_request = time.monotonic()
        if not body:
            reply = _Reply(proto.error_reply(None, proto.BAD_REQUEST, "empty request"))
        else:
            reply = self.handle(body[0], body[1:], peer)
        return envelope + [proto.dumps(reply.body)] + reply.blobs

    def handle(self, header: Any, blobs: list, peer: Peer) -> _Reply:
        """One request to one reply; nothing a client sends may raise out of here."""
        msg: dict[str, Any] | None = None
        try:
            if len(header) > proto.MAX_HEADER_BYTES:
                raise ProtocolError(proto.TOO_LARGE, f"request frame of {len(header)} bytes exceeds the limit "
                                                     f"of {proto.MAX_HEADER_BYTES} bytes")
            msg = proto.parse_request(_as_bytes(header))
            return self._handlers[msg["op"]](msg, blobs, peer)
        except ProtocolError as exc:
            log.info("refused request: %s", exc)
            return _Reply(proto.error_reply(msg, exc.code, exc.message))
        except Exception as exc:
            log.exception("internal error on %s", (msg or {}).get("op"))
            return _Reply(proto.error_reply(msg, proto.INTERNAL, f"internal error ({exc.__class__.__name__}: {exc})"))

    # ---- handlers ----------------------------------------------------------------------------------------

    def _op_ping(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        return _Reply(proto.ok_reply(msg, version=__version__, protocol=proto.PROTOCOL_VERSION, pid=os.getpid(),
                                     ready=self.ready, stopping=self._stop.is_set(),
                                     uptime=round(time.monotonic() - self._started, 3),
                                     error=str(self._engine_error) if self._engine_error else None))

    def _op_health(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        engine = self._engine.describe() if self.ready else {}
        return _Reply(proto.ok_reply(
            msg, version=__version__, protocol=proto.PROTOCOL_VERSION, pid=os.getpid(), ready=self.ready,
            stopping=self._stop.is_set(), uptime=round(time.monotonic() - self._started, 3), **engine,
            **self.scheduler.counts(), rss=_rss_bytes(), peak_rss=_peak_rss_bytes(),
            endpoint=self.config.endpoint, remote=self.config.listen if self._auth else None,
            limits={"max_files_per_job": self.config.max_files_per_job,
                    "max_upload_bytes": self.config.max_upload_bytes,
                    "max_queued_files": self.config.max_queued_files}))

    def _op_submit(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        if self._stop.is_set():
            raise ProtocolError(proto.SHUTTING_DOWN, "the worker is shutting down; submit to the next one")
        files = proto.string_list(msg, "files", limit=self.config.max_files_per_job)
        upload = proto.field(msg, "upload", bool, required=False, default=False)
        client = proto.field(msg, "client", str, required=False, default="")[:128]
        if peer.remote and not upload:
            raise ProtocolError(proto.NOT_ALLOWED, "this endpoint does not share the worker's disk: send the "
                                                   "files' bytes (\"upload\": true)")
        key = f"{peer.owner}/{msg.get('id')}"
        if msg.get("id") and key in self._recent_submits:  # a retried submit must not queue the job twice
            return _Reply(self._recent_submits[key])
        wire = proto.check_options(msg.get("options"))
        job = Job(client=peer.owner if peer.remote else (client or "anonymous"), options=None, owner=peer.owner)
        if upload:
            if wire.get("out_dir"):
                raise ProtocolError(proto.NOT_ALLOWED, "out_dir cannot be set for uploaded files: the client "
                                                       "decides where the TIFFs it fetches go")
            job.options = build_options({**wire, "out_dir": None, "overwrite": True})
            job.spool = self._new_spool(job.id)
            job.add_files([str(job.spool / f"{i:04d}" / safe_name(f)) for i, f in enumerate(files)], files,
                          uploaded=False)
        else:
            job.options = build_options(wire, local=True)
            job.add_files([_local_path(f, "files") for f in files])
        try:
            self.scheduler.add(job)
        except QueueFull as exc:
            self._remove_spool(job)
            raise ProtocolError(proto.BUSY, str(exc)) from None
        reply = proto.ok_reply(msg, job=job.id, total=len(job.tasks), state=job.state, upload=upload,
                               warnings=self._hint_warnings(msg.get("hints")))
        self._remember_submit(key, reply)
        log.info("job %s from %s: %d file(s)%s", job.id, job.client, len(job.tasks), " (upload)" if upload else "")
        return _Reply(reply)

    def _remember_submit(self, key: str, reply: dict[str, Any]) -> None:
        self._recent_submits[key] = reply
        while len(self._recent_submits) > 256:
            self._recent_submits.popitem(last=False)

    def _hint_warnings(self, hints: Any) -> list[str]:
        """The worker has one engine; a client's device/dtype wish it cannot honour is reported, not fatal."""
        if not isinstance(hints, dict) or not self.ready:
            return []
        engine = self._engine.describe()
        warnings = []
        for key in ("device", "dtype"):
            wanted = hints.get(key)
            if isinstance(wanted, str) and wanted not in ("", "auto") and not engine.get(key, "").startswith(wanted):
                warnings.append(f"this worker runs with {key} {engine.get(key)}; the hint {wanted!r} is ignored")
        return warnings

    def _op_upload(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        job = self._owned_job(msg, peer)
        task = _task(job, msg)
        if job.spool is None:
            raise ProtocolError(proto.NOT_ALLOWED, f"job {job.id} reads its files from the worker's disk")
        problem = proto.field(msg, "error", str, required=False)
        if problem is not None:  # the client could not send this file; it fails with the client's reason
            if task.state == "queued":
                self.scheduler.finish(task, "failed", error=problem[:2000])
            return _Reply(proto.ok_reply(msg, job=job.id, index=task.index, state=task.state))
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
                target.write_bytes(_as_bytes(blobs[0]))
            except OSError as exc:
                self.scheduler.finish(task, "failed", error=f"{task.display}: the worker cannot store the upload "
                                                            f"({exc.strerror or exc})")
            else:
                self.scheduler.mark_uploaded(task, str(target))
        return _Reply(proto.ok_reply(msg, job=job.id, index=task.index, state=task.state, size=size))

    def _op_status(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        job = self._owned_job(msg, peer)
        return _Reply(proto.ok_reply(msg, **self.scheduler.snapshot(job.id)))

    def _op_cancel(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        job = self._owned_job(msg, peer)
        self.scheduler.cancel(job.id)
        log.info("job %s cancelled", job.id)
        return _Reply(proto.ok_reply(msg, **self.scheduler.snapshot(job.id)))

    def _op_fetch(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        """The TIFF bytes of one finished file of an upload job, one frame per output."""
        job = self._owned_job(msg, peer)
        task = _task(job, msg)
        if job.spool is None:
            raise ProtocolError(proto.NOT_ALLOWED, f"job {job.id} wrote its TIFFs to disk: {task.outputs}")
        if task.state != "done":
            raise ProtocolError(proto.NOT_READY, f"{task.display} is {task.state}" +
                                (f": {task.error}" if task.error else ""))
        try:
            data = [Path(p).read_bytes() for p in task.outputs]
        except OSError as exc:
            raise ProtocolError(proto.UNKNOWN_JOB, f"the TIFFs of {task.display} are gone ({exc.strerror})") from None
        return _Reply(proto.ok_reply(msg, job=job.id, index=task.index, outputs=[Path(p).name for p in task.outputs],
                                     sizes=[len(d) for d in data]), data)

    def _op_release(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        job = self._owned_job(msg, peer)
        if not job.terminal:
            self.scheduler.cancel(job.id, "cancelled: released by the client")
        self._remove_spool(job)
        return _Reply(proto.ok_reply(msg, job=job.id))

    def _op_jobs(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        return _Reply(proto.ok_reply(msg, jobs=self.scheduler.jobs(peer.owner if peer.remote else None)))

    def _op_shutdown(self, msg: dict, blobs: list, peer: Peer) -> _Reply:
        if peer.remote:
            raise ProtocolError(proto.NOT_ALLOWED, "a remote client cannot shut the worker down")
        log.info("shutdown requested")
        self.stop(hurry=proto.field(msg, "now", bool, required=False, default=False))
        return _Reply(proto.ok_reply(msg, pid=os.getpid(), **self.scheduler.counts()))

    def _owned_job(self, msg: dict, peer: Peer) -> Job:
        job_id = proto.job_field(msg)
        job = self.scheduler.get(job_id)
        if job is None or (peer.remote and job.owner != peer.owner):
            raise ProtocolError(proto.UNKNOWN_JOB, f"no job {job_id} on this worker (finished jobs are forgotten "
                                                   f"after {self.config.job_ttl:.0f} s; a restarted worker knows none)")
        return job

    # ---- spool (uploads) ---------------------------------------------------------------------------------

    def _new_spool(self, job_id: str) -> Path:
        if self._spool_root is None:
            base = self.config.spool_dir
            if base is not None:
                base.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._spool_root = Path(tempfile.mkdtemp(prefix="lowlux-spool-", dir=base))
        folder = self._spool_root / job_id
        folder.mkdir(mode=0o700)
        return folder

    def _remove_spool(self, job: Job) -> None:
        if job.spool is not None and job.spool.exists():
            shutil.rmtree(job.spool, ignore_errors=True)

    # ---- shutdown ----------------------------------------------------------------------------------------

    def close(self) -> None:
        self.scheduler.stop(hurry=True)
        if not self.pipeline.join(timeout=30):
            log.error("the pipeline did not stop within 30 s")
        if self._engine is not None and hasattr(self._engine, "close") and self.config.engine is not None:
            self._engine.close()
        self._close_sockets()
        if self._spool_root is not None:
            shutil.rmtree(self._spool_root, ignore_errors=True)
        path = cfg.ipc_path(self.config.endpoint)
        if path is not None and self._lock.held:  # ours: no stale socket for the next client to probe
            path.unlink(missing_ok=True)
        self._lock.release()
        log.info("worker stopped")

    def _close_sockets(self) -> None:
        for sock in list(self._sockets):
            sock.close(0)
        self._sockets.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


# ---- helpers -------------------------------------------------------------------------------------------------


def _as_bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _task(job: Job, msg: dict):
    index = proto.field(msg, "index", int)
    if not 0 <= index < len(job.tasks):
        raise ProtocolError(proto.BAD_REQUEST, f"job {job.id} has files 0-{len(job.tasks) - 1}, not {index}")
    return job.tasks[index]


def _local_path(text: str, what: str) -> str:
    if not os.path.isabs(text):
        raise ProtocolError(proto.BAD_REQUEST, f"{what}: {text!r} is not an absolute path (the worker's working "
                                               "folder is not the client's)")
    return os.path.normpath(text)


def build_options(wire: dict[str, Any], *, local: bool = False) -> Any:
    """``EnhanceOptions`` from a checked ``options`` object; bad values are a ``bad_option`` reply."""
    from .amplifier import VARIANTS
    from .pipeline import EnhanceOptions
    from .tiff import COMPRESSIONS

    kwargs = dict(wire)
    if "brightness" in kwargs:
        kwargs["brightness"] = tuple(kwargs["brightness"])
    if kwargs.get("variant") is not None and kwargs["variant"] not in VARIANTS:
        raise ProtocolError(proto.BAD_OPTION, f"variant {kwargs['variant']!r} is not one of {', '.join(VARIANTS)}")
    if kwargs.get("compression") is not None and kwargs["compression"] not in COMPRESSIONS:
        raise ProtocolError(proto.BAD_OPTION, f"compression {kwargs['compression']!r} is not one of "
                                              f"{', '.join(COMPRESSIONS)}")
    if kwargs.get("out_dir"):
        kwargs["out_dir"] = Path(_local_path(kwargs["out_dir"], "out_dir") if local else kwargs["out_dir"])
    try:
        return EnhanceOptions(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(proto.BAD_OPTION, str(exc)) from None


def warm_up(engine: Any) -> None:
    """One small forward before serving: lazy runtime set-up (thread pools, kernels) is not paid by the
    first user's file. A failure is logged; real files will then fail with their own reasons."""
    import numpy as np

    try:
        engine.restore(np.zeros((64, 64), np.float32), 1.0)
    except Exception as exc:
        log.warning("warm-up forward failed: %s: %s", exc.__class__.__name__, exc)


def load_authorized_dir(keys_dir: Path | None) -> Path:
    from .keys import load_server_keys

    return load_server_keys(keys_dir)[2]


def _rss_bytes() -> int | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:
        return None


def _peak_rss_bytes() -> int | None:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except Exception:
        return None


# ---- the command ---------------------------------------------------------------------------------------------


def add_serve_parser(sub) -> None:
    from .cli import add_engine_arguments

    p = sub.add_parser("serve", help="run the persistent worker (the net stays loaded; see docs/protocol.md)",
                       description="Run the lowlux worker: loads the net once and serves requests over ZeroMQ.")
    p.add_argument("--endpoint", help=f"local endpoint (default: ${cfg.ENV_ENDPOINT}, the config file, or an ipc "
                                      "socket in a private folder)")
    p.add_argument("--listen", metavar="tcp://0.0.0.0:PORT",
                   help="also serve remote clients on this tcp endpoint; needs CURVE keys (lowlux keys)")
    p.add_argument("--keys-dir", type=Path, help="folder with server.key_secret and authorized/ (default: "
                                                 "~/.config/lowlux/keys)")
    add_engine_arguments(p)
    g = p.add_argument_group("limits")
    g.add_argument("--encode-threads", type=int, default=2, help="TIFF encoder threads (default 2)")
    g.add_argument("--max-queued", type=int, default=10_000, help="files queued at most (default 10000)")
    g.add_argument("--max-upload-mb", type=int, default=512, help="largest raw a remote client may send (MiB)")
    g.add_argument("--job-ttl", type=float, default=3600.0, help="seconds a finished job stays queryable")
    g.add_argument("--idle-timeout", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    p.set_defaults(func=cmd_serve)


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    from .cli import engine_config_from_args

    config = cfg.load_config()
    if args.weights is None and cfg.setting("worker", "weights", config):
        args.weights = Path(cfg.setting("worker", "weights", config)).expanduser()
    if args.device == "auto" and cfg.setting("worker", "device", config):
        args.device = str(cfg.setting("worker", "device", config))
    return ServerConfig(
        endpoint=cfg.resolve_endpoint(args.endpoint, config),
        listen=args.listen or cfg.setting("worker", "listen", config),
        keys_dir=cfg.keys_dir(args.keys_dir, config),
        engine=engine_config_from_args(args),
        encode_threads=max(1, args.encode_threads),
        max_queued_files=max(1, args.max_queued),
        max_upload_bytes=max(1, args.max_upload_mb) * MiB,
        job_ttl=args.job_ttl,
        idle_timeout=args.idle_timeout,
    )


def install_signal_handlers(server: Server) -> None:
    """First SIGTERM/SIGINT: graceful; a second one cancels the file on the net before it is encoded."""
    def on_signal(signum: int, frame: Any) -> None:
        hurry = server._stop.is_set()
        log.warning("%s: %s", signal.Signals(signum).name,
                    "cancelling the running file" if hurry else "finishing the running file, then exiting")
        server.stop(hurry=hurry)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: server.reload_keys())


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = server_config_from_args(args)
        server = Server(config)
        server.bind()
    except LowluxError as exc:
        print(f"lowlux serve: {exc}", file=sys.stderr)
        return 2
    install_signal_handlers(server)
    server.start_engine(config.engine)
    print(f"lowlux worker {__version__} (pid {os.getpid()}) on {config.endpoint}"
          + (f" and {config.listen} (CURVE)" if config.listen else ""), file=sys.stderr, flush=True)
    code = server.serve_forever()
    if server._engine_error is not None:
        print(f"lowlux serve: cannot load the engine: {server._engine_error}", file=sys.stderr)
    return code
