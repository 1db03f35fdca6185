"""A byte-bounded LRU cache, used as the worker's inversion cache.

Inversion is the slow part of most edits (50 UNet passes for DDIM, up to 500 forward+backward passes for
null-text inversion), and users re-run an edit with other parameters on the same image. The cache keeps the
most recently used inversions up to a byte budget; the key covers everything that changes an inversion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

from backend.digest import image_digest  # re-exported: the cache key's image part

logger = logging.getLogger(__name__)


def value_nbytes(value: Any) -> int:
    """Bytes held by tensors / arrays inside a value (recursing into lists, tuples, dicts and dataclasses).

    Anything else (numbers, strings, None) counts as 0: small next to latents and K/V banks.
    """
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, Mapping):
        return sum(value_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(value_nbytes(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(value_nbytes(getattr(value, field.name)) for field in dataclasses.fields(value))
    nbytes = getattr(value, "nbytes", None)  # containers that count their own bytes (KVBank)
    return nbytes if isinstance(nbytes, int) else 0


class LRUBytesCache:
    """Least-recently-used cache bounded by the bytes of its values (see `value_nbytes`).

    Not thread-safe: the worker runs one job at a time.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._nbytes = 0

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for `key` (now the most recently used), or `default`."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store `value`, evicting least-recently-used items; False if it alone exceeds `max_bytes`."""
        size = value_nbytes(value)
        if size > self.max_bytes:
            logger.info("not caching %s: %d bytes exceed the cache bound of %d", key, size, self.max_bytes)
            return False
        self.pop(key)
        self._items[key] = (value, size)
        self._nbytes += size
        while self._nbytes > self.max_bytes:
            evicted, (_, evicted_size) = self._items.popitem(last=False)
            self._nbytes -= evicted_size
            logger.debug("evicted %s (%d bytes)", evicted, evicted_size)
        return True

    def remeasure(self, key: Hashable) -> bool:
        """Count again the bytes of the value under `key` after it grew in place (e.g. a memory bank that keeps
        features computed from it), evicting as `put` does; False if it is not (or no longer) cached."""
        if key not in self._items:
            return False
        value, _ = self._items[key]
        return self.put(key, value)

    def pop(self, key: Hashable, default: Any = None) -> Any:
        if key not in self._items:
            return default
        value, size = self._items.pop(key)
        self._nbytes -= size
        return value

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._items)

    def __contains__(self, key: object) -> bool:
        # A membership test is not a use: it does not refresh recency.
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self._nbytes = 0


def inversion_key(image: np.ndarray, model_id: str, prompt: str | None, steps: int, kind: str, **extra: Any) -> str:
    """Cache key of one inversion: image pixels, model, prompt, step count, inversion kind and any extras
    that change the result (guidance scale, seed, resolution, ...)."""
    fields = {"image": image_digest(image), "model": model_id, "prompt": prompt, "steps": steps, "kind": kind}
    fields.update(extra)
    text = json.dumps(fields, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()
