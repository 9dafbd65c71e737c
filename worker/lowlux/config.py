"""Where the worker listens, where its keys, locks and log live.

The endpoint comes from, in order: the ``--endpoint`` flag, the ``LOWLUX_ENDPOINT`` environment
variable, ``endpoint`` in the ``[worker]`` table of ``~/.config/lowlux/config.toml`` (or the file
named by ``LOWLUX_CONFIG``), and finally a local-only default: an ipc socket in a private (0700)
per-user folder — ``$XDG_RUNTIME_DIR/lowlux/`` when the session has one — or, where ipc sockets do not
exist (Windows), ``tcp://127.0.0.1:5591``.

Light on purpose: the client imports this on every darktable poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from .errors import LowluxError

log = logging.getLogger(__name__)

ENV_ENDPOINT = "LOWLUX_ENDPOINT"
ENV_CONFIG = "LOWLUX_CONFIG"
ENV_SERVER_KEY = "LOWLUX_SERVER_KEY"
ENV_CLIENT_KEY = "LOWLUX_CLIENT_KEY"
DEFAULT_TCP_PORT = 5591
IPC_PATH_MAX = 100
"""sockaddr_un holds 104-108 bytes depending on the OS; stay below all of them."""


class ConfigError(LowluxError):
    """A config file, endpoint or key location that cannot be used as given."""


def config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lowlux"


def config_path() -> Path:
    return Path(os.environ.get(ENV_CONFIG) or config_home() / "config.toml")


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed config file, or {} when there is none; a broken file is an error naming it."""
    import tomllib

    path = path or config_path()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    return data


def setting(table: str, key: str, config: dict[str, Any] | None = None) -> Any:
    """``[table] key`` from the config file, or None."""
    config = load_config() if config is None else config
    section = config.get(table)
    return section.get(key) if isinstance(section, dict) else None


def runtime_dir() -> Path:
    """A private folder for the socket, locks and the worker's log; created 0700, refused if not ours."""
    import tempfile

    xdg = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(xdg) / "lowlux" if xdg else Path(tempfile.gettempdir()) / f"lowlux-{uid}"
    return private_dir(folder)


def private_dir(folder: Path) -> Path:
    """Create ``folder`` with mode 0700, or check that an existing one belongs to us and is private."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create the private folder ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{folder}: exists and is not a folder")
    if hasattr(os, "getuid"):
        if info.st_uid != os.getuid():
            raise ConfigError(f"{folder}: belongs to another user; refusing to put the worker's socket there")
        if info.st_mode & 0o077:
            os.chmod(folder, 0o700)
    return folder


def default_endpoint() -> str:
    if os.name == "posix":
        return f"ipc://{runtime_dir() / 'worker.sock'}"
    return f"tcp://127.0.0.1:{DEFAULT_TCP_PORT}"


def resolve_endpoint(flag: str | None = None, config: dict[str, Any] | None = None) -> str:
    """Flag, then LOWLUX_ENDPOINT, then the config file, then the local default."""
    for value in (flag, os.environ.get(ENV_ENDPOINT)):
        if value:
            return check_endpoint(value)
    configured = setting("worker", "endpoint", config)
    if configured:
        return check_endpoint(str(configured))
    return default_endpoint()


def check_endpoint(endpoint: str) -> str:
    endpoint = endpoint.strip()
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path:
            raise ConfigError("an ipc endpoint needs a path: ipc:///path/to/socket")
        if len(path.encode()) > IPC_PATH_MAX and not path.startswith("@"):
            raise ConfigError(f"ipc socket path is too long ({len(path)} > {IPC_PATH_MAX} bytes): {path}")
        return endpoint
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"a tcp endpoint needs a host and a port: tcp://127.0.0.1:{DEFAULT_TCP_PORT}, "
                              f"not {endpoint}")
        return endpoint
    raise ConfigError(f"unsupported endpoint {endpoint!r}: use ipc:///path or tcp://host:port")


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc endpoint (None for tcp and abstract sockets)."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return Path(endpoint[len("ipc://"):])
    return None


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return host.strip("[]"), int(port)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_local(endpoint: str) -> bool:
    """Only this machine can connect: an ipc socket, or tcp bound to a loopback address."""
    if endpoint.startswith("ipc://"):
        return True
    address = tcp_address(endpoint)
    return address is not None and (address[0] in LOOPBACK_HOSTS or address[0].startswith("127."))


def _endpoint_tag(endpoint: str) -> str:
    return hashlib.sha1(endpoint.encode()).hexdigest()[:12]


def _endpoint_key(endpoint: str) -> str:
    """What identifies an endpoint whatever its spelling: tcp's host and port (localhost is 127.0.0.1)."""
    address = tcp_address(endpoint)
    if address is None:
        return endpoint
    host = "127.0.0.1" if address[0] == "localhost" else address[0]
    return f"tcp://{host}:{address[1]}"


def lock_path(endpoint: str, kind: str) -> Path:
    """``serve`` is held by a running worker for its lifetime; ``spawn`` by a client starting one.

    The same file for every process whatever its environment (``XDG_RUNTIME_DIR`` set or not): beside
    an ipc socket (``worker.sock.serve.lock``), else keyed by host and port in the private tmp folder.
    """
    path = ipc_path(endpoint)
    if path is not None:
        with contextlib.suppress(OSError):  # the worker creates the socket's folder so, too
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path.with_name(f"{path.name}.{kind}.lock")
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = private_dir(Path(tempfile.gettempdir()) / f"lowlux-{uid}")
    return folder / f"{kind}-{_endpoint_tag(_endpoint_key(endpoint))}.lock"


def log_path(endpoint: str) -> Path:
    """Where an auto-started worker writes its log."""
    return runtime_dir() / f"worker-{_endpoint_tag(endpoint)}.log"


def keys_dir(flag: str | Path | None = None, config: dict[str, Any] | None = None) -> Path:
    if flag:
        return Path(flag).expanduser()
    configured = setting("keys", "dir", config)
    return Path(configured).expanduser() if configured else config_home() / "keys"
