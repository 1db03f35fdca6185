"""BackendClient + worker process: real spawned processes running the real `backend.jobs.handle` on model "tiny".

Spawning a worker imports torch and diffusers (seconds), so one client is shared by the module; each test leaves
it idle. Synchronisation is by events only, never by sleeping.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from backend.client import BackendClient
from backend.logs import setup_logging
from backend.protocol import EditRequest, Event, MethodInfo, Query
from backend.worker import run_job, thread_count

REPO = Path(__file__).resolve().parent.parent
SIZE = 64


def sdedit(**overrides: object) -> EditRequest:
    fields: dict = dict(
        method="sdedit",
        image=np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8),
        target_prompt="a red circle",
        params={"steps": 4, "strength": 0.6},
        model="tiny",
        seed=1,
    )
    fields.update(overrides)
    return EditRequest(**fields)


def long_sdedit() -> EditRequest:
    return sdedit(params={"steps": 200, "strength": 1.0})


def collect(
    client: BackendClient,
    job_ids: Iterable[str],
    timeout: float = 120.0,
    on_event: Callable[[Event], None] | None = None,
) -> tuple[dict[str, list[Event]], list[Event]]:
    """Poll until every job in `job_ids` has its terminal event: (events by job id, terminal events in order)."""
    waiting = set(job_ids)
    by_job: dict[str, list[Event]] = defaultdict(list)
    terminals: list[Event] = []
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no terminal event within {timeout} s for {sorted(waiting)}; got {dict(by_job)}")
        event = client.poll(min(left, 1.0))
        if event is None:
            continue
        by_job[event.job_id].append(event)
        if on_event is not None:
            on_event(event)
        if event.terminal:
            terminals.append(event)
            waiting.discard(event.job_id)
    return by_job, terminals


def assert_image_result(event: Event) -> None:
    assert event.kind == "result", f"{event.kind}: {event.error_kind} {event.message}"
    assert event.image is not None
    assert event.image.shape == (SIZE, SIZE, 3)
    assert event.image.dtype == np.uint8


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def backend(log_dir: Path) -> Iterator[BackendClient]:
    saved = os.environ.get("ATELIER_LOG_DIR")
    os.environ["ATELIER_LOG_DIR"] = str(log_dir)  # inherited by the spawned worker
    client = BackendClient({"device": "cpu"})
    client.start()
    try:
        yield client
    finally:
        exit_code = client.stop(timeout=30)
        if saved is None:
            os.environ.pop("ATELIER_LOG_DIR", None)
        else:
            os.environ["ATELIER_LOG_DIR"] = saved
    assert exit_code == 0, f"the worker did not exit cleanly on stop() (exit code {exit_code})"


@pytest.fixture
def client(backend: BackendClient) -> Iterator[BackendClient]:
    """The shared client; whatever a test leaves behind (even a failing one) is cancelled and drained."""
    yield backend
    backend.clear_pending()
    backend.cancel()
    deadline = time.monotonic() + 60
    while backend.running is not None and time.monotonic() < deadline:
        backend.poll(0.5)
    for _ in backend.events(0.05):
        pass


# --- without a process -------------------------------------------------------------------------------------


def test_client_import_stays_torch_free() -> None:
    # scipy too: the segment fast lane loads it on the first click, not at the GUI's start-up.
    code = (
        "import sys, backend.client\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'backend.worker', 'backend.jobs', 'scipy') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_setup_logging_file_and_stderr_only_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    monkeypatch.setenv("ATELIER_LOG_LEVEL", "debug")
    try:
        path = setup_logging("unit", folder=tmp_path / "logs")
        assert path == tmp_path / "logs" / "unit.log"
        assert root.level == logging.DEBUG
        logging.getLogger("atelier.test").debug("hello log file")
        assert "hello log file" in path.read_text(encoding="utf-8")
        not_a_folder = tmp_path / "file"
        not_a_folder.write_text("x")
        assert setup_logging("unit", folder=not_a_folder) is None  # silently stderr-only
        assert len(root.handlers) == len(handlers) + 1  # the earlier handlers were replaced, not stacked
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def test_thread_count() -> None:
    assert thread_count({"threads": 3}, cpus=16) == 3
    assert thread_count({}, cpus=2) == 2
    assert thread_count({}, cpus=16) == 15


def test_run_job_turns_a_raising_or_silent_handler_into_one_internal_error() -> None:
    def raising(job, state, emit, cancel):
        emit(Event(kind="started", job_id=job.job_id))
        raise RuntimeError("boom")

    def silent(job, state, emit, cancel):
        emit(Event(kind="started", job_id=job.job_id))

    def chatty(job, state, emit, cancel):
        emit(Event(kind="result", job_id=job.job_id))
        emit(Event(kind="log", job_id=job.job_id, message="late"))
        raise RuntimeError("after the result")

    for handler, expected in ((raising, "boom"), (silent, "without reporting")):
        events: list[Event] = []
        run_job(handler, sdedit(), None, events.append, None)
        assert [e.kind for e in events] == ["started", "error"]
        assert events[-1].error_kind == "internal" and expected in events[-1].message
    events = []
    run_job(chatty, sdedit(), None, events.append, None)
    assert [e.kind for e in events] == ["result"]


# --- client logic against a thread-based stand-in for the process (fast; no torch) -------------------------


class _ThreadQueue(queue.Queue):
    def cancel_join_thread(self) -> None:
        pass

    def close(self) -> None:
        pass


class _FakeProcess:
    """Runs a scripted worker in a thread: each job reports `started`; a job with params {"hold": True} then waits
    for `release` or the cancel; each ends with `result` or `cancelled`."""

    count = 0

    def __init__(self, target: object, args: tuple, name: str, daemon: bool) -> None:
        self.jobs, self.events, self.cancel, _settings = args
        self.release = threading.Event()
        _FakeProcess.count += 1
        self.pid = 100_000 + _FakeProcess.count
        self.exitcode: int | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.events.put(Event(kind="started", job_id=job.job_id))
            while job.params.get("hold") and not (self.release.wait(0.01) or self.cancel.is_set()):
                pass
            self.release.clear()
            kind = "cancelled" if self.cancel.is_set() else "result"
            self.events.put(Event(kind=kind, job_id=job.job_id))
        self.exitcode = 0

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        self.exitcode = -signal.SIGTERM

    kill = terminate


class _FakeContext:
    Queue = _ThreadQueue
    Event = threading.Event
    Process = _FakeProcess


def next_event(client: BackendClient, timeout: float = 5.0) -> Event:
    event = client.poll(timeout)
    assert event is not None, "no event"
    return event


def test_client_logic_with_a_fake_process() -> None:
    client = BackendClient(context=_FakeContext())
    restarts: list[int] = []
    client.on_restart = restarts.append
    assert client.poll(0.01) is None and not client.alive and client.cancel() is False
    a, b, c = sdedit(params={"hold": True}), sdedit(), sdedit()
    for job in (a, b, c):
        client.submit(job)
    with pytest.raises(ValueError):
        client.submit(b)
    assert (client.running, client.pending()) == (a.job_id, [b.job_id, c.job_id])
    assert client.cancel(c.job_id)  # a waiting job is removed...
    assert (next_event(client).job_id, client.pending()) == (c.job_id, [b.job_id])  # ...with a `cancelled`
    assert (next_event(client).kind, client.running) == ("started", a.job_id)
    first = client._process
    first.release.set()
    kinds = [(event.job_id, event.kind) for event in client.events(0.3)]
    assert kinds == [(a.job_id, "result"), (b.job_id, "started"), (b.job_id, "result")]
    # The worker dies while idle: reported (no job id), a fresh one is started for the next job.
    first.exitcode = -signal.SIGKILL
    died = client.poll(0.3)
    assert (died.kind, died.error_kind, died.job_id) == ("error", "backend-died", "") and not client.alive
    assert client.poll(0.05) is None
    d = sdedit()
    client.submit(d)
    assert (client.restarts, restarts) == (1, [1]) and client.alive and client.pid != first.pid
    # run() hands its own job's events to on_event and keeps the others' for later polls.
    seen: list[str] = []
    assert client.run(sdedit(), on_event=lambda event: seen.append(event.kind), timeout=10).kind == "result"
    assert seen == ["started", "result"]
    assert [(event.job_id, event.kind) for event in client.events(0.1)] == [(d.job_id, "started"), (d.job_id, "result")]
    # stop() cancels the running job and every waiting one.
    f, g = sdedit(params={"hold": True}), sdedit()
    client.submit(f)
    client.submit(g)
    assert client.stop(timeout=5) == 0
    assert {event.job_id: event.kind for event in client.events(0.05)} == {f.job_id: "cancelled", g.job_id: "cancelled"}
    assert not client.alive and client.pending() == []


# --- with the worker process -------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_list_methods(client: BackendClient) -> None:
    methods = {MethodInfo.from_dict(data).id for data in client.list_methods(timeout=120)}
    assert {"sdedit", "reconstruct"} <= methods


@pytest.mark.timeout(180)
def test_worker_writes_its_log_file(client: BackendClient, log_dir: Path) -> None:
    assert client.ping(timeout=120)["pid"] == client.pid
    assert f"backend process {client.pid} starting" in (log_dir / "backend.log").read_text(encoding="utf-8")


@pytest.mark.timeout(180)
def test_unknown_method_is_an_error_and_the_worker_stays_up(client: BackendClient) -> None:
    error = client.run(sdedit(method="no-such-method"), timeout=120)
    assert error.kind == "error"
    assert "no-such-method" in error.message
    pid = client.pid
    assert_image_result(client.run(sdedit(), timeout=120))
    assert client.pid == pid and client.alive


@pytest.mark.timeout(180)
def test_bad_input_is_an_error_then_a_good_job_runs_on_the_same_process(client: BackendClient) -> None:
    pid = client.pid
    wrong_size_mask = np.full((SIZE // 2, SIZE // 2), 255, dtype=np.uint8)
    error = client.run(sdedit(masks={"edit": wrong_size_mask}), timeout=120)
    assert (error.kind, error.error_kind) == ("error", "bad-input"), error.message
    assert "mask" in error.message
    assert_image_result(client.run(sdedit(), timeout=120))
    assert client.pid == pid


@pytest.mark.timeout(180)
def test_cancel_stops_within_one_step(client: BackendClient) -> None:
    job = long_sdedit()
    client.submit(job)
    cancelled_after: list[int] = []

    def cancel_on_second_step(event: Event) -> None:
        if event.kind == "progress" and event.stage == "sdedit" and event.step >= 2 and not cancelled_after:
            cancelled_after.append(event.step)
            assert client.cancel(job.job_id)

    by_job, _ = collect(client, [job.job_id], on_event=cancel_on_second_step)
    events = by_job[job.job_id]
    terminal = events[-1]
    assert terminal.kind == "cancelled", f"{terminal.kind}: {terminal.message}"
    (k,) = cancelled_after
    # The worker may have finished the step it was on and at most one more before it saw the cancel.
    assert k <= terminal.step <= k + 2
    steps = [e.step for e in events if e.kind == "progress" and e.stage == "sdedit"]
    assert max(steps) <= terminal.step
    assert client.running is None and client.alive


def disc_image(size: int = 128) -> np.ndarray:
    """A red disc and a blue square on grey: something to click on."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 128, np.uint8)
    image[(xx - 40) ** 2 + (yy - 48) ** 2 < 20**2] = (200, 30, 30)
    image[70:110, 75:115] = (30, 40, 190)
    return image


