"""`python -m backend train-toyworld`: train Atelier's embedded toy-world model and export it as a diffusers folder.

Stages (each resumable; finished stages are skipped on a re-run with the same work dir):
1. VAE  - AutoencoderKL on freshly rendered scenes: L1 + L2 + an edge (image-gradient) L1 term + a tiny KL.
          Then the latent scaling factor = 1 / std of the latents, as SD chose its 0.18215, stored in the VAE
          config; the final VAE is saved to <work>/vae.
1b. decoder - optional (--decoder-steps): the VAE's decoder fine-tuned on whole images with the encoder frozen
          (SD's ft-MSE recipe), so the latent space - hence the cache and a UNet already trained on it - stays
          valid while reconstructions sharpen; export and evaluate then use it (<work>/vae_decoder).
2. cache - a large fixed set of scenes encoded once to latents (<work>/latents_*.safetensors); a cache of
          another --scenes in the work dir is cut (fewer) or extended by the missing scenes only (more).
3. UNet - UNet2DConditionModel + CLIP text encoder trained jointly on the cached latents: AdamW, linear warm-up
          then cosine decay, EMA weights, min-SNR-gamma loss weighting (Hang et al. 2023), CFG dropout 0.1,
          bf16 autocast on CUDA, gradient clipping; plus TokenCompose's grounding loss (grounding.py): each
          object's words attend to that object's exact mask on the 16x16 and 8x8 cross-attention maps
          (--grounding-weight, --grounding-pixel-weight; 0 turns it off).
4. export - EMA weights, tokenizer and DDIM scheduler config via `save_diffusers_folder` (safetensors; fp16 when
          fp32 would exceed the 60 MB budget), so `load_model(folder)` loads it like any downloaded SD model.
5. evaluate - the issue's figures (judge accuracy on generations from held-in and held-out captions and on VAE
          reconstructions - the ceiling -, VAE / inversion PSNR, cross-attention IoU, CPU seconds per image; see
          evaluate.py), written to <output>/toyworld.json under "metrics".

Checkpoints (<work>/<stage>_checkpoint.pt, weights_only-loadable tensors) are written atomically every
`--checkpoint-every` steps and when the `--max-minutes` budget or `--stop-after` ends a run; re-running the same
command resumes. Every batch, noise draw and timestep is a pure function of (seed, step), so a resumed run
repeats exactly the trajectory of an uninterrupted one. Progress (loss, steps/s) goes to the log and to
<work>/log.jsonl.

Measured on the 2-core CPU of the development machine (torch 2.13, 2 threads, shared with other work, so
upper bounds), default config (VAE 5.3 M params, UNet 8.9 M, text encoder 1.9 M; fp16 export ~32 MB):
- UNet + text encoder training step (AdamW), batch 32, 16x16 latents (128 px): 1.6-1.8 s
- VAE training step (AdamW), batch 32, 128 px: 31-40 s
- sampling: one 128x128 image, 50 DDIM steps with CFG (UNet batch 2), text encoding and VAE decode included,
  through the app's engine: 3.3-4.1 s (aim: <= 10 s)
=> CPU training is impractical (hours for a blurry model, see shared/notes/toyworld-feasibility.md).

Measured on one lent H200 (2026-12-04, torch 2.11 + CUDA 13, bf16 autocast; where the shipped weights began), with
`--workers 14` (scene rendering in 14 processes, UNet batches built in 14 processes):
- VAE, batch 64 at 128 px: 16.5 steps/s; held-out PSNR 28.5 dB at step 1000, 33.0 dB at step 1750 (1 min 40 s),
  where --vae-target-psnr 33 ended the stage. Rendering its 16k scenes: 32 s.
- cache: 100k scenes rendered and encoded in 88 s.
- UNet + text encoder, batch 256, grounding loss on: 8.0-8.2 steps/s; loss 0.019 at 2104 steps (4.3 min), 0.017
  after 1294 more (2.7 min). (A batch costs ~0.3 s on one core, so 14 builders should keep ahead; whether the
  GPU or the loader bounds the 8 steps/s was not measured.)
- sampling on the GPU was not timed; on the development CPU the exported fp16 model (loaded as fp32) takes 1.0 s
  per 50-step 128 px image.
The two calls that made it (one call: smoke test on the tiny preset, then the run; a second call at once on the
still-warm machine continued the UNet for the rest of the 15-minute device budget):
    python -m backend train-toyworld --work-dir /tmp/tw --output-dir /tmp/tw-export --workers 14 \
        --vae-steps 30000 --vae-batch 64 --vae-lr 4e-4 --vae-target-psnr 33 --vae-minutes 2.5 --eval-every 250 \
        --vae-images 16000 --scenes 100000 --unet-steps 200000 --unet-minutes 4.3 --batch-size 256 --lr 3e-4 \
        --warmup 300 --ema-decay 0.999 --checkpoint-every 1000 --log-every 100 --stages vae,cache,unet,export
    (the same with --unet-minutes 2.7 --stages unet,export after clearing the checkpoint's "total", which is
    what made a finished stage go on, with a warm restart of the cosine schedule)
Per-stage time budgets (--vae-minutes, --unet-minutes) make each call end with a *finished* model (the learning
rate decayed, EMA weights exported) however fast the machine turns out to be. To go on from the shipped weights
in a later lent session (no checkpoint survives a lease), start from the export:
    python -m backend train-toyworld --init-from resources/models/toyworld --work-dir /tmp/tw --workers 14 \
        --scenes 100000 --unet-steps 200000 --unet-minutes 8 --batch-size 256 --lr 2e-4 --warmup 200 \
        --ema-decay 0.999 --stages vae,cache,unet,export --output-dir /tmp/tw-export
(~1.5 min to cache, then at the measured 8 steps/s ~3900 more UNet steps in 8 min), and copy the exported
folder to $OUT in pieces of at most 16 MiB (tar + split: files come back through the device tool only that small).

Then on the 2-core CPU, going on from that export, first for ~1 h:
    python -m backend train-toyworld --init-from resources/models/toyworld --work-dir toyworld-work/cpu-cont \
        --output-dir toyworld-work/cpu-cont-export --workers 2 --scenes 8000 --unet-steps 200000 \
        --unet-minutes 62 --batch-size 32 --lr 1e-4 --warmup 50 --ema-decay 0.999 --stages vae,cache,unet,export
  (cache of 8000 scenes with the full VAE: 6.5 min; UNet 1.27 steps/s at batch 32: 4746 steps.) Judge on 200
  held-in prompts per group, 3398 GPU steps -> + 4746 CPU steps: one-object colour 89 -> 95 %, colour + shape
  70 -> 86 %; two objects both right 34.5 -> 65.5 %; attention IoU 0.46 -> 0.46 (held-out prompts: one-object
  shape 69 -> 81 %, two objects 24 -> 61 %). Then for 2 h more from that export (what is shipped now), on twice
  the scenes (the 8000-scene cache copied into the new work dir is extended by scenes 8000..15999 only) and with
  the grounding loss doubled:
    python -m backend train-toyworld --init-from resources/models/toyworld --work-dir toyworld-work/cpu-cont2 \
        --output-dir toyworld-work/cpu-cont2-export --workers 2 --scenes 16000 --unet-steps 200000 \
        --unet-minutes 118 --batch-size 32 --lr 1e-4 --warmup 50 --ema-decay 0.999 --grounding-weight 0.02 \
        --grounding-pixel-weight 0.002 --stages vae,cache,unet,export
  (cache extension 5 min; UNet 1.37-1.40 steps/s: 9911 steps.) Held-in: one-object colour 95 -> 100 %, colour +
  shape 86 -> 92 %; two objects both right 65.5 -> 80.5 %; attention IoU 0.46 -> 0.43 (held-out: one-object shape
  81 -> 92 %, two objects 61 -> 72 %). The IoU's shortfall was recall: thresholded at half their maximum, the
  shape-word maps lay on their objects (precision 0.85) but covered half of each (recall 0.45) - peaked maps,
  which the token loss allows and the pixel loss flattens (grounding.py). So the pixel term was raised tenfold,
  to the token term's weight (now the defaults), for 20 min and then 40 min more (what is shipped now; the same
  cache copied into each work dir):
    python -m backend train-toyworld --init-from resources/models/toyworld --work-dir toyworld-work/cpu-cont3 \
        --output-dir toyworld-work/cpu-cont3-export --workers 2 --scenes 16000 --unet-steps 200000 \
        --unet-minutes 20 --batch-size 32 --lr 1e-4 --warmup 50 --ema-decay 0.999 --grounding-weight 0.02 \
        --grounding-pixel-weight 0.02 --stages vae,cache,unet,export
    (the same from toyworld-work/cpu-cont3-export into cpu-cont4 with --unet-minutes 40)
  (UNet 1.41-1.44 steps/s: 1693 + 3443 steps.) After 20 min: IoU 0.43 -> 0.65 (precision 0.80, recall 0.76),
  two objects both right 80.5 -> 77.5 %; after 40 more: IoU 0.68 (precision 0.85, recall 0.79); one-object
  colour 100 %, colour + shape 94.5 %; two objects both right 85.5 % (held-out: one-object shape 91 %, two
  objects 67 %); inversion PSNR 33.0 dB.

Without a GPU from scratch (the weights shipped before 2026-12-04; `--preset cpu` keeps the UNet and text
encoder and shrinks the VAE, whose full-size step costs ~10 s on 2 cores):
    python -m backend train-toyworld --preset cpu --work-dir toyworld-work/cpu --vae-steps 1400 --vae-batch 32 \
        --vae-crop 64 --vae-lr 5e-4 --vae-images 4000 --eval-every 250 --scenes 30000 --unet-steps 2500 \
        --batch-size 32 --lr 4e-4 --warmup 200 --ema-decay 0.999 --checkpoint-every 250 --max-minutes 75
  (VAE 0.8-1.2 steps/s alone; UNet ~1.4 s/step alone.) Over two sessions (~3.5 h, UNet 3588 steps at batch 32,
  decoder fine-tuned 2489 steps) it reached: one-object colour 81 %, colour + shape 24 % (held-out prompts); VAE
  PSNR 28.0 dB; inversion 30.7 dB; attention IoU 0.38.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine.attention import AttentionController, AttentionStore, RecordMaps, attention_layers
from backend.models.toyworld import config as model_config
from backend.models.toyworld.dataset import (
    LatentCaptionDataset,
    cache_path,
    cached_counts,
    encode_latents,
    load_latents,
    render_images,
    save_latents,
    to_pixels,
)
from backend.models.toyworld.grounding import grounding_loss
from backend.models.toyworld.tokenizer import load_tokenizer, write_tokenizer_files
from backend.paths import resource_path

log = logging.getLogger(__name__)

MAX_EXPORT_BYTES = 60 * 2**20
STAGES = ("vae", "decoder", "cache", "unet", "export", "evaluate")
_VALIDATION_SEED_OFFSET = 10_007  # held-out scenes: another seed than any training scene
# Cross-attention levels the grounding loss supervises: the 16x16 and 8x8 grids (at 128 px) that MDE-Edit,
# pix2pix-zero and the evaluation read; the 4x4 mid block is too coarse to outline an object.
GROUNDED_BLOCKS = ("down_blocks.0", "down_blocks.1", "up_blocks.1", "up_blocks.2")


# --- options -----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add = parser.add_argument
    add("--work-dir", type=Path, default=Path("toyworld-work"), help="checkpoints, caches and the log")
    add("--output-dir", type=Path, default=resource_path("models", "toyworld"), help="exported diffusers folder")
    add("--preset", default="default", choices=sorted(model_config.PRESETS), help="model sizes (tiny: tests)")
    add("--image-size", type=int, default=0, help="image side in pixels (0 = the preset's, 128)")
    add("--seed", type=int, default=0)
    add(
        "--init-from",
        type=Path,
        default=None,
        help="an exported toy-world folder to go on from: its VAE is taken as this work dir's VAE stage, and its "
        "UNet and text encoder start the UNet stage (fresh optimizer, warm-up again)",
    )
    add("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    add("--workers", type=int, default=0, help="processes that render scenes and build batches (0 = in this one)")
    add("--vae-steps", type=int, default=8000)
    add("--vae-batch", type=int, default=64)
    add("--vae-lr", type=float, default=2e-4)
    add("--vae-images", type=int, default=16000, help="scenes rendered once for VAE training (flips augment)")
    add("--vae-crop", type=int, default=0, help="train the VAE on random square crops of this side (0 = whole)")
    add("--kl-weight", type=float, default=1e-6)
    add("--vae-target-psnr", type=float, default=0.0, help="end the VAE stage once held-out PSNR reaches this")
    add("--decoder-steps", type=int, default=0, help="decoder stage: steps of decoder-only fine-tuning (0 = skip)")
    add("--decoder-batch", type=int, default=16, help="decoder stage: whole images per step")
    add("--decoder-lr", type=float, default=1e-4)
    add("--scenes", type=int, default=200000, help="scenes encoded to the latent cache for UNet training")
    add("--unet-steps", type=int, default=40000)
    add("--batch-size", type=int, default=256)
    add("--lr", type=float, default=3e-4)
    add("--warmup", type=int, default=1000)
    add("--weight-decay", type=float, default=0.01)
    add("--ema-decay", type=float, default=0.9995)
    add("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma loss weighting (0 = plain MSE)")
    add("--cfg-dropout", type=float, default=0.1)
    # The shipped model's last hour used 0.02 / 0.02; the GPU run it began with used 0.01 / 0.001 (grounding.py).
    add("--grounding-weight", type=float, default=0.02, help="TokenCompose token loss on cross-attention (0 = off)")
    add("--grounding-pixel-weight", type=float, default=0.02, help="TokenCompose pixel (BCE) loss weight")
    add("--checkpoint-every", type=int, default=1000)
    add("--eval-every", type=int, default=1000, help="VAE: held-out reconstruction PSNR every N steps")
    add("--log-every", type=int, default=50)
    add("--max-minutes", type=float, default=0.0, help="stop (with a checkpoint) after this long; 0 = no limit")
    add("--vae-minutes", type=float, default=0.0, help="time budget of the VAE stage in this run (0 = none)")
    add("--decoder-minutes", type=float, default=0.0, help="time budget of the decoder stage in this run")
    add("--unet-minutes", type=float, default=0.0, help="time budget of the UNet stage in this run")
    add("--stop-after", type=int, default=0, help="stop each stage after this many steps in this run (testing)")
    add("--export-dtype", default="auto", choices=["auto", "fp16", "fp32"])
    add("--eval-count", type=int, default=200, help="evaluate: generations per judged group (1 and 2 objects)")
    add("--eval-steps", type=int, default=50, help="evaluate: DDIM steps of generation and inversion")
    add("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backend train-toyworld", description=__doc__.split("\n")[0])
    return add_arguments(parser).parse_args(argv)


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run the requested stages; 0 when everything asked for is done, 3 when the budget stopped a stage."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    trainer = Trainer(args)
    previous = (
        signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return 0 if trainer.run() else 3
    except KeyboardInterrupt:
        return 130  # the stage saved its checkpoint on the way out: re-run to resume
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM (kill, a scheduler's time limit) stops training like Ctrl+C: with a checkpoint."""
    raise KeyboardInterrupt


