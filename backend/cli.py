"""`python -m backend …`: list-methods, describe, edit, segment, bench, train-toyworld, toyworld-samples,
eval-dragon, eval-mde.

`edit` goes through the same client and worker process as the GUI; its method flags are built from the
method's ParamSpecs, so every parameter the GUI shows is a flag here too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.errors import InputError
from backend.protocol import DEFAULT_MODEL, EditRequest, Event, MethodInfo, ObjectPrompt, ParamSpec, PointPair

EXIT_ERROR, EXIT_CANCELLED = 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv:
        parser.print_help()
        return EXIT_ERROR
    if argv[0] == "edit":
        return _edit(argv[1:])
    args = parser.parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Atelier's backend from the command line.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("list-methods", help="list the editing methods")
    listing.set_defaults(handler=_list_methods)
    describe = commands.add_parser("describe", help="show a method's inputs and parameters")
    describe.add_argument("method")
    describe.set_defaults(handler=_describe)
    commands.add_parser("edit", help="run one edit (see `python -m backend edit --method M --help`)")
    segment = commands.add_parser("segment", help="cut out the object under a click or inside a box as a mask PNG")
    segment.add_argument("--image", type=Path, required=True)
    segment.add_argument("--click", action="append", default=[], metavar="X,Y", help="a point on the object")
    segment.add_argument("--exclude", action="append", default=[], metavar="X,Y", help="a point not on it")
    segment.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object")
    segment.add_argument("--sam-checkpoint", default="", help="segment-anything weights (default: offline segmenter)")
    segment.add_argument("--out", type=Path, required=True, help="where to write the mask PNG (white = object)")
    segment.set_defaults(handler=_segment)
    bench = commands.add_parser("bench", help="time each method as a ratio to plain DDIM sampling")
    bench.add_argument("--model", default=DEFAULT_MODEL)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--size", type=int, default=0, help="image side in pixels (0 = the model's native size)")
    bench.add_argument("--methods", default="", help="comma-separated method ids (default: all)")
    bench.add_argument("--repeat", type=int, default=3, help="runs per figure; the fastest counts")
    bench.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter of the methods that have it"
    )
    bench.add_argument("--device", default="auto")
    bench.add_argument("--dtype", default="auto")
    bench.add_argument("--json", type=Path, help="also write the results as JSON here")
    bench.add_argument(
        "--goals",
        action="store_true",
        help="each method at the steps its issue's cost aim names (and beside it its baselines), aim met or not",
    )
    bench.set_defaults(handler=_bench)
    # prefix_chars="+": every flag passes through untouched to the trainer's own parser (and its --help).
    train = commands.add_parser(
        "train-toyworld", help="train the embedded toy-world model (see its --help)", prefix_chars="+", add_help=False
    )
    train.add_argument("trainer_args", nargs="*")
    train.set_defaults(handler=_train_toyworld)
    # The suites parse their own flags (prefix_chars="+" passes every flag through, --help included).
    for name, what in EVAL_SUITES.items():
        suite = commands.add_parser(name, help=f"{what} (see its --help)", prefix_chars="+", add_help=False)
        suite.add_argument("eval_args", nargs="*")
        suite.set_defaults(handler=_eval_suite, suite=name)
    report = commands.add_parser(
        "eval",
        help="every method on its suite (and your own cases): one report, table + plots (see its --help)",
        prefix_chars="+",
        add_help=False,
    )
    report.add_argument("eval_args", nargs="*")
    report.set_defaults(handler=_eval_report)
    samples = commands.add_parser("toyworld-samples", help="write the toy-world sample pictures and their truth")
    samples.add_argument("folder", type=Path, nargs="?", default=None, help="default: resources/samples")
    samples.set_defaults(handler=_toyworld_samples)
    return parser


# --- list / describe ---------------------------------------------------------------------------------------


def _method_infos() -> list[MethodInfo]:
    from backend.methods.registry import all_methods

    return [m.info for m in all_methods()]


def _list_methods(args: argparse.Namespace) -> int:
    for info in _method_infos():
        print(f"{info.id:<18} {info.title:<32} [{', '.join(info.families)}]  {info.description}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    from backend.errors import UnknownMethod
    from backend.methods.registry import get_method

    try:
        info = get_method(args.method).info
    except UnknownMethod as error:
        print(f"error: {error}. {error.hint}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{info.title} ({info.id})\n  {info.description}\n  families: {', '.join(info.families)}")
    print(f"  inputs: {', '.join(info.inputs) or '-'}; optional: {', '.join(info.optional_inputs) or '-'}")
    print("  parameters:")
    for spec in info.params:
        print(f"    --{_flag(spec)}  {spec.type} = {spec.default}{_range(spec)}  {spec.help}")
    return 0


def _flag(spec: ParamSpec) -> str:
    return spec.name.replace("_", "-")


def _range(spec: ParamSpec) -> str:
    if spec.choices:
        return f" ({'|'.join(spec.choices)})"
    if spec.minimum is not None or spec.maximum is not None:
        return f" [{spec.minimum:g} .. {spec.maximum:g}]" if None not in (spec.minimum, spec.maximum) else ""
    return ""


# --- edit --------------------------------------------------------------------------------------------------


def _edit_parser(info: MethodInfo | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend edit", description="Run one edit and write a PNG.")
    parser.add_argument("--method", required=True)
    parser.add_argument("--image", type=Path, help="the picture to edit")
    parser.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="[ROLE=]PATH",
        help="a mask file (white = inside); ROLE defaults to the method's first mask role",
    )
    parser.add_argument(
        "--points",
        action="append",
        default=[],
        metavar="HX,HY:TX,TY",
        help="a handle -> target point pair in pixels (repeat for more)",
    )
    parser.add_argument(
        "--move", metavar="DX,DY[,SCALE]", help="move the object mask by DX,DY pixels (and scale it about its centre)"
    )
    parser.add_argument("--reference", type=Path, help="reference image")
    parser.add_argument(
        "--placement",
        metavar="X,Y,SCALE",
        help="where the reference goes on the image: its top-left corner and its scale (paste)",
    )
    parser.add_argument("--reference-mask", type=Path)
    parser.add_argument("--source-prompt", default="")
    parser.add_argument("--prompt", "--target-prompt", dest="target_prompt", default="")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="MASK=PROMPT[=SOURCE_WORD]",
        help="an object to edit: its mask file and the prompt it should become",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result PNG")
    parser.add_argument("--previews", type=Path, help="folder to save every step's preview in")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    if info is not None:
        group = parser.add_argument_group(f"{info.title} parameters")
        for spec in info.params:
            group.add_argument(
                f"--{_flag(spec)}",
                dest=f"param_{spec.name}",
                default=None,
                help=f"{spec.help} ({spec.type}, default {spec.default}{_range(spec)})",
            )
    return parser


def _edit(argv: list[str]) -> int:
    from backend.errors import UnknownMethod
    from backend.methods.registry import get_method

    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--method")
    known, _ = probe.parse_known_args(argv)
    info = None
    if known.method:
        try:
            info = get_method(known.method).info
        except UnknownMethod as error:
            return _print_error(
                Event(kind="error", job_id="-", error_kind=error.kind, message=str(error), hint=error.hint)
            )
    args = _edit_parser(info).parse_args(argv)
    try:
        request = _build_request(args, info)
    except InputError as error:
        return _print_error(Event(kind="error", job_id="-", error_kind=error.kind, message=str(error), hint=error.hint))
    return _run_edit(request, args)


def _build_request(args: argparse.Namespace, info: MethodInfo) -> EditRequest:
    from backend.imageio import read_image, read_mask

    return EditRequest(
        method=info.id,
        image=read_image(args.image) if args.image else None,
        params={
            spec.name: getattr(args, f"param_{spec.name}")
            for spec in info.params
            if getattr(args, f"param_{spec.name}") is not None
        },
        masks=dict(_parse_mask(item, info, read_mask) for item in args.mask),
        points=[_parse_points(item) for item in args.points],
        reference_image=read_image(args.reference) if args.reference else None,
        reference_mask=read_mask(args.reference_mask) if args.reference_mask else None,
        reference_placement=_parse_numbers(args.placement, "--placement", "X,Y,SCALE", 3, 3),
        move=_parse_numbers(args.move, "--move", "DX,DY[,SCALE]", 2, 3, default_last=1.0),
        source_prompt=args.source_prompt,
        target_prompt=args.target_prompt,
        negative_prompt=args.negative_prompt,
        object_prompts=[_parse_object(item, read_mask) for item in args.object],
        seed=args.seed,
        model=args.model,
    )


def _parse_mask(item: str, info: MethodInfo, read_mask) -> tuple[str, object]:
    role, sep, path = item.partition("=")
    if not sep:
        roles = [x.split(":", 1)[1] for x in (*info.inputs, *info.optional_inputs) if x.startswith("mask:")]
        if not roles:
            raise InputError(f"method '{info.id}' takes no mask")
        role, path = roles[0], item
    return role, read_mask(path)


def _parse_points(item: str) -> PointPair:
    try:
        handle, target = item.split(":")
        hx, hy = (float(v) for v in handle.split(","))
        tx, ty = (float(v) for v in target.split(","))
    except ValueError:
        raise InputError(f"point pair '{item}' is not of the form HX,HY:TX,TY (e.g. 20,30:40,30)") from None
    return PointPair((hx, hy), (tx, ty))


def _parse_numbers(
    item: str | None, flag: str, form: str, least: int, most: int, default_last: float = 0.0
) -> tuple[float, float, float] | None:
    if item is None:
        return None
    try:
        values = [float(v) for v in item.split(",")]
    except ValueError:
        values = []
    if not least <= len(values) <= most:
        raise InputError(f"{flag} '{item}' is not of the form {form}")
    return tuple(values + [default_last] * (3 - len(values)))


def _parse_object(item: str, read_mask) -> ObjectPrompt:
    parts = item.split("=")
    if len(parts) not in (2, 3):
        raise InputError(f"object '{item}' is not of the form MASK=PROMPT or MASK=PROMPT=SOURCE_WORD")
    return ObjectPrompt(mask=read_mask(parts[0]), prompt=parts[1], source=parts[2] if len(parts) == 3 else "")


def _run_edit(request: EditRequest, args: argparse.Namespace) -> int:
    from backend.client import BackendClient
    from backend.imageio import write_result

    bar = ProgressBar(enabled=not args.quiet)
    settings = {"device": args.device, "dtype": args.dtype, "previews": args.previews is not None}

    def on_event(event: Event) -> None:
        if event.kind == "progress":
            bar.update(event.step, event.total, event.stage)
        elif event.kind == "log":
            bar.message(event.message)
        elif event.kind == "preview" and args.previews is not None:
            _save_preview(args.previews, event)

    with BackendClient(settings) as client:
        try:
            final = client.run(request, on_event=on_event)
        except KeyboardInterrupt:
            # Ctrl+C = Cancel: the worker stops at the next step boundary and says so.
            client.cancel(request.job_id)
            final = _wait_terminal(client, request.job_id, seconds=30.0)
    bar.finish()
    if final is None:
        print("the backend did not confirm the cancel in time", file=sys.stderr)
        return EXIT_CANCELLED
    if final.kind == "error":
        return _print_error(final)
    if final.kind == "cancelled":
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    path = write_result(args.out, final.image, final.metadata)
    print(f"wrote {path} ({final.image.shape[1]}x{final.image.shape[0]}) in {final.metadata.get('seconds', 0):.1f} s")
    return 0


def _wait_terminal(client, job_id: str, seconds: float) -> Event | None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = client.poll(1.0)
        if event is not None and event.job_id == job_id and event.terminal:
            return event
    return None


def _save_preview(folder: Path, event: Event) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(event.image).save(folder / f"step_{event.step:04d}.png")


def _print_error(event: Event) -> int:
    print(f"error ({event.error_kind}): {event.message}", file=sys.stderr)
    if event.hint:
        print(f"  hint: {event.hint}", file=sys.stderr)
    return EXIT_ERROR


class ProgressBar:
    """One-line text progress: `[#########-----------]  9/20 sdedit`."""

    def __init__(self, enabled: bool = True, width: int = 30, stream=None) -> None:
        self.enabled, self.width, self.stream = enabled, width, stream or sys.stderr
        self._open = False

    def update(self, step: int, total: int, stage: str) -> None:
        if not self.enabled:
            return
        filled = int(self.width * step / total) if total else 0
        bar = "#" * filled + "-" * (self.width - filled)
        count = f"{step}/{total}" if total else "..."
        end = "\n" if not self.stream.isatty() else ""
        self.stream.write(f"\r[{bar}] {count:>9} {stage}{end}")
        self.stream.flush()
        self._open = self.stream.isatty()

    def message(self, text: str) -> None:
        if self.enabled:
            self.finish()
            self.stream.write(f"{text}\n")

    def finish(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


# --- segment -----------------------------------------------------------------------------------------------


def _segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from backend.errors import AtelierError
    from backend.imageio import read_image
    from backend.segment import make_segmenter

    try:
        image = read_image(args.image)
        include = [_numbers(item, 2, "--click") for item in args.click]
        exclude = [_numbers(item, 2, "--exclude") for item in args.exclude]
        box = _numbers(args.box, 4, "--box") if args.box else None
        segmenter = make_segmenter({"sam_checkpoint": args.sam_checkpoint})
        mask = segmenter.segment(image, include, exclude, box)
    except AtelierError as error:
        return _print_error(Event(kind="error", job_id="-", error_kind=error.kind, message=str(error), hint=error.hint))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(args.out)
    share = float((mask > 0).mean()) * 100
    print(f"wrote {args.out} ({segmenter.name}: {share:.1f}% of the image selected)")
    return 0


def _numbers(text: str, count: int, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(f"{flag} '{text}' needs {count} comma-separated numbers")
    return values


# --- bench -------------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from backend.bench import run_bench

    return run_bench(args)


# --- train-toyworld ----------------------------------------------------------------------------------------


EVAL_SUITES = {
    "eval-dragon": "DragonDiffusion's five tasks on toy-world scenes, judged by ground truth",
    "eval-mde": "MDE-Edit vs NTI + P2P on two-object toy-world edits, judged by ground truth",
    "eval-pix2pix": "DDIM + word swap vs pix2pix-zero vs pix2pix-zero + SIRG on toy-world word swaps",
    "eval-cora": "Cora vs TurboEdit on few-step structural toy-world edits (shape, move, add)",
    "eval-transfer": "Eye-for-an-eye vs the K/V swap on toy-world appearance transfers (whole, halves)",
}


def _eval_suite(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"backend.eval.{args.suite.removeprefix('eval-')}")
    return module.main(args.eval_args)


def _eval_report(args: argparse.Namespace) -> int:
    from backend.eval.report import main as report_main

    return report_main(args.eval_args)


def _train_toyworld(args: argparse.Namespace) -> int:
    from backend.models.toyworld.train import main as train_main

    return train_main(args.trainer_args)


def _toyworld_samples(args: argparse.Namespace) -> int:
    from backend.models.toyworld.samples import write_samples
    from backend.paths import resource_path

    for path in write_samples(args.folder or resource_path("samples")):
        print(path)
    return 0
