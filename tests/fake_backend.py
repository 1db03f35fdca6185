"""A stand-in for BackendClient for the GUI tests: it answers the methods and models queries and replays a recorded
event stream for each edit, so the window and the BackendLink run for real without a backend process."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

from backend.protocol import EditRequest, Event, MethodInfo, Query

Script = Callable[[EditRequest], list[Event]]

MODELS = [
    {
        "id": "tiny",
        "title": "Tiny SD1 test model",
        "source": "builtin",
        "location": "sd1",
        "family": "sd1",
        "default_size": 64,
    },
    {
        "id": "sd15",
        "title": "Stable Diffusion 1.5",
        "source": "hub",
        "location": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "family": "sd1",
        "default_size": 512,
    },
]


def previews(shape: tuple[int, int] = (8, 8)) -> list[np.ndarray]:
    return [np.full((*shape, 3), 40 * step, np.uint8) for step in (1, 2, 3)]


def green(height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 1] = 200
    return image


def colour_region(image: np.ndarray, include: list) -> np.ndarray:
    """A stand-in segmenter: every pixel of exactly the clicked colour."""
    x, y = (int(round(v)) for v in include[0])
    return (np.all(image == image[y, x], axis=2) * 255).astype(np.uint8)


def recorded_stream(request: EditRequest, metadata: dict | None = None) -> list[Event]:
    """What the worker sends for a 3-step edit: started, progress + preview per step, then a green result of the
    request's size (the backend returns the input's size), with the metadata the worker adds."""
    job_id = request.job_id
    events = [Event(kind="started", job_id=job_id, message=request.method)]
    for step, image in enumerate(previews(), start=1):
        events.append(Event(kind="progress", job_id=job_id, step=step, total=3, stage="denoising"))
        events.append(Event(kind="preview", job_id=job_id, step=step, total=3, image=image))
    height, width = request.image.shape[:2]
    result_metadata = {"method": request.method, "method_title": "SDEdit", "seconds": 0.5, **(metadata or {})}
    events.append(Event(kind="result", job_id=job_id, image=green(height, width), metadata=result_metadata))
    return events


class FakeClient:
    """Answers the methods query with `methods`, the models query with `models`, and replays `script(request)` for
    each edit. `settings` are kept, as BackendClient's constructor takes them.

    Edits queue as in BackendClient: one runs at a time, the next one's stream starts once the running one's
    terminal event has been polled; `move_to_front` and `cancel` of a waiting edit work on that queue. With
    `hold_at_step`, an edit stops after that step's preview until it is cancelled (as a long job would)."""

    pid = 4242

    def __init__(
        self,
        methods: list[MethodInfo],
        script: Script = recorded_stream,
        hold_at_step: int | None = None,
        settings: dict | None = None,
        models: list[dict] | None = None,
    ):
        self.methods = methods
        self.settings = dict(settings or {})
        self.models = MODELS if models is None else models
        self.script = script
        self.hold_at_step = hold_at_step
        self.submitted: list[EditRequest | Query] = []
        self.cancelled: list[str | None] = []
        self.started = self.stopped = False
        self._events: queue.Queue[Event] = queue.Queue()
        self.threads: set[int] = set()
        self.waiting: list[EditRequest] = []
        self.running: str | None = None

    def start(self) -> None:
        self.started = True
        self.threads.add(threading.get_ident())

    def stop(self, timeout: float = 10.0) -> int:
        self.stopped = True
        return 0

    def submit(self, job: EditRequest | Query) -> str:
        self.threads.add(threading.get_ident())
        self.submitted.append(job)
        if isinstance(job, Query):
            if job.what == "models":
                answer = {"models": [dict(model) for model in self.models]}
            elif job.what == "segment":
                answer = {"mask": colour_region(job.args["image"], job.args["include"]), "segmenter": "fake"}
            else:
                answer = {"methods": [info.to_dict() for info in self.methods]}
            self._events.put(Event(kind="result", job_id=job.job_id, metadata=answer))
            return job.job_id
        self.waiting.append(job)
        self._dispatch()
        return job.job_id

    def _dispatch(self) -> None:
        if self.running is not None or not self.waiting:
            return
        job = self.waiting.pop(0)
        self.running = job.job_id
        for event in self.script(job):
            self._events.put(event)
            if self.hold_at_step is not None and event.kind == "preview" and event.step == self.hold_at_step:
                break

    def move_to_front(self, job_id: str) -> bool:
        job = next((job for job in self.waiting if job.job_id == job_id), None)
        if job is None:
            return False
        self.waiting.remove(job)
        self.waiting.insert(0, job)
        return True

    def cancel(self, job_id: str | None = None) -> bool:
        self.cancelled.append(job_id)
        waiting = next((job for job in self.waiting if job.job_id == job_id), None)
        if waiting is not None:
            self.waiting.remove(waiting)
            self._events.put(Event(kind="cancelled", job_id=job_id, message="removed from the queue"))
            return True
        self._events.put(Event(kind="cancelled", job_id=job_id or self.running or "", message="cancelled by the user"))
        return True

    def emit(self, event: Event) -> None:
        """Inject an event (an error, a log line) as if the worker had sent it."""
        self._events.put(event)

    def poll(self, timeout: float = 0.0) -> Event | None:
        try:
            event = self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
        except queue.Empty:
            return None
        if event.terminal and event.job_id == self.running:
            self.running = None
            self._dispatch()
        return event

    def edits(self) -> list[EditRequest]:
        return [job for job in self.submitted if isinstance(job, EditRequest)]


def open_window(qtbot, client: FakeClient, settings=None):
    """A shown MainWindow on a BackendLink to `client`, with the client's methods listed. Autosave is off unless
    `settings` turn it on, and the 'save changes?' question answers 'discard' (a modal box would hang the test)."""
    from desktop_app.backend_link import BackendLink
    from desktop_app.main_window import MainWindow
    from desktop_app.settings import Settings

    link = BackendLink(client_factory=lambda _settings: client)
    window = MainWindow(link, model="tiny", settings=settings if settings is not None else Settings(autosave_minutes=0))
    window.files.ask_save_changes = lambda _name: "discard"
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    link.start()
    link.request_methods()
    qtbot.waitUntil(lambda: window.method_panel.method_combo.count() == len(client.methods))
    return window
