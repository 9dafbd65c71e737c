"""``lowlux enhance --via-worker``: the same files and options as ``lowlux enhance``, restored by a
running (or started) worker instead of this process, with the same output and exit status."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import protocol as proto
from ..errors import LowluxError
from ..options import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, summary_line
from .command import client_from_args, emit
from .errors import WorkerUnavailable


def enhance_via_worker(args: argparse.Namespace, options: Any) -> int:
    """``lowlux enhance --via-worker``: the same files and options, restored by a (started) worker."""
    quiet = getattr(args, "quiet", False)
    try:
        client = client_from_args(args, autostart=True)
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
                            emit(out)
                else:
                    failed += 1
                    emit(f"error: {entry.get('error') or entry['source'] + ': ' + entry['state']}", sys.stderr)
        except LowluxError as exc:
            print(f"lowlux enhance: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE if isinstance(exc, WorkerUnavailable) else EXIT_FAILED
    total = len(args.files)
    if not quiet or failed:
        print(summary_line(total, failed, written), file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
