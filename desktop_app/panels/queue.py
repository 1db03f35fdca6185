"""The Queue list under the method panel: the running edit and the ones waiting, with Run next and Remove.

Queueing works as in Krita AI Diffusion: Run while an edit runs puts the new one in line; Run next
(Ctrl+Shift+Enter) puts it first in line; a waiting edit can be moved up or removed. Each request was taken from
the document when it was queued, so it edits the picture as it was then.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from backend.protocol import EditRequest
from desktop_app.jobs import JobBook

JOB_ROLE = Qt.ItemDataRole.UserRole


def describe(request: EditRequest, title: str) -> str:
    """'SDEdit — "a red circle" · seed 3': enough to tell queued edits apart."""
    prompt = request.target_prompt or request.source_prompt
    text = f'{title} — "{prompt}"' if prompt else title
    return f"{text} · seed {request.seed}"


class QueueView(QWidget):
    run_next_requested = Signal(str)  # job id
    remove_requested = Signal(str)  # job id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel("Queue")
        self.list = QListWidget()
        self.list.setToolTip("Edits waiting their turn; each edits the picture as it was when you queued it")
        self.list.setMaximumHeight(110)
        self.run_next_button = QPushButton("Run next", toolTip="Move the selected waiting edit to the front")
        self.remove_button = QPushButton("Remove", toolTip="Take the selected waiting edit out of the queue (Del)")
        self.run_next_button.clicked.connect(lambda: self._emit_selected(self.run_next_requested.emit))
        self.remove_button.clicked.connect(lambda: self._emit_selected(self.remove_requested.emit))
        delete = QShortcut(QKeySequence.StandardKey.Delete, self.list, context=Qt.ShortcutContext.WidgetShortcut)
        delete.activated.connect(lambda: self._emit_selected(self.remove_requested.emit))
        self.list.currentItemChanged.connect(lambda *_: self._update_buttons())
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.run_next_button)
        buttons.addWidget(self.remove_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        self.set_jobs(JobBook(), lambda method: method)

    def set_jobs(self, book: JobBook, title_of: Callable[[str], str]) -> None:
        """Show the running edit (not selectable) and the waiting ones, next first; keeps the selection."""
        selected = self.selected_job()
        self.list.clear()
        if book.running is not None:
            running = book.requests[book.running]
            item = QListWidgetItem(f"▶ {describe(running, title_of(running.method))}")
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.list.addItem(item)
        for position, job_id in enumerate(book.waiting, start=1):
            request = book.requests[job_id]
            item = QListWidgetItem(f"{position}. {describe(request, title_of(request.method))}")
            item.setData(JOB_ROLE, job_id)
            self.list.addItem(item)
            if job_id == selected:
                self.list.setCurrentItem(item)
        count = len(book.waiting)
        self.label.setText(f"Queue — {count} waiting" if count else "Queue")
        self.setVisible(count > 0)
        self._update_buttons()

    def waiting_texts(self) -> list[str]:
        return [self.list.item(row).text() for row in range(self.list.count()) if self.list.item(row).data(JOB_ROLE)]

    def selected_job(self) -> str | None:
        item = self.list.currentItem()
        return item.data(JOB_ROLE) if item is not None else None

    def select(self, job_id: str) -> None:
        for row in range(self.list.count()):
            if self.list.item(row).data(JOB_ROLE) == job_id:
                self.list.setCurrentRow(row)

    def _emit_selected(self, emit: Callable[[str], None]) -> None:
        job_id = self.selected_job()
        if job_id:
            emit(job_id)

    def _update_buttons(self) -> None:
        has = self.selected_job() is not None
        self.run_next_button.setEnabled(has)
        self.remove_button.setEnabled(has)


__all__ = ["QueueView", "describe"]
