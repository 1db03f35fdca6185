"""Files for the main window: open (pictures and .ora projects, by menu, recent list, drop or paste), save, export
PNG, autosave and crash recovery. The Qt glue around desktop_app.document's Qt-free readers and writers.

Every question to the user is one small method (`ask_open_path`, `ask_save_path`, `ask_save_changes`,
`choose_recovery`) so tests replace it. A file that cannot be read is reported (the window's non-modal error box
and the status bar) before anything else happens, so the open document is never touched by a bad file.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QMimeData, QObject, QTimer
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

from desktop_app.canvas.render import from_qimage
from desktop_app.document import Document, RasterLayer
from desktop_app.document.autosave import Autosaver, discard, recoverable, recovery_label
from desktop_app.document.export import export_png
from desktop_app.document.imagefile import ImageFileError, load_image
from desktop_app.document.ora import load_ora, save_ora
from desktop_app.history import AddLayer
from desktop_app.settings import autosave_dir, save_settings

if TYPE_CHECKING:
    from desktop_app.main_window import MainWindow

log = logging.getLogger(__name__)

PROJECT_SUFFIX = ".ora"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
_PICTURES = " ".join(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
OPEN_FILTER = f"Projects and pictures (*.ora {_PICTURES});;Atelier projects (*.ora);;Pictures ({_PICTURES});;All (*)"
IMAGE_FILTER = f"Pictures ({_PICTURES});;All files (*)"
PROJECT_FILTER = "OpenRaster project (*.ora)"
PNG_FILTER = "PNG image (*.png)"
ERROR_MS = 10_000


def local_files(mime: QMimeData | None) -> list[Path]:
    """The local files in a drop or on the clipboard (URLs of web pages are not ours to fetch)."""
    if mime is None or not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


def load_document(path: str | Path) -> Document:
    """A project (.ora) or a picture as a one-layer document; ImageFileError (ProjectFileError) says why not."""
    path = Path(path)
    if path.suffix.lower() == PROJECT_SUFFIX:
        return load_ora(path)
    return Document.from_image(load_image(path))


def result_layer(document: Document) -> RasterLayer | None:
    """The result whose recipe an export carries: the active layer if it is a result, else the topmost visible
    result (after accepting one the user usually paints a mask, which makes the mask active)."""
    active = document.active_layer
    if isinstance(active, RasterLayer) and active.recipe:
        return active
    results = [layer for layer in document.layers_of(RasterLayer) if layer.visible and layer.recipe]
    return results[-1] if results else None


class DocumentFiles(QObject):
    """The window's files: where the document is saved, the autosave session, and the file commands."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.settings = window.settings
        self.project_path: Path | None = None  # where Save writes; None until saved once (or opened as .ora)
        self.source_path: Path | None = None  # the file the document came from: Save suggests a name beside it
        self.autosaver: Autosaver | None = None
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.autosave)
        self.set_autosave_minutes(self.settings.autosave_minutes)

    def set_autosave_minutes(self, minutes: float) -> None:
        """Autosave every `minutes` from now on; 0 turns autosave off (and removes this session's autosave)."""
        self.timer.stop()
        if minutes <= 0:
            if self.autosaver is not None:
                self.autosaver.close()
                self.autosaver = None
            return
        if self.autosaver is None:
            # The timer is the clock, so the saver itself need not wait: it saves whenever something changed.
            self.autosaver = Autosaver(autosave_dir(), interval_s=0)
            self.autosaver.label = self.window.document_name
        self.timer.start(max(1, round(minutes * 60_000)))

    # --- opening ------------------------------------------------------------------------------------------

    def open(self, path: str | Path) -> bool:
        """Open a picture (as a new document) or a project; a bad file is reported and changes nothing."""
        path = Path(path)
        try:
            document = load_document(path)
        except (ImageFileError, ValueError) as error:  # ProjectFileError is an ImageFileError
            self._report("Could not open file", f"Could not open {path.name}: {error}", str(error))
            return False
        if not self.confirm_discard_changes():
            return False
        project = path if path.suffix.lower() == PROJECT_SUFFIX else None
        self._replace(document, path.name, project=project, source=path)
        self._remember(path)
        count = len(document.layers)
        self.window.show_status(f"Opened {path.name} ({document.width}×{document.height}, {count} layer(s))")
        return True

    def open_dropped(self, paths: list[Path]) -> bool:
        opened = self.open(paths[0])
        if opened and len(paths) > 1:
            self.window.show_status(f"Opened {paths[0].name}; Atelier opens one file at a time")
        return opened

    def open_recent(self, path: str | Path) -> bool:
        if not Path(path).exists():
            self.settings.recent_files = [item for item in self.settings.recent_files if item != str(path)]
            self._save_settings()
            self.window.show_status(f"{path} no longer exists; removed from Open Recent", ERROR_MS)
            return False
        return self.open(path)

    def choose_and_open(self) -> None:
        path = self.ask_open_path("Open", OPEN_FILTER)
        if path:
            self.open(path)

    def choose_new_from_image(self) -> None:
        path = self.ask_open_path("New from Image", IMAGE_FILTER)
        if path:
            self.open(path)

    def paste(self) -> bool:
        """Ctrl+V: a picture of the document's size becomes a new layer; any other size, a new document."""
        clipboard = QApplication.clipboard()
        files = local_files(clipboard.mimeData())
        if files:  # a file copied in a file manager
            return self.open(files[0])
        image = clipboard.image()
        if image.isNull():
            self.window.show_status("The clipboard holds no picture to paste")
            return False
        pixels, document = from_qimage(image), self.window.document
        if document is not None and (image.width(), image.height()) == document.size:
            active = document.active_layer
            index = document.index_of(active.id) + 1 if active is not None else None
            self.window.undo_stack.push(AddLayer(document, RasterLayer(name="Pasted", pixels=pixels), index))
            self.window.show_status("Pasted as a new layer (the picture has the document's size)")
            return True
        try:
            pasted = Document.from_image(pixels, name="Pasted")
        except ValueError as error:
            self._report("Could not paste", f"Could not paste: {error}", str(error))
            return False
        if not self.confirm_discard_changes():
            return False
        self._replace(pasted, "Pasted image")
        other = f", not the open document's {document.width}×{document.height}" if document is not None else ""
        self.window.show_status(f"Pasted as a new document: the picture is {image.width()}×{image.height()}{other}")
        return True

    # --- saving -------------------------------------------------------------------------------------------

    def save(self) -> bool:
        """Ctrl+S: write the project where it was saved; the first time, ask where."""
        if self.window.document is None:
            return False
        return self.save_as() if self.project_path is None else self._write(self.project_path)

    def save_as(self, path: str | Path | None = None) -> bool:
        if self.window.document is None:
            return False
        if path is None:
            path = self.ask_save_path("Save Project", str(self._suggested(PROJECT_SUFFIX)), PROJECT_FILTER)
            if not path:
                return False
        path = Path(path)
        if path.suffix.lower() != PROJECT_SUFFIX:  # 'photo.png' -> 'photo.ora'; 'my.project' -> 'my.project.ora'
            path = path.with_suffix(PROJECT_SUFFIX) if path.suffix.lower() in IMAGE_SUFFIXES else Path(f"{path}.ora")
        return self._write(path)

    def _write(self, path: Path) -> bool:
        document = self.window.document
        assert document is not None
        try:
            save_ora(document, path)  # atomic: a failed save leaves the previous file as it was
        except (ImageFileError, OSError, ValueError) as error:
            self._report("Could not save", f"Could not save {path.name}: {error}", str(error))
            return False
        self.project_path = path
        document.set_modified(False)
        self.window.undo_stack.setClean()
        self.window.set_document_name(path.name)
        self._remember(path)
        if self.autosaver is not None:
            self.autosaver.label = path.name
            self.autosaver.maybe_save(document)  # unmodified now: drops the autosave the project file supersedes
        self.window.show_status(f"Saved {path}")
        return True

    def export_png(self, path: str | Path | None = None) -> bool:
        """Ctrl+E: the visible picture as PNG, with the recipe of the result it shows (see result_layer)."""
        document = self.window.document
        if document is None:
            return False
        if path is None:
            path = self.ask_save_path("Export PNG", str(self._suggested(".png")), PNG_FILTER)
            if not path:
                return False
        layer = result_layer(document)
        recipe = layer.recipe if layer is not None else None
        metadata = next((e.metadata for e in reversed(document.history) if layer and e.layer_id == layer.id), None)
        try:
            written = export_png(path, document.composite(), recipe=recipe, metadata=metadata)
        except (OSError, ValueError) as error:
            self._report("Could not export", f"Could not export {Path(path).name}: {error}", str(error))
            return False
        extra = f" with the recipe of '{layer.name}'" if layer is not None else ""
        self.window.show_status(f"Exported {written}{extra}")
        return True

    def confirm_discard_changes(self) -> bool:
        """Before the document goes (quit, open another): True to go on; saves first if the user asks to."""
        document = self.window.document
        if document is None or not document.modified:
            return True
        answer = self.ask_save_changes(self.window.document_name or "Untitled")
        if answer == "save":
            return self.save()
        return answer == "discard"

    # --- autosave and recovery ----------------------------------------------------------------------------

    def autosave(self) -> Path | None:
        """The timer's tick: save the document to this session's autosave file if it changed."""
        if self.autosaver is None or self.window.document is None:
            return None
        path = self.autosaver.maybe_save(self.window.document)
        if self.autosaver.last_error is not None:
            self.window.show_status(f"Autosave failed: {self.autosaver.last_error}", ERROR_MS)
        return path

    def offer_recovery(self) -> bool:
        """At start-up: if an earlier session crashed with unsaved work, offer to open its autosave."""
        chosen = self.choose_recovery(paths) if (paths := recoverable(autosave_dir())) else None
        if chosen is None:
            return False
        try:
            document = load_ora(chosen)
        except ImageFileError as error:
            discard(chosen)  # unreadable: offering it again at every start would not help
            self._report("Could not recover", f"Could not recover the autosave: {error}", str(error))
            return False
        if not self.confirm_discard_changes():
            return False
        label = recovery_label(chosen) or "Untitled"
        self._replace(document, f"{label} (recovered)")
        document.set_modified(True)  # only in the autosave folder so far: the user must save it
        self.window.undo_stack.resetClean()  # and no undo state matches a saved file
        discard(chosen)  # this session's autosave takes over from here
        self.window.show_status(f"Recovered the autosave of {label}; save it to keep it", ERROR_MS)
        return True

    def document_replaced(self) -> None:
        """Called by the window whenever it shows another document."""
        self.project_path = self.source_path = None
        if self.autosaver is not None:
            self.autosaver.label = self.window.document_name

    def end_session(self) -> None:
        """A clean exit: nothing is left to recover, the brush and the window layout are remembered. Safe to call
        twice."""
        self.timer.stop()
        if self.autosaver is not None:
            self.autosaver.close()
            self.autosaver = None
        changed = self.window.remember_layout()
        state = self.window.tool_state
        if (self.settings.brush_size, self.settings.brush_hardness) != (state.size, state.hardness):
            self.settings.brush_size, self.settings.brush_hardness = state.size, state.hardness
            changed = True
        if changed:
            self._save_settings()

    # --- questions (replaced in tests) --------------------------------------------------------------------

    def ask_open_path(self, title: str, name_filter: str) -> str:
        return QFileDialog.getOpenFileName(self.window, title, str(self._folder()), name_filter)[0]

    def ask_save_path(self, title: str, suggested: str, name_filter: str) -> str:
        return QFileDialog.getSaveFileName(self.window, title, suggested, name_filter)[0]

    def ask_save_changes(self, name: str) -> str:
        """'save', 'discard' or 'cancel'."""
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self.window,
            "Save changes?",
            f"Save the changes to {name} before closing it?",
            buttons.Save | buttons.Discard | buttons.Cancel,
            buttons.Save,
        )
        return {buttons.Save: "save", buttons.Discard: "discard"}.get(answer, "cancel")

    def choose_recovery(self, paths: list[Path]) -> Path | None:
        """The autosave to open (the newest), or None; 'Discard' deletes it, 'Not now' keeps it for next time."""
        newest = paths[0]
        label = recovery_label(newest) or "an untitled document"
        when = dt.datetime.fromtimestamp(newest.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        box = QMessageBox(QMessageBox.Icon.Question, "Recover unsaved work?", "", parent=self.window)
        box.setText(f"Atelier did not close properly. An autosave of {label} from {when} was found.")
        if len(paths) > 1:
            box.setInformativeText(f"{len(paths) - 1} older autosave(s) will be offered next time.")
        open_button = box.addButton("Open It", QMessageBox.ButtonRole.AcceptRole)
        discard_button = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton("Not Now", QMessageBox.ButtonRole.RejectRole)
        box.exec()
        if box.clickedButton() is discard_button:
            discard(newest)
        return newest if box.clickedButton() is open_button else None

    # --- helpers ------------------------------------------------------------------------------------------

    def _replace(self, document: Document, name: str, project: Path | None = None, source: Path | None = None) -> None:
        self.window.set_document(document, name)
        self.project_path, self.source_path = project, source

    def _report(self, title: str, status: str, message: str) -> None:
        log.warning("%s", status)
        self.window.show_status(status, ERROR_MS)
        self.window.show_error(title, message)

    def _remember(self, path: Path) -> None:
        self.settings.add_recent(path.resolve())
        self._save_settings()

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings)
        except OSError as error:  # a read-only config folder must not stop the editor
            log.warning("could not save the settings: %s", error)

    def _folder(self) -> Path:
        base = self.project_path or self.source_path
        if base is not None:
            return base.parent
        recent = next((Path(item) for item in self.settings.recent_files), None)
        return recent.parent if recent is not None else Path.home()

    def _suggested(self, suffix: str) -> Path:
        base = self.project_path or self.source_path
        stem = base.stem if base is not None else Path(self.window.document_name or "untitled").stem
        return self._folder() / f"{stem}{suffix}"
