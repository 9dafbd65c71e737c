"""The ``train`` and ``eval`` subcommands; the main CLI adds them with :func:`add_train_parser` and
:func:`add_eval_parser`, and ``python -m lowlux.train`` runs them standalone."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"
"""The project's shared data folder (a checkout's sibling); users pass their own folders instead."""


def _default_sources() -> list[str]:
    return [f"{kind}={SHARED_DATA / kind}" for kind in ("raw", "clean") if (SHARED_DATA / kind).is_dir()]


def recorded_path(path: str | Path) -> str:
    """How a run's record names a path: data beside the checkout (the shared folder) relative to the
    repository, ``../shared/data/clean``, so that a run kept in the repository names no machine's
    folders; anything else as given."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO.parent):
        return os.path.relpath(resolved, REPO)
    return str(path)


def _existing(path: Path) -> Path | None:
    return path if path.is_dir() else None


def _common(p: argparse.ArgumentParser) -> None:
    from .cache import DEFAULT_CACHE_DIR

    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="where decoded sources are kept (default: %(default)s)")
    p.add_argument("--eval-raw", type=Path, default=_existing(SHARED_DATA / "raw"),
                   help="raw folder for the evaluation set (default: the shared data, if present)")
    p.add_argument("--eval-clean", type=Path, default=_existing(SHARED_DATA / "clean"),
                   help="photograph folder for the evaluation set (default: the shared data, if present)")
    p.add_argument("--eval-limit", type=int, default=None, help="use only the first N evaluation items")
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads (default: %(default)s)")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the net on synthetic dark raws (and SID, if you have it)",
                              description="Train lowlux weights. Resumable with --resume.")
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, logs and weights of this run")
    p.add_argument("--source", action="append", metavar="KIND=PATH[@WEIGHT]",
                   help="data source, repeatable: raw=FOLDER (real raws made dark), clean=FOLDER "
                        "(photographs, unprocessed), sid=LIST_FILE (SID pairs, e.g. SID/Sony_train_list.txt); "
                        "default: the shared raw and clean folders, weight 1 each")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="crop side in px, even (MS-SSIM uses 5 scales above 160)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-after", type=float, default=1e-5)
    p.add_argument("--lr-drop-at", type=int, default=None, help="step of the lr drop (default: half of --steps)")
    p.add_argument("--l1-weight", type=float, default=0.8)
    p.add_argument("--msssim-weight", type=float, default=0.2)
    p.add_argument("--camera-weight", type=float, default=0.2,
                   help="linear nets: weight of an L1 in camera RGB beside the loss on the rendered picture "
                        "(keeps a gradient where the render clips saturated colours; default: %(default)s)")
    p.add_argument("--colour-weight", type=float,
                   help="weight of an L1 between output and target averaged over 8-px cells: flat areas keep "
                        "their colour (default: 1 for linear nets, 0 for the paper's sRGB loss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="data-loader processes (0: synthesise in the loop)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations (0: never)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep a moving average of the weights with this decay per step (e.g. 0.999) and "
                        "evaluate it too; 0: none")
    p.add_argument("--output-space", choices=("srgb", "linear-camera-wb"), default="linear-camera-wb",
                   help="what the net learns to output: linear white-balanced camera RGB (lowlux's nets; "
                        "colour comes from the raw's own matrices) or the paper's sRGB (default: %(default)s)")
    p.add_argument("--eld-noise", type=Path, default=_existing(SHARED_DATA / "noise" / "eld"),
                   help="folder of ELD camera noise parameters (*_params.npy) to draw noise from "
                        "(linear space; default: the shared data, if present)")
    p.add_argument("--no-darktable-noise", action="store_true",
                   help="do not draw noise from darktable's noise profiles (read where darktable is installed)")
    p.add_argument("--device", default="auto",
                   help="where the net trains: auto (default: a GPU when torch sees one), cpu, cuda, cuda:1, ...; "
                        "the data are made on the CPU by --workers processes either way")
    p.add_argument("--bf16", action="store_true",
                   help="the net's forward and backward in bfloat16 autocast (weights, loss and optimiser stay "
                        "float32): faster on GPUs and on CPUs with AMX or AVX-512 BF16, slower on others (it says so)")
    p.add_argument("--compile-loss", action="store_true",
                   help="run the loss through torch.compile: the same loss, a faster step; the first step compiles "
                        "for up to a minute (on the CPU it needs a C++ compiler; without one, a warning and the "
                        "loss as before)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    p.add_argument("--init-weights", type=Path, default=None,
                   help="start a new run from these weights (e.g. weights/lowlux-default.safetensors) "
                        "when no checkpoint is at hand; the optimiser starts afresh")
    _common(p)
    p.set_defaults(func=run_train)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="score weights against the authors' and a classical baseline",
                              description="Evaluate on the fixed evaluation set; writes eval.json, eval.md "
                                          "and contact_sheet.png.")
    p.add_argument("--weights", type=Path, default=None, help="lowlux weights (default: the shipped default)")
    p.add_argument("--authors", type=Path, default=None,
                   help="the authors' checkpoint (non-commercial licence: evaluation only)")
    p.add_argument("--no-baseline", action="store_true", help="skip the classical LibRaw + NLM baseline")
    p.add_argument("--no-gc", action="store_true", help="skip the GT-GC scores (21 references per image)")
    p.add_argument("--group", choices=("comparable", "new"), default="comparable",
                   help="evaluation images: the 12 every evaluation so far used, or the held-out parts of the "
                        "data added since (default: %(default)s)")
    p.add_argument("--noise", choices=("sid", "eld", "darktable"), default="sid",
                   help="whose noise darkens the images: the SID camera's (default; every score to compare), "
                        "one of the ELD cameras' per image, or one of darktable's profiles per image (where "
                        "darktable is installed)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output folder (default: %(default)s)")
    p.add_argument("--no-chart", action="store_true",
                   help="skip the virtual-camera ColorChecker (ΔE00 through real cameras' matrices)")
    p.add_argument("--chart-ratio", type=float, default=100.0,
                   help="exposure ratio of the ColorChecker charts (e.g. 100 or 250; default: %(default)s)")
    p.add_argument("--no-anchor", dest="anchor", action="store_false",
                   help="score linear weights without colour anchoring (lowlux.anchor)")
    p.add_argument("--no-chroma-smoothing", dest="chroma", action="store_false",
                   help="score linear weights without chroma smoothing (lowlux.smoothing); with --no-anchor: the "
                        "net's output alone")
    p.add_argument("--luma-smoothing", dest="luma", action="store_true",
                   help="score linear weights with brightness smoothing too (lowlux.smoothing, off by default)")
    _common(p)
    p.set_defaults(func=run_eval)
    return p