# --- shared machinery --------------------------------------------------------------------------------------


@dataclass
class Budget:
    """Wall-clock limit of this invocation (--max-minutes) and a per-stage step limit (--stop-after)."""

    deadline: float
    stop_after: int

    def exhausted(self, steps_this_run: int) -> bool:
        if self.stop_after and steps_this_run >= self.stop_after:
            return True
        return bool(self.deadline) and time.monotonic() >= self.deadline


@dataclass
class StagePlan:
    """How many steps a stage runs. Without a time budget: its --*-steps. With one (--vae-minutes,
    --unet-minutes, ...): as many as fit in it at the measured speed, at most --*-steps, and the stage then ends
    *finished* (final weights, learning rate decayed to its floor), not merely interrupted: the cosine schedule
    follows `total`, re-fitted as the speed estimate firms up. That is how a lent GPU's few minutes give a
    complete model; the trajectory then depends on the machine's speed (a resumed run fits its own budget)."""

    total: int
    minutes: float = 0.0
    began: float = 0.0
    limit: int = 0

    def __post_init__(self) -> None:
        self.limit = self.limit or self.total
        self.began = self.began or time.monotonic()

    def refit(self, index: int, rate: float) -> None:
        """`index` steps are done at `rate` steps/s: end the stage where the budget runs out."""
        if not self.minutes or rate <= 0:
            return
        left = self.minutes * 60 - (time.monotonic() - self.began)
        self.total = max(index + 1, min(self.limit, index + int(rate * left)))

    def out_of_time(self) -> bool:
        return bool(self.minutes) and time.monotonic() - self.began >= self.minutes * 60

    def marker(self) -> dict:
        """What a checkpoint records of the plan: the total when it ends the stage before its --*-steps (a time
        budget or a target reached), so a re-run sees the stage as finished; nothing otherwise, so asking for
        more --*-steps later extends it."""
        return {"total": self.total} if self.total < self.limit else {}


