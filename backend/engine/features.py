"""UNet decoder features through forward hooks (DIFT, Tang et al. 2023; DragonDiffusion; Cora).

The official repos subclass `UNet2DConditionModel.forward` to return intermediate block outputs; a forward
hook on `unet.up_blocks[i]` gives the same tensor (the block output, after its upsampler) on the stock model
and cannot drift from diffusers' forward. Hooks are removed in `finally`, so an exception mid-forward never
leaves a hook behind.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch

logger = logging.getLogger(__name__)


class StopForward(Exception):
    """Raised by a truncating `FeatureTap` after its last block: the rest of the UNet is not needed."""


class FeatureTap:
    """`with FeatureTap(unet, blocks=(1, 2)) as tap: unet(...)` then `tap.features[1]`.

    `detach=False` keeps the graph (DragonDiffusion's energies differentiate through the features).
    `batch` keeps only some batch items (e.g. the conditional half). `truncate=True` stops the forward after
    the last requested block by raising `StopForward`, which the tap swallows on exit — so the UNet call must
    be the last statement in the `with` block, or use `tap.run(...)`.
    """

    def __init__(
        self,
        unet: Any,
        blocks: Sequence[int] = (1,),
        *,
        detach: bool = True,
        batch: slice | Sequence[int] | None = None,
        truncate: bool = False,
    ) -> None:
        if not blocks:
            raise ValueError("FeatureTap needs at least one up block index")
        count = len(unet.up_blocks)
        if any(not 0 <= i < count for i in blocks):
            raise ValueError(f"up block indices must be in 0..{count - 1}, got {tuple(blocks)}")
        self.unet = unet
        self.blocks = tuple(blocks)
        self.detach = detach
        self.batch = batch
        self.truncate = truncate
        self.features: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> FeatureTap:
        self.features.clear()
        try:
            for index in self.blocks:
                hook = self._hook(index, stop=self.truncate and index == max(self.blocks))
                self._handles.append(self.unet.up_blocks[index].register_forward_hook(hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._remove()
        return exc_type is not None and issubclass(exc_type, StopForward)

    def run(self, *args: Any, **kwargs: Any) -> dict[int, torch.Tensor]:
        """Hook, call the UNet with these arguments, unhook; returns the captured features."""
        with self:
            self.unet(*args, **kwargs)
        return self.features

    def _hook(self, index: int, stop: bool) -> Any:
        def capture(module: Any, inputs: Any, output: torch.Tensor) -> None:
            features = output if self.batch is None else output[self.batch]
            self.features[index] = features.detach() if self.detach else features
            if stop:
                raise StopForward

        return capture

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def dift_features(
    unet: Any,
    latents: torch.Tensor,
    t: int | torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    blocks: Sequence[int] = (1,),
    noise: torch.Tensor | None = None,
    scheduler: Any | None = None,
    *,
    ensemble: int = 1,
    generator: torch.Generator | None = None,
    requires_grad: bool = False,
) -> dict[int, torch.Tensor]:
    """DIFT features: noise clean latents to `t`, one UNet pass, decoder block outputs.

    With a `scheduler`, `latents` are clean (z0) and get `scheduler.add_noise` at `t` (DIFT: t=261, block 1 for
    semantic matching; t~0, block 2 for geometric). Without one, `latents` are taken as already noisy (z_t),
    as DragonDiffusion uses them. `ensemble` repeats each latent with independent noise and averages the
    features (DIFT uses 8). Returns {block: (B, C, h, w)}; no graph unless `requires_grad`.
    """
    batch = latents.shape[0]
    noisy = latents.repeat_interleave(ensemble, dim=0) if ensemble > 1 else latents
    # One timestep for all, or one per latent (repeated over its ensemble copies).
    timesteps = torch.as_tensor(t, device=noisy.device).reshape(-1)
    timesteps = timesteps.expand(noisy.shape[0]) if timesteps.numel() == 1 else timesteps.repeat_interleave(ensemble)
    if scheduler is not None:
        if noise is None:
            noise = torch.randn(noisy.shape, generator=generator, device=noisy.device, dtype=noisy.dtype)
        noisy = scheduler.add_noise(noisy, noise.to(noisy), timesteps)
    context = encoder_hidden_states
    if context.shape[0] != noisy.shape[0]:
        context = context.repeat_interleave(noisy.shape[0] // context.shape[0], dim=0)
    tap = FeatureTap(unet, blocks, detach=not requires_grad, truncate=True)
    with torch.set_grad_enabled(requires_grad):
        features = tap.run(noisy, timesteps, encoder_hidden_states=context)
    return {index: f.reshape(batch, ensemble, *f.shape[1:]).mean(dim=1) for index, f in features.items()}
