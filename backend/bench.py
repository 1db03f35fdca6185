"""`python -m backend bench`: each method's time as a ratio to plain DDIM sampling, measured in one run.

Ratios, not seconds, are the figures to compare: they hold across machines and loads far better than absolute
times, and they are what the papers' cost claims are about ("x times the cost of sampling"). The reference makes a
picture as the methods do: DDIM with CFG, then the VAE decode (at few steps the decode is a large part of both).

Per method: the first run on a picture (inversion cache empty: a cache miss) and the same edit again (a hit), the
previews it sent (one per step) and what they cost - a preview is the latent -> RGB projection plus the event's PNG
as the worker sends it, timed apart and multiplied by the previews sent - and the peak memory: on CUDA the most
allocated during the run, on the CPU the peak of the process's allocated memory above its value at the start
(glibc's in-use heap, sampled every 5 ms; the resident size elsewhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from backend.engine.cache import LRUBytesCache
from backend.engine.context import Engine
from backend.engine.previews import latent_to_rgb
from backend.engine.report import SilentReporter
from backend.engine.sampling import sample
from backend.methods.registry import Method, all_methods
from backend.models import load_model
from backend.protocol import EditRequest, ObjectPrompt, PointPair
from backend.validation import validate_request

log = logging.getLogger(__name__)
APP_CACHE_MB = 512  # the worker's default inversion cache (backend/jobs.py)


def bench_scene(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A picture with one object and that object's mask, at `size` x `size`."""
    image = np.full((size, size, 3), 220, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.5) ** 2 + (xx - size * 0.35) ** 2 < (size * 0.2) ** 2
    image[disc] = (200, 40, 40)
    return image, (disc * 255).astype(np.uint8)


def bench_request(method: Method, size: int, steps: int) -> EditRequest:
    """A request that satisfies `method`'s declared inputs, with `steps` steps where it has a steps parameter."""
    image, mask = bench_scene(size)
    inputs = set(method.info.inputs)
    masks = {item.split(":", 1)[1]: mask for item in inputs if item.startswith("mask:")}
    specs = {spec.name: spec for spec in method.info.params}
    names = set(specs)
    params: dict[str, object] = {"steps": steps} if "steps" in names else {}
    if "steps" in names and specs["steps"].type == "choice":  # few-step methods offer a few counts: the nearest
        params["steps"] = min(specs["steps"].choices, key=lambda choice: abs(int(choice) - steps))
    if "source_word" in names:  # prompt-free edits (pix2pix-zero) name the change by its words
        params.update(source_word="circle", target_word="square")
    return EditRequest(
        method=method.info.id,
        image=image,
        params=params,
        masks=masks,
        points=[PointPair((size * 0.35, size * 0.5), (size * 0.65, size * 0.5))] if "points" in inputs else [],
        reference_image=image if "reference" in inputs else None,
        reference_mask=mask if "reference" in inputs else None,
        move=(size * 0.25, 0.0, 1.0) if "move" in inputs else None,
        source_prompt="a red circle",
        target_prompt="a blue circle",
        object_prompts=[ObjectPrompt(mask, "a blue circle", "circle")] if "object_prompts" in inputs else [],
    )


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None  # not Linux: no CPU memory figure


