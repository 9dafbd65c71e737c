"""Shared fixtures (the read-only ../shared folder, tiny weights, shared engines, synthetic DNGs)
and the ``slow`` marks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AUTHORS_WEIGHTS = SHARED / "reference" / "authors-sid-sony.pt"
VECTORS = SHARED / "reference" / "vectors"
REAL_RAWS = SHARED / "data" / "raw"


def need(path: Path, what: str) -> Path:
    """Skip (with the reason) when a ../shared resource is absent, as in a user's fresh clone."""
    if not path.exists():
        pytest.skip(f"{what} not available: {path} is absent (../shared exists only in the project's CI)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory):
    """Exported graphs go to a temporary cache, never the user's ~/.cache/lowlux."""
    import os

    old = os.environ.get("LOWLUX_CACHE_DIR")
    os.environ["LOWLUX_CACHE_DIR"] = str(tmp_path_factory.mktemp("lowlux-cache"))
    yield
    if old is None:
        os.environ.pop("LOWLUX_CACHE_DIR", None)
    else:
        os.environ["LOWLUX_CACHE_DIR"] = old


SLOW = {
    # A module name marks all its tests; "module::test" one test, with all its parameters.
    # Chosen by measuring (--durations, on the project's 2-core machine, darktable tests excluded):
    # over about 2 s, or a whole process or worker started for one test. Measure again before adding.
    "test_darktable.py": "a real darktable under Xvfb",
    "test_bench.py::test_bench_writes_a_row_per_configuration_with_the_reference_first": "17-32 s, a child per row",
    "test_bench.py::test_a_configuration_that_fails_costs_its_row_only_and_the_exit_status": "5 s, a child per row",
    "test_cli.py::test_darkened_real_raws_are_restored_to_about_their_exposure": "18 s",
    "test_cli.py::test_console_script_runs": "1.8 s, the installed entry point in its own process",
    "test_load.py::test_four_clients_with_bad_files_over_several_rounds": "4.1 s",
    "test_client.py::test_a_killed_worker_leaves_no_partial_tiff_and_the_next_call_restarts_it": "3.5 s",
    "test_client.py::test_sigterm_finishes_the_file_on_the_net_and_cancels_the_rest": "2.6 s",
    "test_client.py::test_concurrent_clients_start_exactly_one_worker": "2.1 s",
    "test_server.py::test_unauthenticated_peers_are_refused": "2.2 s",
    "test_backends.py::test_a_damaged_cache_file_is_exported_again": "2.2 s",
    "test_backends.py::test_torch_compile_gives_the_eager_output_and_says_so": "25 s, torch.compile on the CPU",
    "test_train_loop.py::test_twenty_steps_lower_the_loss_on_a_fixed_batch": "2.1 s",
    "test_train_loop.py::test_the_compiled_loss_is_the_same_loss_in_value_and_gradient":
        "5-40 s, torch.compile on the CPU (its cache warm or cold)",
}
"""Tests marked ``slow``, with what they cost: ``pytest -m "not slow"`` is the quick loop. Kept
here, in one table, rather than as marks spread over the test files."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        if module in SLOW or f"{module}::{getattr(item, 'originalname', item.name)}" in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def engine_factory():
    """``engine_factory(**EngineConfig fields)`` -> an engine shared by the module's tests that ask for
    the same configuration, built once and closed after the module. Only for tests that use an
    engine as it is: a test of building one, or one that patches or closes it, builds its own."""
    from lowlux.engine import Engine, EngineConfig

    engines: dict = {}

    def get(**fields) -> Engine:
        config = EngineConfig(**fields)
        if config not in engines:
            engines[config] = Engine(config)
        return engines[config]

    yield get
    for engine in engines.values():
        engine.close()


@pytest.fixture(scope="session")
def authors_weights() -> Path:
    return need(AUTHORS_WEIGHTS, "the authors' reference checkpoint")


@pytest.fixture(scope="session")
def vectors() -> Path:
    return need(VECTORS, "the authors' reference vectors")


@pytest.fixture(scope="session")
def real_raws() -> list[Path]:
    return sorted(need(REAL_RAWS, "real camera raws").glob("*.dng"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Randomly initialised weights: right architecture, no quality, for plumbing tests."""
    import torch

    from lowlux.model import LowLightNet, msra_init
    from lowlux.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_weights(msra_init(LowLightNet()), path, {"note": "random test weights"})


@pytest.fixture(scope="session")
def linear_weights(tmp_path_factory) -> Path:
    """Random weights of lowlux's linear net (output_space=linear-camera-wb): the DNG format needs them."""
    import torch

    from lowlux.model import LowLightNet, msra_init
    from lowlux.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("linear") / "linear.safetensors"
    return save_weights(msra_init(LowLightNet("linear-camera-wb")), path)


def dark_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth dark scene with a bright corner, as normalised [0, 1] values."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    scene = 0.004 + 0.003 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + rng.normal(0, 0.0005, (height, width))
    scene[: height // 4, : width // 4] = 0.05
    return np.clip(scene, 0, 1)


@pytest.fixture
def make_dng(tmp_path):
    """Write a synthetic DNG: make_dng('a.dng', pattern='GRBG', height=.., width=.., ...) -> Path."""
    from lowlux.dng import write_dng

    def make(name: str = "scene.dng", *, height: int = 96, width: int = 128, pattern: str = "RGGB",
             black: float | list[float] = 512, white: int = 16383, seed: int = 0, **kwargs) -> Path:
        levels = np.asarray(black, dtype=np.float64)
        scene = dark_scene(height, width, seed)
        if levels.size == 4:
            offsets = np.tile(levels.reshape(2, 2), (height // 2 + 1, width // 2 + 1))[:height, :width]
        else:
            offsets = float(levels)
        cfa = np.round(offsets + scene * (white - offsets)).astype(np.uint16)
        return write_dng(tmp_path / name, cfa, pattern=pattern, black=black, white=white, **kwargs)

    return make


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
