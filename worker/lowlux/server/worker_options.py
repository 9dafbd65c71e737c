"""The options a worker job carries: ``EnhanceOptions`` plus the client's target names.

A module of its own because ``EnhanceOptions`` lives with the numpy stages in :mod:`lowlux.pipeline`:
it is imported when the first job is built, not when the worker starts answering.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..naming import check_targets
from ..pipeline import EnhanceOptions


@dataclass(frozen=True)
class WorkerOptions(EnhanceOptions):
    targets: tuple[str, ...] = ()
    """File names for the TIFFs of the job's single file, one per brightness value; empty: the default
    names. :func:`lowlux.pipeline.output_paths` names the outputs by them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targets:
            object.__setattr__(self, "targets", check_targets(self.targets, len(self.brightness)))