def _heap_reader() -> Callable[[], int | None]:
    """Bytes the process has allocated and not freed: glibc's mallinfo2 (in-use arena + mmapped blocks, where
    torch's large CPU tensors live), which falls when memory is freed, unlike the resident size; else the resident
    size (other C libraries)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        names = [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in names]

        libc.mallinfo2.restype = MallInfo2
        libc.mallinfo2()
    except (OSError, AttributeError, TypeError):
        return _resident_bytes

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


HEAP_IN_USE = _heap_reader()


class MemoryPeak:
    """The most the process's allocated CPU memory rose above its value at the start, sampled every `period` s."""

    def __init__(self, period: float = 0.005, read: Callable[[], int | None] = HEAP_IN_USE) -> None:
        self.period = period
        self.read = read
        self.start = self.peak = read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        now = self.read()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    def _watch(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> MemoryPeak:
        if self.start is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()

    @property
    def growth(self) -> int:
        return 0 if self.start is None or self.peak is None else self.peak - self.start


def _timed(engine: Engine, run: Callable[[], object]) -> tuple[float, int]:
    """(seconds, peak bytes): CUDA's peak allocation, or on the CPU the peak of allocated memory above the start."""
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return time.perf_counter() - started, int(torch.cuda.max_memory_allocated())
    with MemoryPeak() as peak:
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    return seconds, peak.growth


class CountingReporter(SilentReporter):
    """Counts the previews a method sends (and builds them, as the app's reporter does)."""

    def __init__(self) -> None:
        super().__init__()
        self.previews_sent = 0

    def preview(self, step: int, total: int, rgb: np.ndarray) -> None:
        self.previews_sent += 1


def preview_seconds(engine: Engine, size: int, repeat: int = 20) -> float:
    """Seconds of one step's preview: latent -> RGB projection and the event's PNG encoding, as the worker sends it."""
    from backend.protocol import Event

    side = size // engine.bundle.vae_scale_factor
    latent = engine.randn((1, engine.unet.config.in_channels, side, side), seed=0)
    engine.latent_rgb_factors()  # fitted once per model at load: not a per-step cost

    def one(step: int) -> None:
        rgb = latent_to_rgb(latent.float().cpu(), engine.latent_rgb_factors())
        Event(kind="preview", job_id="bench", step=step, total=repeat, image=rgb).to_dict()

    one(0)  # warm-up (first-call imports and allocations)
    started = time.perf_counter()
    for step in range(repeat):
        one(step)
    return (time.perf_counter() - started) / repeat


def _params(args: argparse.Namespace) -> dict[str, object]:
    """--param NAME=VALUE items (JSON values; true/false), for every benched method that has that parameter."""
    params: dict[str, object] = {}
    for item in getattr(args, "param", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value  # a plain word
    return params


# The cost aims of the method issues: method -> (steps it is measured at, aim for time / plain sampling time).
GOALS: dict[str, tuple[int, float]] = {
    "dragon-move": (50, 3.0),  # issue 6
    "mde-edit": (50, 3.0),  # issue 7
    "pix2pix-zero-sirg": (50, 3.0),  # issue 8
    "cora": (4, 2.0),  # issue 9
    "eye-for-an-eye": (100, 2.0),  # issue 10
}
# Shown beside them, at the same steps: the other tasks of a method and the baselines it is compared with.
GOAL_COMPANIONS: dict[int, tuple[str, ...]] = {
    50: ("dragon-resize", "dragon-appearance", "dragon-paste", "dragon-drag", "nti-p2p", "pix2pix-zero"),
    4: ("turboedit",),
}


def measure(
    engine: Engine,
    methods: list[Method],
    size: int,
    steps: int,
    repeat: int,
    params: dict[str, object],
    per_preview: float,
    show: Callable[[dict], None] = lambda row: None,
) -> list[dict]:
    """Rows of one bench at `steps`: plain sampling first (ratio 1), then each method, each `show`n as it is done."""
    reporter = engine.report
    cond = engine.encode_prompts(["a red circle"])
    uncond = engine.encode_prompts([""])

    def reference() -> None:
        engine.decode_latents(sample(engine, cond, uncond, (size, size), steps, 7.5, seed=0))

    def best(run: Callable[[], object], before: Callable[[], object] = lambda: None) -> tuple[float, int]:
        """The fastest of `repeat` runs (the least disturbed by the rest of the machine), the largest peak."""
        times, peak = [], 0
        for _ in range(max(repeat, 1)):
            before()
            seconds, memory = _timed(engine, run)
            times.append(seconds)
            peak = max(peak, memory)
        return min(times), peak

    reference()  # warm-up: first calls pay for kernel selection and allocation
    base_seconds, base_memory = best(reference)
    rows = [{"method": "ddim-sampling", "steps": steps, "seconds": base_seconds, "ratio": 1.0}]
    rows[0]["peak_bytes"] = base_memory
    show(rows[0])
    for method in methods:
        request = bench_request(method, size, steps)
        names = {spec.name for spec in method.info.params}
        request.params.update({name: value for name, value in params.items() if name in names})
        request = validate_request(request, method.info)
        edit = lambda m=method, r=request: m.run(engine, r, engine.report)  # noqa: E731
        # The whole method, inversion included (cache emptied before each run)
        seconds, memory = best(edit, before=engine.inversion_cache.clear)
        # Again on the same picture: what a user waits for after changing the edit (the app keeps the inversion,
        # and the papers count it apart, e.g. DragonDiffusion's "preparing" vs "inference" time).
        reporter.previews_sent = 0
        rerun, _ = best(edit)
        previews = reporter.previews_sent // max(repeat, 1)
        rows.append(
            {
                "method": method.info.id,
                "steps": steps,
                "seconds": seconds,
                "ratio": seconds / base_seconds,
                "rerun_seconds": rerun,
                "rerun_ratio": rerun / base_seconds,
                "peak_bytes": memory,
                "previews": previews,
                "preview_seconds": previews * per_preview,
                "preview_share": previews * per_preview / seconds,
            }
        )
        if method.info.id in GOALS and GOALS[method.info.id][0] == steps:
            aim = GOALS[method.info.id][1]
            rows[-1].update(goal=aim, met=rows[-1]["ratio"] <= aim, rerun_met=rows[-1]["rerun_ratio"] <= aim)
        show(rows[-1])
    return rows


def run_bench(args: argparse.Namespace) -> int:
    bundle = load_model(args.model, device=args.device, dtype=args.dtype)
    engine = Engine(bundle, report=CountingReporter(), inversion_cache=LRUBytesCache(APP_CACHE_MB * 2**20))
    size = args.size or bundle.default_size
    wanted = {m for m in args.methods.split(",") if m}
    available = [m for m in all_methods() if bundle.family in m.info.families]
    if getattr(args, "goals", False):
        # One bench per step count of the goals, each with its own plain-sampling reference.
        plan: dict[int, list[Method]] = {}
        for method in available:
            for steps in {GOALS[method.info.id][0]} if method.info.id in GOALS else set():
                plan.setdefault(steps, []).append(method)
            for steps, companions in GOAL_COMPANIONS.items():
                if method.info.id in companions:
                    plan.setdefault(steps, []).append(method)
        plan = {steps: [m for m in ms if not wanted or m.info.id in wanted] for steps, ms in sorted(plan.items())}
        plan = {steps: methods for steps, methods in plan.items() if methods}
    else:
        plan = {args.steps: [m for m in available if not wanted or m.info.id in wanted]}
    per_preview = preview_seconds(engine, size)
    _print_header(bundle, size, sorted(plan), _params(args), per_preview, goals=bool(getattr(args, "goals", False)))
    rows: list[dict] = []
    for steps, methods in plan.items():
        rows += measure(engine, methods, size, steps, args.repeat, _params(args), per_preview, _print_row)
    extras: dict[str, float] = {}
    if any(method.info.id == "cora" for methods in plan.values() for method in methods):
        from backend.engine.cora_ops import sdxl_alignment_seconds

        extras["cora_alignment_sdxl_seconds"] = sdxl_alignment_seconds(engine.device, repeat=max(args.repeat, 1))
        print(
            f"Cora structural alignment at SDXL 512 px size (26 layers, random queries, {os.cpu_count()} CPU threads):"
            f" {extras['cora_alignment_sdxl_seconds']:.2f} s"
        )
    if args.json:
        meta = {
            "model": bundle.model_id,
            "device": str(bundle.device),
            "dtype": str(bundle.dtype),
            "size": size,
            "steps": sorted(plan) if len(plan) > 1 else args.steps,
            "params": _params(args),
            "preview_seconds_per_step": per_preview,
        }
        args.json.write_text(json.dumps({"setup": meta, "rows": rows, **extras}, indent=2))
    return 0


def _print_header(
    bundle, size: int, steps: list[int], params: dict[str, object], per_preview: float, goals: bool
) -> None:
    counts = ", ".join(str(n) for n in steps)
    print(
        f"model {bundle.model_id} ({bundle.family}) on {bundle.device} {str(bundle.dtype).replace('torch.', '')}, "
        f"{size}x{size}, {counts} steps; ratio = method time / plain DDIM sampling time (CFG, decoded), same run"
    )
    if params:
        print("parameters: " + ", ".join(f"{name}={value}" for name, value in params.items()))
    print("re-run = the same edit again on the same picture (inversions cached, as in the app)")
    where = "CUDA peak allocated" if bundle.device.type == "cuda" else "CPU peak allocated above the start"
    print(f"preview: {per_preview * 1000:.2f} ms per step (latent -> RGB + PNG event); peak MiB = {where}")
    print(
        f"{'method':<20}{'steps':>6}{'seconds':>10}{'ratio':>9}{'re-run s':>10}{'re-run x':>10}"
        f"{'previews':>10}{'preview %':>10}{'peak MiB':>10}" + (f"{'aim':>7}  met (first / re-run)" if goals else ""),
        flush=True,
    )


def _print_row(row: dict) -> None:
    """One method's line, printed as soon as it is measured (a full-size bench takes minutes per method)."""
    memory = f"{row['peak_bytes'] / 2**20:.0f}" if row["peak_bytes"] else "-"
    rerun = row.get("rerun_seconds", row["seconds"])
    again = f"{rerun:>10.3f}{rerun / row['seconds'] * row['ratio']:>10.2f}"
    shown = f"{row['previews']:>10}{100 * row['preview_share']:>10.1f}" if "previews" in row else f"{'-':>10}" * 2
    aim = ""
    if "goal" in row:
        aim = f"{row['goal']:>6.1f}x  {'yes' if row['met'] else 'NO'} / {'yes' if row['rerun_met'] else 'NO'}"
    print(
        f"{row['method']:<20}{row['steps']:>6}{row['seconds']:>10.3f}{row['ratio']:>9.2f}{again}{shown}{memory:>10}"
        + (f" {aim}" if aim else ""),
        flush=True,
    )
