"""Helpers for the worker tests: isolated runtime folders, in-process and subprocess workers, raw sockets.

Workers run either in-process (a thread, sharing one engine with tiny weights: fast) or as
``lowlux serve`` subprocesses (for signals, SIGKILL and auto-start); both are always cleaned up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from lowlux.server import Server, ServerConfig


def short_dir(prefix: str = "llx") -> Path:
    """ipc socket paths must stay under ~100 bytes; pytest's tmp_path can be longer."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def runtime(monkeypatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR and no user config, so tests never touch the real worker or settings."""
    folder = short_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.setenv("LOWLUX_CONFIG", str(folder / "no-config.toml"))
    for name in ("LOWLUX_ENDPOINT", "LOWLUX_SERVER_KEY", "LOWLUX_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield folder
    kill_stray_workers(folder)
    shutil.rmtree(folder, ignore_errors=True)


def kill_stray_workers(folder: Path) -> None:
    """Workers a test started (auto-started ones too) hold a serve lock with their pid (beside their
    socket): none may outlive it."""
    for lock in folder.rglob("*serve*.lock"):
        pid = lock.read_text().strip()
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"lowlux" in cmdline and b"serve" in cmdline:
            kill_quietly(int(pid))


@pytest.fixture
def endpoint(runtime) -> str:
    return f"ipc://{runtime / 'w.sock'}"


@pytest.fixture(scope="session")
def engine(tiny_weights):
    from lowlux.engine import Engine, EngineConfig

    eng = Engine(EngineConfig(weights=tiny_weights, device="cpu"))
    yield eng
    eng.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatedEngine:
    """The real engine behind a gate: the net waits until the test opens it (no sleeps, no timing)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()

    def restore(self, mosaic, amplification):
        self.entered.set()
        self.gate.wait(30)
        return self._engine.restore(mosaic, amplification)

    def describe(self):
        return self._engine.describe()


@contextlib.contextmanager
def serving(engine, endpoint: str, **config) -> Iterator[Server]:
    """An in-process worker on ``endpoint``, stopped and joined on exit whatever happened. It does not
    linger after stopping (a test that needs that gives ``linger``), so a test's end costs no waiting."""
    config.setdefault("linger", 0.0)
    server = Server(ServerConfig(endpoint=endpoint, **config), engine=engine)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, name="test-worker", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if isinstance(engine, GatedEngine):
            engine.gate.set()
        server.stop(hurry=True)
        thread.join(60)
        assert not thread.is_alive(), "the worker did not stop"


def raw_request(endpoint: str, frames: list[bytes], *, timeout: float = 10.0, dealer: bool = False,
                curve=None) -> list[bytes] | None:
    """Send frames on a fresh REQ (or DEALER) socket; the reply's frames, or None on silence."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER if dealer else zmq.REQ)
    sock.linger = 0
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000)):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(0)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (a safety net, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")


def lowlux_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lowlux.cli", *map(str, args)]


@contextlib.contextmanager
def serve_process(endpoint: str, weights: Path, *extra: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """``lowlux serve`` as a subprocess (its output in ``proc.log``), killed on exit if still running."""
    log = Path(tempfile.mkstemp(prefix="llx-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(lowlux_cmd("serve", "--endpoint", endpoint, "--weights", weights, *extra),
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    try:
        yield proc
    finally:
        kill_quietly(proc.pid)
        proc.wait(30)
        log.unlink(missing_ok=True)


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def ready(endpoint: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> dict:
    """Wait until the worker at ``endpoint`` says its engine is loaded; a worker that died says why."""
    from lowlux.client import Client, WorkerUnavailable

    def ping():
        if proc is not None and proc.poll() is not None:
            log = proc.log.read_text(errors="replace") if getattr(proc, "log", None) else ""
            raise AssertionError(f"the worker exited with status {proc.returncode}:\n{log[-3000:]}")
        with Client(endpoint, timeout=2.0, retries=1) as c:
            try:
                reply = c.ping()
            except WorkerUnavailable:
                return None
            return reply if reply.get("ready") else None

    return wait_for(ping, timeout, f"a ready worker at {endpoint}")


@pytest.fixture
def curve_setup(tmp_path):
    """A worker keys folder with one authorized client, and a second, unauthorized client."""
    from lowlux.keys import authorize, generate, load_client_keys

    server_dir, client_dir = tmp_path / "server-keys", tmp_path / "client-keys"
    generate(server_dir, "server")
    client_public, client_secret = generate(client_dir, "client")
    authorize(server_dir, client_public)
    _, stranger_secret = generate(client_dir, "stranger")
    keys = load_client_keys(server_dir / "server.key", client_secret, {})
    stranger = load_client_keys(server_dir / "server.key", stranger_secret, {})
    return server_dir, keys, stranger
