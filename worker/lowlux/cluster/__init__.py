"""Restoring on a Dask cluster: many machines (or GPUs) share one batch or one front door.

The pieces, each in a module named for its concern:

- :mod:`.engines`: one warm :class:`~lowlux.engine.Engine` per Dask worker process (a worker plugin);
- :mod:`.staging`: how outputs reach their final names exactly once, even when Dask reruns a task
  after losing a worker;
- :mod:`.tasks`: the function a worker runs for one file (shared storage, or the raw shipped as bytes);
- :mod:`.submit`: :func:`enhance_on_cluster`, a batch fanned out from a client;
- :mod:`.pipeline`: :class:`ClusterPipeline`, what ``lowlux serve --cluster`` restores its queue with
  (the front door: the server's job table and fair queue, the files on the cluster);
- :mod:`.frontdoor`: :class:`ClusterRunner`, the same fan-out for a program with its own job table;
- :mod:`.local`: a loopback :class:`~distributed.LocalCluster` for one machine's cores or GPUs;
- :mod:`.cli`: the ``--cluster`` / ``--upload`` options and ``lowlux cluster local``.

Importing this package does not import Dask: the CLI's options exist whether or not the optional
``cluster`` extra is installed; the modules that need Dask say so when it is missing.
"""

from __future__ import annotations

from ..errors import LowluxError

ENV_ADDRESS = "LOWLUX_CLUSTER"
"""Environment variable holding the default scheduler address for ``--cluster``."""


class ClusterError(LowluxError):
    """The cluster as a whole cannot be used (scheduler unreachable, engines fail to load, no Dask)."""


def require_distributed():
    """The ``distributed`` module, or a ClusterError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError("Dask is not installed: pip install 'lowlux[cluster]' "
                           f"(needs dask[distributed]; {exc})") from exc
    return distributed


__all__ = ["ENV_ADDRESS", "ClusterError", "require_distributed"]
