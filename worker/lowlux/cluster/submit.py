"""A batch on a cluster: one Dask task per file, results as they come, every file accounted for.

The client submits one task per file (never merged or cached: ``pure=False`` and a key per job and
file), registers the engine on the workers first so a bad weights file fails the batch at once
rather than each file, and collects the tasks with ``as_completed``. A file's failure is reported
with the file named and the batch goes on; a worker lost mid-file makes Dask rerun the task
elsewhere (up to ``distributed.scheduler.allowed-failures`` times), and :mod:`.staging` makes the
rerun publish each output once. With ``upload`` the raws travel as bytes, at most ``window`` at a
time so neither the client nor the scheduler holds a whole archive in memory.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import write_bytes
from ..engine import EngineConfig
from ..errors import LowluxError, OutputError
from ..pipeline import EnhanceOptions, output_paths
from . import ClusterError, require_distributed, staging
from .tasks import FileResult, restore_shared, restore_upload

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
Outcome = list[Path] | LowluxError
"""The paths written for a file, or the error naming it and the reason."""


class FileFailed(LowluxError):
    """A file of a cluster batch that could not be restored; the message names the file."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        super().__init__(message)


def connect(address: str | None, *, security=None, timeout: float = DEFAULT_CONNECT_TIMEOUT):
    """A Dask client for the scheduler at ``address``, or a ClusterError naming the address."""
    distributed = require_distributed()
    if not address:
        raise ClusterError("no cluster address: pass --cluster ADDRESS or set $LOWLUX_CLUSTER")
    try:
        return distributed.Client(address, timeout=timeout, security=security, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} (waited {timeout:g} s: {exc})") from exc


def prepare(client, engine_config: EngineConfig, address: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
    """Wait for a worker and load the engine on every worker; a ClusterError if either fails."""
    from .engines import register_engine

    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as exc:
        raise ClusterError(f"no Dask worker is connected to the scheduler at {address} "
                           f"(waited {timeout:g} s)") from exc
    try:
        register_engine(client, engine_config)
    except Exception as exc:
        raise ClusterError(f"the workers of {address} cannot load the engine: {exc}") from exc


def read_for_upload(source: Path, options: EnhanceOptions) -> bytes:
    """The raw's bytes, after the checks a worker would make (no use shipping a doomed file)."""
    from ..raw import _check_path

    _check_path(source)
    if not options.overwrite:
        for out in output_paths(source, options):
            if out.exists():
                raise OutputError(out, staging.EXISTS)
    try:
        return source.read_bytes()
    except OSError as exc:
        raise FileFailed(source, f"{source}: cannot read ({exc.strerror or exc})") from exc


def submit_file(client, source: Path, index: int, job_id: str, options: EnhanceOptions,
                engine_config: EngineConfig, upload: bool):
    """One file's task (for uploads, reads the raw now: may raise a LowluxError naming the file)."""
    import dask

    key = f"lowlux-{job_id}-{index}"
    if not upload:
        return client.submit(restore_shared, str(source), index, job_id, options, engine_config,
                             key=key, pure=False, retries=0)
    data = read_for_upload(source, options)
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "2GiB"}):  # the raw, by design
        return client.submit(restore_upload, source.name, data, str(source), options, engine_config,
                             key=key, pure=False, retries=0)


def outcome_of(future, source: Path, options: EnhanceOptions, upload: bool) -> Outcome:
    """What a finished future means for its file; for uploads, writes the outputs here."""
    try:
        result: FileResult = future.result()
    except Exception as exc:
        return FileFailed(source, describe_lost(source, exc))
    if not result.ok:
        return FileFailed(source, result.error)
    if not upload:
        return [Path(p) for p in result.outputs]
    written = []
    try:
        for final, name, data in zip(output_paths(source, options), result.outputs, result.data or []):
            if final.name != name:
                raise FileFailed(source, f"{source}: the worker named its output {name}, expected {final.name}")
            written.append(write_bytes(final, data, overwrite=options.overwrite))
    except LowluxError as exc:
        return exc
    return written


def describe_lost(source: Path, exc: BaseException) -> str:
    """A future that failed rather than returning a result: the worker died, or it was cancelled."""
    name = exc.__class__.__name__
    if name == "KilledWorker":
        return f"{source}: the workers restoring it died repeatedly ({exc})"
    if "Cancelled" in name:
        return f"{source}: cancelled"
    return f"{source}: lost on the cluster ({name}: {exc})"


def enhance_on_cluster(files: Sequence[str | Path], options: EnhanceOptions, engine_config: EngineConfig,
                       address: str | None, upload: bool = False,
                       progress: Callable[[Path, Outcome], None] | None = None, *, client=None,
                       security=None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                       window: int | None = None) -> list[tuple[Path, Outcome]]:
    """Restore ``files`` on the cluster at ``address``; ``(source, outputs or error)`` in input order.

    Raises ClusterError only when the cluster as a whole cannot be used; a file's problem is its
    outcome. ``progress(source, outcome)`` is called as each file finishes. ``window`` bounds the
    files in flight (default: all of them with shared storage, twice the workers' threads with upload).
    """
    from distributed import as_completed

    sources = [Path(f) for f in files]
    own = client is None
    if own:
        client = connect(address, security=security, timeout=connect_timeout)
    job_id = staging.new_job_id()
    outcomes: dict[int, Outcome] = {}
    futures: dict = {}
    try:
        prepare(client, engine_config, address or str(client.scheduler.address), timeout=connect_timeout)
        if window is None:
            window = 2 * max(1, sum(client.nthreads().values())) if upload else max(1, len(sources))
        waiting = collections.deque(range(len(sources)))
        running = as_completed(loop=client.loop)

        def finish(index: int, outcome: Outcome) -> None:
            outcomes[index] = outcome
            if progress is not None:
                progress(sources[index], outcome)

        def fill() -> None:
            while waiting and len(futures) < window:
                index = waiting.popleft()
                try:
                    future = submit_file(client, sources[index], index, job_id, options, engine_config, upload)
                except LowluxError as exc:
                    finish(index, exc)
                    continue
                futures[future] = index
                running.add(future)

        fill()
        for future in running:
            index = futures.pop(future)
            outcome = outcome_of(future, sources[index], options, upload)
            future.release()  # a result in hand: never recomputed if its worker dies now
            finish(index, outcome)
            fill()
    finally:
        for future in futures:
            future.cancel()
        if not upload:
            _remove_job_dirs(client, sources, options, job_id)
        if own:
            client.close()
    return [(src, outcomes[i]) for i, src in enumerate(sources)]


def job_folders(sources: Sequence[Path], options: EnhanceOptions) -> list[str]:
    """The folders a job writes into (where its hidden staging folders are)."""
    return sorted({str(output_paths(Path(src), options)[0].parent) for src in sources})


def _remove_job_dirs(client, sources: list[Path], options: EnhanceOptions, job_id: str) -> None:
    """The job's hidden folders beside the outputs, removed by a worker (it sees the shared storage)."""
    folders = job_folders(sources, options)
    with contextlib.suppress(Exception):
        client.submit(staging.remove_job_dirs, folders, job_id, key=f"lowlux-{job_id}-cleanup",
                      pure=False).result(timeout=60)
    with contextlib.suppress(OSError):  # and here too, when the client sees the same folders
        staging.remove_job_dirs(folders, job_id)
