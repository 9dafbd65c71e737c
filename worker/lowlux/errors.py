"""Errors lowlux reports to users. Each names the file and the reason."""

from __future__ import annotations

from pathlib import Path


class LowluxError(Exception):
    """Base class: an error with a message fit to show a user as is."""


class InputError(LowluxError):
    """An input file that cannot be restored (missing, not a raw, corrupt, ...)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class UnsupportedSensor(InputError):
    """A raw whose sensor layout the net cannot read (X-Trans, Foveon, linear DNG, monochrome)."""


class OutputError(LowluxError):
    """The output cannot be written (exists, unwritable directory, disk full)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class WeightsError(LowluxError):
    """A weights file that is missing or does not fit the net."""
