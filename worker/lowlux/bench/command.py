"""The ``lowlux bench`` command: its arguments, and the run over sizes and configurations.

This is the parent process. It measures nothing itself: each configuration runs in a child
(:mod:`.child`), against the reference row run first at the same size, and the rows go to the
console, a JSON file and optionally Markdown tables (:mod:`.report`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..atomic import replacing
from ..options import positive_count
from . import child
from .accuracy import GROUPS
from .configs import Config, default_configs
from .report import Row, format_row, header, machine_line, markdown_tables, secs
from .workload import count_macs

DEFAULT_SIZES = "512x512,1024x1024,2848x4256,6000x4000,5504x8256,9504x6336"
E2E_FORMATS = {"both": ("tiff", "dng"), "tiff": ("tiff",), "dng": ("dng",)}
"""``--e2e-format``: the outputs whose end-to-end rows a run measures."""


def parse_size(text: str) -> tuple[int, int]:
    """'2848x4256' -> (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH, got {text!r}") from None
    if h < 32 or w < 32 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"size {text!r}: sides must be even and at least 32")
    return h, w


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"HxW list (default {DEFAULT_SIZES})")
    p.add_argument("--runs", type=int, default=5, help="timed runs per row, after warm-up (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end rows (file -> TIFF, file -> DNG)")
    p.add_argument("--e2e-format", choices=tuple(E2E_FORMATS), default="both",
                   help="which end-to-end rows: file -> TIFF, file -> linear DNG (linear weights only), or both "
                        "(default)")
    p.add_argument("--batch-files", type=positive_count, default=None, metavar="N",
                   help="files in the end-to-end rows' overlapped batch (default: the runs, at least 3); "
                        "more give the steady rate in files per second")
    p.add_argument("--decode-threads", type=positive_count, default=None, metavar="N",
                   help="raws the batch decodes at once (default: the worker's, one per four cores, at most 4)")
    p.add_argument("--only", help="comma-separated config names (substrings) to run besides the reference")
    p.add_argument("--no-peak", action="store_true", help="skip the machine's convolution peak (GMAC/s)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the accuracy rule's figures of each reduced precision on the evaluation set")
    p.add_argument("--accuracy-groups", type=_groups, default=GROUPS, metavar="G[,G]",
                   help=f"evaluation groups the accuracy rule is measured on (default: {','.join(GROUPS)}; a "
                        "precision passes only where it passes on each)")
    p.add_argument("--eval-raw", type=Path, help="raw folder of the evaluation set (default: the shared data)")
    p.add_argument("--eval-clean", type=Path, help="photograph folder of the evaluation set (default: the shared data)")
    p.add_argument("--json", type=Path, default=Path("bench-results.json"),
                   help="results file (JSON list of rows; rewritten after every row)")
    p.add_argument("--row-timeout", type=float, default=None, metavar="S",
                   help="give up a row after S seconds (e.g. a torch.compile row on a borrowed GPU); "
                        "the rows after it still run")
    p.add_argument("--markdown", type=Path, help="also write the results as Markdown tables")
    g = p.add_argument_group("cluster (lowlux bench --cluster)")
    g.add_argument("--cluster", action="store_true",
                   help="instead: files/s of a batch on a local Dask cluster, 1 and 2 workers, against a local "
                        "loop (synthetic dark raws of the first --sizes entry)")
    g.add_argument("--cluster-files", type=int, default=6, help="raws in the cluster batch (default 6)")
    g.add_argument("--no-upload", action="store_true", help="skip the cluster's --upload rows")
    d = p.add_argument_group("darktable (lowlux bench --darktable)")
    d.add_argument("--darktable", action="store_true",
                   help="instead: from the plugin's button to the first result in darktable's library (a real "
                        "darktable under Xvfb, a warm worker), beside decode + net + encode of the same raw")
    d.add_argument("--darktable-raw", type=Path,
                   help="the raw to restore (a copy of it); default: a synthetic dark DNG of the first --sizes entry")
    d.add_argument("--darktable-settle", type=float, default=0.0, metavar="S",
                   help="seconds to leave darktable idle before each press (its thumbnails of the raw and of the "
                        "previous result made, as for a photographer's single press); default 0: back to back")