@pytest.mark.timeout(300)
def test_a_segment_click_is_answered_while_a_long_edit_runs(client: BackendClient) -> None:
    """No SAM configured: the client answers the click itself (the fast lane) instead of queueing it behind the
    edit that holds the worker, with the mask and the event the worker would have sent."""
    from backend.jobs import WorkerState, handle

    edit = long_sdedit()
    client.submit(edit)
    edit_steps: list[int] = []

    def edit_event(event: Event) -> None:
        assert event.job_id == edit.job_id and not event.terminal, f"the edit ended first: {event.kind}"
        if event.kind == "progress" and event.stage == "sdedit":
            edit_steps.append(event.step)

    while not edit_steps:  # the edit is denoising: the worker is busy for many more steps
        edit_event(next_event(client, 120))
    image = disc_image()
    clicks = [
        Query(what="segment", args={"image": image, "include": [(40, 48)], "exclude": [], "box": None}),
        Query(what="segment", args={"image": image, "include": [(40, 48), (95, 90)], "exclude": [], "box": None}),
    ]
    answers, seconds = [], []
    for query in clicks:
        started = time.perf_counter()
        client.submit(query)
        while (event := next_event(client)).job_id != query.job_id:
            edit_event(event)
        seconds.append(time.perf_counter() - started)
        answers.append(event)
    step_at_answer = edit_steps[-1]
    while edit_steps[-1] <= step_at_answer:  # and the edit ran on after the answers: it was running all along
        edit_event(next_event(client, 60))
    assert client.cancel(edit.job_id)
    timings = ", ".join(f"{value * 1000:.0f} ms" for value in seconds)
    print(f"\nsegment clicks answered during an edit (at its step {step_at_answer}): {timings}")

    state = WorkerState({"device": "cpu"})
    for query, event in zip(clicks, answers, strict=True):
        worker_side: list[Event] = []
        handle(query, state, worker_side.append, threading.Event())
        (expected,) = worker_side
        assert (event.kind, event.job_id) == ("result", query.job_id), f"{event.error_kind}: {event.message}"
        assert event.metadata.keys() == expected.metadata.keys() == {"mask", "segmenter", "seconds"}
        assert event.metadata["segmenter"] == expected.metadata["segmenter"] == "fallback"
        np.testing.assert_array_equal(event.metadata["mask"], expected.metadata["mask"])
    disc = answers[0].metadata["mask"] > 0
    assert disc[48, 40] and not disc[90, 95] and answers[1].metadata["mask"][90, 95] == 255


