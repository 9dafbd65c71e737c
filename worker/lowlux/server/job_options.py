"""A submit's ``options`` object to the options every file of the job is restored with.

The protocol module checks types; here the values are checked (ranges, names, paths), and anything
wrong becomes a ``bad_option`` (or ``bad_request``) reply naming it. Heavy modules are imported only
when a job is built, so the worker answers ``ping`` at once while the net loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import protocol as proto
from ..protocol import ProtocolError


def local_path(text: str, what: str) -> str:
    """An absolute, normalised path on the worker's disk; a relative one is refused (whose folder?)."""
    if not os.path.isabs(text):
        raise ProtocolError(proto.BAD_REQUEST, f"{what}: {text!r} is not an absolute path (the worker's working "
                                               "folder is not the client's)")
    return os.path.normpath(text)


def build_options(wire: dict[str, Any], *, local: bool = False) -> Any:
    """The job's options from a checked ``options`` object; bad values are a ``bad_option`` reply."""
    from ..amplifier import VARIANTS
    from ..tiff import COMPRESSIONS
    from ..pipeline import EnhanceOptions

    kwargs = dict(wire)
    if "brightness" in kwargs:
        kwargs["brightness"] = tuple(kwargs["brightness"])
    if "targets" in kwargs:
        kwargs["targets"] = tuple(kwargs["targets"])
    if kwargs.get("variant") is not None and kwargs["variant"] not in VARIANTS:
        raise ProtocolError(proto.BAD_OPTION, f"variant {kwargs['variant']!r} is not one of {', '.join(VARIANTS)}")
    if kwargs.get("compression") is not None and kwargs["compression"] not in COMPRESSIONS:
        raise ProtocolError(proto.BAD_OPTION, f"compression {kwargs['compression']!r} is not one of "
                                              f"{', '.join(COMPRESSIONS)}")
    if kwargs.get("out_dir"):
        kwargs["out_dir"] = Path(local_path(kwargs["out_dir"], "out_dir") if local else kwargs["out_dir"])
    try:
        return EnhanceOptions(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(proto.BAD_OPTION, str(exc)) from None


def check_targets_fit(wire: dict[str, Any], files: list[str]) -> None:
    """Target names name the TIFFs of one file: a job that sets them has exactly one."""
    if wire.get("targets") and len(files) != 1:
        raise ProtocolError(proto.BAD_OPTION, f"'targets' name the TIFFs of one file; this job has {len(files)} "
                                              "(submit one job per file)")
