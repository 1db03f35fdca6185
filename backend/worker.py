"""The backend process: takes jobs from a queue, one at a time, and puts their events on another queue.

Started by `backend.client.BackendClient` through `backend._spawn.worker_entry` (spawn context). One
`WorkerState` lives for the whole process so models and caches stay loaded between jobs. The loop survives any
Python exception a job raises; only the death of the process itself (segfault, OOM-kill, kill -9) ends it, and
the client notices that.

Module level stays torch-free: torch and the job machinery are imported inside `main`, in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import traceback
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

from backend.logs import setup_logging
from backend.protocol import EditRequest, Event, Query

logger = logging.getLogger(__name__)

Emit = Callable[[Event], None]


def main(job_queue: Any, event_queue: Any, cancel_event: Any, settings: dict[str, Any] | None = None) -> None:
    """Serve jobs from `job_queue` until it yields None."""
    settings = dict(settings or {})
    _ignore_sigint()
    setup_logging("backend")
    logger.info("backend process %d starting (settings %s)", os.getpid(), settings)
    _configure_torch(settings)
    from backend import jobs

    state = jobs.WorkerState(settings)
    while True:
        job = job_queue.get()
        if job is None:
            logger.info("backend process %d exiting", os.getpid())
            return
        run_job(jobs.handle, job, state, event_queue.put, cancel_event)


def _ignore_sigint() -> None:
    # Ctrl+C in a terminal reaches the whole process group; the client decides when the worker stops.
    with contextlib.suppress(ValueError, OSError):  # not the main thread, or no such signal here
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def thread_count(settings: dict[str, Any], cpus: int | None = None) -> int:
    """settings["threads"] when given; else all cores, keeping one for the GUI when there are more than four."""
    requested = settings.get("threads")
    if requested:
        return max(1, int(requested))
    cpus = cpus or _usable_cpus()
    return cpus - 1 if cpus > 4 else cpus


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / container CPU sets
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _configure_torch(settings: dict[str, Any]) -> None:
    import torch

    threads = thread_count(settings)
    torch.set_num_threads(threads)
    logger.info("torch %s, %d CPU thread(s), cuda available: %s", torch.__version__, threads, torch.cuda.is_available())


def run_job(handler: Callable[..., None], job: EditRequest | Query, state: Any, put: Emit, cancel: Any) -> None:
    """Run one job through `handler`, guaranteeing exactly one terminal event even when the handler misbehaves."""
    job_id = getattr(job, "job_id", "")
    emitter = _GuardedEmit(job_id, put)
    try:
        handler(job, state, emitter, cancel)
    except BaseException as exc:  # noqa: BLE001 - the last resort: the loop must outlive any job
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        logger.exception("job %s raised out of handle()", job_id)
        if not emitter.finished:
            emitter(_internal_error(job_id, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    if not emitter.finished:
        logger.error("job %s finished without a terminal event", job_id)
        emitter(_internal_error(job_id, "the job ended without reporting a result", ""))


def _internal_error(job_id: str, message: str, details: str) -> Event:
    return Event(
        kind="error",
        job_id=job_id,
        error_kind="internal",
        message=f"internal error: {message}",
        hint="This is a bug in Atelier; the log file has the details.",
        metadata={"traceback": details} if details else {},
    )


class _GuardedEmit:
    """Wraps `event_queue.put`: checks each event pickles (the queue's feeder thread would drop it silently) and
    keeps track of the terminal event, dropping anything a job emits after it."""

    def __init__(self, job_id: str, put: Emit) -> None:
        self.job_id = job_id
        self.put = put
        self.finished = False

    def __call__(self, event: Event) -> None:
        if self.finished:
            logger.warning("job %s emitted %s after its terminal event; dropped", self.job_id, event.kind)
            return
        try:
            ForkingPickler.dumps(event)
        except Exception as exc:  # noqa: BLE001 - any pickling failure
            logger.exception("job %s: %s event can't be sent", self.job_id, event.kind)
            if not event.terminal:
                return
            event = _internal_error(self.job_id, f"the {event.kind} event could not be sent: {exc}", "")
        self.finished = event.terminal
        self.put(event)
