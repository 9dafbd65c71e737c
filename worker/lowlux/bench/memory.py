"""Peak resident memory of the measuring process, for ``lowlux bench``.

Each configuration runs in a process of its own so that these figures are its own: the peak since
:func:`reset_peak`, not the largest of everything measured before it.
"""

from __future__ import annotations

from pathlib import Path


def reset_peak() -> None:
    """Start a new peak-RSS measurement (Linux: clear_refs 5 resets VmHWM to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak RSS since :func:`reset_peak` (whole process), falling back to the lifetime maximum."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return maxrss_mb()


def maxrss_mb() -> float:
    """The process's lifetime peak RSS."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
