"""The GUI's handle on the backend: a QThread that owns a `BackendClient` and turns its events into Qt signals.

Every client call happens on the link's own thread. The GUI thread only puts commands on a thread-safe queue
(`submit`, `cancel`, `request_methods`, `shutdown`) and receives events through queued signals, handled in one
dispatch function. Previews are throttled on the link's thread, before they cross over, so a fast sampler cannot
flood the GUI with repaints; the last preview of a job is always delivered, before the job's terminal event.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable
from typing import Any, Protocol

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from backend.client import BackendClient
from backend.protocol import EditRequest, Event, MethodInfo, Query

logger = logging.getLogger(__name__)

POLL_TIMEOUT = 0.05  # seconds one tick waits for an event; also the latency of commands
MAX_EVENTS_PER_TICK = 64  # then commands get their turn even while events keep streaming in
PREVIEW_INTERVAL = 1 / 15  # at most ~15 preview repaints a second
SHUTDOWN_WAIT_MS = 15_000


class ClientLike(Protocol):
    """What the link needs of a client: `BackendClient`, or a fake that replays a recorded stream."""

    def start(self) -> None: ...
    def stop(self, timeout: float = ...) -> int | None: ...
    def submit(self, job: EditRequest | Query) -> str: ...
    def cancel(self, job_id: str | None = None) -> bool: ...
    def poll(self, timeout: float = 0.0) -> Event | None: ...


ClientFactory = Callable[[], ClientLike]


class PreviewThrottle:
    """Lets one preview through per `interval`; holds back the newest of the others so none is lost at the end."""

    def __init__(self, interval: float = PREVIEW_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last_sent = -math.inf
        self._held: Event | None = None

    def offer(self, preview: Event) -> Event | None:
        """The preview to deliver now, or None if it is held back (replacing any older held one)."""
        if self._clock() - self._last_sent >= self.interval:
            self._held = None
            return self._send(preview)
        self._held = preview
        return None

    def due(self) -> Event | None:
        """The held preview once its turn has come."""
        if self._held is not None and self._clock() - self._last_sent >= self.interval:
            return self._send(self._held)
        return None

    def flush(self, job_id: str) -> Event | None:
        """The held preview of `job_id`, to deliver before that job's terminal event."""
        if self._held is not None and self._held.job_id == job_id:
            return self._send(self._held)
        return None

    def _send(self, preview: Event) -> Event:
        self._held = None
        self._last_sent = self._clock()
        return preview


def link_error(job_id: str, kind: str, message: str, hint: str = "") -> Event:
    return Event(kind="error", job_id=job_id, error_kind=kind, message=message, hint=hint)


class _Poller(QObject):
    """Lives on the link's thread: creates the client, runs queued commands, polls events."""

    delivered = Signal(object)  # Event
    methods = Signal(object)  # list[MethodInfo]

    def __init__(self, client_factory: ClientFactory, commands: queue.SimpleQueue) -> None:
        super().__init__()
        self.client: ClientLike | None = None
        self._factory = client_factory
        self._commands = commands
        self._queries: set[str] = set()
        self._throttle = PreviewThrottle()
        self._timer: QTimer | None = None

    @Slot()
    def begin(self) -> None:
        """Thread started: make and start the client, then tick until told to stop."""
        try:
            self.client = self._factory()
            self.client.start()
        except Exception as error:
            logger.exception("could not start the backend")
            self.delivered.emit(link_error("", "backend-unavailable", f"could not start the backend: {error}"))
        self._timer = QTimer(self)
        self._timer.setInterval(0)  # each tick blocks up to POLL_TIMEOUT in poll(); the event loop runs between
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    @Slot()
    def _tick(self) -> None:
        if not self._run_commands():
            return
        if self.client is None:
            time.sleep(POLL_TIMEOUT)
            return
        try:
            self._poll_events()
        except Exception as error:  # a broken poll must not kill the thread; the GUI hears about it
            logger.exception("polling the backend failed")
            self.delivered.emit(link_error("", "backend-link", f"lost contact with the backend: {error}"))
            time.sleep(POLL_TIMEOUT)

    def _poll_events(self) -> None:
        event = self.client.poll(POLL_TIMEOUT)
        handled = 0
        while event is not None:
            self._handle(event)
            handled += 1
            if handled == MAX_EVENTS_PER_TICK:
                break
            event = self.client.poll(0.0)
        if (held := self._throttle.due()) is not None:
            self.delivered.emit(held)

    def _run_commands(self) -> bool:
        """Run every queued command; False once told to stop."""
        while True:
            try:
                name, argument = self._commands.get_nowait()
            except queue.Empty:
                return True
            if name == "stop":
                self._stop()
                return False
            self._command(name, argument)

    def _command(self, name: str, argument: Any) -> None:
        job_id = getattr(argument, "job_id", None) or ""
        if self.client is None:
            self.delivered.emit(link_error(job_id, "backend-unavailable", "the backend is not running"))
            return
        try:
            if name == "cancel":
                self.client.cancel(argument)
                return
            if name == "query":
                self._queries.add(job_id)
            self.client.submit(argument)
        except Exception as error:
            logger.exception("backend command %s failed", name)
            self.delivered.emit(link_error(job_id, "bad-request", str(error)))

    def _handle(self, event: Event) -> None:
        if event.job_id in self._queries:
            self._answer(event)
            return
        if event.kind == "preview":
            event = self._throttle.offer(event)
            if event is None:
                return
        elif event.terminal and (held := self._throttle.flush(event.job_id)) is not None:
            self.delivered.emit(held)
        self.delivered.emit(event)

    def _answer(self, event: Event) -> None:
        """A query's reply: the method list goes out as `methods`, never as an edit result."""
        if not event.terminal:
            return
        self._queries.discard(event.job_id)
        if event.kind != "result":
            self.delivered.emit(event)
            return
        try:
            infos = [MethodInfo.from_dict(data) for data in event.metadata["methods"]]
        except (KeyError, TypeError, ValueError) as error:
            self.delivered.emit(link_error(event.job_id, "bad-reply", f"unreadable method list: {error!r}"))
            return
        self.methods.emit(infos)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.client is not None:
            try:
                self.client.stop()
            except Exception:
                logger.exception("stopping the backend failed")
        self.thread().quit()


