"""The worker's overlapped pipeline (:class:`WorkerPipeline`): decode -> net -> encode, each stage on
its own thread(s). The stages themselves, one file to its TIFFs, are :mod:`lowlux.pipeline`'s.

Decoder threads (:func:`default_decode_threads`; LibRaw releases the GIL while it unpacks) decode the
next raws while the net runs on the current one; finished images go to a small pool of encoder threads
(TIFF writing and metadata copying release the GIL for most of their time). The hand-over queues are
bounded, so at most ``1 + queue_size + decode_threads + encode_slots`` files are in memory at once
however many are queued: memory stays flat on a 10 000-file batch. Large frames are bounded further by
their size: a raw is taken for decoding only while the frames in flight, counting those being decoded,
stay within ``max_pixels_in_flight`` (50 MP: 12 and 24 MP batches overlap; 45 and 60 MP frames go one
at a time, however many decoders there are). What the bound saves is measured in docs/benchmarks.md
(*The worker's frame bound*).

A file's result is recorded in the :class:`~lowlux.jobs.Scheduler` the moment it is written, so a
client polling ``status`` sees files finish one by one. A failing file is recorded as failed with
the reason and the pipeline goes on; nothing a file does can stop the worker.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import LowluxError
from .heap import release_freed_memory
from .jobs import MAX_PIXELS_IN_FLIGHT, FileTask, Scheduler

log = logging.getLogger(__name__)

_STOP = object()

DECODE_THREADS_MAX = 4


def default_decode_threads() -> int:
    """Raws decoded at once: one per four cores, at most :data:`DECODE_THREADS_MAX`.

    A CPU net uses every core, so a small machine decodes one raw at a time beside it; a GPU box
    needs several decoders to keep its net fed (one 12 MP decode takes longer than the GPU's net).
    """
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(DECODE_THREADS_MAX, cores // 4))


def describe_failure(task: FileTask, exc: BaseException) -> str:
    """A message naming the file as the client knows it, and the reason."""
    if isinstance(exc, LowluxError):
        text = str(exc)
    else:
        text = f"{task.source}: internal error ({exc.__class__.__name__}: {exc})"
    if task.source != task.display:  # uploads: speak of the client's file, not the worker's spool copy
        text = text.replace(task.source, task.display)
        if task.job.spool is not None:
            text = text.replace(str(task.job.spool) + "/", "")
    return text


def record_failure(scheduler: Scheduler, task: FileTask, exc: BaseException) -> None:
    """A file failed: its reason recorded for the client, logged (with the traceback if unexpected)."""
    message = describe_failure(task, exc)
    if isinstance(exc, LowluxError):
        log.info("failed: %s", message)
    else:
        log.error("unexpected failure: %s", message, exc_info=exc)
    scheduler.finish(task, "failed", error=message)


def remove_stale_temporaries(outputs: list[Path]) -> None:
    """Delete what a killed worker left half-written for these outputs.

    TIFFs are written as ``.<stem>.<pid>.<n>.tmp.tif`` next to the target (lowlux.tiff) and renamed
    when complete; a SIGKILL in between leaves that hidden file. Only files of processes that no longer
    exist are removed, so a concurrent writer is never disturbed.
    """
    for out in outputs:
        for tmp in Path(out).parent.glob(f".{glob.escape(Path(out).stem)}.*.tmp.tif"):
            pid = tmp.name[len(Path(out).stem) + 2:].split(".", 1)[0]
            if pid.isdigit() and not _process_exists(int(pid)):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    log.info("removed %s, left by a worker that was killed", tmp)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerPipeline:
    """Threads that drain a :class:`Scheduler`; start once, stop once."""

    def __init__(self, scheduler: Scheduler, engine: Callable[[], Any], *, encode_threads: int = 2,
                 decode_threads: int | None = None, queue_size: int = 1,
                 max_pixels_in_flight: int | None = MAX_PIXELS_IN_FLIGHT) -> None:
        """``engine`` returns the loaded engine, blocking while it loads (the worker answers meanwhile);
        ``decode_threads`` None is :func:`default_decode_threads`."""
        self.scheduler = scheduler
        self._engine = engine
        self.max_pixels_in_flight = max_pixels_in_flight
        self.decode_threads = max(1, decode_threads or default_decode_threads())
        self._decoders_left = self.decode_threads  # each sends _STOP to the net once it ends
        self.queue_size = queue_size
        self._decoded: queue.Queue = queue.Queue(maxsize=queue_size)
        self._encode_slots = threading.BoundedSemaphore(encode_threads)
        self._in_flight = 0  # encodes submitted and not yet finished
        self._count_lock = threading.Lock()
        self._encoders = ThreadPoolExecutor(encode_threads, thread_name_prefix="lowlux-encode")
        self._threads = [threading.Thread(target=self._decode_loop, name=f"lowlux-decode-{i}", daemon=True)
                         for i in range(self.decode_threads)]
        self._threads.append(threading.Thread(target=self._net_loop, name="lowlux-net", daemon=True))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    @property
    def lookahead(self) -> int:
        """Files taken from the scheduler while the net is busy with one: that one, ``queue_size`` decoded
        ones waiting for the net, and one more each decoder holds until there is room (when the frames in
        flight stay within ``max_pixels_in_flight``). A job submitted meanwhile starts after these."""
        return 1 + self.queue_size + self.decode_threads

    @property
    def drained(self) -> bool:
        """True once, after ``scheduler.stop()``, every thread has ended and every TIFF is written."""
        return not any(t.is_alive() for t in self._threads) and self._in_flight == 0

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the pipeline to drain after ``scheduler.stop()``; True when it has."""
        for t in self._threads:
            if t.ident is not None:  # never started: nothing to wait for
                t.join(timeout)
        if any(t.is_alive() for t in self._threads):
            return False
        self._encoders.shutdown(wait=True)
        return True

    # ---- decode ------------------------------------------------------------------------------------------

    def _decode_loop(self) -> None:
        from .pipeline import decode

        try:
            while True:
                task = self.scheduler.next_task(max_pixels_in_flight=self.max_pixels_in_flight)
                if task is None:
                    break
                try:
                    decoded = decode(Path(task.source), task.job.options, admit=lambda pixels, task=task:
                                     self.scheduler.admit_pixels(task, pixels, self.max_pixels_in_flight))
                except Exception as exc:  # any file may be broken in any way; the batch goes on
                    self._fail(task, exc)
                    continue
                self.scheduler.hold_pixels(task, decoded.mosaic.size)
                self._hand_over(task, decoded)
                del decoded  # not held here while the next file waits for room
        finally:
            self._decoded.put(_STOP)

    def _hand_over(self, task: FileTask, decoded: Any) -> None:
        while True:
            try:
                self._decoded.put((task, decoded), timeout=0.2)
                return
            except queue.Full:
                if self.scheduler.stopping:
                    self.scheduler.start_stage(task, "inferring")  # records the cancellation
                    return

    # ---- net ---------------------------------------------------------------------------------------------

    def _net_loop(self) -> None:
        while True:
            item = self._decoded.get()
            if item is _STOP:
                self._decoders_left -= 1
                if self._decoders_left == 0:
                    break
                continue
            self._infer(*item)
            del item  # a file's arrays must not outlive it here while the next one decodes
            release_freed_memory()

    def _infer(self, task: FileTask, decoded: Any) -> None:
        from .pipeline import infer

        if not self.scheduler.start_stage(task, "inferring"):
            return
        try:
            images = infer(self._engine(), decoded)
        except Exception as exc:
            self._fail(task, exc)
            return
        finally:
            decoded.mosaic = None  # the largest array; free it before waiting for an encoder
        self._encode_slots.acquire()
        with self._count_lock:
            self._in_flight += 1
        self._encoders.submit(self._encode, task, decoded, images)

    # ---- encode ------------------------------------------------------------------------------------------

    def _encode(self, task: FileTask, decoded: Any, images: list) -> None:
        from .pipeline import encode

        try:
            if not self.scheduler.start_stage(task, "encoding"):
                return
            remove_stale_temporaries(decoded.outputs)
            paths = encode(decoded, images, task.job.options)
        except Exception as exc:
            self._fail(task, exc)
        else:
            self.scheduler.finish(task, "done", outputs=[str(p) for p in paths])
            log.info("%s -> %s", task.display, ", ".join(p.name for p in paths))
        finally:
            del images, decoded
            release_freed_memory()  # this thread's heap: see lowlux.heap
            with self._count_lock:
                self._in_flight -= 1
            self._encode_slots.release()

    def _fail(self, task: FileTask, exc: BaseException) -> None:
        record_failure(self.scheduler, task, exc)
