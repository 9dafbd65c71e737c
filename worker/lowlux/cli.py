"""The ``lowlux`` command: builds the parser from each command's module and dispatches.

Nothing imports this module (it is the console entry point); what commands share lives in
:mod:`lowlux.options`. Heavy modules (torch, rawpy) are imported inside the commands that need them,
so light commands such as ``lowlux client`` start fast: the darktable script runs one on every poll.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .options import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, add_engine_arguments,
                      add_enhance_options, engine_config_from_args, enhance_options_from_args, summary_line)

log = logging.getLogger("lowlux")


def cmd_enhance(args: argparse.Namespace) -> int:
    from .errors import LowluxError

    try:
        options = enhance_options_from_args(args)
    except ValueError as exc:
        print(f"lowlux enhance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "via_worker", False):
        from .client.via_worker import enhance_via_worker

        return enhance_via_worker(args, options)
    if getattr(args, "cluster", None):
        from .cluster.cli import run_enhance_on_cluster

        return run_enhance_on_cluster(args, args.files, options, engine_config_from_args(args))
    from .engine import Engine

    try:
        engine = Engine(engine_config_from_args(args))
    except (LowluxError, RuntimeError, ValueError) as exc:
        print(f"lowlux enhance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_batch(engine, args.files, options, quiet=args.quiet)


def run_batch(engine, files: Sequence[Path], options, *, quiet: bool = False) -> int:
    """Restore files one by one; a bad file is reported and the batch goes on."""
    from tqdm import tqdm

    from .errors import LowluxError
    from .pipeline import enhance_file

    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    with tqdm(files, unit="file", disable=quiet or len(files) < 2, file=sys.stderr) as bar:
        for path in bar:
            bar.set_postfix_str(Path(path).name)
            try:
                outs = enhance_file(engine, path, options)
            except LowluxError as exc:
                failed.append((path, str(exc)))
                tqdm.write(f"error: {exc}", file=sys.stderr)
                continue
            except Exception as exc:  # one file must never stop the batch
                log.exception("unexpected failure on %s", path)
                failed.append((path, f"{path}: internal error ({exc.__class__.__name__}: {exc})"))
                tqdm.write(f"error: {path}: internal error ({exc})", file=sys.stderr)
                continue
            written += outs
            for out in outs:
                if not quiet:
                    tqdm.write(str(out))
    if not quiet or failed:
        print(summary_line(len(files), len(failed), len(written)), file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def _add_enhance(sub) -> None:
    p = sub.add_parser("enhance", help="restore dark raw files to 16-bit sRGB TIFFs (or linear DNGs)",
                       description="Restore dark raw files; writes <stem>_lowlux.tif (--format dng: <stem>_lowlux.dng) "
                                   "next to each (or in --out-dir).")
    p.add_argument("files", nargs="+", type=Path, metavar="RAW")
    add_enhance_options(p)
    add_engine_arguments(p)
    p.add_argument("--via-worker", action="store_true", help="send the files to a running (or started) worker")
    p.add_argument("--endpoint", help="worker endpoint for --via-worker")
    from .cluster.cli import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=cmd_enhance)


def _add_bench(sub) -> None:
    from .bench import add_bench_arguments

    p = sub.add_parser("bench", help="time and memory of the net and the whole file->TIFF path")
    add_bench_arguments(p)
    add_engine_arguments(p)
    p.set_defaults(func=cmd_bench)


def _optional(register: str) -> Callable:
    """Subcommands living in other modules; a missing optional dependency must not break the rest."""
    module, _, name = register.rpartition(":")

    def add(sub) -> None:
        import importlib

        try:
            getattr(importlib.import_module(module, __package__), name)(sub)
        except ImportError as exc:
            log.debug("subcommand from %s unavailable: %s", module, exc)

    return add


REGISTRARS: dict[str, Callable] = {
    "enhance": _add_enhance,
    "bench": _add_bench,
    "demo": _optional(".demo:add_demo_parser"),
    "train": _optional(".train.cli:add_train_parser"),
    "eval": _optional(".train.cli:add_eval_parser"),
    "export": _optional(".train.cli:add_export_parser"),
    "serve": _optional(".server.command:add_serve_parser"),
    "client": _optional(".client.command:add_client_parser"),
    "keys": _optional(".keys:add_keys_parser"),
    "cluster": _optional(".cluster.cli:add_cluster_parser"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or just one subcommand's so a light command imports nothing heavy."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="lowlux", description="Restore extremely dark raw photos.")
    parser.add_argument("--version", action="version", version=f"lowlux {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, register in REGISTRARS.items():
        if only is None or name == only:
            register(sub)
    for command in sub.choices.values():  # -v/-q also after the command; SUPPRESS keeps the top-level value
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _argv_command(argv: Sequence[str]) -> str | None:
    command = next((a for a in argv if not a.startswith("-")), None)
    return command if command in REGISTRARS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_argv_command(argv)).parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
