"""The worker's settings and their defaults, written once: ``ServerConfig`` and ``lowlux serve``'s
flags both take them from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import protocol as proto
from ..jobs import MAX_AWAITING_UPLOAD_PER_PEER, MAX_PIXELS_IN_FLIGHT, MAX_QUEUED_FILES, MAX_QUEUED_PER_PEER

MiB = 1 << 20
LOCAL_MAX_FRAME = 128 * MiB
"""The least frame limit of the local socket, which is the upload limit + 1 MiB when that is more (513 MiB
by default): larger frames are dropped by ZeroMQ itself (the peer is disconnected); smaller junk gets a reply."""

ENCODE_THREADS = 2
MAX_UPLOAD_MB = 512
JOB_TTL = 3600.0
"""Seconds a finished job stays queryable."""
KEEP_JOBS = 1000
UPLOAD_TIMEOUT = 600.0
"""Seconds an upload job waits for a file's bytes before that file fails."""
LINGER = 5.0
"""Seconds a stopping worker, its files ended, goes on answering so that clients waiting on the jobs it
was running hear how each file ended (it exits as soon as they all have)."""
IDLE_TIMEOUT = 0.0
"""Exit after this many seconds with no request and no work (0: never)."""
CLUSTER_TIMEOUT = 10.0
"""Seconds a front door (``--cluster``) waits for the Dask scheduler and its first worker at start."""


@dataclass
class ServerConfig:
    endpoint: str
    listen: str | None = None
    """Network endpoint (CURVE only), e.g. tcp://0.0.0.0:5592."""
    keys_dir: Path | None = None
    """Holds server.key_secret and authorized/ (client public keys) for ``listen``."""
    engine: Any = None
    """``EngineConfig`` used to load the engine (unless one is handed to :class:`Server`)."""
    encode_threads: int = ENCODE_THREADS
    decode_threads: int | None = None
    """Raws decoded at once; None: :func:`lowlux.batch.default_decode_threads`."""
    queue_size: int = 1
    max_pixels_in_flight: int = MAX_PIXELS_IN_FLIGHT
    """Decoded frames held at once before decoding the next raw waits (see :mod:`lowlux.batch`)."""
    max_queued_files: int = MAX_QUEUED_FILES
    """Local and remote clients' files are counted apart, each against this."""
    max_queued_per_peer: int = MAX_QUEUED_PER_PEER
    max_awaiting_upload_per_peer: int = MAX_AWAITING_UPLOAD_PER_PEER
    max_files_per_job: int = proto.MAX_FILES_PER_JOB
    max_upload_bytes: int = MAX_UPLOAD_MB * MiB
    job_ttl: float = JOB_TTL
    keep_jobs: int = KEEP_JOBS
    upload_timeout: float = UPLOAD_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    linger: float = LINGER
    """Auto-started workers use it (see :data:`lowlux.client.autostart.AUTOSTART_IDLE_TIMEOUT`)."""
    spool_dir: Path | None = None
    """Where remote clients' uploads are kept (default: the system's temporary folder)."""
    cluster: str | None = None
    """A Dask scheduler's address (tcp://host:8786, tls://...): restore there, as its front door, and load
    no net here (see :mod:`lowlux.cluster.pipeline`)."""
    cluster_upload: bool = False
    """Send each raw's bytes with its task and write the TIFFs here; else the cluster's workers read and
    write the files where they lie (shared storage, the spool included)."""
    cluster_timeout: float = CLUSTER_TIMEOUT
