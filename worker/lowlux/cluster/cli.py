"""The command line's cluster pieces, ready to be wired into :mod:`lowlux.cli`.

- :func:`add_cluster_arguments`: ``--cluster ADDRESS`` (default ``$LOWLUX_CLUSTER``) and ``--upload``
  for ``lowlux enhance`` (and ``lowlux serve``);
- :func:`run_enhance_on_cluster`: what ``lowlux enhance --cluster`` runs: a progress bar per file,
  a summary line, the same exit codes as a local batch;
- :func:`add_cluster_parser`: ``lowlux cluster local --workers N``, a loopback cluster on this
  machine that runs until Ctrl-C.

Nothing here imports Dask until a cluster is used, so ``lowlux --help`` works without the extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, summary_line
from . import ENV_ADDRESS, ClusterError


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", metavar="ADDRESS", default=os.environ.get(ENV_ADDRESS) or None,
                   help="restore on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786, "
                        f"tls://...); default ${ENV_ADDRESS}")
    g.add_argument("--upload", action="store_true",
                   help="send the raws to the cluster and receive the outputs (for workers that do not "
                        "see this machine's files); default: workers read and write shared storage")
    g.add_argument("--cluster-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the scheduler and its workers (default 10)")


def run_enhance_on_cluster(args: argparse.Namespace, files: Sequence[Path], options, engine_config) -> int:
    """``lowlux enhance --cluster``: restore ``files`` on the cluster; 0 if all were, 1 if some failed."""
    from tqdm import tqdm

    from ..errors import LowluxError
    from .submit import enhance_on_cluster

    quiet = getattr(args, "quiet", False)
    failed: list[str] = []
    written = 0
    bar = tqdm(total=len(files), unit="file", disable=quiet or len(files) < 2, file=sys.stderr)

    def progress(source: Path, outcome) -> None:
        nonlocal written
        bar.update(1)
        bar.set_postfix_str(Path(source).name)
        if isinstance(outcome, LowluxError):
            failed.append(str(outcome))
            tqdm.write(f"error: {outcome}", file=sys.stderr)
            return
        written += len(outcome)
        if not quiet:
            for out in outcome:
                tqdm.write(str(out))

    try:
        with bar:
            enhance_on_cluster(files, options, engine_config, args.cluster, upload=args.upload,
                               progress=progress, connect_timeout=getattr(args, "cluster_timeout", 10.0))
    except ClusterError as exc:
        print(f"lowlux enhance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not quiet or failed:
        print(f"{summary_line(len(files), len(failed), written)} (on {args.cluster})", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_cluster_local(args: argparse.Namespace) -> int:
    from .local import serve_local_cluster

    def ready(address: str) -> None:
        print(address, flush=True)
        print(f"lowlux: a cluster of {args.workers} worker(s) listens on {address} (loopback only); "
              f"use --cluster {address} or export {ENV_ADDRESS}={address}; Ctrl-C stops it", file=sys.stderr)

    try:
        serve_local_cluster(args.workers, args.threads_per_worker, ready=ready)
    except (ClusterError, ValueError) as exc:
        print(f"lowlux cluster local: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def add_cluster_parser(sub) -> None:
    """``lowlux cluster local --workers N [--threads-per-worker T]``."""
    p = sub.add_parser("cluster", help="run restorations on a Dask cluster",
                       description="Dask clusters for --cluster (see docs/cluster.md for real ones).")
    cluster_sub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    local = cluster_sub.add_parser("local", help="a cluster of worker processes on this machine, until Ctrl-C",
                                   description="Start a Dask scheduler and N worker processes on 127.0.0.1; "
                                               "prints the scheduler's address and runs until Ctrl-C.")
    local.add_argument("--workers", "-n", type=int, default=1, help="worker processes (default 1; one per GPU)")
    local.add_argument("--threads-per-worker", type=int, default=1,
                       help="files one worker restores at once (default 1)")
    local.set_defaults(func=cmd_cluster_local)
