"""The worker's main thread: load the net on the side, then answer requests until stopped and drained.

The main thread only moves frames between the sockets and :mod:`~lowlux.server.handlers` — it never
waits on the net — so ``status`` and ``ping`` are answered at once even while a 50-megapixel raw is
being restored. The work runs on :class:`lowlux.batch.WorkerPipeline`, or, with a cluster address
(``lowlux serve --cluster``), on :class:`lowlux.cluster.pipeline.ClusterPipeline`: the worker is then a
front door that loads no net and fans its queue out over the Dask cluster, with the same protocol, job
table and fairness. Once a second the loop does its chores: forget old jobs, fail abandoned uploads,
notice a failed engine, an idle timeout or a removed socket file.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from .. import protocol as proto
from ..batch import WorkerPipeline
from ..config import ipc_path
from ..errors import LowluxError
from ..jobs import Scheduler
from .fetches import FetchGate
from .handlers import Handlers, Reply, as_bytes
from .lock import ServeLock
from .settings import ServerConfig
from .sockets import Peer, Sockets
from .spool import Spool
from .waits import Waits, WaitFor

log = logging.getLogger(__name__)

CHORES_EVERY = 1.0
"""Seconds between two rounds of housekeeping."""
RECENTLY_ENDED = 10.0
"""A job that ended this many seconds before a stop, and that no client was seen to learn of, may still
have a client polling it: the stopping worker answers it a little longer (``ServerConfig.linger``)."""


class Server:
    """The worker: sockets, request handlers, job table and pipeline. ``serve_forever`` runs it."""

    def __init__(self, config: ServerConfig, engine: Any = None) -> None:
        self.config = config
        self.scheduler = Scheduler(config.max_queued_files, per_peer=config.max_queued_per_peer,
                                   awaiting_per_peer=config.max_awaiting_upload_per_peer)
        self._engine = engine
        self._engine_ready = threading.Event()
        self._engine_error: BaseException | None = None
        self.cluster: str | None = config.cluster or None
        """The Dask scheduler's address when this worker is a front door (no net is loaded here)."""
        if engine is not None and self.cluster is None:
            self._engine_ready.set()
        self.sockets = Sockets(config)
        self.spool = Spool(config.spool_dir)
        self.fetches = FetchGate()
        self._lock = ServeLock(config.endpoint)
        self.pipeline: Any = self._cluster_pipeline() if self.cluster else WorkerPipeline(
            self.scheduler, self._get_engine, encode_threads=config.encode_threads,
            decode_threads=config.decode_threads, queue_size=config.queue_size,
            max_pixels_in_flight=config.max_pixels_in_flight)
        self.waits = Waits()
        self.scheduler.on_change = self.waits.wake
        self.handlers = Handlers(self)
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._reload_keys = threading.Event()
        self._started = time.monotonic()
        self._last_request = time.monotonic()
        self.bound = threading.Event()
        self.exit_code = 0

    # ---- start-up ----------------------------------------------------------------------------------------

    def _cluster_pipeline(self) -> Any:
        """Connect to the cluster and load the engine on its workers; ``ClusterError`` names the address."""
        from ..cluster.pipeline import ClusterPipeline
        from ..engine import EngineConfig

        log.info("connecting to the Dask scheduler at %s", self.cluster)
        pipeline = ClusterPipeline(self.scheduler, self.cluster, self.config.engine or EngineConfig(),
                                   upload=self.config.cluster_upload, connect_timeout=self.config.cluster_timeout)
        log.info("front door of the cluster at %s: %d worker(s), %d thread(s)%s", self.cluster, pipeline.workers,
                 pipeline.threads, "; the raws are sent to it" if pipeline.upload else "; shared storage")
        self._engine_ready.set()
        return pipeline

    def bind(self) -> None:
        """Claim the endpoint(s); raises ``ConfigError`` (another worker, unsafe endpoint, missing keys)."""
        try:
            endpoint, remote = self.sockets.check()
            self._lock.acquire()
            try:
                self.sockets.bind(endpoint, remote)
            except BaseException:
                self.sockets.close()
                self._lock.release()
                raise
        except BaseException:
            if self.cluster:  # a front door that will not serve lets go of its cluster connection
                self.pipeline.join(timeout=0)
            raise
        self.bound.set()

    def start_engine(self, engine_config: Any) -> None:
        """Load the net on a thread: the worker answers ping (``ready: false``) while it loads. A front door
        (``config.cluster``) loads none: the cluster's workers hold the engine."""
        if self.cluster:
            return

        def load() -> None:
            try:
                from ..engine import Engine

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
        return self._engine_ready.is_set() and (self._engine is not None or self.cluster is not None)

    @property
    def engine(self) -> Any:
        """The loaded engine, or None while it loads (or when it could not, or on a front door)."""
        return self._engine if self.ready and self.cluster is None else None

    @property
    def engine_error(self) -> BaseException | None:
        """Why the engine could not load, or None."""
        return self._engine_error

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    # ---- the loop ----------------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for (request, signal, idle timeout)."""
        return self._stop.is_set()

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
        for sock in self.sockets.peers:
            poller.register(sock, zmq.POLLIN)
        poller.register(self.waits.fileno(), zmq.POLLIN)
        draining, last_chores, awaited, linger_until = False, 0.0, [], None
        try:
            while True:
                for sock, _ in poller.poll(self.waits.timeout_ms(100)):
                    if sock == self.waits.fileno():
                        self.waits.drain()
                    else:
                        self._drain_socket(sock)
                self._answer_waits()
                if self._stop.is_set() and not draining:
                    draining = True
                    log.info("shutting down: cancelling queued files, finishing the one on the net")
                    awaited = self._awaited_jobs()
                    self.scheduler.stop(hurry=self._hurry.is_set())
                elif draining and self._hurry.is_set() and not self.scheduler.hurrying:
                    self.scheduler.stop(hurry=True)
                if draining and self.pipeline.drained:
                    if linger_until is None:
                        linger_until = time.monotonic() + self.config.linger
                    if all(job.told for job in awaited) or time.monotonic() >= linger_until:
                        break
                if time.monotonic() - last_chores > CHORES_EVERY:
                    last_chores = time.monotonic()
                    try:
                        self._chores()
                    except Exception:  # housekeeping must never take the worker down
                        log.exception("housekeeping failed")
        finally:
            self.close()
        return self.exit_code

    def _awaited_jobs(self) -> list:
        """Jobs a client may be waiting on (running, or ended a moment ago without a client having seen
        it): a stopping worker answers until each was seen to end, for up to ``config.linger`` seconds."""
        now = time.monotonic()
        return [job for job in self.scheduler if not job.told
                and (job.finished_at is None or now - job.finished_at < RECENTLY_ENDED)]

    def _chores(self) -> None:
        """Forget old jobs, fail abandoned uploads, notice a failed engine or an idle timeout."""
        for job in self.scheduler.purge(ttl=self.config.job_ttl, keep=self.config.keep_jobs):
            self.spool.remove(job)
        self.scheduler.fail_stale_uploads(self.config.upload_timeout)
        if self._engine_error is not None and not self._stop.is_set():
            self.exit_code = 1
            self.stop(hurry=True)
        idle_for = time.monotonic() - self._last_request
        if self.config.idle_timeout and idle_for > self.config.idle_timeout and self.scheduler.idle:
            log.info("idle for %.0f s: exiting", idle_for)
            self.stop()
        self._check_socket_file()
        if self._reload_keys.is_set():
            self._reload_keys.clear()
            self.sockets.reload_authorized()

    def _check_socket_file(self) -> None:
        """Bind again if the ipc socket file was removed: else no client could reach this worker, and
        none could replace it while it holds the lock."""
        if self._stop.is_set():
            return
        if not self._lock.ensure():
            log.error("another worker took the lock of %s: exiting", self.config.endpoint)
            self.exit_code = 1
            self.stop()
            return
        if not self.sockets.socket_file_gone():
            return
        if not self.sockets.rebind_local():
            self.exit_code = 1
            self.stop()

    def _drain_socket(self, sock: zmq.Socket) -> None:
        for _ in range(64):  # bounded, so one chatty client cannot starve the other socket
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if self.sockets.peers[sock].remote:  # one CURVE key is one client, however many connections
                owner = frames[-1].get("User-Id") or "?"
                peer = Peer(remote=True, owner=owner, key=owner)
            else:
                peer = Peer(remote=False, key=frames[0].bytes)
            unwrapped = self._dispatch_frames(frames, peer)
            if unwrapped is None:
                continue
            envelope, reply = unwrapped
            if isinstance(reply, WaitFor):
                self.waits.park(sock, envelope, reply)
            else:
                self._send(sock, envelope, reply, peer)

    def _send(self, sock: zmq.Socket, envelope: list, reply: Reply, peer: Peer) -> None:
        frames_out = envelope + [proto.dumps(reply.body)] + reply.blobs
        data = sum(len(b) for b in reply.blobs)
        try:
            tracker = sock.send_multipart(frames_out, zmq.NOBLOCK, copy=False, track=bool(data))
        except zmq.ZMQError as exc:  # the peer went away or its pipe is full: drop the reply
            log.debug("reply dropped: %s", exc)
            return
        if data:  # a fetch: its bytes count against the peer until ZeroMQ lets go of them
            self.fetches.sent(peer.key, tracker, data)

    def _answer_waits(self) -> None:
        """Answer the waiting requests whose file finished, job ended or wait ran out; all of them once
        the worker stops."""
        if not len(self.waits):
            return

        def ready(wait: WaitFor) -> bool:
            return any(self.handlers.moved_on(job_id, seen, wait.peer) for job_id, seen in wait.seen.items())

        answers = {"status": self.handlers.status_now, "jobs": self.handlers.jobs_now}
        for waiting in self.waits.due(ready, all_of_them=self._stop.is_set()):
            wait = waiting.wait
            try:
                reply = answers[wait.answer](wait.msg, wait.peer)
            except Exception as exc:
                reply = self.handlers.error_reply(exc, wait.msg, wait.peer)
            self._send(waiting.sock, waiting.envelope, reply, wait.peer)

    def _dispatch_frames(self, frames: list, peer: Peer) -> tuple[list, Reply | WaitFor] | None:
        """Unwrap the ROUTER envelope (REQ peers add an empty delimiter, DEALER peers do not): the envelope
        to reply to, and the reply (or what a waiting ``status`` waits for)."""
        if len(frames) < 2:
            return None
        envelope = [as_bytes(frames[0])]  # bytes: a received frame cannot be sent again with a tracker
        body = frames[1:]
        if len(body[0]) == 0:
            envelope.append(b"")
            body = body[1:]
        self._last_request = time.monotonic()
        if not body:
            return envelope, Reply(proto.error_reply(None, proto.BAD_REQUEST, "empty request"))
        return envelope, self.handlers.handle(body[0], body[1:], peer)

    def handle(self, header: Any, blobs: list, peer: Peer) -> Reply | WaitFor:
        """One request to one reply (see :meth:`Handlers.handle`)."""
        return self.handlers.handle(header, blobs, peer)

    # ---- shutdown ----------------------------------------------------------------------------------------

    def close(self) -> None:
        self.scheduler.stop(hurry=True)
        if not self.pipeline.join(timeout=30):
            log.error("the pipeline did not stop within 30 s")
        self.scheduler.on_change = None
        self.waits.close()
        if self._engine is not None and hasattr(self._engine, "close") and self.config.engine is not None:
            self._engine.close()
        self.sockets.close()
        self.spool.close()
        path = ipc_path(self.config.endpoint)
        if path is not None and self._lock.held:  # ours: no stale socket for the next client to probe
            path.unlink(missing_ok=True)
        self._lock.release()
        log.info("worker stopped")


def warm_up(engine: Any) -> None:
    """One small forward before serving: lazy runtime set-up (thread pools, kernels) is not paid by the
    first user's file. A failure is logged; real files will then fail with their own reasons."""
    import numpy as np

    try:
        engine.restore(np.zeros((64, 64), np.float32), 1.0)
    except Exception as exc:
        log.warning("warm-up forward failed: %s: %s", exc.__class__.__name__, exc)
