"""Shared fixtures: tiny models built from configs (seeded, CPU), small images, an in-process job runner."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

# Two cores shared by torch's pool and everything else: one thread is faster and steadier for tiny models.
torch.set_num_threads(1)


@pytest.fixture
def own_folders(tmp_path, monkeypatch):
    """Data and settings folders of one test only: autosave recovery must not find another test's files."""
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path_factory, monkeypatch):
    """Never touch the real user's data, cache, log or settings folders."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("ATELIER_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("ATELIER_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("ATELIER_LOG_DIR", str(base / "logs"))
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(base / "config"))


@pytest.fixture(scope="session")
def tiny():
    from backend.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def toyworld_engine():
    """An Engine on Atelier's toy-world model (CPU), for behaviour tests judged by the world's ground truth."""
    import torch

    from backend.engine.cache import LRUBytesCache
    from backend.engine.context import Engine
    from backend.models import load_model

    torch.manual_seed(0)
    # As the app: inversions cached, so runs of one case with other settings (ablations) invert once.
    return Engine(load_model("toyworld", device="cpu"), inversion_cache=LRUBytesCache(2**30))


@pytest.fixture(scope="session")
def tiny_xl():
    from backend.models import load_model

    return load_model("tiny-xl", device="cpu")


@pytest.fixture(scope="module")
def unet():
    """The tiny sd1 UNet (SD-shaped: cross-attention in two down and two up blocks, 8x8 latents), fresh per module."""
    from backend.models.tiny import build_tiny

    return build_tiny("sd1").unet


@pytest.fixture
def engine(tiny):
    from backend.engine.context import Engine

    return Engine(tiny)


@pytest.fixture
def scene() -> np.ndarray:
    """A 64x64 picture: light background, a red square left, a blue disc right."""
    image = np.full((64, 64, 3), 225, np.uint8)
    image[20:44, 6:30] = (200, 30, 30)
    yy, xx = np.mgrid[:64, :64]
    image[(yy - 32) ** 2 + (xx - 46) ** 2 < 100] = (30, 60, 200)
    return image


@pytest.fixture
def run_job():
    """Run a job through backend.jobs.handle in this process; returns the list of events."""
    from backend.jobs import WorkerState, handle

    state = WorkerState({"device": "cpu"})

    def run(request, cancel=None):
        events = []
        handle(request, state, events.append, cancel or threading.Event())
        return events

    run.state = state
    return run