def finished(state: dict | None, steps: int) -> bool:
    """Whether a stage checkpoint is of a completed stage (its planned total reached)."""
    return state is not None and int(state["step"]) >= int(state.get("total", steps))


def step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    """CPU generator for one step's random draws: same numbers whether or not the run was resumed."""
    return torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0]))


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write beside, then rename, so an interrupted save never corrupts the last good checkpoint."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def vae_saver(
    path: Path, vae: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: StagePlan
) -> Callable[[int], None]:
    """The VAE and decoder stages' checkpoint: step, planned total, weights, optimizer state."""

    def save(index: int) -> None:
        state = {"step": index, **plan.marker(), "vae": vae.state_dict(), "optimizer": optimizer.state_dict()}
        save_checkpoint(path, state)

    return save


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay (1 + n) / (10 + n)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        shadow = list(self.shadow.parameters())
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, [p.detach() for p in module.parameters()], alpha=1 - decay)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (as 8-bit pixels would measure it)."""
    mse = F.mse_loss(a.float().clamp(-1, 1), b.float().clamp(-1, 1)).item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of `base` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class _StepBatches(torch.utils.data.Dataset):
    """Item i = the batch of step first + i (a pure function of the step, so worker processes can build it)."""

    def __init__(self, make: Callable[[int], tuple], first: int, last: int) -> None:
        self.make, self.first, self.last = make, first, last

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, index: int) -> tuple:
        return self.make(self.first + index)


def batch_stream(make: Callable[[int], tuple], first: int, last: int, workers: int, pin: bool = False):
    """The batches of steps first..last-1 in order, built ahead: in a thread (workers 0), else in `workers`
    processes (captions, object masks and tokenizing cost ~0.3 s per 256 samples on one core, more than a GPU
    step). Both expose get(step) and close()."""
    if workers <= 0:
        return Prefetcher(make, first, last)
    return _LoaderPrefetcher(make, first, last, workers, pin)


class _LoaderPrefetcher:
    def __init__(self, make: Callable[[int], tuple], first: int, last: int, workers: int, pin: bool) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the fast tokenizer's threads, after fork
        loader = torch.utils.data.DataLoader(
            _StepBatches(make, first, last),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4,
            pin_memory=pin,
            persistent_workers=False,
        )
        self._next, self._iterator = first, iter(loader)

    def get(self, step: int) -> tuple:
        assert step == self._next, f"batch of step {self._next} is next, not {step}"
        self._next += 1
        return next(self._iterator)

    def close(self) -> None:
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class Prefetcher:
    """Builds the batches of the coming steps in a background thread (captions + tokenizing are CPU work)."""

    def __init__(self, make: Callable[[int], tuple], first: int, last: int, depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._fill, args=(make, first, last), daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _fill(self, make: Callable[[int], tuple], first: int, last: int) -> None:
        for step in range(first, last):
            if self._stop.is_set():
                return
            self._queue.put((step, make(step)))

    def get(self, step: int) -> tuple:
        got, batch = self._queue.get()
        assert got == step, f"prefetched step {got} where {step} was expected"
        return batch

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)


class _BatchMaker:
    """dataset.batch(step, size) as a picklable callable, for batch_stream's worker processes."""

    def __init__(self, dataset: LatentCaptionDataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __call__(self, step: int) -> tuple:
        return self.dataset.batch(step, self.size)


# --- the trainer -------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = model_config.preset(args.preset, args.image_size or None)
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = _device(args.device)
        self.autocast = self.device.type == "cuda"
        if self.autocast:
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts (losses, EMA, optimizer) on tensor cores
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed shapes every step
        deadline = time.monotonic() + args.max_minutes * 60 if args.max_minutes else 0.0
        self.budget = Budget(deadline, args.stop_after)
        self._check_work_dir()
        log.info("toy-world training on %s, work dir %s, config %s", self.device, self.work, self.config)

    def _check_work_dir(self) -> None:
        """Refuse to resume a work dir made with another model config or seed (the checkpoints would not fit)."""
        marker = self.work / "run.json"
        identity = {"config": self.config.to_dict(), "seed": self.args.seed}
        if marker.is_file():
            previous = json.loads(marker.read_text())
            if previous != json.loads(json.dumps(identity)):
                raise SystemExit(f"work dir {self.work} belongs to another run ({previous}); use a new --work-dir")
        else:
            marker.write_text(json.dumps(identity, indent=2))

    def run(self) -> bool:
        stages = [s.strip() for s in self.args.stages.split(",") if s.strip()]
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise SystemExit(f"unknown stage(s) {', '.join(sorted(unknown))}; use {', '.join(STAGES)}")
        vae = None
        if {"vae", "decoder", "cache", "export"} & set(stages):
            vae = self.train_vae()
            if vae is None:
                return False
        if "decoder" in stages and self.args.decoder_steps and self.finetune_decoder(vae) is None:
            return False
        latents = self.latent_cache(vae) if {"cache", "unet"} & set(stages) else None
        if "unet" in stages and not self.train_unet(latents):
            return False
        if "export" in stages:
            self.export(self.tuned_decoder() or vae)
        if "evaluate" in stages:
            self.evaluate()
        return True

    def record(self, **entry) -> None:
        with open(self.work / "log.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def _loop(
        self,
        stage: str,
        start: int,
        plan: StagePlan,
        step: Callable[[int], dict],
        save: Callable[[int], None],
        reached: Callable[[dict], bool] | None = None,
    ) -> bool:
        """Run steps start..plan.total-1 (or until `reached(metrics)`, a target); checkpoint periodically and when
        the budget ends the run early. True when the stage is complete."""
        began = time.monotonic()
        warm, warm_at = min(20, max(1, plan.limit - start - 1)), began  # speed is measured after the warm-up
        done, index = 0, start
        while index < plan.total:
            if done == warm:
                warm_at = time.monotonic()
            elif done > warm and (done - warm) % 10 == 0:
                plan.refit(index, (done - warm) / max(time.monotonic() - warm_at, 1e-9))
            if plan.out_of_time():  # steps slower than the budget allows even before the speed was measured
                plan.total = index
                break
            total = plan.total
            if self.budget.exhausted(done):
                save(index)
                log.info("%s: stopped at step %d/%d (budget); re-run to resume", stage, index, total)
                return False
            try:
                metrics = step(index)
            except KeyboardInterrupt:
                save(index)  # this step never finished: resuming repeats it
                log.info("%s: interrupted at step %d/%d, checkpoint saved; re-run to resume", stage, index, total)
                raise
            if reached is not None and reached(metrics):
                plan.total = index + 1
                save(plan.total)
                log.info("%s: target reached at step %d", stage, index + 1)
                return True
            evaluated = any(key.startswith("val_") for key in metrics)
            if (index + 1) % self.args.log_every == 0 or index + 1 == total or done == 0 or evaluated:
                metrics = {key: float(value) for key, value in metrics.items()}
                rate = (done + 1) / max(time.monotonic() - began, 1e-9)
                text = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                log.info("%s step %d/%d  %s  %.2f steps/s", stage, index + 1, total, text, rate)
                self.record(stage=stage, step=index + 1, steps_per_s=rate, **metrics)
            if (index + 1) % self.args.checkpoint_every == 0 and index + 1 < total:
                save(index + 1)
            done, index = done + 1, index + 1
        save(plan.total)
        if plan.minutes:
            log.info("%s: finished at step %d within its %.3g-minute budget", stage, plan.total, plan.minutes)
        return True

    def _reached_target_psnr(self, metrics: dict) -> bool:
        """VAE and decoder stages end early once the held-out PSNR reaches --vae-target-psnr."""
        target = self.args.vae_target_psnr
        return bool(target) and metrics.get("val_psnr", 0.0) >= target

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast)

    # --- stage 1: VAE --------------------------------------------------------------------------------------

    def train_vae(self):
        """The trained VAE with its scaling factor (loaded when already done); None when stopped early."""
        from diffusers import AutoencoderKL

        final = self.work / "vae"
        if not (final / "config.json").is_file() and self.args.init_from:
            source = self._init_folder() / "vae"
            AutoencoderKL.from_pretrained(source, torch_dtype=torch.float32).save_pretrained(final)
            log.info("vae: taken from %s (--init-from)", source)
        if (final / "config.json").is_file():
            return AutoencoderKL.from_pretrained(final).to(self.device).eval().requires_grad_(False)
        args = self.args
        images = self._vae_images()
        validation = self._validation_images()
        torch.manual_seed(args.seed)
        vae = model_config.build_vae(self.config).to(self.device).train()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
        path = self.work / "vae_checkpoint.pt"
        state = load_checkpoint(path)
        start = 0
        plan = StagePlan(args.vae_steps, args.vae_minutes)
        if state is not None:
            vae.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
            log.info("vae: resuming at step %d", start)

        def step(index: int) -> dict:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(index, args.vae_lr, min(500, args.vae_steps // 10 + 1), plan.total)
            batch = self._vae_batch(images, index, args.vae_batch, args.vae_crop)
            with self._autocast():
                posterior = vae.encode(batch).latent_dist
                latents = posterior.sample(generator=step_generator(args.seed, index, 2))
                reconstruction = vae.decode(latents).sample
            loss, parts = vae_loss(reconstruction.float(), batch, posterior, args.kl_weight)
            optimise(optimizer, loss, vae.parameters())
            if (index + 1) % args.eval_every == 0:
                parts["val_psnr"] = reconstruction_psnr(vae, validation)
            return parts

        if finished(state, args.vae_steps):
            plan.total = start  # completed earlier (e.g. by its time budget), interrupted while finalising
        save = vae_saver(path, vae, optimizer, plan)
        if not self._loop("vae", start, plan, step, save, self._reached_target_psnr):
            return None
        vae.eval().requires_grad_(False)
        quality = reconstruction_psnr(vae, validation)
        scaling = latent_scaling(vae, validation)
        vae.register_to_config(scaling_factor=scaling)
        vae.save_pretrained(final, safe_serialization=True)
        log.info("vae: held-out reconstruction PSNR %.2f dB, latent scaling factor %.5f", quality, scaling)
        self.record(stage="vae", step=plan.total, val_psnr=quality, scaling_factor=scaling)
        return vae

    def _validation_images(self) -> torch.Tensor:
        """64 held-out scenes (pixels in [-1, 1]) for the VAE and decoder stages' PSNR."""
        scenes = render_images(self.args.seed + _VALIDATION_SEED_OFFSET, 64, self.config.image_size)
        return to_pixels(scenes, self.device)

    def _vae_images(self) -> torch.Tensor:
        """A fixed pool of rendered scenes (uint8), cached in the work dir."""
        args, size = self.args, self.config.image_size
        path = self.work / f"vae_images_{size}px_{args.vae_images}_seed{args.seed}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
        log.info("vae: rendering %d scenes at %d px", args.vae_images, size)
        images = render_images(args.seed + 1, args.vae_images, size, args.workers)
        partial = path.with_suffix(".partial.npy")
        np.save(partial, images)
        os.replace(partial, path)
        return torch.from_numpy(images)

    def _vae_batch(self, images: torch.Tensor, index: int, size: int, crop: int = 0, salt: int = 3) -> torch.Tensor:
        rng = np.random.default_rng([self.args.seed, index, salt])
        picks = torch.from_numpy(rng.integers(0, len(images), size=size))
        batch = to_pixels(images[picks], self.device)
        # Flips and 90-degree turns: the VAE should not care which way shapes point.
        flips = torch.from_numpy(rng.random(len(picks)) < 0.5).to(self.device)
        batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
        batch = torch.rot90(batch, int(rng.integers(0, 4)), dims=(-2, -1))
        if crop and crop < batch.shape[-1]:
            # The VAE is convolutional (its one attention layer is global), so crops teach it the same edges,
            # fills and textures at a fraction of the cost; validation stays on whole images.
            top, left = (int(v) // 8 * 8 for v in rng.integers(0, batch.shape[-1] - crop + 1, size=2))
            batch = batch[..., top : top + crop, left : left + crop]
        return batch

    # --- stage 1b: decoder fine-tuning ---------------------------------------------------------------------

    def finetune_decoder(self, vae):
        """Fine-tune the VAE's decoder (and post-quant conv) on whole images with the encoder frozen, as SD's
        ft-MSE decoder was: the latent space, hence the latent cache and any UNet trained on it, stays valid,
        while reconstructions (VAE PSNR, and the shapes the judge reads) get sharper. Resumable; re-running with
        a larger --decoder-steps continues from the last step. Returns the tuned VAE (None when stopped early)."""
        args = self.args
        final, path = self.work / "vae_decoder", self.work / "decoder_checkpoint.pt"
        state = load_checkpoint(path)
        start = int(state["step"]) if state is not None else 0
        plan = StagePlan(args.decoder_steps, args.decoder_minutes)
        if finished(state, args.decoder_steps):
            if (final / "config.json").is_file():
                return self.tuned_decoder()
            plan.total = start
        tuned = copy.deepcopy(vae).to(self.device)
        tuned.requires_grad_(False).eval()
        trainable = [*tuned.decoder.parameters(), *tuned.post_quant_conv.parameters()]
        for parameter in trainable:
            parameter.requires_grad_(True)
        tuned.decoder.train()
        optimizer = torch.optim.AdamW(trainable, lr=args.decoder_lr, betas=(0.9, 0.99), weight_decay=0.0)
        if state is not None:
            tuned.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
            log.info("decoder: resuming at step %d", start)
        images = self._vae_images()
        validation = self._validation_images()
        warmup = min(200, args.decoder_steps // 10 + 1)

        def step(index: int) -> dict:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(index, args.decoder_lr, warmup, plan.total)
            batch = self._vae_batch(images, index, args.decoder_batch, salt=5)
            with torch.no_grad(), self._autocast():
                latents = tuned.encode(batch).latent_dist.mean  # what the cache holds and the app encodes
            with self._autocast():
                reconstruction = tuned.decode(latents).sample
            loss, parts = reconstruction_loss(reconstruction.float(), batch)
            optimise(optimizer, loss, trainable)
            if (index + 1) % args.eval_every == 0:
                parts["val_psnr"] = reconstruction_psnr(tuned, validation)
            return {"loss": loss.detach(), **parts}

        save = vae_saver(path, tuned, optimizer, plan)
        if not self._loop("decoder", start, plan, step, save, self._reached_target_psnr):
            return None
        tuned.eval().requires_grad_(False)
        quality = reconstruction_psnr(tuned, validation)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        tuned.save_pretrained(partial, safe_serialization=True)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        log.info("decoder: held-out reconstruction PSNR %.2f dB (base VAE: see the vae stage)", quality)
        self.record(stage="decoder", step=plan.total, val_psnr=quality)
        return tuned

    def tuned_decoder(self):
        """The VAE with the fine-tuned decoder, when the decoder stage has finished once in this work dir."""
        from diffusers import AutoencoderKL

        final = self.work / "vae_decoder"
        if not (final / "config.json").is_file():
            return None
        return AutoencoderKL.from_pretrained(final).to(self.device).eval().requires_grad_(False)

    # --- stage 2: latent cache -----------------------------------------------------------------------------

    def latent_cache(self, vae) -> torch.Tensor:
        args, size = self.args, self.config.image_size
        path = cache_path(self.work, args.seed, args.scenes, size)
        if path.is_file():
            return load_latents(path)
        # Scene i of a cache is the same scene whatever the count, so a cache of this work dir (same seed, size
        # and VAE) serves another count: a larger one is cut, a smaller one is extended.
        counts = cached_counts(self.work, args.seed, size)
        larger = [n for n in counts if n > args.scenes]
        if larger:
            log.info("cache: the first %d scenes of the %d-scene cache", args.scenes, larger[0])
            return load_latents(cache_path(self.work, args.seed, larger[0], size))[: args.scenes].clone()
        have = load_latents(cache_path(self.work, args.seed, counts[-1], size)) if counts else None
        done = 0 if have is None else len(have)
        if vae is None:
            raise SystemExit("the latent cache needs the trained VAE: run the vae stage first")
        log.info("cache: rendering and encoding scenes %d..%d at %d px", done, args.scenes - 1, size)

        def progress(encoded: int, total: int) -> None:
            log.info("cache: %d/%d scenes encoded", done + encoded, args.scenes)

        latents = encode_latents(
            vae, args.seed, args.scenes - done, size, workers=args.workers, progress=progress, start=done
        )
        if have is not None:
            latents = torch.cat([have, latents])
        save_latents(path, latents, float(vae.config.scaling_factor))
        return latents

    # --- stage 3: UNet + text encoder ----------------------------------------------------------------------

    def tokenizer(self):
        folder = self.work / "tokenizer"
        if not (folder / "vocab.json").is_file():
            write_tokenizer_files(folder)
        return load_tokenizer(folder)

    def build_denoiser(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        tokenizer = self.tokenizer()
        torch.manual_seed(self.args.seed + 1)
        encoder = model_config.build_text_encoder(
            self.config, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
        )
        unet = model_config.build_unet(self.config)
        return unet.to(self.device), encoder.to(self.device)

    def train_unet(self, latents: torch.Tensor) -> bool:
        from diffusers import DDPMScheduler

        args = self.args
        scaling = float(json.loads((self.work / "vae" / "config.json").read_text())["scaling_factor"])
        grounding = bool(args.grounding_weight or args.grounding_pixel_weight)
        dataset = LatentCaptionDataset(latents, self.tokenizer(), args.seed, scaling, args.cfg_dropout, grounding)
        unet, encoder = self.build_denoiser()
        path = self.work / "unet_checkpoint.pt"
        state = load_checkpoint(path)
        # UNet steps of the model --init-from started from (the export's unet_steps counts them too)
        steps_before = int(state.get("steps_before", 0)) if state is not None else 0
        if args.init_from and state is None:
            steps_before = self._load_exported_denoiser(unet, encoder)
        ema_unet, ema_encoder = EMA(unet, args.ema_decay), EMA(encoder, args.ema_decay)
        parameters = [*unet.parameters(), *encoder.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
        start, complete = self._resume_unet(state, unet, encoder, ema_unet, ema_encoder, optimizer)
        if complete:
            return True
        plan = StagePlan(args.unet_steps, args.unet_minutes)
        noise_schedule = DDPMScheduler.from_config(model_config.scheduler_config())
        alphas = noise_schedule.alphas_cumprod.to(self.device)
        unet.train()
        encoder.train()
        make = _BatchMaker(dataset, args.batch_size)
        pin = self.device.type == "cuda"
        prefetch = batch_stream(make, start, args.unet_steps, args.workers, pin)
        # Grounding: record the cross-attention maps (with their graph) of the 16x16 and 8x8 levels.
        store = AttentionStore(kind="cross", keep_grad=True)
        grounded = attention_layers(unet, "cross", blocks=GROUNDED_BLOCKS) if grounding else []
        controller = AttentionController(unet)
        controller.install({layer: RecordMaps(store) for layer in grounded})

        def step(index: int) -> dict:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(index, args.lr, args.warmup, plan.total)
            clean, ids, *truth = (t.to(self.device, non_blocking=True) for t in prefetch.get(index))
            generator = step_generator(args.seed, index, 4)
            noise = torch.randn(clean.shape, generator=generator).to(self.device)
            timesteps = torch.randint(0, len(alphas), (len(clean),), generator=generator).to(self.device)
            noisy = noise_schedule.add_noise(clean, noise, timesteps)
            with self._autocast():
                hidden = encoder(ids)[0]
                prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
            denoising = denoising_loss(prediction.float(), noise, alphas[timesteps], args.snr_gamma)
            parts = {}
            loss = denoising
            if grounding:
                token, pixel = grounding_loss(store.at_step(0), *truth)
                store.clear()
                loss = loss + args.grounding_weight * token + args.grounding_pixel_weight * pixel
                parts = {"denoising": denoising.detach(), "token": token.detach(), "pixel": pixel.detach()}
            grad_norm = optimise(optimizer, loss, parameters)
            ema_unet.update(unet, index)
            ema_encoder.update(encoder, index)
            return {"loss": loss.detach(), **parts, "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}

        def save(index: int) -> None:
            state = {
                "step": index,
                **plan.marker(),
                "steps_before": steps_before,
                "unet": unet.state_dict(),
                "text_encoder": encoder.state_dict(),
                "ema_unet": ema_unet.shadow.state_dict(),
                "ema_text_encoder": ema_encoder.shadow.state_dict(),
                "optimizer": optimizer.state_dict(),
            }
            save_checkpoint(path, state)

        try:
            return self._loop("unet", start, plan, step, save)
        finally:
            controller.restore()
            prefetch.close()

    def _init_folder(self) -> Path:
        """--init-from, checked: an exported toy-world model of this run's config, with the world's tokenizer."""
        folder = Path(self.args.init_from)
        info_path = folder / "toyworld.json"
        if not info_path.is_file():
            raise SystemExit(f"--init-from {folder}: not an exported toy-world model (no toyworld.json)")
        trained = json.loads(info_path.read_text()).get("config")
        if trained != json.loads(json.dumps(self.config.to_dict())):
            raise SystemExit(
                f"--init-from {folder} was trained with another model config ({trained}); pick the --preset and "
                "--image-size it was made with"
            )
        self.tokenizer()  # writes this work dir's tokenizer files
        for name in ("vocab.json", "merges.txt"):
            if (folder / "tokenizer" / name).read_bytes() != (self.work / "tokenizer" / name).read_bytes():
                raise SystemExit(f"--init-from {folder}: its tokenizer is not this world's ({name} differs)")
        return folder

    def _load_exported_denoiser(self, unet: torch.nn.Module, encoder: torch.nn.Module) -> int:
        """--init-from: start the UNet stage from an exported model's (EMA) UNet and text encoder; returns the
        UNet steps that model had."""
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        folder = self._init_folder()
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict())
        encoder.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict())
        previous = int(json.loads((folder / "toyworld.json").read_text()).get("unet_steps", 0))
        log.info("unet: starting from %s (%d steps before)", folder, previous)
        return previous

    def _resume_unet(self, state: dict | None, unet, encoder, ema_unet: EMA, ema_encoder: EMA, optimizer) -> tuple:
        """(step to resume at, whether the stage already finished)."""
        if state is None:
            return 0, False
        unet.load_state_dict(state["unet"])
        encoder.load_state_dict(state["text_encoder"])
        ema_unet.shadow.load_state_dict(state["ema_unet"])
        ema_encoder.shadow.load_state_dict(state["ema_text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("unet: resuming at step %d", state["step"])
        return int(state["step"]), finished(state, self.args.unet_steps)

    # --- stage 4: export -----------------------------------------------------------------------------------

    def export(self, vae) -> Path:
        """EMA weights -> diffusers folder (written beside, then swapped in, so a failed export keeps the old)."""
        from backend.models.bundle import ModelBundle
        from backend.models.tiny import save_diffusers_folder

        state = load_checkpoint(self.work / "unet_checkpoint.pt")
        if state is None:
            raise SystemExit("nothing to export: no UNet checkpoint in the work dir yet")
        unet, encoder = self.build_denoiser()
        unet.load_state_dict(state["ema_unet"])
        encoder.load_state_dict(state["ema_text_encoder"])
        modules = [m.to("cpu").eval() for m in (unet, copy.deepcopy(vae), encoder)]
        dtype = self._export_dtype(modules)
        for module in modules:
            if dtype != torch.float32:
                module.to(dtype)
        bundle = ModelBundle(
            model_id="toyworld",
            family="sd1",
            unet=unet,
            vae=modules[1],
            text_encoders=[encoder],
            tokenizers=[self.tokenizer()],
            scheduler_config=model_config.scheduler_config(),
            device=torch.device("cpu"),
            dtype=dtype,
            default_size=self.config.image_size,
        )
        output = Path(self.args.output_dir)
        staging = output.with_name(output.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        save_diffusers_folder(bundle, staging)
        # The CLIP-format source files too, so older transformers (slow CLIPTokenizer) load it as well.
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(self.work / "tokenizer" / name, staging / "tokenizer" / name)
        info = {
            "config": self.config.to_dict(),
            "seed": self.args.seed,
            "scenes": self.args.scenes,
            "unet_steps": int(state["step"]) + int(state.get("steps_before", 0)),
        }
        (staging / "toyworld.json").write_text(json.dumps({**info, "dtype": str(dtype)}, indent=2))
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
        log.info("export: %s (%s, %.1f MB)", output, dtype, _folder_bytes(output) / 2**20)
        return output

    # --- stage 5: evaluate -------------------------------------------------------------------------------------

    def evaluate(self) -> dict:
        """The issue's figures for the exported model, loaded as the app loads it; stored in toyworld.json."""
        from backend.models import load_model
        from backend.models.toyworld.evaluate import evaluate

        output = Path(self.args.output_dir)
        bundle = load_model(str(output), device=str(self.device))
        cpu_bundle = bundle if self.device.type == "cpu" else load_model(str(output), device="cpu")
        training = (self.args.seed, self.args.scenes)  # the cached scenes whose captions are the held-in prompts
        results = evaluate(bundle, cpu_bundle, self.args.eval_count, self.args.eval_steps, training)
        info_path = output / "toyworld.json"
        info = json.loads(info_path.read_text())
        info["metrics"] = results
        info_path.write_text(json.dumps(info, indent=2))
        self.record(stage="evaluate", **results)
        return results

    def _export_dtype(self, modules: list[torch.nn.Module]) -> torch.dtype:
        choice = self.args.export_dtype
        if choice != "auto":
            return torch.float16 if choice == "fp16" else torch.float32
        fp32_bytes = sum(p.numel() * 4 for m in modules for p in m.parameters())
        return torch.float32 if fp32_bytes <= MAX_EXPORT_BYTES else torch.float16


# --- losses and measurements -------------------------------------------------------------------------------


def optimise(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters) -> torch.Tensor:
    """One step: gradients of `loss`, clipped to norm 1, applied. Returns the norm before clipping."""
    parameters = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    return grad_norm


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> tuple:
    """L1 + L2 on pixels and L1 on image gradients (keeps shape edges and stripes sharp)."""
    l1 = (reconstruction - target).abs().mean()
    l2 = F.mse_loss(reconstruction, target)
    edges = sum((torch.diff(reconstruction, dim=d) - torch.diff(target, dim=d)).abs().mean() for d in (-1, -2))
    batch_mse = F.mse_loss(reconstruction.detach().clamp(-1, 1), target)
    # Tensors, not floats: reading them back forces a GPU sync, so the loop does it only on logging steps.
    return l1 + l2 + 0.5 * edges, {"l1": l1.detach(), "psnr": 10 * torch.log10(4.0 / batch_mse)}


def vae_loss(reconstruction: torch.Tensor, target: torch.Tensor, posterior, kl_weight: float) -> tuple:
    """The reconstruction loss plus a tiny KL to N(0, 1)."""
    loss, parts = reconstruction_loss(reconstruction, target)
    # Per element, as SD's 1e-6 weighs its per-image KL sum against a per-image reconstruction sum.
    kl = posterior.kl().float().mean() / target[0].numel()
    loss = loss + kl_weight * kl
    return loss, {"loss": loss.detach(), **parts}


def denoising_loss(
    prediction: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Epsilon MSE; with gamma > 0 weighted by min(SNR, gamma) / SNR (min-SNR-gamma, Hang et al. 2023, eq. 9
    for epsilon prediction), which stops the many easy low-noise steps from dominating the gradient."""
    per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
    if gamma <= 0:
        return per_sample.mean()
    snr = alpha_bar / (1 - alpha_bar)
    return (per_sample * torch.clamp(snr, max=gamma) / snr).mean()


@torch.no_grad()
def reconstruction_psnr(vae, pixels: torch.Tensor, batch_size: int = 32) -> float:
    """Held-out PSNR of encode (posterior mean) -> decode, as the app uses the VAE."""
    was_training = vae.training
    vae.eval()
    outputs = [vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in pixels.split(batch_size)]
    vae.train(was_training)
    return psnr(torch.cat(outputs), pixels)


@torch.no_grad()
def latent_scaling(vae, pixels: torch.Tensor) -> float:
    """1 / std of the latents, so diffusion sees unit-variance latents (how SD chose 0.18215)."""
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(32)])
    return round(1.0 / means.float().std().item(), 5)


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA GPU is available")
    return device


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def iter_log(work_dir: Path) -> Iterator[dict]:
    """The entries of <work>/log.jsonl (what `record` wrote), oldest first."""
    path = Path(work_dir) / "log.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            yield json.loads(line)
