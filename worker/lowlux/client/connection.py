"""The transport: one lazy-pirate REQ connection to a worker, and a probe of whether anything listens.

Requests use the ZeroMQ guide's "lazy pirate" pattern: a REQ socket, a timeout per try, and on
silence the socket is thrown away and the request sent again on a fresh one, a few times, before the
worker is declared dead. A retried ``submit`` carries the same request id, so the worker queues the
job once however many copies arrive. A plain connect to the socket tells at once whether anything
listens, so a client need not wait for the retries to run out to know there is no worker.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Sequence
from typing import Any

import zmq

from .. import protocol as proto
from ..config import ipc_path, is_local, tcp_address
from ..protocol import Reply
from .errors import WorkerError, WorkerUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3


class Connection:
    """A lazy-pirate REQ connection to one endpoint. Not thread-safe: one per thread."""

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 keys: Any = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = max(1, retries)
        self.keys = keys
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.linger = 0
            if self.keys is not None:
                sock.curve_serverkey = self.keys.server_public
                sock.curve_publickey = self.keys.client_public
                sock.curve_secretkey = self.keys.client_secret
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        self._reset()

    def request(self, op: str, *, blobs: Sequence[bytes] = (), timeout: float | None = None,
                retries: int | None = None, **fields: Any) -> Reply:
        """Send one request and return the reply, retrying on silence; raises on an error reply."""
        msg = proto.make_request(op, **fields)
        frames = [proto.dumps(msg), *blobs]
        timeout = self.timeout if timeout is None else timeout
        attempts = self.retries if retries is None else max(1, retries)
        for attempt in range(1, attempts + 1):
            if listening(self.endpoint) is False:  # nothing there at all: no point waiting for a reply
                raise WorkerUnavailable(f"no lowlux worker runs at {self.endpoint} (nothing listens there)")
            sock = self._socket()
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                if sock.poll(int(timeout * 1000), zmq.POLLIN):
                    return _check_reply(msg, sock.recv_multipart())
            except zmq.ZMQError as exc:
                log.debug("%s: %s", self.endpoint, exc)
            self._reset()  # a REQ socket that lost its reply is stuck: start over on a fresh one
            log.debug("no reply from %s to %s (try %d of %d)", self.endpoint, op, attempt, attempts)
        raise WorkerUnavailable(f"no lowlux worker answers at {self.endpoint} ({attempts} "
                                f"{'try' if attempts == 1 else 'tries'}, {timeout:g} s each)"
                                + (": is the worker running, and are the CURVE keys right?" if self.keys else ""))


def _check_reply(msg: dict[str, Any], frames: list[bytes]) -> Reply:
    try:
        body = json.loads(frames[0])
    except (ValueError, IndexError):
        raise WorkerError(proto.BAD_JSON, "the worker sent a reply that is not JSON") from None
    if not isinstance(body, dict):
        raise WorkerError(proto.BAD_JSON, "the worker sent a reply that is not a JSON object")
    if not body.get("ok"):
        error = body.get("error") or {}
        raise WorkerError(str(error.get("code", "error")), str(error.get("message", "the worker refused")))
    if body.get("id") not in (None, msg["id"]):
        raise WorkerError(proto.BAD_REQUEST, "the worker answered another request")
    return Reply(body, list(frames[1:]))


def listening(endpoint: str) -> bool | None:
    """Whether anything accepts connections on a local endpoint: False for sure, True, or None (unknown)."""
    path = ipc_path(endpoint)
    if path is not None:
        if not path.exists():
            return False
        family, target = socket.AF_UNIX, str(path)
    else:
        address = tcp_address(endpoint)
        if address is None or not is_local(endpoint):
            return None
        family, target = (socket.AF_INET6 if ":" in address[0] else socket.AF_INET), address
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(target)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return None
