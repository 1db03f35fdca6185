"""The GUI's and CLI's handle on the backend process.

`BackendClient` owns a worker process (multiprocessing, spawn context), a job queue, an event queue and a cancel
event. The queue of *waiting* jobs lives here, in the client (reorder, remove, run next, as Krita AI Diffusion
does); the worker only ever holds the one job it is running. Events come back through `poll`, which also drives
dispatch: when the running job's terminal event arrives, the next waiting job is sent.

Click-to-segment has a fast lane: with no SAM checkpoint configured, `submit` answers a segment query itself with
the offline segmenter (`backend.segment_core`; its scipy part loads in the background after `start`) instead of
queueing it behind an edit that may hold the worker for minutes; the answer is the next `poll`'s event, exactly as
the worker would have sent it. With SAM configured, segment queries go to the worker (SAM needs torch).

If the worker dies (segfault, OOM-kill, kill -9), `poll` reports `error(error_kind="backend-died")` for the job it
was running (job id "" when it was idle) and a fresh process is started when the next job is dispatched.

Torch-free by contract (import-linter): this module never imports backend.worker, backend.jobs, the engine, the
models or the methods; the worker is reached through `backend._spawn.worker_entry`, which imports it in the child.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from backend._spawn import worker_entry
from backend.protocol import EditRequest, Event, Query
from backend.segment_core import FallbackSegmenter, answer_segment_query, load_fallback, sam_checkpoint_setting

logger = logging.getLogger(__name__)

Job = EditRequest | Query
EventCallback = Callable[[Event], None]

# How often a blocked `poll` looks at whether the worker is still alive.
LIVENESS_INTERVAL = 0.2

DIED_HINT = "It has been restarted for the next job; your document is unaffected."


class BackendError(RuntimeError):
    """A query the client ran for itself (list_methods, ...) ended in an error event."""

    def __init__(self, event: Event) -> None:
        super().__init__(f"{event.error_kind or event.kind}: {event.message}")
        self.event = event


class BackendClient:
    """Runs jobs on a backend process, one at a time, and hands back their events."""

    def __init__(
        self, settings: dict[str, Any] | None = None, *, name: str = "atelier-backend", context: Any = None
    ) -> None:
        """`settings` go to the worker (device, dtype, models dir, previews, ...). `context` replaces the
        multiprocessing spawn context (tests pass a thread-based stand-in)."""
        self.settings: dict[str, Any] = dict(settings or {})
        self.name = name
        self.restarts = 0
        # Called (with the new restart count, under the client's lock, on the polling thread) when a dead worker
        # is replaced by a fresh one.
        self.on_restart: Callable[[int], None] | None = None
        self._context = context if context is not None else multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._process: Any = None
        self._jobs: Any = None
        self._events: Any = None
        self._cancel: Any = None
        self._started_once = False
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._local: deque[Event] = deque()
        # The fast lane's segmenter (made on the first segment query) and the lock that keeps its per-image cache
        # to one caller at a time; not self._lock, so a long segmentation never blocks `poll`.
        self._segmenter: FallbackSegmenter | None = None
        self._segmenting = threading.Lock()

    # --- process lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> BackendClient:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        process = self._process
        return process is not None and process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> str | None:
        """Job id of the job the worker is running, if any."""
        running = self._running
        return running.job_id if running is not None else None

    def start(self) -> None:
        """Start the worker now (it also starts on the first job); it loads torch, so it takes seconds to be ready.

        Without SAM, the segment fast lane's code loads meanwhile on a background thread: not on the caller's
        time (the app's start-up), nor on the first click's."""
        with self._lock:
            self._ensure_process()
        if not sam_checkpoint_setting(self.settings):
            threading.Thread(target=load_fallback, name="load-segmenter", daemon=True).start()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Cancel the running job, drop waiting ones (each gets `cancelled`), and end the process.

        Returns the process's exit code (0 for a clean exit; None if there was no process)."""
        with self._lock:
            for job in list(self._pending):
                self._drop_pending(job.job_id)
            if self._running is not None:
                self._cancel.set()
                self._local.append(Event(kind="cancelled", job_id=self._running.job_id))
                self._running = None
            process, jobs, events = self._process, self._jobs, self._events
            self._process = self._jobs = self._events = self._cancel = None
            self._started_once = False  # a start() after stop() is a fresh start, not a restart
        if process is not None:
            _shut_down(process, jobs, timeout)
        _close_queues(jobs, events)
        return process.exitcode if process is not None else None

    def _ensure_process(self) -> None:
        if self.alive:
            return
        if self._process is not None:
            self._discard_process()
        if self._started_once:
            self.restarts += 1
            logger.warning("restarting the backend process (restart #%d)", self.restarts)
            if self.on_restart is not None:
                self.on_restart(self.restarts)
        self._jobs = self._context.Queue()
        self._events = self._context.Queue()
        self._cancel = self._context.Event()
        self._process = self._context.Process(
            target=worker_entry,
            args=(self._jobs, self._events, self._cancel, self.settings),
            name=self.name,
            daemon=True,
        )
        self._process.start()
        self._started_once = True
        logger.info("backend process %d started", self._process.pid)

    def _discard_process(self) -> None:
        """Forget the process and its queues (after its death); a new set is made on the next dispatch."""
        _close_queues(self._jobs, self._events)
        self._process = self._jobs = self._events = self._cancel = None

    # --- the client-side queue -----------------------------------------------------------------------------

    def submit(self, job: Job) -> str:
        """Queue `job`; it is sent to the worker as soon as the worker is free. Returns its job id.

        A segment query without SAM configured is answered at once instead, in the calling thread (the fast lane:
        the module docstring); its event is the next `poll`'s."""
        answer_here = self._answers_here(job)
        with self._lock:
            if self._knows(job.job_id):
                raise ValueError(f"job {job.job_id!r} is already queued or running")
            if not answer_here:
                self._pending.append(job)
                self._dispatch_next()
                return job.job_id
        self._segment_here(job)
        return job.job_id

    def pending(self) -> list[str]:
        """Ids of the jobs waiting their turn, next first."""
        with self._lock:
            return [job.job_id for job in self._pending]

    def remove(self, job_id: str) -> bool:
        """Drop a waiting job; it gets a `cancelled` event. False if it isn't waiting (running or unknown)."""
        with self._lock:
            return self._drop_pending(job_id)

    def move_to_front(self, job_id: str) -> bool:
        """Run next: put a waiting job first in line. False if it isn't waiting."""
        with self._lock:
            job = self._find_pending(job_id)
            if job is None:
                return False
            self._pending.remove(job)
            self._pending.appendleft(job)
            return True

    def cancel(self, job_id: str | None = None) -> bool:
        """Cancel the running job (None or its id) or remove a waiting one. False if there was nothing to cancel."""
        with self._lock:
            if self._running is not None and job_id in (None, self._running.job_id):
                self._cancel.set()
                return True
            return job_id is not None and self._drop_pending(job_id)

    def clear_pending(self) -> list[str]:
        """Drop every waiting job (each gets `cancelled`); returns their ids."""
        with self._lock:
            ids = self.pending()
            for job_id in ids:
                self._drop_pending(job_id)
            return ids

    def _answers_here(self, job: Job) -> bool:
        """A segment query with no SAM checkpoint set: the worker would answer it with the fallback segmenter too
        (backend.segment.make_segmenter decides by the same setting)."""
        return isinstance(job, Query) and job.what == "segment" and not sam_checkpoint_setting(self.settings)

    def _segment_here(self, query: Query) -> None:
        """The fast lane: answer with the fallback segmenter, the event waiting for the next `poll`."""
        with self._segmenting:
            event = answer_segment_query(query, self._fallback_segmenter)
        logger.debug("answered segment query %s here: %s", query.job_id, event.kind)
        with self._lock:
            self._local.append(event)

    def _fallback_segmenter(self) -> FallbackSegmenter:
        """Made once and kept: its per-image cache makes every further click on an image cheaper."""
        if self._segmenter is None:
            self._segmenter = FallbackSegmenter()
        return self._segmenter

    def _knows(self, job_id: str) -> bool:
        return self._find_pending(job_id) is not None or self.running == job_id

    def _find_pending(self, job_id: str) -> Job | None:
        return next((job for job in self._pending if job.job_id == job_id), None)

    def _drop_pending(self, job_id: str) -> bool:
        job = self._find_pending(job_id)
        if job is None:
            return False
        self._pending.remove(job)
        self._local.append(Event(kind="cancelled", job_id=job_id, message="removed from the queue"))
        return True

    def _dispatch_next(self) -> None:
        """Send the next waiting job if the worker is idle (starting or restarting the process as needed)."""
        if self._running is not None or not self._pending:
            return
        job = self._pending.popleft()
        self._ensure_process()
        # Cleared here, before the job is on the queue, never in the worker: a cancel can't be lost that way.
        self._cancel.clear()
        self._running = job
        self._jobs.put(job)
        logger.debug("dispatched job %s", job.job_id)

    # --- events --------------------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> Event | None:
        """The next event, waiting up to `timeout` seconds; None if none came. Drives dispatch and notices a
        dead worker."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            event = self._next_event(min(LIVENESS_INTERVAL, max(0.0, deadline - time.monotonic())))
            if event is not None:
                return event
            if time.monotonic() >= deadline:
                return None

    def events(self, timeout: float = 0.1) -> Iterator[Event]:
        """Yield events until none arrives within `timeout` seconds."""
        while (event := self.poll(timeout)) is not None:
            yield event

    def _next_event(self, wait: float) -> Event | None:
        with self._lock:
            if self._local:
                return self._local.popleft()
            self._dispatch_next()
            events = self._events
        if events is None:  # no process (nothing ever submitted, or stopped)
            time.sleep(wait)
            return None
        try:
            event = events.get(timeout=wait) if wait > 0 else events.get_nowait()
        except (queue.Empty, OSError, EOFError, ValueError):
            return self._check_alive()
        with self._lock:
            if events is not self._events:  # the process was discarded while we waited: a stale event
                return None
            self._on_event(event)
            return event

    def _on_event(self, event: Event) -> None:
        if event.terminal and self._running is not None and event.job_id == self._running.job_id:
            self._running = None
            self._dispatch_next()

    def _check_alive(self) -> Event | None:
        """After an empty wait: if the worker died, report it for the running job (if any) and forget it."""
        with self._lock:
            process = self._process
            if process is None or process.is_alive():
                return None
            code = process.exitcode
            leftovers = self._drain() if code is not None and code >= 0 else []
            running = self._running
            self._discard_process()
            self._running = None
            logger.error("the backend process %s stopped (exit code %s)", process.pid, code)
            for event in leftovers:
                if running is not None and event.terminal and event.job_id == running.job_id:
                    running = None
                self._local.append(event)
            # Reported even when idle, so a GUI can say so and start a new backend before the user's next run.
            self._local.append(_died_event(running, code))
            self._dispatch_next()
            return self._local.popleft() if self._local else None

    def _drain(self) -> list[Event]:
        """Events a process that exited normally left in the queue (its feeder flushed them before exit).

        Not done after a kill by signal: a message cut in half would block the read forever."""
        drained: list[Event] = []
        while True:
            try:
                drained.append(self._events.get_nowait())
            except (queue.Empty, OSError, EOFError, ValueError):
                return drained

    # --- blocking conveniences -----------------------------------------------------------------------------

    def run(self, job: Job, on_event: EventCallback | None = None, timeout: float | None = None) -> Event:
        """Submit `job` and block until its terminal event, which is returned; `on_event` sees each of its events.

        Events of other jobs that arrive meanwhile are kept for later `poll`s. On timeout the job is cancelled
        and TimeoutError raised."""
        job_id = self.submit(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        others: list[Event] = []
        try:
            while True:
                remaining = 0.5 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    self.cancel(job_id)
                    raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
                event = self.poll(min(0.5, remaining))
                if event is None:
                    continue
                if event.job_id != job_id:
                    others.append(event)
                    continue
                if on_event is not None:
                    on_event(event)
                if event.terminal:
                    return event
        finally:
            with self._lock:
                self._local.extendleft(reversed(others))

    def query(self, what: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Run a Query and return its result's metadata; BackendError if it fails."""
        event = self.run(Query(what=what, args=args), timeout=timeout)  # type: ignore[arg-type]
        if event.kind != "result":
            raise BackendError(event)
        return event.metadata

    def list_methods(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """MethodInfo dicts of every method the backend has (`MethodInfo.from_dict` turns them back)."""
        return self.query("methods", timeout=timeout)["methods"]

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return self.query("models", timeout=timeout)["models"]

    def ping(self, timeout: float | None = None) -> dict[str, Any]:
        return self.query("ping", timeout=timeout)

    def segment(
        self,
        image: Any,
        include: Sequence[tuple[float, float]] = (),
        exclude: Sequence[tuple[float, float]] = (),
        box: tuple[float, float, float, float] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Click-to-segment: {"mask": uint8 H x W (0/255), "segmenter": "sam" | "fallback", "seconds": float}.

        Points are (x, y) image pixels (include = click, exclude = Shift+click), box (x0, y0, x1, y1). Bad prompts
        raise BackendError with error_kind "bad-input"."""
        return self.query(
            "segment", timeout=timeout, image=image, include=list(include), exclude=list(exclude), box=box
        )


def _died_event(job: Job | None, code: int | None) -> Event:
    during = f" while running job {job.job_id}" if job is not None else " while idle"
    return Event(
        kind="error",
        job_id=job.job_id if job is not None else "",
        error_kind="backend-died",
        message=f"the backend process stopped unexpectedly (exit code {code}){during}",
        hint=DIED_HINT,
    )


def _close_queues(*queues: Any) -> None:
    for q in queues:
        if q is not None:
            q.cancel_join_thread()  # never block interpreter exit on a queue nobody reads
            q.close()


def _shut_down(process: Any, jobs: Any, timeout: float) -> None:
    """Ask the worker to exit (None on its queue), then terminate and finally kill it if it doesn't."""
    if process.is_alive():
        with contextlib.suppress(OSError, ValueError):
            jobs.put(None)
        process.join(timeout)
    if process.is_alive():
        logger.warning("backend process %d did not exit in %.1f s; terminating", process.pid, timeout)
        process.terminate()
        process.join(2.0)
    if process.is_alive():
        process.kill()
        process.join(2.0)
