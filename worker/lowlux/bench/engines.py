"""The engine a measurement runs: the requested weights, or random ones where none are installed."""

from __future__ import annotations

import tempfile
from pathlib import Path


def make_engine(engine_config):
    """An engine with the requested weights, or random weights when none are installed (speed only)."""
    from ..engine import Engine
    from ..errors import WeightsError

    try:
        return Engine(engine_config)
    except WeightsError:
        from dataclasses import replace

        from ..model import LowLightNet, msra_init
        from ..weights import save_weights

        path = Path(tempfile.gettempdir()) / "lowlux-bench-random.safetensors"
        if not path.exists():
            save_weights(msra_init(LowLightNet()), path, {"note": "random weights for timing"})
        return Engine(replace(engine_config, weights=path))