@pytest.mark.timeout(180)
def test_client_side_queue_run_next_and_remove(client: BackendClient) -> None:
    a, b, c, d = (sdedit(seed=seed) for seed in range(4))
    for job in (a, b, c, d):
        client.submit(job)
    assert client.running == a.job_id
    assert client.pending() == [b.job_id, c.job_id, d.job_id]
    assert client.move_to_front(d.job_id)
    assert client.remove(b.job_id)
    assert client.pending() == [d.job_id, c.job_id]
    assert not client.remove(b.job_id) and not client.move_to_front(a.job_id)

    by_job, terminals = collect(client, [a.job_id, b.job_id, c.job_id, d.job_id])
    assert [e.kind for e in by_job[b.job_id]] == ["cancelled"]
    results = [e.job_id for e in terminals if e.kind == "result"]
    assert results == [a.job_id, d.job_id, c.job_id]
    for job in (a, c, d):
        assert_image_result(by_job[job.job_id][-1])
        assert by_job[job.job_id][0].kind == "started"
    started = [e.job_id for events in by_job.values() for e in events if e.kind == "started"]
    assert sorted(started) == sorted([a.job_id, c.job_id, d.job_id])


@pytest.mark.timeout(180)
def test_killed_worker_reports_backend_died_and_restarts(client: BackendClient) -> None:
    doomed, waiting = long_sdedit(), sdedit()
    client.submit(doomed)
    client.submit(waiting)
    old_pid, restarts = client.pid, client.restarts
    killed: list[int] = []

    def kill_on_first_step(event: Event) -> None:
        if event.job_id == doomed.job_id and event.kind == "progress" and event.stage == "sdedit" and not killed:
            killed.append(event.step)
            os.kill(old_pid, signal.SIGKILL)

    by_job, terminals = collect(client, [doomed.job_id, waiting.job_id], on_event=kill_on_first_step)
    died = by_job[doomed.job_id][-1]
    assert killed, "the long job never reported progress"
    assert (died.kind, died.error_kind) == ("error", "backend-died")
    assert doomed.job_id in died.message and "exit code" in died.message
    assert "restarted" in died.hint
    # The job that was waiting stays queued and runs on the restarted worker.
    assert [e.job_id for e in terminals] == [doomed.job_id, waiting.job_id]
    assert_image_result(by_job[waiting.job_id][-1])
    assert client.restarts == restarts + 1
    assert client.pid != old_pid and client.alive
    # And the next submitted job too.
    assert_image_result(client.run(sdedit(seed=5), timeout=120))
    assert client.restarts == restarts + 1


@pytest.mark.timeout(120)
def test_a_worker_that_dies_while_idle_is_reported_and_the_next_job_starts_a_new_one(client: BackendClient) -> None:
    client.ping(timeout=60)
    old_pid = client.pid
    os.kill(old_pid, signal.SIGKILL)
    died = client.poll(timeout=10)
    assert died is not None and (died.kind, died.error_kind, died.job_id) == ("error", "backend-died", "")
    assert "while idle" in died.message and "restarted" in died.hint
    assert client.ping(timeout=60) and client.pid != old_pid and client.alive
