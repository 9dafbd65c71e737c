"""The worker's sockets: the local ROUTER (ipc socket born 0600 in a private folder, or loopback tcp)
and, with ``--listen``, a second one for the network that only CURVE-authenticated clients reach.

Kept apart from the request loop because this is where the security decisions live: which endpoints
may serve without authentication, which keys are accepted, and who may connect to the socket file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import zmq

from .. import protocol as proto
from ..config import ConfigError, check_endpoint, ipc_path, is_local
from .fetches import SEND_HWM
from .settings import LOCAL_MAX_FRAME, MiB, ServerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    remote: bool
    owner: str = "local"
    key: Hashable = None
    """Whose replies these are, for the bounds on fetches: a connection, or a remote client's CURVE key."""


@dataclass(frozen=True)
class RemoteKeys:
    listen: str
    public: bytes
    secret: bytes
    authorized: Path


def load_authorized_dir(keys_dir: Path | None) -> Path:
    from ..keys import load_server_keys

    return load_server_keys(keys_dir)[2]


class Sockets:
    """The bound sockets and who is on each; :meth:`check` first, then :meth:`bind`, :meth:`close` last."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.peers: dict[zmq.Socket, Peer] = {}
        self._ctx: zmq.Context | None = None
        self._auth = None

    def check(self) -> tuple[str, RemoteKeys | None]:
        """The local endpoint and the network keys, or ``ConfigError`` before anything is claimed."""
        endpoint = check_endpoint(self.config.endpoint)
        if not is_local(endpoint):
            raise ConfigError(f"{endpoint} is reachable from the network; the plain endpoint must be local "
                              "(ipc:// or tcp://127.0.0.1). Use --listen with CURVE keys for remote clients.")
        return endpoint, (self._remote_keys() if self.config.listen else None)

    def bind(self, endpoint: str, remote: RemoteKeys | None) -> None:
        self._ctx = zmq.Context()
        self._bind_local(endpoint)
        if remote is not None:
            self._bind_remote(remote)

    @property
    def remote_listen(self) -> str | None:
        """The network endpoint, when one is served."""
        return self.config.listen if self._auth is not None else None

    def _bind_local(self, endpoint: str) -> None:
        path = ipc_path(endpoint)
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = self._router(max(LOCAL_MAX_FRAME, self.config.max_upload_bytes + MiB))
        umask = os.umask(0o177) if path is not None else None  # the socket is born 0600, no window
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ConfigError(f"cannot listen on {endpoint}: {exc}") from None
        finally:
            if umask is not None:
                os.umask(umask)
        if path is not None:
            os.chmod(path, 0o600)
        self.peers[sock] = Peer(remote=False)
        log.info("listening on %s", endpoint)

    def _remote_keys(self) -> RemoteKeys:
        from ..keys import load_server_keys

        listen = check_endpoint(self.config.listen)
        if not listen.startswith("tcp://"):
            raise ConfigError(f"--listen takes a tcp endpoint (tcp://0.0.0.0:PORT), not {listen}")
        public, secret, authorized = load_server_keys(self.config.keys_dir)
        return RemoteKeys(listen, public, secret, authorized)

    def _bind_remote(self, keys: RemoteKeys) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("lowlux.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(keys.authorized))
        sock = self._router(self.config.max_upload_bytes + proto.MAX_HEADER_BYTES + 64 * 1024)
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_server = True
        try:
            sock.bind(keys.listen)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise ConfigError(f"cannot listen on {keys.listen}: {exc}") from None
        self.peers[sock] = Peer(remote=True, owner="")
        count = len(list(keys.authorized.glob("*.key")))
        log.warning("listening for CURVE-authenticated clients on %s (%d authorized key(s) in %s)",
                    keys.listen, count, keys.authorized)

    def _router(self, max_frame: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.sndhwm = SEND_HWM  # replies a peer does not read are dropped beyond this, not piled up
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        return sock

    def reload_authorized(self) -> None:
        """Read the authorized client keys again (SIGHUP); on an error the previous ones stay in force."""
        if self._auth is None:
            return
        from ..errors import LowluxError

        try:
            self._auth.configure_curve(domain="*", location=str(load_authorized_dir(self.config.keys_dir)))
            log.warning("authorized client keys reloaded")
        except LowluxError as exc:
            log.error("keys not reloaded, the previous ones stay in force: %s", exc)

    def socket_file_gone(self) -> bool:
        """Whether the local endpoint is an ipc socket whose file has been removed."""
        path = ipc_path(self.config.endpoint)
        return path is not None and not path.is_socket()

    def rebind_local(self) -> bool:
        """Bind the local socket again (its file was removed: a tmp cleaner, a careless rm); False on failure."""
        path = ipc_path(self.config.endpoint)
        log.warning("%s disappeared: listening again", path)
        sock = next(s for s, peer in self.peers.items() if not peer.remote)
        try:
            with contextlib.suppress(zmq.ZMQError):
                sock.unbind(self.config.endpoint)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            sock.bind(self.config.endpoint)
            os.chmod(path, 0o600)
        except (zmq.ZMQError, OSError) as exc:
            log.error("cannot listen on %s again (%s): exiting", self.config.endpoint, exc)
            return False
        return True

    def close(self) -> None:
        for sock in list(self.peers):
            sock.close(0)
        self.peers.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
