"""The GUI's handle on the backend: a QThread that owns a `BackendClient` and turns its events into Qt signals.

Every client call happens on the link's own thread. The GUI thread only puts commands on a thread-safe queue
(`submit`, `cancel`, `run_next`, `request_methods`, `request_models`, `restart`, `shutdown`) and receives events
through queued signals, handled in one dispatch function. Previews are throttled on the link's thread, before they
cross over, so a fast sampler cannot flood the GUI with repaints; the last preview of a job is always delivered,
before the job's terminal event.
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

RESTARTED = "cancelled: the backend restarted with new settings"
POLL_TIMEOUT = 0.02  # seconds one tick waits for an event; also the most a command (a cancel) waits
MAX_EVENTS_PER_TICK = 64  # then commands get their turn even while events keep streaming in
PREVIEW_INTERVAL = 1 / 15  # at most ~15 preview repaints a second
SHUTDOWN_WAIT_MS = 15_000


class ClientLike(Protocol):
    """What the link needs of a client: `BackendClient`, or a fake that replays a recorded stream."""

    def start(self) -> None: ...
    def stop(self, timeout: float = ...) -> int | None: ...
    def submit(self, job: EditRequest | Query) -> str: ...
    def cancel(self, job_id: str | None = None) -> bool: ...
    def move_to_front(self, job_id: str) -> bool: ...
    def poll(self, timeout: float = 0.0) -> Event | None: ...


ClientFactory = Callable[[dict[str, Any]], ClientLike]  # called with the backend settings


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
    models = Signal(object)  # list[dict]: the backend's model list (id, title, source, location, ...)
    segments = Signal(str, object)  # query id, uint8 mask: the answer to a click-to-segment request

    def __init__(
        self,
        client_factory: ClientFactory,
        commands: queue.SimpleQueue,
        settings: dict[str, Any],
        preview_interval: float = PREVIEW_INTERVAL,
    ) -> None:
        super().__init__()
        self.client: ClientLike | None = None
        self._factory = client_factory
        self._commands = commands
        self.settings = dict(settings)  # the next client's; written by the GUI thread only before the thread starts
        self._queries: dict[str, Query] = {}  # asked and not answered yet
        self._edits: set[str] = set()  # submitted edits without their terminal event yet
        self._preview_interval = preview_interval
        self._throttle = PreviewThrottle(preview_interval)
        self._timer: QTimer | None = None

    @Slot()
    def begin(self) -> None:
        """Thread started: make and start the client, then tick until told to stop."""
        self._start_client()
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

    def _start_client(self) -> None:
        try:
            self.client = self._factory(dict(self.settings))
            self.client.start()
        except Exception as error:
            self.client = None
            logger.exception("could not start the backend")
            self.delivered.emit(link_error("", "backend-unavailable", f"could not start the backend: {error}"))

    def _restart(self, settings: dict[str, Any]) -> None:
        """Stop the client (which cancels its running and waiting jobs) and start a new one with `settings`.

        Unanswered queries are asked again of the new client; an edit the old client never ended gets `cancelled`,
        so the window never waits for a job that is gone."""
        if self.client is not None:
            try:
                self.client.stop()
                while (event := self.client.poll(0.0)) is not None:  # the cancellations stop() reports
                    if event.job_id in self._queries and event.kind != "result":
                        continue  # a question cut short by the stop: asked again below
                    self._handle(event)
            except Exception:
                logger.exception("stopping the backend for a restart failed")
        for job_id in sorted(self._edits):
            self.delivered.emit(Event(kind="cancelled", job_id=job_id, message=RESTARTED))
        self._edits.clear()
        self._throttle = PreviewThrottle(self._preview_interval)
        self.settings = dict(settings)
        logger.info("restarting the backend with %s", self.settings)
        self._start_client()
        questions, self._queries = list(self._queries.values()), {}
        for query in questions:
            self._command("query", query)

    def _command(self, name: str, argument: Any) -> None:
        if name == "restart":
            self._restart(argument)
            return
        job_id = getattr(argument, "job_id", None) or ""
        if self.client is None:
            self.delivered.emit(link_error(job_id, "backend-unavailable", "the backend is not running"))
            return
        try:
            if name == "cancel":
                self.client.cancel(argument)
                return
            if name == "run_next":  # a job that has started meanwhile stays where it is: nothing to do
                self.client.move_to_front(argument)
                return
            if name == "query":
                self._queries[job_id] = argument
            else:
                self._edits.add(job_id)
            self.client.submit(argument)
        except Exception as error:
            logger.exception("backend command %s failed", name)
            self.delivered.emit(link_error(job_id, "bad-request", str(error)))

    def _handle(self, event: Event) -> None:
        if event.job_id in self._queries:
            self._answer(event)
            return
        if event.terminal:
            self._edits.discard(event.job_id)
        if event.kind == "preview":
            event = self._throttle.offer(event)
            if event is None:
                return
        elif event.terminal and (held := self._throttle.flush(event.job_id)) is not None:
            self.delivered.emit(held)
        self.delivered.emit(event)

    def _answer(self, event: Event) -> None:
        """A query's reply: the method list goes out as `methods`, the model list as `models`, never as an edit
        result."""
        if not event.terminal:
            return
        query = self._queries.pop(event.job_id)
        if event.kind != "result":
            self.delivered.emit(event)
            return
        try:
            if query.what == "models":
                self.models.emit(_model_list(event.metadata["models"]))
            elif query.what == "segment":
                self.segments.emit(event.job_id, event.metadata["mask"])
            else:
                self.methods.emit([MethodInfo.from_dict(data) for data in event.metadata["methods"]])
        except (KeyError, TypeError, ValueError) as error:
            self.delivered.emit(link_error(event.job_id, "bad-reply", f"unreadable {query.what} list: {error!r}"))

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.client is not None:
            try:
                self.client.stop()
            except Exception:
                logger.exception("stopping the backend failed")
        self.thread().quit()


def _model_list(items: Any) -> list[dict[str, Any]]:
    """The `models` answer as a list of dicts, each with at least a text `id`; ValueError if it is not that."""
    models = [dict(item) for item in items]
    if not all(isinstance(model.get("id"), str) and model["id"] for model in models):
        raise ValueError("a model without an id")
    return models


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
    models_ready = Signal(object)  # list[dict] with id, title, source, location, family, default_size
    segment_ready = Signal(str, object)  # query id from request_segment, uint8 mask (0/255)

    def __init__(
        self,
        client_factory: ClientFactory | None = None,
        *,
        settings: dict[str, Any] | None = None,
        preview_interval: float = PREVIEW_INTERVAL,
        parent: QObject | None = None,
    ) -> None:
        """`client_factory(settings)` is called on the link's thread (at start and at each restart); by default it
        makes a `BackendClient(settings)`. At most one preview per `preview_interval` seconds reaches the GUI (0:
        every one, as tests that count them want)."""
        super().__init__(parent)
        self.settings: dict[str, Any] = dict(settings or {})  # what the backend runs (or will run) with
        self.running_job: str | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = QThread(self)
        self._thread.setObjectName("atelier-backend-link")
        self._poller = _Poller(client_factory or BackendClient, self._commands, self.settings, preview_interval)
        self._poller.moveToThread(self._thread)
        self._thread.started.connect(self._poller.begin)
        self._poller.delivered.connect(self._dispatch)
        self._poller.methods.connect(self._on_methods)
        self._poller.models.connect(self.models_ready)
        self._poller.segments.connect(self.segment_ready)
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
        """Cancel the running job (None) or the job `job_id` (a waiting one is taken out of the queue)."""
        self._put("cancel", job_id)

    def run_next(self, job_id: str) -> None:
        """Put the waiting job `job_id` first in line."""
        self._put("run_next", job_id)

    def request_methods(self) -> str:
        """Ask the backend for its methods; the answer comes as `methods_ready` (or `error`)."""
        query = Query(what="methods")
        self._put("query", query)
        return query.job_id

    def request_models(self) -> str:
        """Ask the backend for the models it knows; the answer comes as `models_ready` (or `error`)."""
        query = Query(what="models")
        self._put("query", query)
        return query.job_id

    def request_segment(self, image: Any, include: list, exclude: list, box: Any) -> str:
        """Ask the backend for the object under these clicks/box; the mask comes as `segment_ready`."""
        args = {"image": image, "include": list(include), "exclude": list(exclude), "box": box}
        query = Query(what="segment", args=args)
        self._put("query", query)
        return query.job_id

    def restart(self, settings: dict[str, Any]) -> None:
        """Stop the backend and start a new one with `settings`. Its running and waiting jobs end as `cancelled`
        (the window asks the user first); unanswered method/model requests are asked again of the new one."""
        self.settings = dict(settings)
        if self._thread.isRunning():
            self._put("restart", dict(settings))
        else:  # not started yet: start() will use the new settings
            self._poller.settings = dict(settings)

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