class BackendLink(QObject):
    """Backend events as Qt signals (delivered on the GUI thread); commands callable from the GUI thread."""

    event = Signal(object)  # every delivered Event, before its kind's own signal
    started = Signal(str, str)  # job_id, message (the method id)
    progress = Signal(str, int, int, str)  # job_id, step, total (0: unknown), stage
    preview = Signal(str, int, object)  # job_id, step, RGB uint8 array
    log = Signal(str, str)  # job_id, message
    result = Signal(str, object, object)  # job_id, RGB uint8 array, metadata dict
    error = Signal(str, str, str, str)  # job_id ("" when not about one job), kind, message, hint
    cancelled = Signal(str)  # job_id
    methods_ready = Signal(object)  # list[MethodInfo]

    def __init__(
        self,
        client_factory: ClientFactory | None = None,
        *,
        settings: dict[str, Any] | None = None,
        parent: QObject | None = None,
    ) -> None:
        """`client_factory` is called on the link's thread; by default it makes a `BackendClient(settings)`."""
        super().__init__(parent)
        factory = client_factory or (lambda: BackendClient(settings))
        self.running_job: str | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = QThread(self)
        self._thread.setObjectName("atelier-backend-link")
        self._poller = _Poller(factory, self._commands)
        self._poller.moveToThread(self._thread)
        self._thread.started.connect(self._poller.begin)
        self._poller.delivered.connect(self._dispatch)
        self._poller.methods.connect(self._on_methods)
        self._stopped = False

    # --- commands (GUI thread) -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread, which starts the backend process (connect the signals first)."""
        if not self._thread.isRunning() and not self._stopped:
            self._thread.start()

    def submit(self, request: EditRequest) -> str:
        """Queue an edit; its events arrive as signals. Returns its job id."""
        self._put("submit", request)
        return request.job_id

    def cancel(self, job_id: str | None = None) -> None:
        """Cancel the running job (None) or the job `job_id`."""
        self._put("cancel", job_id)

    def request_methods(self) -> str:
        """Ask the backend for its methods; the answer comes as `methods_ready` (or `error`)."""
        query = Query(what="methods")
        self._put("query", query)
        return query.job_id

    def shutdown(self, timeout_ms: int = SHUTDOWN_WAIT_MS) -> None:
        """Stop the backend process and the thread, waiting for both. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        if not self._thread.isRunning():
            return
        self._commands.put(("stop", None))
        if not self._thread.wait(timeout_ms):
            logger.warning("the backend link did not stop within %d ms", timeout_ms)
            self._thread.quit()
            self._thread.wait(1000)

    @property
    def backend_pid(self) -> int | None:
        """The backend process id (None before it started or with a client that has no process)."""
        return getattr(self._poller.client, "pid", None)

    def _put(self, name: str, argument: Any) -> None:
        if self._stopped:
            logger.warning("backend link is shut down; %s ignored", name)
            return
        self._commands.put((name, argument))

    # --- events (GUI thread) -------------------------------------------------------------------------------

    @Slot(object)
    def _dispatch(self, event: Event) -> None:
        """The one place a backend event is turned into signals."""
        self._track(event)
        self.event.emit(event)
        kind, job_id = event.kind, event.job_id
        if kind == "started":
            self.started.emit(job_id, event.message)
        elif kind == "progress":
            self.progress.emit(job_id, event.step, event.total, event.stage)
        elif kind == "preview":
            self.preview.emit(job_id, event.step, event.image)
        elif kind == "log":
            self.log.emit(job_id, event.message)
        elif kind == "result":
            self.result.emit(job_id, event.image, event.metadata)
        elif kind == "error":
            self.error.emit(job_id, event.error_kind, event.message, event.hint)
        elif kind == "cancelled":
            self.cancelled.emit(job_id)

    def _track(self, event: Event) -> None:
        if event.kind == "started":
            self.running_job = event.job_id
        elif event.terminal and event.job_id == self.running_job:
            self.running_job = None

    @Slot(object)
    def _on_methods(self, infos: list[MethodInfo]) -> None:
        self.methods_ready.emit(infos)
