"""Talking to the worker: the Python API (:class:`Client`) and ``lowlux client``.

Requests use the ZeroMQ guide's "lazy pirate" pattern: a REQ socket, a timeout per try, and on
silence the socket is thrown away and the request sent again on a fresh one, a few times, before the
worker is declared dead. A retried ``submit`` carries the same request id, so the worker queues the
job once however many copies arrive.

When no worker answers, the client can start one (``lowlux serve`` detached, its log in the private
runtime folder); a lock file makes concurrent clients start exactly one. A plain connect to the socket
tells at once whether anything listens, so starting one does not wait for the retries to run out.

Start-up time matters — the darktable script runs ``lowlux client status`` on every poll — so this
module imports neither torch, nor rawpy, nor numpy: only pyzmq and the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import config as cfg
from . import protocol as proto
from .cli import brightness_list
from .errors import LowluxError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 3
START_TIMEOUT = 180.0
AUTOSTART_IDLE_TIMEOUT = 1800.0
"""An auto-started worker exits after half an hour without work; the next client call starts another."""
UPLOAD_RATE = 4 << 20
"""Bytes per second assumed when scaling the timeout of an upload or a download."""


class WorkerUnavailable(LowluxError):
    """No worker answered (none running, dead, hung, or refusing our keys)."""


class WorkerStartError(WorkerUnavailable):
    """A worker was started but did not come up; the message carries the end of its log."""


class WorkerError(LowluxError):
    """The worker answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass
class Reply:
    body: dict[str, Any]
    blobs: list[bytes] = field(default_factory=list)


# ---- transport -----------------------------------------------------------------------------------------------


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
    path = cfg.ipc_path(endpoint)
    if path is not None:
        if not path.exists():
            return False
        family, target = socket.AF_UNIX, str(path)
    else:
        address = cfg.tcp_address(endpoint)
        if address is None or not cfg.is_local(endpoint):
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


