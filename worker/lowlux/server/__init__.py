"""``lowlux serve``: the persistent worker. The net stays loaded and warm; requests come over ZeroMQ.

One ROUTER socket on a local-only endpoint (ipc socket, mode 0600, in a private folder; or loopback
tcp), and optionally a second, CURVE-authenticated one for the network (``--listen``). The main
thread only answers requests — it never waits on the net — so ``status`` and ``ping`` are answered
at once even while a 50-megapixel raw is being restored. The work runs on
:class:`lowlux.batch.WorkerPipeline`.

Shutdown (``shutdown`` request, SIGTERM, SIGINT) cancels the queued files and those waiting for the
net, lets the file on the net finish and be written (a second signal cancels it before encoding
instead), and never leaves a partial TIFF: TIFFs are written under a temporary name and renamed when
complete.

The modules, one concern each: :mod:`.settings` (``ServerConfig`` and its defaults), :mod:`.lock` (one
worker per endpoint), :mod:`.sockets` (binding and CURVE), :mod:`.loop` (``Server``: the main thread),
:mod:`.handlers` (the protocol's operations), :mod:`.job_options` (a submit's options), :mod:`.spool` (uploaded files),
:mod:`.fetches` (bounds on fetch replies a client has not read), :mod:`.memory` (``health``'s numbers) and
:mod:`.command` (``lowlux serve``).
"""

from .command import add_serve_parser, cmd_serve, install_signal_handlers, server_config_from_args
from .handlers import Handlers, Reply
from .job_options import build_options
from .lock import ServeLock
from .loop import Server, warm_up
from .settings import ServerConfig
from .sockets import Peer, Sockets, load_authorized_dir
from .spool import Spool, safe_name

__all__ = [
    "Handlers", "Peer", "Reply", "ServeLock", "Server", "ServerConfig", "Sockets", "Spool", "add_serve_parser",
    "build_options", "cmd_serve", "install_signal_handlers", "load_authorized_dir", "safe_name",
    "server_config_from_args", "warm_up",
]
