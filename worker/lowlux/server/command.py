"""``lowlux serve``: flags and config file to a :class:`Server`, signals to a graceful stop."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .. import __version__, config
from ..batch import DECODE_THREADS_MAX, default_decode_threads
from ..cluster import ENV_ADDRESS
from ..errors import LowluxError
from ..options import EXIT_USAGE, add_engine_arguments, engine_config_from_args, positive_count
from . import settings
from .loop import Server
from .settings import MiB, ServerConfig

log = logging.getLogger(__name__)


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the persistent worker (the net stays loaded; see docs/protocol.md)",
                       description="Run the lowlux worker: loads the net once and serves requests over ZeroMQ.")
    p.add_argument("--endpoint", help=f"local endpoint (default: ${config.ENV_ENDPOINT}, the config file, or an ipc "
                                      "socket in a private folder)")
    p.add_argument("--listen", metavar="tcp://0.0.0.0:PORT",
                   help="also serve remote clients on this tcp endpoint; needs CURVE keys (lowlux keys)")
    p.add_argument("--keys-dir", type=Path, help="folder with server.key_secret and authorized/ (default: "
                                                 "~/.config/lowlux/keys)")
    p.add_argument("--spool-dir", type=Path, help="folder for remote clients' uploads (default: the system's "
                                                  "temporary folder)")
    add_engine_arguments(p)
    c = p.add_argument_group("cluster (a front door: restore on a Dask cluster, load no net here)")
    c.add_argument("--cluster", metavar="ADDRESS", default=os.environ.get(ENV_ADDRESS) or None,
                   help="restore every job on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786, "
                        f"tls://...); the engine options travel to its workers; default ${ENV_ADDRESS}")
    c.add_argument("--cluster-upload", action="store_true",
                   help="send each raw's bytes to the cluster and write the TIFFs here, for workers that do not "
                        "see this machine's files (default: they read and write shared storage, and the spool "
                        "must be on it: --spool-dir)")
    c.add_argument("--cluster-timeout", type=float, default=settings.CLUSTER_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the scheduler and a worker at start (default "
                        f"{settings.CLUSTER_TIMEOUT:g})")
    g = p.add_argument_group("limits")
    g.add_argument("--encode-threads", type=int, default=settings.ENCODE_THREADS,
                   help=f"TIFF encoder threads (default {settings.ENCODE_THREADS})")
    g.add_argument("--decode-threads", type=positive_count, default=None, metavar="N",
                   help=f"raws decoded at once (default: one per four cores, at most {DECODE_THREADS_MAX}; "
                        f"{default_decode_threads()} here)")
    g.add_argument("--max-queued", type=int, default=settings.MAX_QUEUED_FILES,
                   help=f"files queued at most (default {settings.MAX_QUEUED_FILES})")
    g.add_argument("--max-queued-per-client", type=int, default=settings.MAX_QUEUED_PER_PEER,
                   help=f"files one remote client may have queued (default {settings.MAX_QUEUED_PER_PEER})")
    g.add_argument("--max-upload-mb", type=int, default=settings.MAX_UPLOAD_MB,
                   help=f"largest raw a remote client may send (MiB, default {settings.MAX_UPLOAD_MB})")
    g.add_argument("--job-ttl", type=float, default=settings.JOB_TTL,
                   help=f"seconds a finished job stays queryable (default {settings.JOB_TTL:g})")
    g.add_argument("--idle-timeout", type=float, default=settings.IDLE_TIMEOUT,
                   help="exit after this many idle seconds (0: never)")
    p.set_defaults(func=cmd_serve)


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    file_config = config.load_config()
    weights = config.setting("worker", "weights", file_config)
    if args.weights is None and weights:
        args.weights = Path(weights).expanduser()
    device = config.setting("worker", "device", file_config)
    if args.device == "auto" and device:
        args.device = str(device)
    return ServerConfig(
        endpoint=config.resolve_endpoint(args.endpoint, file_config),
        listen=args.listen or config.setting("worker", "listen", file_config),
        keys_dir=config.keys_dir(args.keys_dir, file_config),
        engine=engine_config_from_args(args),
        encode_threads=max(1, args.encode_threads),
        decode_threads=args.decode_threads,
        max_queued_files=max(1, args.max_queued),
        max_queued_per_peer=max(1, args.max_queued_per_client),
        max_awaiting_upload_per_peer=min(settings.MAX_AWAITING_UPLOAD_PER_PEER, max(1, args.max_queued_per_client)),
        max_upload_bytes=max(1, args.max_upload_mb) * MiB,
        job_ttl=args.job_ttl,
        idle_timeout=args.idle_timeout,
        spool_dir=args.spool_dir,
        cluster=args.cluster or None,
        cluster_upload=args.cluster_upload,
        cluster_timeout=args.cluster_timeout,
    )


def install_signal_handlers(server: Server) -> None:
    """First SIGTERM/SIGINT: graceful; a second one cancels the file on the net before it is encoded."""
    def on_signal(signum: int, frame: Any) -> None:
        hurry = server.stopping
        log.warning("%s: %s", signal.Signals(signum).name,
                    "cancelling the running file" if hurry else "finishing the running file, then exiting")
        server.stop(hurry=hurry)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: server.reload_keys())


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        server_config = server_config_from_args(args)
        server = Server(server_config)
        server.bind()
    except LowluxError as exc:
        print(f"lowlux serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    install_signal_handlers(server)
    server.start_engine(server_config.engine)
    print(f"lowlux worker {__version__} (pid {os.getpid()}) on {server_config.endpoint}"
          + (f" and {server_config.listen} (CURVE)" if server_config.listen else "")
          + (f", front door of the Dask cluster at {server.cluster}" if server.cluster else ""),
          file=sys.stderr, flush=True)
    code = server.serve_forever()
    if server.engine_error is not None:
        print(f"lowlux serve: cannot load the engine: {server.engine_error}", file=sys.stderr)
    return code
