"""Entry point of the backend process, as handed to multiprocessing by `backend.client`.

The GUI process imports `backend.client` and must never import torch, not even transitively. import-linter (see
the contracts in pyproject.toml) follows *static* imports, so the client must not name `backend.worker`, whose
imports (torch, diffusers, the models and methods) belong to the child process only. This module imports the
worker dynamically, inside the child, when the process starts.
"""

from __future__ import annotations

import importlib
from typing import Any


def worker_entry(*args: Any) -> None:
    """Run `backend.worker.main(*args)` in the spawned process."""
    importlib.import_module("backend.worker").main(*args)
