"""``lowlux client``: the worker's operations on the command line, in the formats scripts parse.

The darktable plugin drives the worker through this command (``--format tsv``), so its output formats
and exit status are a contract (docs/protocol.md, *The client*).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .. import config
from .. import protocol as proto
from ..errors import LowluxError
from ..options import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, brightness, brightness_list, summary_line
from .api import Client
from .autostart import AUTOSTART_IDLE_TIMEOUT
from .connection import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from .errors import WorkerError, WorkerUnavailable


def emit(text: str, stream: Any = None) -> None:
    """Print a line that may hold a file name whose bytes are not UTF-8: such a name goes out as the
    very bytes the file system has (scripts open the file by them), never as a traceback."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except UnicodeEncodeError:
        stream.flush()
        data = (text + "\n").encode(getattr(stream, "encoding", None) or "utf-8", "surrogateescape")
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            print(data.decode("utf-8", "backslashreplace"), file=stream, end="", flush=True)
        else:
            buffer.write(data)
            buffer.flush()


def client_from_args(args: argparse.Namespace, *, autostart: bool) -> Client:
    """A :class:`Client` from the connection flags, the environment and the config file."""
    from ..keys import load_client_keys

    file_config = config.load_config()
    keys = load_client_keys(getattr(args, "server_key", None), getattr(args, "client_key", None), file_config)
    weights = getattr(args, "weights", None) or config.setting("worker", "weights", file_config)
    device = getattr(args, "device", None)
    if device in (None, "auto"):
        device = config.setting("worker", "device", file_config) or device
    idle = getattr(args, "idle_timeout", None)
    if idle is None:
        idle = config.setting("worker", "idle_timeout", file_config)
    return Client(config.resolve_endpoint(getattr(args, "endpoint", None), file_config),
                  timeout=getattr(args, "timeout", DEFAULT_TIMEOUT), retries=getattr(args, "retries", DEFAULT_RETRIES),
                  keys=keys, name=getattr(args, "name", None), weights=weights, device=device,
                  luma_smoothing=getattr(args, "luma_smoothing", False),
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
    g.add_argument("--luma-smoothing", action="store_true", default=d(False),
                   help="a worker this client starts also smooths brightness (see README: fine smoothing)")
    g.add_argument("--idle-timeout", type=float, default=d(None), metavar="S",
                   help="seconds a worker this client starts stays up unused (default: the config file's "
                        "[worker] idle_timeout, else 1800)")
    g.add_argument("--server-key", default=d(None), help="remote worker's public key (server.key): CURVE mode")
    g.add_argument("--client-key", default=d(None), help="this client's secret key (default: keys/client.key_secret)")
    g.add_argument("--name", default=d(None), help="client name for fair queueing (default: host:pid)")


def _format_argument(p: argparse.ArgumentParser, default: str = "text") -> None:
    p.add_argument("--format", choices=("text", "json", "tsv"), default=default, help="output format")


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
    s.add_argument("--brightness", "-m", type=brightness, help="amplifier brightness m in 0.1-0.9")
    s.add_argument("--bracket", type=brightness_list, metavar="M1,M2,...", help="several brightness values, one TIFF each")
    s.add_argument("--amplification", "-a", type=float, help="fixed amplification instead of the estimate")
    s.add_argument("--variant", help="amplifier constants (authors or paper)")
    s.add_argument("--overwrite", action="store_true", help="replace existing TIFFs")
    s.add_argument("--compress", action="store_true", help="deflate-compress the outputs (lossless)")
    s.add_argument("--output-format", choices=("tiff", "dng"), default=None,
                   help="tiff: 16-bit sRGB (default); dng: scene-referred linear DNG (needs linear weights)")
    s.add_argument("--target", action="append", metavar="NAME.tif",
                   help="file name for the output of a single raw (once per bracket value; default "
                        "<stem>_lowlux.tif, .dng for DNGs)")
    _format_argument(s)

    for name, text in (("status", "show a job's state and each file's"), ("wait", "wait for a job; "
                       "print each file's outcome as it finishes"), ("cancel", "cancel a job's remaining files")):
        a = actions.add_parser(name, help=text)
        a.add_argument("job")
        if name != "cancel":
            _format_argument(a)
        if name == "status":
            a.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                           help="answer once a file more has finished (or the job ended), waiting at most "
                                "SECONDS (default 0: at once)")
            a.add_argument("--since", type=int, metavar="N",
                           help="with --wait: answer once more than N files have finished (default: as many "
                                "as now)")
        if name == "wait":
            a.add_argument("--out-dir", "-o", help="remote mode: folder for the fetched TIFFs")
            a.add_argument("--overwrite", action="store_true", help="remote mode: replace existing TIFFs")
    for name, text in (("ping", "check that a worker answers (starts one if needed)"),
                       ("health", "the worker's device, weights, queue and memory"), ("jobs", "list the jobs"),
                       ("shutdown", "stop the worker (queued files are cancelled)")):
        a = actions.add_parser(name, help=text)
        if name in ("health", "jobs"):
            _format_argument(a, "json" if name == "health" else "text")
        if name == "jobs":
            a.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                           help="with --since: answer once one of those jobs has a file more finished (or "
                                "ended), waiting at most SECONDS (default 0: at once)")
            a.add_argument("--since", type=_since_argument, default=None, metavar="JOB=N,...",
                           help="the jobs to wait for, each with the files already seen finished")
        if name == "shutdown":
            a.add_argument("--now", action="store_true", help="also cancel the files being restored")
    for a in actions.choices.values():
        _connection_arguments(a, inner=True)
    p.set_defaults(func=cmd_client)