def _eval_items(args):
    from .evalset import build_eval_set

    if args.eval_raw is None and args.eval_clean is None:
        return None
    family = getattr(args, "noise", "sid")
    bank = None
    if family != "sid":
        from .noise import NoiseBank, darktable_profiles_path

        bank = NoiseBank.load(SHARED_DATA / "noise" / "eld" if family == "eld" else None,
                              darktable_profiles_path() if family == "darktable" else None)
    items = build_eval_set(args.eval_raw, args.eval_clean, args.cache_dir, getattr(args, "group", "comparable"),
                           family, bank)
    return items[: args.eval_limit] if args.eval_limit else items


def _charts(args) -> list:
    """The virtual-camera ColorCheckers for training's periodic evaluation (none without colour-science)."""
    try:
        from .chart import build_charts

        return build_charts(None, raw_dir=args.eval_raw, cache_dir=args.cache_dir)
    except ImportError as exc:
        log.warning("no ColorChecker in the training curve (%s)", exc)
        return []


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the loop's ``finally`` writes a last checkpoint."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _warn_emulated_bf16(bf16: bool, device_type: str) -> None:
    """bf16 on a CPU without bf16 instructions is emulated: slower than float32, so the user who asked
    for speed is told (on a 2-core Xeon without them the net's step took 2.5 times as long)."""
    from ..backends.choice import cpu_has_bf16

    if bf16 and device_type == "cpu" and not cpu_has_bf16():
        log.warning("--bf16: this CPU has no bf16 instructions (AVX-512 BF16 or AMX), so torch emulates them "
                    "and the step is slower than in float32; leave --bf16 out here")


