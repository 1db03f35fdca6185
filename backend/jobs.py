"""Runs one job inside the worker process: validate, load the model, run the method, report.

`handle` is the only entry point: it emits `started` first and exactly one terminal event (result, error or
cancelled) last, and never raises. The model and the inversion cache live in `WorkerState` between jobs.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from backend.engine.cache import LRUBytesCache
from backend.engine.conditioning import check_prompt
from backend.engine.context import Engine
from backend.engine.guard import pristine_unet
from backend.engine.report import Reporter
from backend.errors import AtelierError, Cancelled, InputError, ModelUnavailable
from backend.methods.registry import all_methods, get_method
from backend.models import ModelBundle, ModelLoadError, ModelNotFound, list_models, load_model
from backend.protocol import EditRequest, Event, Query
from backend.segment import Segmenter, answer_segment_query, make_segmenter
from backend.validation import validate_request

log = logging.getLogger(__name__)

OOM_HINT = "Lower the resolution (max_side) or the steps, use fp16, or pick a smaller model preset."


class WorkerState:
    """What stays alive between jobs in the worker: the loaded model and the inversion cache."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})
        if self.settings.get("models_dir"):
            # The registry looks names up in ATELIER_MODELS_DIR; the GUI's preference reaches it through here.
            os.environ["ATELIER_MODELS_DIR"] = str(self.settings["models_dir"])
        self.bundle: ModelBundle | None = None
        megabytes = float(self.settings.get("inversion_cache_mb", 512))
        self.inversion_cache = LRUBytesCache(int(megabytes * 2**20))
        self._segmenter: Segmenter | None = None

    def segmenter(self) -> Segmenter:
        """The click-to-segment model, made on first use and kept (SAM's embeddings cache lives in it)."""
        if self._segmenter is None:
            self._segmenter = make_segmenter(self.settings)
        return self._segmenter

    def model(self, model_id: str, report: Reporter) -> ModelBundle:
        """The loaded model if it is `model_id`, else load it (dropping the previous one first)."""
        if self.bundle is not None and self.bundle.model_id == model_id:
            return self.bundle
        self.release_model()
        report.progress(0, 0, "loading model")
        started = time.perf_counter()
        try:
            self.bundle = load_model(
                model_id,
                device=self.settings.get("device", "auto"),
                dtype=self.settings.get("dtype", "auto"),
                progress=lambda stage, done, total: report.progress(done, total, stage),
            )
        except ModelNotFound as error:
            raise ModelUnavailable(
                str(error), hint="Choose a model from the list or point to a model folder."
            ) from None
        except ModelLoadError as error:
            raise ModelUnavailable(str(error)) from None
        report.log(f"loaded {model_id} ({self.bundle.family}) in {time.perf_counter() - started:.1f} s")
        return self.bundle

    def release_model(self) -> None:
        self.bundle = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def handle(job: EditRequest | Query, state: WorkerState, emit: Callable[[Event], None], cancel: Any) -> None:
    """Run `job`, emitting `started` first and exactly one terminal event last. Never raises.

    A Query (list methods/models, ping, segment) is answered with a single `result` or `error` event."""
    if isinstance(job, Query):
        _answer(job, state, emit)
        return
    emit(Event(kind="started", job_id=job.job_id, message=job.method))
    report = Reporter(job.job_id, emit, cancel, previews=bool(state.settings.get("previews", True)))
    try:
        emit(_run(job, state, report))
    except Cancelled as stop:
        emit(Event(kind="cancelled", job_id=job.job_id, step=stop.step, message="cancelled by the user"))
    except AtelierError as error:
        emit(_error(job, error.kind, str(error), error.hint))
    except torch.cuda.OutOfMemoryError:
        state.release_model()
        emit(_error(job, "out-of-memory", "the GPU ran out of memory", OOM_HINT))
    except Exception as error:  # a bug in a method must not take the worker down; the log has the trace
        log.exception("job %s (%s) failed", job.job_id, job.method)
        emit(_error(job, "method-failed", f"{job.method} failed: {type(error).__name__}: {error}", "See the log file."))


def _run(job: EditRequest, state: WorkerState, report: Reporter) -> Event:
    started = time.perf_counter()
    method = get_method(job.method)
    request = validate_request(job, method.info)
    bundle = state.model(request.model, report)
    if bundle.family not in method.info.families:
        raise InputError(
            f"{method.info.title} does not support {bundle.family} models (it supports "
            f"{', '.join(method.info.families)})"
        )
    for field_name in ("source_prompt", "target_prompt", "negative_prompt"):
        check_prompt(bundle, getattr(request, field_name), field_name.replace("_", " "))
    for index, item in enumerate(request.object_prompts):
        check_prompt(bundle, item.prompt, f"object {index + 1}'s prompt")
    report.check_cancel()
    engine = Engine(bundle, report, state.inversion_cache)
    with pristine_unet(bundle.unet):
        result = method.run(engine, request, report)
    metadata = {
        **result.metadata,
        "method": method.info.id,
        "method_title": method.info.title,
        "model": bundle.model_id,
        "family": bundle.family,
        "device": str(bundle.device),
        "dtype": str(bundle.dtype).replace("torch.", ""),
        "seconds": round(time.perf_counter() - started, 3),
        "recipe": dataclasses.replace(request, image=None).to_dict() | {"params": request.params},
    }
    return Event(kind="result", job_id=job.job_id, image=result.image, metadata=metadata)


def _error(job: EditRequest, kind: str, message: str, hint: str = "") -> Event:
    log.info("job %s: %s: %s", job.job_id, kind, message)
    return Event(kind="error", job_id=job.job_id, error_kind=kind, message=message, hint=hint)


def _answer(query: Query, state: WorkerState, emit: Callable[[Event], None]) -> None:
    if query.what == "segment":
        emit(answer_segment_query(query, state.segmenter, out_of_memory=(torch.cuda.OutOfMemoryError,)))
        return
    if query.what == "methods":
        data: dict[str, Any] = {"methods": [m.info.to_dict() for m in all_methods()]}
    elif query.what == "models":
        data = {"models": [dataclasses.asdict(spec) for spec in list_models()]}
    elif query.what == "ping":
        data = {"pid": os.getpid()}
    else:
        emit(Event(kind="error", job_id=query.job_id, error_kind="bad-input", message=f"unknown query {query.what!r}"))
        return
    emit(Event(kind="result", job_id=query.job_id, metadata=data))
