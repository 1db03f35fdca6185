"""A safety net around every job: whatever a method installs on the UNet, the UNet leaves the job unchanged.

Methods restore their own processors and hooks in `finally`; this guard makes that true even for a method
that forgets, so one failing job can never leave the shared, cached model half-modified for the next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")


@contextmanager
def pristine_unet(unet: torch.nn.Module) -> Iterator[None]:
    processors = dict(unet.attn_processors)
    hooks = {(name, kind): set(getattr(module, kind)) for name, module in unet.named_modules() for kind in _HOOK_DICTS}
    was_training = unet.training
    try:
        yield
    finally:
        if any(unet.attn_processors[name] is not proc for name, proc in processors.items()):
            log.warning("a method left attention processors installed; restoring the originals")
            unet.set_attn_processor(processors)
        for name, module in unet.named_modules():
            for kind in _HOOK_DICTS:
                registered = getattr(module, kind)
                for handle_id in set(registered) - hooks.get((name, kind), set()):
                    log.warning("a method left a hook on %s; removing it", name or "unet")
                    del registered[handle_id]
        unet.train(was_training)
        unet.requires_grad_(False)
