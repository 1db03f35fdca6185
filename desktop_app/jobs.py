"""The edits a window has submitted and not yet seen end: which one runs, which wait, in what order (Qt-free).

The backend client keeps the real queue (backend/client.py); this is the window's picture of it, updated from the
same facts in the same order — submit, run next, remove, `started`, terminal event — so the Queue list, the Run /
Cancel state and "which job's previews go to staging" all read one place.
"""

from __future__ import annotations

from backend.protocol import EditRequest


class JobBook:
    def __init__(self) -> None:
        self.requests: dict[str, EditRequest] = {}
        self.waiting: list[str] = []  # next first, as the client will run them
        self.running: str | None = None

    def __len__(self) -> int:
        return len(self.requests)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.requests

    @property
    def current(self) -> str | None:
        """The job whose progress the window shows: the running one, else the next to run."""
        return self.running or (self.waiting[0] if self.waiting else None)

    def submitted(self, request: EditRequest, first: bool = False) -> None:
        self.requests[request.job_id] = request
        self.waiting.insert(0 if first else len(self.waiting), request.job_id)

    def move_to_front(self, job_id: str) -> bool:
        if job_id not in self.waiting:
            return False
        self.waiting.remove(job_id)
        self.waiting.insert(0, job_id)
        return True

    def started(self, job_id: str) -> bool:
        """The backend began `job_id`; False if it is not one of ours."""
        if job_id not in self.requests:
            return False
        if job_id in self.waiting:
            self.waiting.remove(job_id)
        self.running = job_id
        return True

    def ended(self, job_id: str) -> EditRequest | None:
        """`job_id` finished, failed, was cancelled or removed: its request, or None if it was not ours."""
        request = self.requests.pop(job_id, None)
        if job_id in self.waiting:
            self.waiting.remove(job_id)
        if self.running == job_id:
            self.running = None
        return request

    def clear(self) -> list[str]:
        """Forget every job (another document was opened); returns their ids, running first."""
        ids = [job_id for job_id in (self.running, *self.waiting) if job_id is not None]
        self.requests.clear()
        self.waiting.clear()
        self.running = None
        return ids


__all__ = ["JobBook"]
