"""One warm engine per Dask worker process, loaded once and kept between tasks and jobs.

Loading an engine takes seconds (weights, graph compilation, CUDA context); a file takes well under
one on a GPU. So the engine is loaded when the plugin is registered (on every worker, and again on
each worker that joins or is restarted later) and looked up by its configuration for each task.
Registering the same configuration again (every batch does) keeps the loaded engine; a changed
configuration loads its own, and the least recently used is dropped beyond :data:`MAX_ENGINES`.

The engine is loaded on a thread so the worker's event loop (heartbeats, transfers) keeps running.
``device="auto"`` uses the worker's GPU when torch sees one; run one worker process per GPU (as
``dask-cuda`` does, or ``CUDA_VISIBLE_DEVICES`` per ``dask worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict

from distributed import WorkerPlugin

from ..engine import Engine, EngineConfig

log = logging.getLogger(__name__)

MAX_ENGINES = 2
"""Engines one worker process keeps loaded (one per configuration in use)."""

_engines: OrderedDict[EngineConfig, Engine] = OrderedDict()
_lock = threading.Lock()
_loading: dict[EngineConfig, threading.Lock] = {}


def plugin_name(config: EngineConfig) -> str:
    """A stable name per configuration: re-registering it is a no-op, another config is another plugin."""
    return "lowlux-engine-" + hashlib.sha1(repr(config).encode()).hexdigest()[:12]


def worker_engine(config: EngineConfig) -> Engine:
    """This process's engine for ``config``, loaded now if the plugin has not loaded it yet."""
    with _lock:
        engine = _engines.get(config)
        if engine is not None:
            _engines.move_to_end(config)
            return engine
        loading = _loading.setdefault(config, threading.Lock())
    with loading:  # one load per configuration, however many threads ask at once
        with _lock:
            if config in _engines:
                return _engines[config]
        engine = Engine(config)
        with _lock:
            _engines[config] = engine
            _engines.move_to_end(config)
            while len(_engines) > MAX_ENGINES:
                old, _ = _engines.popitem(last=False)  # running tasks keep their reference
                log.info("dropped the engine for %s (more than %d configurations in use)", old, MAX_ENGINES)
        return engine


def loaded_configs() -> list[EngineConfig]:
    with _lock:
        return list(_engines)


class EnginePlugin(WorkerPlugin):
    """Loads the engine for one configuration on each worker process, once."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.name = plugin_name(config)

    async def setup(self, worker) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        engine = worker_engine(self.config)
        log.info("lowlux engine ready on this worker: %s", engine.describe())

    def teardown(self, worker) -> None:
        """Nothing: a re-registration of the same configuration must keep the warm engine."""


def register_engine(client, config: EngineConfig) -> None:
    """Load ``config``'s engine on every worker now (a failure there is raised here, e.g. bad weights)."""
    plugin = EnginePlugin(config)
    register = getattr(client, "register_plugin", None) or client.register_worker_plugin
    try:
        register(plugin)
    except Exception:
        with contextlib.suppress(Exception):  # or every worker that joins later would fail the same way
            client.unregister_worker_plugin(plugin.name)
        raise
