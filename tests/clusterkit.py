"""Shared fixtures of the Dask tests: a real LocalCluster on loopback (2 worker processes, 1 thread
each), tiny raws, and the engine configuration both the cluster and the local reference run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import dark_scene

from lowlux.engine import Engine, EngineConfig

REPO = Path(__file__).resolve().parents[1]


def write_raw(path: Path, seed: int = 0, height: int = 64, width: int = 96) -> Path:
    from lowlux.dng import write_dng

    cfa = np.round(512 + dark_scene(height, width, seed) * (16383 - 512)).astype(np.uint16)
    return write_dng(path, cfa, black=512, white=16383, exif={"Exif.Photo.ExposureTime": "1/30"})


@pytest.fixture(scope="module")
def hold_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hold")


@pytest.fixture(scope="module")
def cluster(hold_dir, tmp_path_factory):
    from lowlux.cluster.local import start_local_cluster
    from lowlux.cluster.tasks import HOLD_ENV

    env = {HOLD_ENV: str(hold_dir), "PYTHONPATH": str(REPO / "worker"),
           "LOWLUX_CACHE_DIR": os.environ.get("LOWLUX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))}
    local = start_local_cluster(2, 1, memory_limit=None, env=env)
    yield local
    local.close()


@pytest.fixture(scope="module")
def config(tiny_weights) -> EngineConfig:
    return EngineConfig(weights=tiny_weights, backend="torch", threads=1)


@pytest.fixture(scope="module")
def local_engine(config):
    import torch

    threads = torch.get_num_threads()
    engine = Engine(config)
    yield engine
    engine.close()
    torch.set_num_threads(threads)


@pytest.fixture
def raws(tmp_path):
    folder = tmp_path / "raws"
    folder.mkdir()
    return [write_raw(folder / f"f{i}.dng", seed=i) for i in range(6)]