def cmd_client(args: argparse.Namespace) -> int:
    action = args.client_command
    try:
        client = client_from_args(args, autostart=action in ("submit", "ping", "health"))
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
    if args.output_format:
        options["format"] = args.output_format
    if args.target:
        options["targets"] = args.target
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
        print(summary_line(total, failed), file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _print_entry(entry: dict[str, Any], fmt: str, job: str) -> None:
    if fmt == "json":
        emit(json.dumps({"job": job, **entry}))
    elif fmt == "tsv":
        emit(proto.file_tsv(entry))
    elif entry["state"] == "done":
        for out in entry["outputs"]:
            emit(out)
    elif entry["state"] == "cancelled":
        emit(f"cancelled: {entry['source']}", sys.stderr)
    else:
        emit(f"error: {entry.get('error') or entry['source']}", sys.stderr)


def _do_status(client: Client, args: argparse.Namespace) -> int:
    if args.wait < 0 or (args.since is not None and args.since < 0):
        print("lowlux client: --wait and --since must not be negative", file=sys.stderr)
        return EXIT_USAGE
    status = client.status(args.job, wait=args.wait, since=args.since)
    if args.format == "tsv":
        emit(proto.status_tsv(status))
    elif args.format == "json":
        print(json.dumps(status, indent=1))
    else:
        print(f"job {status['job']}: {status['state']} ({status['finished']} of {status['total']} finished, "
              f"{status['percent']:g} %)")
        for entry in status["files"]:
            detail = " | ".join(entry["outputs"]) if entry["outputs"] else (entry["error"] or entry["stage"] or "")
            emit(f"  {entry['state']:9} {entry['source']}" + (f"  {detail}" if detail else ""))
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


def _since_argument(text: str) -> dict[str, int]:
    """``J1=0,J2=3`` -> {"J1": 0, "J2": 3}."""
    since: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        job, sep, count = part.partition("=")
        if not sep or not job or not count.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} is not JOB=N (N a count of files >= 0)")
        since[job] = int(count)
    return since


def _do_jobs(client: Client, args: argparse.Namespace) -> int:
    if args.wait < 0:
        print("lowlux client: --wait must not be negative", file=sys.stderr)
        return EXIT_USAGE
    jobs = client.jobs(wait=args.wait, since=args.since)
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
