"""The one rule for naming lowlux's outputs, and the check of a target name a client chooses.

``<stem>_lowlux.tif``, or ``<stem>_lowlux_m0.5.tif`` per brightness of a bracket (``.dng`` for the
linear DNG format). The file→TIFF
stages (:mod:`lowlux.pipeline`), the worker and the client all name outputs through here, so the
client can predict the worker's names without importing numpy (it runs on every darktable poll):
this module imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath, PurePosixPath
from typing import Any

SUFFIX = "_lowlux"
FORMATS = ("tiff", "dng")
EXTENSIONS = {"tiff": ".tif", "dng": ".dng"}
TARGET_EXTENSIONS = {"tiff": (".tif", ".tiff"), "dng": (".dng",)}
MAX_NAME_BYTES = 255


def output_names(source: str | PurePath, brightness: Sequence[float] = (), targets: Sequence[str] = (),
                 extension: str = EXTENSIONS["tiff"]) -> list[str]:
    """The file names of ``source``'s outputs: ``targets`` when given, else the default names."""
    if targets:
        return list(targets)
    stem = PurePath(source).stem
    if len(brightness) <= 1:
        return [f"{stem}{SUFFIX}{extension}"]
    return [f"{stem}{SUFFIX}_m{m:g}{extension}" for m in brightness]


def names_for_options(source: str | PurePath, options: Any) -> list[str]:
    """:func:`output_names` with the brightness, targets and format of ``options``: an ``EnhanceOptions``
    or a submit's ``options`` object (the wire form). The worker names an uploaded file's outputs, and
    the client the TIFFs it fetches, with this, from the client's own source name."""
    if isinstance(options, Mapping):
        get = options.get
    else:
        def get(key: str) -> Any:
            return getattr(options, key, None)
    brightness = get("brightness") or ()
    if isinstance(brightness, (int, float)):
        brightness = [brightness]
    targets = get("targets") or ([get("target")] if get("target") else [])
    extension = EXTENSIONS.get(get("format") or "tiff", EXTENSIONS["tiff"])
    return output_names(source, brightness, targets, extension)


def client_basename(name: str) -> str:
    """The last component of a path a client sent, whatever its system's separator ('/' or '\\')."""
    return PurePosixPath(name.replace("\\", "/")).name


def readable(name: str) -> str:
    """A file name fit to show and to log: bytes that are not UTF-8 shown as ``\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_target(name: str, format: str = "tiff") -> str:
    """A target must be a bare, visible file name ending as the format's files do (.tif or .tiff,
    .dng); raises ``ValueError`` otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("a target must be a non-empty file name")
    if "/" in name or "\\" in name:
        raise ValueError(f"target {name!r} must be a bare file name, without a folder")
    if name.startswith(".") or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise ValueError(f"target {name!r} must not be hidden or contain control characters")
    endings = TARGET_EXTENSIONS.get(format, TARGET_EXTENSIONS["tiff"])
    if not name.lower().endswith(endings):
        raise ValueError(f"target {name!r} must end with {' or '.join(endings)}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ValueError(f"target {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return name


def check_targets(targets: Sequence[str], count: int, format: str = "tiff") -> tuple[str, ...]:
    """One valid, distinct name per output (``count``: the number of brightness values)."""
    names = tuple(check_target(t, format) for t in targets)
    if len(names) != count:
        raise ValueError(f"{len(names)} target name(s) for {count} output(s): give one per brightness value")
    if len({n.lower() for n in names}) != len(names):
        raise ValueError("the target names must differ from each other")
    return names
