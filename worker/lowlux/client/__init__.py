"""Talking to the worker: the Python API (:class:`Client`), ``lowlux client`` and ``enhance --via-worker``.

When no worker answers, the client can start one (``lowlux serve`` detached); see :mod:`.autostart`.
The modules, one concern each: :mod:`.errors`, :mod:`.connection` (the lazy-pirate transport),
:mod:`.autostart` (starting exactly one worker), :mod:`.api` (``Client``), :mod:`.files` (a remote
worker's uploads and fetched TIFFs), :mod:`.command` (``lowlux client``) and :mod:`.via_worker`.

Start-up time matters — the darktable script runs ``lowlux client status`` on every poll — so this
package imports neither torch, nor rawpy, nor numpy: only pyzmq and the standard library.
"""

from .api import Client
from .autostart import AUTOSTART_IDLE_TIMEOUT, START_TIMEOUT, spawn_worker
from .command import add_client_parser, client_from_args, cmd_client
from .connection import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Connection, Reply, listening
from .errors import OutputExists, WorkerError, WorkerStartError, WorkerUnavailable
from .files import UPLOAD_RATE, upload_problem, write_atomic
from .via_worker import enhance_via_worker

__all__ = [
    "AUTOSTART_IDLE_TIMEOUT", "Client", "Connection", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "OutputExists", "Reply",
    "START_TIMEOUT", "UPLOAD_RATE", "WorkerError", "WorkerStartError", "WorkerUnavailable", "add_client_parser",
    "client_from_args", "cmd_client", "enhance_via_worker", "listening", "spawn_worker", "upload_problem",
    "write_atomic",
]
