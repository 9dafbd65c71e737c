"""What ``lowlux bench`` reports: its rows, as console lines, JSON and Markdown tables.

Kept apart from the measuring so that the output formats can change (and be read) without touching
how anything is timed.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    name: str
    backend: str
    dtype: str
    size: str
    median_s: float
    min_s: float
    max_s: float
    runs: int
    peak_rss_mb: float
    gmacs: float
    max_abs_diff: float | None = None
    photo_max_abs_diff: float | None = None
    """Deviation from the eager fp32 net on a photograph (:func:`lowlux.bench.accuracy.photo_input`),
    None where not measured."""
    speedup: float | None = None
    reference: bool = False
    extra: dict = field(default_factory=dict)


def markdown_tables(rows: list[Row], machine: str) -> str:
    """One table per size: every row with its ratio to the reference."""
    out = [f"Machine: {machine}", ""]
    peaks = [r for r in rows if r.backend == "peak"]
    if peaks:
        out += ["### Machine peak (one 3x3 conv, 64 -> 64 channels, 1024 x 1024)", "",
                "| runtime | precision | median s | min s | GMAC/s |", "|---|---|---:|---:|---:|"]
        out += [f"| {r.extra['runtime']} | {r.dtype} | {secs(r.median_s)} | {secs(r.min_s)} | {rate(r)} |" for r in peaks]
        out.append("")
    rule = [r for r in rows if r.backend == "accuracy"]
    if rule:
        out += [f"### Accuracy rule (against float32 of the same backend; {rule[0].extra['data']})", "",
                "| precision | PSNR change dB | SSIM change | chart dE00 change | max pixel change | verdict |",
                "|---|---:|---:|---:|---:|---|"]
        for r in rule:
            f = r.extra["figures"]
            out.append(f"| {r.name.removeprefix('accuracy: ')} | {f['psnr_db']:.3f} | {f['ssim']:.5f} | "
                       f"{f['delta_e00']:.3f} | {f['max_diff_255']:.2f}/255 ({f['levels_8bit']} levels) | "
                       f"{'passes' if f['passes'] else 'fails'} |")
        out.append("")
    rows = [r for r in rows if r.backend not in ("peak", "accuracy")]
    for size in dict.fromkeys(r.size for r in rows):
        h, w = (int(v) for v in size.split("x"))
        gpu = any("gpu_peak_mb" in r.extra for r in rows if r.size == size)
        out += [f"### {size} ({h * w / 1e6:.1f} MP, {next(r.gmacs for r in rows if r.size == size):.1f} GMACs)", "",
                "| config | runtime | median s | min s | max s | speed-up | peak RSS MB | max abs diff "
                "| on a photo | tiles | GMAC/s | of peak |" + (" fps | GPU peak MB |" if gpu else ""),
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "")]
        for r in rows:
            if r.size != size:
                continue
            cuda = f" {1 / r.median_s:.0f} | {r.extra['gpu_peak_mb']:.0f} |" if "gpu_peak_mb" in r.extra else " | |"
            speed = "reference" if r.reference else (f"{r.speedup:.2f}x" if r.speedup else "")
            diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
            photo = "" if r.photo_max_abs_diff is None else f"{r.photo_max_abs_diff:.1e}"
            name = r.name
            if r.backend == "e2e":
                stages = ", ".join(f"{k.removesuffix('_s')} {r.extra[k]:.2f}" for k in
                                   ("decode_s", "net_s", "encode_s", "batch_per_file_s") if k in r.extra)
                peaks = [f"{label}: peak {r.extra[k]:.0f} MB" for label, k in
                         (("one file at a time", "one_file_peak_rss_mb"), ("batch", "batch_peak_rss_mb")) if k in r.extra]
                name += f" ({'; '.join([stages, *peaks])})"
            out.append(f"| {name} | {r.extra.get('runtime', '')} | {secs(r.median_s)} | {secs(r.min_s)} | {secs(r.max_s)} "
                       f"| {speed} | {r.peak_rss_mb:.0f} | {diff} | {photo} | {r.extra.get('tiles', '')} "
                       f"| {rate(r)} | {fraction(r)} |"
                       + (cuda if gpu else ""))
        out.append("")
    return "\n".join(out)


def secs(value: float) -> str:
    """Seconds with three decimals, or four significant digits below 0.1 s (GPU times)."""
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4g}"


def machine_line() -> str:
    """CPU, cores, memory, GPU and torch threads: printed first and stored with every row."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    cores, memory = _cores_and_memory()
    return (f"{cpu}, {cores} cores, {memory / 2**30:.0f} GiB{gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def _cores_and_memory() -> tuple[int, int]:
    """Physical cores and total memory in bytes; without psutil (a borrowed GPU machine running the
    source tree may lack it) logical cores and the memory the OS reports, so the bench still runs."""
    try:
        import psutil
    except ImportError:
        return os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1, psutil.virtual_memory().total


def header() -> str:
    """The console table's heading, matching :func:`format_row`."""
    return (f"{'config':28s} {'size':>10s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'speed-up':>8s} "
            f"{'peak RSS MB':>11s} {'GMACs':>7s} {'max |diff|':>10s} {'photo':>8s} {'tiles':>5s} {'GMAC/s':>6s} "
            f"{'of peak':>7s}")


def format_row(r: Row) -> str:
    """One row as a console line."""
    speed = "ref" if r.reference else (f"{r.speedup:.2f}x" if r.speedup else "")
    diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
    photo = "" if r.photo_max_abs_diff is None else f"{r.photo_max_abs_diff:.1e}"
    return (f"{r.name:28s} {r.size:>10s} {secs(r.median_s):>9s} {secs(r.min_s):>7s} {secs(r.max_s):>7s} {speed:>8s} "
            f"{r.peak_rss_mb:11.0f} {r.gmacs:7.1f} {diff:>10s} {photo:>8s} {r.extra.get('tiles', ''):>5} "
            f"{rate(r):>6s} {fraction(r):>7s}")


def rate(r: Row) -> str:
    return f"{r.extra['gmac_per_s']:.0f}" if "gmac_per_s" in r.extra else ""


def fraction(r: Row) -> str:
    """The row's GMAC/s as a share of the machine's convolution peak at its precision (:mod:`.peak`)."""
    return f"{100 * r.extra['peak_fraction']:.0f}%" if "peak_fraction" in r.extra else ""
