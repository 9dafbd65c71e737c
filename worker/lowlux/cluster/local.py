"""A cluster on this machine: one Dask worker process per core group or GPU, loopback only.

For ``lowlux cluster local --workers N``: a scheduler and N worker processes that other lowlux
commands on this machine reach with ``--cluster``; also what the tests and the benchmark use. Every
socket listens on 127.0.0.1, and the dashboard is off, so nothing is reachable from the network.
Worker processes (not threads) because decoding and encoding hold the GIL part of the time and each
process keeps its own warm engine; one thread per worker by default (``threads_per_worker`` > 1
overlaps decode and encode with the net on a GPU worker).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from . import require_distributed


def start_local_cluster(workers: int, threads_per_worker: int = 1, *, memory_limit: str | float | None = "auto",
                        env: dict[str, str] | None = None):
    """A running :class:`distributed.LocalCluster` on loopback (close it when done)."""
    distributed = require_distributed()
    if workers < 1 or threads_per_worker < 1:
        raise ValueError("a local cluster needs at least one worker with at least one thread")
    kwargs = {"env": env} if env else {}
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                    host="127.0.0.1", scheduler_port=0, dashboard_address=None,
                                    # no dashboard; its health endpoint on a free loopback port, not 8787
                                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                    memory_limit=memory_limit, **kwargs)


_running: dict[str, object] = {}
_running_lock = threading.Lock()


def local_cluster(workers: int, threads_per_worker: int = 1) -> str:
    """Start a loopback cluster that lives until :func:`stop_local_cluster` (or this process ends);
    returns its scheduler's address."""
    cluster = start_local_cluster(workers, threads_per_worker)
    with _running_lock:
        _running[cluster.scheduler_address] = cluster
    return cluster.scheduler_address


def stop_local_cluster(address: str) -> bool:
    """Close a cluster started by :func:`local_cluster`; False if there is none at ``address``."""
    with _running_lock:
        cluster = _running.pop(address, None)
    if cluster is None:
        return False
    cluster.close()
    return True


def serve_local_cluster(workers: int, threads_per_worker: int = 1, *, ready: Callable[[str], None] | None = None,
                        stop: threading.Event | None = None) -> str:
    """``lowlux cluster local``: run a local cluster until Ctrl-C, SIGTERM or ``stop``; ``ready(address)``
    once it listens. Returns the address."""
    address = local_cluster(workers, threads_per_worker)
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if ready is not None:
            ready(address)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stop_local_cluster(address)
    return address