def run_train(args) -> int:
    from .data import SourceSpec, open_sources
    from .evaluate import quick_scores
    from .loop import TrainConfig, train

    specs = [SourceSpec.parse(s) for s in (args.source or _default_sources())]
    if not specs:
        log.error("no data: pass --source KIND=PATH (the shared data folder is not here)")
        return 2
    from ..engine import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:  # before any data is read: a wrong device is told at once
        log.error("--device %s: %s", args.device, exc)
        return 2
    log.info("training on %s", device)
    _warn_emulated_bf16(args.bf16, device.type)
    bank = None
    if args.output_space == "linear-camera-wb":
        from .noise import NoiseBank, darktable_profiles_path

        bank = NoiseBank.load(args.eld_noise, None if args.no_darktable_noise else darktable_profiles_path())
    sources, weights = open_sources(specs, args.cache_dir, args.output_space, bank)
    items = _eval_items(args) if args.eval_every else None
    charts = _charts(args) if items else []
    eval_fn = (lambda model: quick_scores(model, items, charts)) if items else None
    config = TrainConfig(
        run_dir=args.run_dir, steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr,
        lr_after=args.lr_after, lr_drop_at=args.lr_drop_at, l1_weight=args.l1_weight,
        msssim_weight=args.msssim_weight, camera_weight=args.camera_weight,
        colour_weight=args.colour_weight if args.colour_weight is not None else (
            0.0 if args.output_space == "srgb" else 1.0), seed=args.seed, workers=args.workers, threads=args.threads,
        log_every=args.log_every, eval_every=args.eval_every if items else 0,
        checkpoint_minutes=args.checkpoint_minutes, ema=args.ema,
        init_weights=str(args.init_weights) if args.init_weights else None, output_space=args.output_space,
        device=args.device, bf16=args.bf16, compile_loss=args.compile_loss,
        source_names=[f"{s.kind}={recorded_path(s.path)}@{s.weight:g}" for s in specs],
    )
    _stop_on_sigterm()
    try:
        summary = train(config, sources, weights, resume=args.resume, eval_fn=eval_fn)
    except KeyboardInterrupt:
        log.warning("interrupted; the last checkpoint is in %s (continue with --resume)", args.run_dir)
        return 130
    log.info("done: step %d, loss %.4f, best eval PSNR %.3f dB", summary["step"], summary["loss"],
             summary["best_psnr"])
    return 0


def run_eval(args) -> int:
    import torch

    from ..weights import default_weights_path
    from .evaluate import markdown_table
    from .evaluate import run_eval as evaluate_all

    torch.set_num_threads(args.threads)
    weights = args.weights or default_weights_path()
    if weights is None:
        log.warning("no --weights and no shipped default weights: scoring without 'ours'")
    try:
        items = _eval_items(args)
    except ValueError as exc:  # e.g. --noise darktable without darktable's profiles
        log.error("cannot build the evaluation set: %s", exc)
        return 2
    if not items:
        log.error("no evaluation data: pass --eval-raw and/or --eval-clean")
        return 2
    charts = None
    if not getattr(args, "no_chart", True):
        from .chart import build_charts

        charts = build_charts(ratio=args.chart_ratio, raw_dir=args.eval_raw, cache_dir=args.cache_dir)
    results = evaluate_all(items, weights, args.authors, args.out, baseline=not args.no_baseline,
                           threads=args.threads, with_gc=not args.no_gc, charts=charts, anchor=args.anchor,
                           chroma=args.chroma, luma=args.luma, noise=args.noise)
    sys.stdout.write(markdown_table(results))
    if charts:
        from .evaluate import chart_table

        sys.stdout.write("\n" + chart_table(results))
    sys.stdout.write(f"wrote {args.out / 'eval.json'}, eval.md and contact_sheet.png\n")
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="ship a run's best weights as weights/lowlux-default.safetensors",
                              description="Copy RUN_DIR/best.safetensors to the weights folder and write the "
                                          "model card from the run's logs and an eval.json.")
    p.add_argument("--run-dir", type=Path, help="the run to ship (required unless --refresh-evaluation)")
    p.add_argument("--eval-json", type=Path, required=True, help="eval.json of `eval --weights RUN_DIR/best...`")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--hardware", help="what the run trained on, for the model card (required with --run-dir)")
    p.add_argument("--refresh-evaluation", action="store_true",
                   help="ship nothing: rewrite the shipped card's evaluation tables from EVAL_JSON, an evaluation "
                        "of the shipped weights themselves (after a change to the pipeline around the net)")
    p.add_argument("--notes", default="", help="a closing paragraph for the model card")
    p.set_defaults(func=run_export)
    return p


def run_export(args) -> int:
    from .card import export, refresh_evaluation

    if args.refresh_evaluation:
        try:
            card = refresh_evaluation(args.weights_dir, args.eval_json)
        except (OSError, ValueError) as e:
            log.error("%s", e)
            return 2
        sys.stdout.write(f"rewrote the evaluation tables of {card}\n")
        return 0
    if args.run_dir is None or not args.hardware:
        log.error("export needs --run-dir and --hardware (or --refresh-evaluation)")
        return 2
    path = export(args.run_dir, args.eval_json, args.weights_dir, args.hardware, args.notes)
    sys.stdout.write(f"wrote {path} and {path.parent / 'README.md'}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowlux.train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_export_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)