# ---- starting a worker ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock, waited for up to ``timeout`` seconds (a no-op where flock does not exist)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"another client has been starting a worker for {timeout:.0f} s "
                                           f"(lock {path})") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def spawn_worker(endpoint: str, *, weights: str | Path | None = None, device: str | None = None,
                 idle_timeout: float = AUTOSTART_IDLE_TIMEOUT) -> tuple[subprocess.Popen, Path]:
    """Start ``lowlux serve`` detached from this process (own session, log file); returns it and its log."""
    cmd = [sys.executable, "-m", "lowlux.cli", "-v", "serve", "--endpoint", endpoint,
           "--idle-timeout", f"{idle_timeout:g}"]
    if weights:
        cmd += ["--weights", str(Path(weights).expanduser().resolve())]
    if device and device != "auto":
        cmd += ["--device", device]
    log_file = cfg.log_path(endpoint)
    with contextlib.suppress(OSError):
        if log_file.stat().st_size > 4 << 20:
            log_file.replace(log_file.with_suffix(".log.1"))
    with open(log_file, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/", close_fds=True)
    log.info("started a worker (pid %d) on %s; log: %s", proc.pid, endpoint, log_file)
    return proc, log_file


# ---- the API -------------------------------------------------------------------------------------------------


class Client:
    """A connection to one worker, optionally starting it. One per thread (ZeroMQ sockets are not thread-safe).

    ``keys`` (a :class:`lowlux.keys.CurveKeys`) selects the remote mode: the raws' bytes are uploaded
    and the TIFFs' bytes fetched back and written locally, as the worker does not share this disk.
    """

    def __init__(self, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, keys: Any = None, name: str | None = None,
                 autostart: bool = False, weights: str | Path | None = None, device: str | None = None,
                 start_timeout: float = START_TIMEOUT, idle_timeout: float = AUTOSTART_IDLE_TIMEOUT) -> None:
        self.endpoint = cfg.resolve_endpoint(endpoint)
        self.keys = keys
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.autostart = autostart and keys is None  # a remote worker cannot be started from here
        self.weights, self.device = weights, device
        self.start_timeout, self.idle_timeout = start_timeout, idle_timeout
        self.conn = Connection(self.endpoint, timeout=timeout, retries=retries, keys=keys)
        self._checked = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @property
    def remote(self) -> bool:
        return self.keys is not None

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.conn.request(op, **fields).body

    # ---- worker lifecycle --------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """The worker's ping reply; starts a worker first when ``autostart`` and none answers."""
        if self.autostart:
            return self.ensure_worker()
        return self.request("ping")

    def _quick_ping(self) -> dict[str, Any] | None:
        """A ping that gives up at once when nothing listens, and after one short try otherwise."""
        try:
            return self.conn.request("ping", retries=1, timeout=min(self.conn.timeout, 2.0)).body
        except WorkerUnavailable:
            return None

    def ensure_worker(self) -> dict[str, Any]:
        """Ping the worker, starting one (just one, whatever other clients do meanwhile) if none answers."""
        if listening(self.endpoint) is not False:
            try:
                reply = self.request("ping")
            except WorkerUnavailable as exc:
                probe = listening(self.endpoint)
                if probe is None or not self.autostart:
                    raise
                if probe:  # alive but silent: starting another would not help
                    raise WorkerUnavailable(f"{exc}; something listens there but does not answer (a hung "
                                            f"worker? its pid is in {cfg.lock_path(self.endpoint, 'serve')})") from None
            else:
                self._checked = True
                return reply
        if not self.autostart:
            raise WorkerUnavailable(f"no lowlux worker runs at {self.endpoint}")
        with _file_lock(cfg.lock_path(self.endpoint, "spawn"), self.start_timeout):
            reply = self._quick_ping()  # another client may have started one while we waited for the lock
            if reply is None:
                reply = self._start_and_wait()
        self._checked = True
        return reply

    def _start_and_wait(self) -> dict[str, Any]:
        proc, log_file = spawn_worker(self.endpoint, weights=self.weights, device=self.device,
                                      idle_timeout=self.idle_timeout)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            reply = self._quick_ping()
            if reply is not None and reply.get("error"):
                raise WorkerStartError(f"the worker started at {self.endpoint} cannot work: {reply['error']}")
            if reply is not None and reply.get("ready"):
                return reply
            code = proc.poll()
            if code is not None:
                reply = self._quick_ping()  # lost a race with a worker started by hand? then use that one
                if reply is not None:
                    return reply
                raise WorkerStartError(f"the worker started for {self.endpoint} exited with status {code}; "
                                       f"end of its log ({log_file}):\n{_log_tail(log_file)}")
            time.sleep(0.1)
        raise WorkerStartError(f"the worker started for {self.endpoint} (pid {proc.pid}) was not ready after "
                               f"{self.start_timeout:.0f} s; see {log_file}")

    def _await_exit(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while listening(self.endpoint) is not False and time.monotonic() < deadline:
            time.sleep(0.1)

    def _ensure(self) -> None:
        if self.autostart and not self._checked:
            self.ensure_worker()

    def health(self) -> dict[str, Any]:
        self._ensure()
        return self.request("health")

    def shutdown(self, *, now: bool = False) -> dict[str, Any]:
        return self.request("shutdown", now=now)

    # ---- jobs --------------------------------------------------------------------------------------------

    def submit(self, files: Iterable[str | Path], options: dict[str, Any] | None = None, *,
               hints: dict[str, Any] | None = None) -> str:
        """Queue ``files`` with ``options`` (see docs/protocol.md); returns the job id at once."""
        options = dict(options or {})
        self._ensure()
        if self.remote:
            return self._submit_upload([Path(f) for f in files], options, hints)
        if options.get("out_dir"):
            options["out_dir"] = os.path.abspath(os.path.expanduser(str(options["out_dir"])))
        paths = [os.path.abspath(os.path.expanduser(str(f))) for f in files]
        try:
            body = self.request("submit", files=paths, options=options, client=self.name, hints=hints or {})
        except WorkerError as exc:
            if exc.code != proto.SHUTTING_DOWN or not self.autostart:
                raise
            self._await_exit()  # caught a worker on its way out (idle timeout): start the next one
            self.ensure_worker()
            body = self.request("submit", files=paths, options=options, client=self.name, hints=hints or {})
        for warning in body.get("warnings") or ():
            log.warning("%s", warning)
        return body["job"]

    def _submit_upload(self, files: list[Path], options: dict[str, Any], hints: dict | None) -> str:
        """Remote mode: queue the job, then send each raw's bytes (the worker starts on the first at once)."""
        local = {k: options.pop(k, None) for k in ("out_dir", "overwrite")}
        paths = [str(f.expanduser().absolute()) for f in files]
        body = self.request("submit", files=paths, options=options, client=self.name, hints=hints or {},
                            upload=True)
        job = body["job"]
        for index, path in enumerate(paths):
            problem = _upload_problem(Path(path), options, local)
            if problem:
                self.request("upload", job=job, index=index, error=problem)
                continue
            data = Path(path).read_bytes()
            try:
                self.conn.request("upload", job=job, index=index, blobs=[data],
                                  timeout=self.conn.timeout + len(data) / UPLOAD_RATE)
            except WorkerError as exc:
                self.request("upload", job=job, index=index, error=f"{path}: {exc.message}")
        return job

    def status(self, job: str) -> dict[str, Any]:
        return self.request("status", job=job)

    def cancel(self, job: str) -> dict[str, Any]:
        return self.request("cancel", job=job)

    def jobs(self) -> list[dict[str, Any]]:
        return self.request("jobs")["jobs"]

    def fetch(self, job: str, index: int) -> tuple[list[str], list[bytes]]:
        """Names and bytes of the TIFFs of one finished file of an upload job."""
        reply = self.conn.request("fetch", job=job, index=index, timeout=max(self.conn.timeout, 120.0))
        return reply.body["outputs"], reply.blobs

    def release(self, job: str) -> None:
        with contextlib.suppress(WorkerError):
            self.request("release", job=job)

    def iter_results(self, job: str, *, out_dir: str | Path | None = None, overwrite: bool = False,
                     poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """Each file's final entry (state, source, outputs, error) as soon as it finishes.

        Remote mode fetches each TIFF as its file finishes and writes it next to the raw (or in
        ``out_dir``); the entry's ``outputs`` are then the local paths.
        """
        reported: set[int] = set()
        delay = 0.05
        while True:
            try:
                status = self.status(job)
            except WorkerUnavailable as exc:
                raise WorkerUnavailable(f"the worker at {self.endpoint} stopped answering while job {job} was "
                                        f"running (dead? the next submit or ping starts a new one): {exc}") from None
            except WorkerError as exc:
                if exc.code == proto.UNKNOWN_JOB and reported:
                    raise WorkerError(exc.code, f"the worker at {self.endpoint} no longer knows job {job} "
                                                "(was it restarted?)") from None
                raise
            for entry in status["files"]:
                if entry["state"] in proto.TERMINAL_STATES and entry["index"] not in reported:
                    reported.add(entry["index"])
                    if self.remote and entry["state"] == "done":
                        entry = self._store_fetched(job, entry, out_dir, overwrite)
                    yield entry
            if status["state"] in proto.TERMINAL_STATES and len(reported) == len(status["files"]):
                if self.remote:
                    self.release(job)
                return
            time.sleep(delay)
            delay = min(poll, delay * 1.5)

    def wait(self, job: str, *, on_file: Callable[[dict[str, Any]], None] | None = None,
             **kwargs: Any) -> list[dict[str, Any]]:
        """Block until the job ends; returns every file's entry (``on_file`` sees each as it finishes)."""
        entries = []
        for entry in self.iter_results(job, **kwargs):
            entries.append(entry)
            if on_file:
                on_file(entry)
        return sorted(entries, key=lambda e: e["index"])

    def _store_fetched(self, job: str, entry: dict[str, Any], out_dir: str | Path | None,
                       overwrite: bool) -> dict[str, Any]:
        source = Path(entry["source"])
        folder = Path(out_dir) if out_dir else source.parent
        try:
            names, blobs = self.fetch(job, entry["index"])
            outputs = [str(write_atomic(folder / Path(n).name, data, overwrite)) for n, data in zip(names, blobs)]
        except (OSError, LowluxError) as exc:
            message = exc.message if isinstance(exc, WorkerError) else str(exc)
            return {**entry, "state": "failed", "outputs": [], "error": f"{source}: {message}"}
        return {**entry, "outputs": outputs}


def _upload_problem(path: Path, options: dict[str, Any], local: dict[str, Any]) -> str | None:
    """Reasons to fail a file before sending it: unreadable, or its TIFF would clobber one here."""
    if not path.exists():
        return f"{path}: no such file"
    if not path.is_file():
        return f"{path}: is not a file"
    if not os.access(path, os.R_OK):
        return f"{path}: is not readable"
    if not local.get("overwrite"):
        folder = Path(local["out_dir"]) if local.get("out_dir") else path.parent
        for name in _output_names(path, options):
            if (folder / name).exists():
                return f"{folder / name}: already exists (use --overwrite to replace it)"
    return None


def _output_names(source: Path, options: dict[str, Any]) -> list[str]:
    """The names lowlux.pipeline.output_paths gives, without importing it (it pulls in numpy)."""
    values = options.get("brightness") or []
    if len(values) <= 1:
        return [f"{source.stem}_lowlux.tif"]
    return [f"{source.stem}_lowlux_m{m:g}.tif" for m in values]


class OutputExists(LowluxError):
    pass


def write_atomic(path: Path, data: bytes, overwrite: bool) -> Path:
    """Write a fetched TIFF under a temporary name and move it into place only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        tmp.write_bytes(data)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExists(f"{path}: already exists (use --overwrite to replace it)") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- lowlux enhance --via-worker -----------------------------------------------------------------------------


def enhance_via_worker(args: argparse.Namespace, options: Any) -> int:
    """``lowlux enhance --via-worker``: the same files and options, restored by a (started) worker."""
    quiet = getattr(args, "quiet", False)
    try:
        client = _client_from(args, autostart=True)
    except LowluxError as exc:
        print(f"lowlux enhance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    wire = proto.options_to_wire(options)
    hints = {"device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None)}
    failed = written = 0
    with client:
        try:
            job = client.submit(args.files, wire, hints=hints)
            for entry in client.iter_results(job, out_dir=wire.get("out_dir"), overwrite=wire["overwrite"]):
                if entry["state"] == "done":
                    written += len(entry["outputs"])
                    if not quiet:
                        for out in entry["outputs"]:
                            print(out, flush=True)
                else:
                    failed += 1
                    print(f"error: {entry.get('error') or entry['source'] + ': ' + entry['state']}", file=sys.stderr)
        except LowluxError as exc:
            print(f"lowlux enhance: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE if isinstance(exc, WorkerUnavailable) else EXIT_FAILED
    total = len(args.files)
    if not quiet or failed:
        print(f"{total - failed} of {total} file(s) restored, {written} TIFF(s) written"
              + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


# ---- lowlux client -------------------------------------------------------------------------------------------


def _client_from(args: argparse.Namespace, *, autostart: bool) -> Client:
    from .keys import load_client_keys

    config = cfg.load_config()
    keys = load_client_keys(getattr(args, "server_key", None), getattr(args, "client_key", None), config)
    weights = getattr(args, "weights", None) or cfg.setting("worker", "weights", config)
    device = getattr(args, "device", None)
    if device in (None, "auto"):
        device = cfg.setting("worker", "device", config) or device
    idle = cfg.setting("worker", "idle_timeout", config)
    return Client(cfg.resolve_endpoint(getattr(args, "endpoint", None), config),
                  timeout=getattr(args, "timeout", DEFAULT_TIMEOUT), retries=getattr(args, "retries", DEFAULT_RETRIES),
                  keys=keys, name=getattr(args, "name", None), weights=weights, device=device,
                  autostart=autostart and not getattr(args, "no_start", False),
                  idle_timeout=float(idle) if idle is not None else AUTOSTART_IDLE_TIMEOUT)


def _connection_arguments(p: argparse.ArgumentParser, *, inner: bool) -> None:
    """The same options before or after the action; the inner copies only override when given."""
    d = (lambda value: argparse.SUPPRESS) if inner else (lambda value: value)
    g = p.add_argument_group("worker")
    g.add_argument("--endpoint", default=d(None), help="worker endpoint (default: $LOWLUX_ENDPOINT, the config "
                                                       "file, or the local socket)")
    g.add_argument("--timeout", type=float, default=d(DEFAULT_TIMEOUT), help="seconds to wait for each reply")
    g.add_argument("--retries", type=int, default=d(DEFAULT_RETRIES), help="tries before the worker counts as dead")
    g.add_argument("--no-start", action="store_true", default=d(False), help="never start a worker")
    g.add_argument("--weights", default=d(None), help="weights for a worker this client starts")
    g.add_argument("--device", default=d(None), help="device for a worker this client starts (auto, cpu, cuda)")
    g.add_argument("--server-key", default=d(None), help="remote worker's public key (server.key): CURVE mode")
    g.add_argument("--client-key", default=d(None), help="this client's secret key (default: keys/client.key_secret)")
    g.add_argument("--name", default=d(None), help="client name for fair queueing (default: host:pid)")


def _format_argument(p: argparse.ArgumentParser, default: str = "text") -> None:
    p.add_argument("--format", choices=("text", "json", "tsv"), default=default, help="output format")


def _brightness(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_client_parser(sub) -> None:
    p = sub.add_parser("client", help="talk to the worker: submit, status, wait, cancel, ping, shutdown",
                       description="Send work to the lowlux worker (started on demand) and follow it. "
                                   "Exit status: 0 ok, 1 a file failed, 2 refused request or unknown job, "
                                   "3 no worker answers.")
    _connection_arguments(p, inner=False)
    actions = p.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    s = actions.add_parser("submit", help="queue raw files; prints the job id (or, with --wait, each result)")
    s.add_argument("files", nargs="+", metavar="RAW")
    s.add_argument("--wait", action="store_true", help="wait and print each file's outcome as it finishes")
    s.add_argument("--out-dir", "-o", help="folder for the TIFFs (default: next to each raw)")
    s.add_argument("--brightness", "-m", type=_brightness, help="amplifier brightness m in 0.1-0.9")
    s.add_argument("--bracket", type=brightness_list, metavar="M1,M2,...", help="several brightness values, one TIFF each")
    s.add_argument("--amplification", "-a", type=float, help="fixed amplification instead of the estimate")
    s.add_argument("--variant", help="amplifier constants (authors or paper)")
    s.add_argument("--overwrite", action="store_true", help="replace existing TIFFs")
    s.add_argument("--compress", action="store_true", help="deflate-compress the TIFFs")
    _format_argument(s)

    for name, text in (("status", "show a job's state and each file's"), ("wait", "wait for a job; "
                       "print each file's outcome as it finishes"), ("cancel", "cancel a job's remaining files")):
        a = actions.add_parser(name, help=text)
        a.add_argument("job")
        if name != "cancel":
            _format_argument(a)
        if name == "wait":
            a.add_argument("--out-dir", "-o", help="remote mode: folder for the fetched TIFFs")
            a.add_argument("--overwrite", action="store_true", help="remote mode: replace existing TIFFs")
    for name, text in (("ping", "check that a worker answers (starts one if needed)"),
                       ("health", "the worker's device, weights, queue and memory"), ("jobs", "list the jobs"),
                       ("shutdown", "stop the worker (queued files are cancelled)")):
        a = actions.add_parser(name, help=text)
        if name in ("health", "jobs"):
            _format_argument(a, "json" if name == "health" else "text")
        if name == "shutdown":
            a.add_argument("--now", action="store_true", help="also cancel the files being restored")
    for a in actions.choices.values():
        _connection_arguments(a, inner=True)
    p.set_defaults(func=cmd_client)


def cmd_client(args: argparse.Namespace) -> int:
    action = args.client_command
    try:
        client = _client_from(args, autostart=action in ("submit", "ping", "health"))
    except LowluxError as exc:
        print(f"lowlux client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        try:
            return _ACTIONS[action](client, args)
        except WorkerUnavailable as exc:
            print(f"lowlux client: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except WorkerError as exc:
            print(f"lowlux client: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        except LowluxError as exc:
            print(f"lowlux client: {exc}", file=sys.stderr)
            return EXIT_USAGE


def _submit_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"overwrite": args.overwrite}
    if args.bracket:
        options["brightness"] = args.bracket
    elif args.brightness is not None:
        options["brightness"] = [args.brightness]
    if args.amplification is not None:
        options["amplification"] = args.amplification
    if args.variant:
        options["variant"] = args.variant
    if args.out_dir:
        options["out_dir"] = args.out_dir
    if args.compress:
        options["compression"] = "deflate"
    return options


def _do_submit(client: Client, args: argparse.Namespace) -> int:
    options = _submit_options(args)
    job = client.submit(args.files, options, hints={"device": getattr(args, "device", None)})
    if args.format == "tsv":
        print(proto.tsv_line("job", job), flush=True)
    elif args.format == "json" and not args.wait:
        print(json.dumps({"job": job}), flush=True)
    elif not args.wait:
        print(job, flush=True)
    if not args.wait:
        return EXIT_OK
    return _follow(client, job, args.format, out_dir=options.get("out_dir"), overwrite=args.overwrite)


def _do_wait(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, args.job, args.format, out_dir=args.out_dir, overwrite=args.overwrite)


def _follow(client: Client, job: str, fmt: str, *, out_dir: Any = None, overwrite: bool = False) -> int:
    """Print each file's outcome as it finishes; non-zero if any file did not succeed."""
    total = failed = 0
    for entry in client.iter_results(job, out_dir=out_dir, overwrite=overwrite):
        total += 1
        failed += entry["state"] != "done"
        _print_entry(entry, fmt, job)
    if fmt == "text":
        print(f"{total - failed} of {total} file(s) restored" + (f", {failed} failed" if failed else ""),
              file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _print_entry(entry: dict[str, Any], fmt: str, job: str) -> None:
    if fmt == "json":
        print(json.dumps({"job": job, **entry}), flush=True)
    elif fmt == "tsv":
        print(proto.file_tsv(entry), flush=True)
    elif entry["state"] == "done":
        for out in entry["outputs"]:
            print(out, flush=True)
    elif entry["state"] == "cancelled":
        print(f"cancelled: {entry['source']}", file=sys.stderr, flush=True)
    else:
        print(f"error: {entry.get('error') or entry['source']}", file=sys.stderr, flush=True)


def _do_status(client: Client, args: argparse.Namespace) -> int:
    status = client.status(args.job)
    if args.format == "tsv":
        print(proto.status_tsv(status))
    elif args.format == "json":
        print(json.dumps(status, indent=1))
    else:
        print(f"job {status['job']}: {status['state']} ({status['finished']} of {status['total']} finished, "
              f"{status['percent']:g} %)")
        for entry in status["files"]:
            detail = " | ".join(entry["outputs"]) if entry["outputs"] else (entry["error"] or entry["stage"] or "")
            print(f"  {entry['state']:9} {entry['source']}" + (f"  {detail}" if detail else ""))
    return EXIT_OK


def _do_cancel(client: Client, args: argparse.Namespace) -> int:
    status = client.cancel(args.job)
    print(f"job {status['job']}: {status['state']} ({status['counts']['cancelled']} file(s) cancelled)")
    return EXIT_OK


def _do_ping(client: Client, args: argparse.Namespace) -> int:
    reply = client.ping()
    state = "ready" if reply.get("ready") else "loading the net"
    print(f"lowlux worker {reply.get('version')} (pid {reply.get('pid')}) at {client.endpoint}: {state}, "
          f"up {reply.get('uptime', 0):.0f} s")
    return EXIT_OK


def _do_health(client: Client, args: argparse.Namespace) -> int:
    reply = client.health()
    reply = {k: v for k, v in reply.items() if k not in ("v", "id", "op", "ok")}
    if args.format == "json":
        print(json.dumps(reply, indent=1))
    else:
        for key, value in reply.items():
            print(proto.tsv_line(key, json.dumps(value) if isinstance(value, (dict, list)) else value))
    return EXIT_OK


def _do_jobs(client: Client, args: argparse.Namespace) -> int:
    jobs = client.jobs()
    if args.format == "json":
        print(json.dumps(jobs, indent=1))
    else:
        for job in jobs:
            print(proto.tsv_line(job["job"], job["state"], job["finished"], job["total"], job["client"]))
    return EXIT_OK


def _do_shutdown(client: Client, args: argparse.Namespace) -> int:
    reply = client.shutdown(now=args.now)
    print(f"worker (pid {reply.get('pid')}) is shutting down")
    return EXIT_OK


_ACTIONS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "submit": _do_submit, "wait": _do_wait, "status": _do_status, "cancel": _do_cancel, "ping": _do_ping,
    "health": _do_health, "jobs": _do_jobs, "shutdown": _do_shutdown,
}