def _groups(text: str) -> tuple[str, ...]:
    """``--accuracy-groups``: comma-separated names from :data:`.accuracy.GROUPS`."""
    groups = tuple(g for g in text.split(",") if g)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"unknown evaluation group(s) {', '.join(unknown) or repr(text)} "
                                         f"(choose from {', '.join(GROUPS)})")
    return groups


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "cluster", False):
        from .cluster import run_cluster_bench

        return run_cluster_bench(args)
    if getattr(args, "darktable", False):
        from .darktable import run_darktable_bench

        return run_darktable_bench(args)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    weights = str(args.weights) if args.weights else None
    device = getattr(args, "device", "auto")
    rows: list[Row] = []
    machine = machine_line()
    print(machine)
    print(header())
    configs = default_configs(args)
    failures: list[str] = []
    peaks = {} if getattr(args, "no_peak", False) else _peaks(args, configs, device, rows)
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            size_s = f"{size[0]}x{size[1]}"
            gmacs = count_macs(*size) / 1e9
            ref_path = str(Path(tmp) / f"ref-{size_s}.npy")
            ref_median = None
            for config in configs:
                if not config.runs_at(size):
                    continue
                try:
                    res = child.run_child("net", {"config": asdict(config), "size": size, "runs": args.runs,
                                                  "warmup": args.warmup, "weights": weights, "device": device,
                                                  "ref_out": None if config.reference else ref_path,
                                                  "save_out": ref_path if config.reference else None},
                                          timeout=None if config.reference else getattr(args, "row_timeout", None))
                except RuntimeError as exc:
                    if config.reference:  # every other row is measured against it
                        raise
                    # One configuration that fails (a runtime bug, out of memory) costs its row only.
                    failures.append(f"{config.name} at {size_s}: {str(exc).strip().splitlines()[-1]}")
                    print(f"{config.name:28s} {size_s:>10s} FAILED: {failures[-1]}", flush=True)
                    continue
                med = statistics.median(res["times"])
                ref_median = med if config.reference else ref_median
                rows.append(_net_row(config, size_s, gmacs, res, ref_median, peaks))
                print(format_row(rows[-1]), flush=True)
                _save_rows(args.json, rows, machine)
            Path(ref_path).unlink(missing_ok=True)
            for fmt in () if args.no_e2e else E2E_FORMATS[args.e2e_format]:
                res = _e2e(args, size, weights, device, fmt)
                if "skipped" in res:
                    print(f"file -> {fmt.upper()} (end to end) {size_s}: skipped, {res['skipped']}", flush=True)
                    continue
                rows.append(_e2e_row(size_s, gmacs, res))
                _save_rows(args.json, rows, machine)
                print(format_row(rows[-1]) + "  " + " ".join(f"{k}={v:.3f}" for k, v in res["stages"].items())
                      + f" one_file_peak_rss_mb={res['one_file_peak_rss_mb']:.0f}"
                      + f" batch: {res['batch_files']} files, {res['decode_threads']} decoder(s),"
                      + f" {1 / res['stages']['batch_per_file_s']:.1f} files/s, peak {res['batch_peak_rss_mb']:.0f} MB",
                      flush=True)
                for label, key in (("one file", "profile"), ("batch, per file", "batch_profile")):
                    print(f"  stages, {label}: {profile_line(res.get(key, {}))}", flush=True)
    if not getattr(args, "no_accuracy", False):
        _accuracy(args, configs, weights, device, rows)
    _write_results(args, rows, machine, failures)
    if failures:
        print(f"{len(failures)} configuration(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _peaks(args: argparse.Namespace, configs: list[Config], device: str, rows: list[Row]) -> dict[str, float]:
    """The machine's convolution peak per precision (:mod:`.peak`), as rows; ``{dtype: GMAC/s}``, the
    best runtime's. CPU only."""
    from ..engine import resolve_device

    if resolve_device(device).type != "cpu":
        return {}
    dtypes = list(dict.fromkeys(c.dtype for c in configs))
    pairs = [(b, d) for d in dtypes for b in ("openvino", "torch")]
    res = child.run_child("peak", {"pairs": pairs, "runs": args.runs, "warmup": args.warmup})
    peaks: dict[str, float] = {}
    for p in res["peaks"]:
        from .peak import SIZE, peak_macs

        med = statistics.median(p["times"])
        rows.append(Row(f"peak: 3x3 conv 64->64, {p['backend']}", "peak", p["dtype"], f"{SIZE[0]}x{SIZE[1]}", med,
                        min(p["times"]), max(p["times"]), len(p["times"]), 0.0, peak_macs() / 1e9,
                        extra={"runtime": p["backend"], "gmac_per_s": p["gmac_per_s"]}))
        print(f"{rows[-1].name:28s} {p['dtype']:>10s} {secs(med):>9s}  {p['gmac_per_s']:.0f} GMAC/s", flush=True)
        peaks[p["dtype"]] = max(peaks.get(p["dtype"], 0.0), p["gmac_per_s"])
    return peaks


def _accuracy(args: argparse.Namespace, configs: list[Config], weights: str | None, device: str,
              rows: list[Row]) -> None:
    """The accuracy rule's figures (:func:`.accuracy.measure_rule`) of every reduced precision run here,
    against float32 of the same backend, as rows (backend ``accuracy``)."""
    from .accuracy import RULE

    names = {}
    for c in configs:
        if c.dtype != "float32" and not c.concurrent and (c.backend, c.dtype) not in names:
            names[(c.backend, c.dtype)] = c.name
    if not names:
        return
    groups = list(getattr(args, "accuracy_groups", GROUPS))
    res = child.run_child("accuracy", {"pairs": list(names), "weights": weights, "device": device, "groups": groups,
                                       "eval_raw": str(args.eval_raw) if getattr(args, "eval_raw", None) else None,
                                       "eval_clean": str(args.eval_clean) if getattr(args, "eval_clean", None) else None})
    print(f"accuracy rule (against float32 of the same backend; limits: PSNR {RULE['psnr_db']} dB, SSIM "
          f"{RULE['ssim']}, chart dE00 {RULE['delta_e00']}, any pixel {RULE['levels_8bit']}/255): {res['note']}")
    for r in res["rows"]:
        f = r["figures"]
        group = r.get("group", "comparable")
        name = f"accuracy: {names[(r['backend'], r['dtype'])]}" + ("" if group == "comparable" else f" ({group})")
        rows.append(Row(name, "accuracy", r["dtype"], f"evaluation set, {group}", r["seconds"], r["seconds"],
                        r["seconds"], 1, 0.0, 0.0, f["max_abs_diff"],
                        extra={"runtime": r["runtime"], "figures": f, "per_mode": r["per_mode"], "group": group,
                               "data": r.get("data", res["note"])}))
        print(f"{name:40s} PSNR {f['psnr_db']:.3f} dB  SSIM {f['ssim']:.5f}  dE00 {f['delta_e00']:.3f}  "
              f"max {f['max_diff_255']:.2f}/255 ({f['levels_8bit']} levels)  "
              f"{'PASSES' if f['passes'] else 'fails'}", flush=True)


def _net_row(config: Config, size_s: str, gmacs: float, res: dict, ref_median: float | None,
             peaks: dict[str, float] | None = None) -> Row:
    """A net row from a child's result; its speed-up is against the reference's median, its GMAC/s
    against the machine's peak at its precision (when measured)."""
    med = statistics.median(res["times"])
    rate = gmacs / med
    peak = (peaks or {}).get(config.dtype)
    return Row(config.name, config.backend, config.dtype, size_s, med, min(res["times"]), max(res["times"]),
               len(res["times"]), res["peak_rss_mb"], gmacs, res.get("max_abs_diff"),
               res.get("photo_max_abs_diff"), None if config.reference else ref_median / med, config.reference,
               {"device": res["device"], "concurrent": config.concurrent, "channels_last": config.channels_last,
                "runtime": res["backend_detail"], "tiles": res["tiles"], "maxrss_mb": res["maxrss_mb"],
                "gmac_per_s": rate} | ({"peak_fraction": rate / peak} if peak else {})
               | ({"gpu_peak_mb": res["gpu_peak_mb"], "fps": 1 / med} if "gpu_peak_mb" in res else {}))


def _e2e(args: argparse.Namespace, size: tuple[int, int], weights: str | None, device: str, fmt: str) -> dict:
    """One end-to-end row's measurements: one file at a time in one child, the overlapped batch (as a
    worker runs it) in another; the row's peak memory is the larger of the two."""
    common = {"size": size, "weights": weights, "device": device, "anchor": getattr(args, "anchor", True),
              "chroma": getattr(args, "chroma", True), "luma": getattr(args, "luma", False),
              "format": fmt}
    runs = max(args.runs // 2, 2)
    one = child.run_child("e2e", {**common, "runs": runs})
    if "skipped" in one:
        return one
    batch = child.run_child("batch", {**common, "count": getattr(args, "batch_files", None) or max(runs, 3),
                                      "decode_threads": getattr(args, "decode_threads", None)})
    return {**one, **batch, "one_file_peak_rss_mb": one["peak_rss_mb"],
            "peak_rss_mb": max(one["peak_rss_mb"], batch["batch_peak_rss_mb"]),
            "stages": {**one["stages"], "batch_per_file_s": batch["batch_per_file_s"]}}


def _e2e_row(size_s: str, gmacs: float, res: dict) -> Row:
    """The end-to-end row from its child's result (stage medians in ``extra``)."""
    med = statistics.median(res["times"])
    suffix = "".join(f", --no-{flag}" for key, flag in (("anchor", "anchor"), ("chroma", "chroma-smoothing"))
                     if not res.get(key, True)) + (", --luma-smoothing" if res.get("luma") else "")
    label = f"file -> {res.get('format', 'tiff').upper()} (end to end{suffix})"
    return Row(label, "e2e", res.get("dtype", "float32"), size_s, med,
               min(res["times"]), max(res["times"]), len(res["times"]), res["peak_rss_mb"], gmacs,
               speedup=None, extra={**res["stages"], "runtime": res["backend_detail"],
                                    "tiles": res["tiles"], "maxrss_mb": res["maxrss_mb"],
                                    "one_file_peak_rss_mb": res["one_file_peak_rss_mb"],
                                    "batch_peak_rss_mb": res["batch_peak_rss_mb"],
                                    "batch_files": res.get("batch_files"),
                                    "decode_threads": res.get("decode_threads"),
                                    "output_space": res.get("output_space"), "profile": res.get("profile", {}),
                                    "batch_profile": res.get("batch_profile", {})})


def profile_line(profile: dict[str, float]) -> str:
    """``net 0.41 s (62%), decode (LibRaw) 0.06 s (9%), ...``: each stage's time and share, largest first."""
    total = sum(profile.values()) or 1.0
    return ", ".join(f"{k} {v:.3f} s ({100 * v / total:.0f}%)" for k, v in sorted(profile.items(), key=lambda kv: -kv[1]))


def _save_rows(path: Path, rows: list[Row], machine: str) -> None:
    """The JSON rows so far (each with the machine line), replaced atomically: a run cut short by an
    outside limit keeps every row it finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps([asdict(r) | {"machine": machine} for r in rows], indent=1))


def _write_results(args: argparse.Namespace, rows: list[Row], machine: str, failures: list[str]) -> None:
    """The JSON rows, and the Markdown tables when asked for."""
    _save_rows(args.json, rows, machine)
    print(f"results written to {args.json}")
    if getattr(args, "markdown", None):
        text = markdown_tables(rows, machine)
        if failures:
            text += "\nFailed (no row):\n\n" + "".join(f"- {f}\n" for f in failures)
        args.markdown.write_text(text)
        print(f"tables written to {args.markdown}")
