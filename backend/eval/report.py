"""`python -m backend eval`: every method on its suite, one report - a table (Markdown and CSV) and plots (PNG).

Suites:
- the built-in toy-world suites, one per method issue, each judged by the world's ground truth (success as the
  suite defines it, and what was kept outside the edit):
  dragon (DragonDiffusion's five tasks), mde (MDE-Edit vs NTI + P2P), pix2pix (word swap vs pix2pix-zero with and
  without step-injection guidance), cora (Cora vs TurboEdit), transfer (Eye-for-an-eye vs the K/V swap);
- a folder of your own cases (`--cases FOLDER`, see backend/eval/cases.py): real pictures, no ground truth, so
  measured by the papers' metrics (background PSNR / SSIM / LPIPS, CLIP score and CLIP-Acc, DINO Dist, A_hist, MD)
  where their weights are on the machine.

Every edit's judged row is appended to `<out>/rows.jsonl` as it finishes, so a run that stops (Ctrl+C, a crash, a
closed laptop) goes on where it was when started again with the same settings; `--fresh` starts over. The report
is rewritten from all rows at the end: `<out>/report.md`, `<out>/summary.csv`, `<out>/rows.csv`, and the plots
`<out>/success.png` (success rate per method and suite, 95 % Wilson intervals), `<out>/by_kind.png` and
`<out>/background.png`. Result pictures go to `<out>/images/<suite>/<method>/<case>.png`, each case's input (and
reference) to `<out>/images/<suite>/input/<case>.png`.

    python -m backend eval                          # every toy-world suite, the report's case counts
    python -m backend eval --suites cora,transfer --count 2 --out /tmp/quick
    python -m backend eval --cases my_cases/ --model /models/sd15 --clip openai/clip-vit-large-patch14
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError
from backend.eval.suite import param_value


@dataclass
class Suite:
    """One suite as the report runs it: its cases, the methods (runs) compared on them, and how each is judged."""

    name: str
    title: str
    steps: int
    count: int  # cases per kind in the default report
    kinds: int  # how many kinds the cases cycle through (count x kinds cases in all)
    runs: dict[str, tuple[str, dict[str, Any]]]  # label -> (method or variant, parameters)
    make_cases: Callable[[int], list]
    edit: Callable[[Any, Any, str, dict[str, Any]], np.ndarray]
    judge: Callable[[Any, np.ndarray], dict[str, Any]]
    case_id: Callable[[Any], str]
    group: Callable[[Any], str]
    measures: tuple[str, ...] = ()  # the suite's own headline measures (row columns), shown in the report
    ablations: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # run with --ablations
    model: str = "toyworld"
    cache_bytes: int = 2**30
    applies: Callable[[Any, str], bool] = lambda _case, _label: True  # does this run apply to this case?
    engine: Any = field(default=None, repr=False)


def _dragon() -> Suite:
    from backend.eval import dragon

    def make(count: int) -> list:
        return [case for task in dragon.TASKS for case in dragon.cases(task, count)]

    dift: list = []  # the DIFT extractor of the suite's engine, made on the first drag

    def judge(case, image: np.ndarray) -> dict[str, Any]:
        """The suite's ground-truth judgement; for drags also MD (DIFT on the toy model's own UNet) beside the true
        distance of the dragged object from its target, so the metric can be checked against the truth."""
        row = dragon.judge(case, image)
        if case.task == "drag":
            from backend.eval.metrics import dift_extractor, drag_mean_distance

            if not dift:
                dift.append(dift_extractor(suite.engine))
            handles = [p.handle for p in case.request.points]
            targets = [p.target for p in case.request.points]
            row["md"] = round(drag_mean_distance(dift[0], case.image, image, handles, targets), 2)
            row["true_distance"] = round(row["distance_ratio"] * float(np.hypot(*case.expect["vector"])), 2)
        return row

    suite = Suite(
        "dragon",
        "DragonDiffusion: move, resize, appearance, paste, drag",
        steps=50,
        count=6,
        kinds=len(dragon.TASKS),
        runs={"dragondiffusion": ("dragon", {})},
        make_cases=lambda total: make(max(total // len(dragon.TASKS), 1)),
        edit=lambda engine, case, _target, params: dragon.run_case(engine, case, params)[0],
        judge=judge,
        measures=("reached", "iou", "offset", "md", "true_distance"),
        case_id=lambda case: f"{case.task}-{case.index:03d}",
        group=lambda case: case.task,
        cache_bytes=0,  # as eval-dragon: every task inverts its own picture once
    )
    return suite


def _mde() -> Suite:
    from backend.eval import mde

    return Suite(
        "mde",
        "MDE-Edit vs NTI + P2P: two-object edits",
        steps=50,
        count=10,
        kinds=1,
        runs={label: (label, {}) for label in ("mde-edit", "nti-p2p")},
        ablations={label: (label, {}) for label in ("mde-no-oal", "mde-no-ccl", "mde-no-losses")},
        make_cases=mde.cases,
        edit=lambda engine, case, target, params: mde.run_case(engine, case, target, params)[0],
        judge=mde.judge,
        measures=("bg_ssim",),
        case_id=lambda case: f"{case.index:03d}",
        group=lambda case: "overlapping" if case.overlapping else "apart",
    )


def _pix2pix() -> Suite:
    from backend.eval import pix2pix

    return Suite(
        "pix2pix",
        "pix2pix-zero (+ step-injection guidance) vs DDIM word swap",
        steps=50,
        count=6,
        kinds=len(pix2pix.KINDS),
        runs={label: (label, {}) for label in pix2pix.VARIANTS},
        make_cases=pix2pix.cases,
        edit=lambda engine, case, target, params: pix2pix.run_case(engine, case, target, params)[0],
        judge=pix2pix.judge,
        measures=("structure_iou", "position_error"),
        case_id=lambda case: f"{case.index:03d}",
        group=lambda case: case.kind,
    )


def _cora() -> Suite:
    from backend.eval import cora

    return Suite(
        "cora",
        "Cora vs TurboEdit: few-step structural edits (shape, move, add)",
        steps=4,
        count=10,
        kinds=len(cora.KINDS),
        runs={label: (method_id, {}) for label, method_id in cora.VARIANTS.items()},
        ablations={"cora-no-correction": ("cora", {"latent_correction": False})},
        make_cases=cora.cases,
        edit=lambda engine, case, target, params: cora.run_case(engine, case, target, params),
        judge=cora.judge,
        measures=("toward_prompt", "iou_source", "look_change"),
        case_id=lambda case: f"{case.index:03d}",
        group=lambda case: case.kind,
    )


def _transfer() -> Suite:
    from backend.eval import transfer

    return Suite(
        "transfer",
        "Eye-for-an-eye vs the K/V swap: appearance transfer (whole, halves)",
        steps=100,
        count=5,
        kinds=len(transfer.KINDS),
        runs={label: (transfer.METHOD, transfer.VARIANTS[label]) for label in ("eye-for-an-eye", "kv-swap")},
        ablations={label: (transfer.METHOD, transfer.VARIANTS[label]) for label in ("values", "no-adain")},
        make_cases=transfer.cases,
        edit=lambda engine, case, target, params: transfer.run_case(engine, case, target, params),
        judge=transfer.judge,
        measures=("iou", "a_hist", "edges", "side_agreement"),
        case_id=lambda case: f"{case.index:03d}",
        group=lambda case: case.kind,
    )


BUILTIN = {"dragon": _dragon, "mde": _mde, "pix2pix": _pix2pix, "cora": _cora, "transfer": _transfer}


# --- running: resumable rows -------------------------------------------------------------------------------------


def _key(suite: str, label: str, case_id: str, params: dict[str, Any], model: str) -> str:
    setting = json.dumps({"params": params, "model": model}, sort_keys=True, default=str)
    return f"{suite}|{label}|{case_id}|{hashlib.sha1(setting.encode()).hexdigest()[:10]}"


def _load_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows written so far (a line cut short by a crash is left out: its edit runs again)."""
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[entry["key"]] = entry
    return rows


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def run_suites(
    suites: list[Suite],
    out: Path,
    count: int | None = None,
    labels: set[str] | None = None,
    extra_params: dict[str, Any] | None = None,
    progress: bool = True,
    engine_for: Callable[[Suite], Any] | None = None,
    ablations: bool = False,
) -> list[dict[str, Any]]:
    """Run what `out/rows.jsonl` does not hold yet; return every row of these suites and settings."""
    from tqdm import tqdm

    from backend.eval.suite import suite_engine

    out.mkdir(parents=True, exist_ok=True)
    store = out / "rows.jsonl"
    done = _load_rows(store)
    plan = []
    for suite in suites:
        cases = suite.make_cases((count or suite.count) * suite.kinds)
        params = {"steps": suite.steps} if suite.steps else {}
        params.update(extra_params or {})
        for case in cases:
            for label, (target, run_params) in (suite.runs | (suite.ablations if ablations else {})).items():
                if (labels and label not in labels) or not suite.applies(case, label):
                    continue
                merged = {**params, **run_params}
                key = _key(suite.name, label, suite.case_id(case), merged, suite.model)
                plan.append((suite, case, label, target, merged, key))
    todo = [item for item in plan if item[-1] not in done]
    print(
        f"{len(plan)} edits in {len(suites)} suite(s): {len(plan) - len(todo)} already in {store}, {len(todo)} to run",
        file=sys.stderr,
        flush=True,
    )
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), disable=not progress, unit="edit", file=sys.stderr)
    if store.exists() and store.stat().st_size and not store.read_bytes().endswith(b"\n"):
        with store.open("a") as sink:  # a line cut short by a crash: the next row starts on a line of its own
            sink.write("\n")
    failed = []
    with store.open("a") as sink:
        for suite, case, label, target, params, key in todo:
            if suite.engine is None:
                suite.engine = engine_for(suite) if engine_for else suite_engine(suite.model, suite.cache_bytes)
            bar.set_description(f"{suite.name} {label}")
            began = time.perf_counter()
            try:
                image = suite.edit(suite.engine, case, target, params)
            except InputError as exc:  # a case this method cannot take: said, skipped, the rest runs
                failed.append(f"{suite.name} {label} {suite.case_id(case)}: {exc}")
                bar.write(f"skipped {failed[-1]}", file=sys.stderr)
                bar.update(1)
                continue
            seconds = time.perf_counter() - began
            row = {name: _json_safe(value) for name, value in suite.judge(case, image).items()}
            entry = {
                "key": key,
                "suite": suite.name,
                "method": label,
                "case": suite.case_id(case),
                "kind": suite.group(case),
                "seconds": round(seconds, 3),
                "measures": list(suite.measures),
                "row": row,
            }
            sink.write(json.dumps(entry) + "\n")
            sink.flush()
            done[key] = entry
            _save_image(out / "images" / suite.name / label / f"{suite.case_id(case)}.png", image)
            inputs = out / "images" / suite.name / "input" / f"{suite.case_id(case)}.png"
            if not inputs.exists():
                _save_image(inputs, _input_strip(case, image.shape))
            bar.update(1)
    bar.close()
    if failed:
        print(f"{len(failed)} edit(s) could not run (left out of the report):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
    return [done[item[-1]] for item in plan if item[-1] in done]


def _input_strip(case: Any, shape: tuple[int, ...]) -> np.ndarray:
    """What the case starts from: its picture, and the reference picture beside it when it has one."""
    request = getattr(case, "request", None)
    picture = getattr(case, "image", None)
    if picture is None and request is not None:
        picture = request.image
    reference = getattr(case, "reference_image", None)
    if reference is None and request is not None:
        reference = request.reference_image
    parts = [p for p in (picture, reference) if p is not None]
    if not parts:
        return np.zeros(shape, np.uint8)
    height = max(p.shape[0] for p in parts)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in parts]
    return np.concatenate(padded, axis=1)


def _save_image(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


# --- summaries, tables and plots ---------------------------------------------------------------------------------


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(centre - half, 0.0), min(centre + half, 1.0))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if value in ("inf", "-inf"):
        return None  # an untouched background: left out of the means, as the suites do
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def summarise(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (suite, method), in the order they first appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault((entry["suite"], entry["method"]), []).append(entry)
    summaries = []
    for (suite, method), members in groups.items():
        rows = [m["row"] for m in members]
        judged = [r for r in rows if r.get("success") is not None]
        successes = sum(bool(r["success"]) for r in judged)
        low, high = wilson(successes, len(judged))
        summary: dict[str, Any] = {
            "suite": suite,
            "method": method,
            "cases": len(rows),
            "success": successes if judged else None,
            "rate": successes / len(judged) if judged else None,
            "rate_low": low if judged else None,
            "rate_high": high if judged else None,
            "seconds_per_edit": float(np.mean([m["seconds"] for m in members])),
            "measures": list(members[0].get("measures", [])),
        }
        kinds: dict[str, list[bool]] = {}
        for m in members:
            if m["row"].get("success") is not None:
                kinds.setdefault(m["kind"], []).append(bool(m["row"]["success"]))
        summary["by_kind"] = {kind: f"{sum(found)}/{len(found)}" for kind, found in kinds.items()}
        names = [name for name in dict.fromkeys(k for r in rows for k in r) if name not in ("index", "success")]
        for name in names:
            values = [v for v in (_number(r.get(name)) for r in rows) if v is not None]
            if values:
                summary[f"mean_{name}"] = float(np.mean(values))
        summaries.append(summary)
    return summaries


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(
    summaries: list[dict[str, Any]], titles: dict[str, str], meta: dict[str, Any], pictures: list[str] = ()
) -> str:
    lines = [
        "# Atelier evaluation report",
        "",
        f"Model `{meta['model']}`; {meta['edits']} edits; written {meta['written']}; wall time of this run "
        f"{meta['wall_seconds']:.0f} s ({meta['ran']} edits run, the rest read back from rows.jsonl).",
    ]
    if any(s["rate"] is not None for s in summaries):
        lines.append(
            "Success is each suite's own ground-truth judgement (see its module docstring in backend/eval/); the "
            "interval is the 95 % Wilson interval of the success rate. BG-PSNR is measured outside the edited objects "
            "(dB; an untouched background counts as infinite and is left out of the mean)."
        )
    if any(s["rate"] is None for s in summaries):
        lines.append(
            "Your own cases have no ground truth (success '-'): they are measured against the input outside the "
            "case's masks (the whole picture when it has none) and by the metrics whose weights were given."
        )
    lines += [
        "",
        "| suite | method | success | rate (95 % CI) | by kind | BG-PSNR dB | its own measures (means) | s / edit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        rate = "-" if s["rate"] is None else f"{s['rate']:.2f} ({s['rate_low']:.2f}-{s['rate_high']:.2f})"
        success = "-" if s["success"] is None else f"{s['success']}/{s['cases']}"
        kinds = ", ".join(f"{k} {v}" for k, v in s["by_kind"].items()) or "-"
        own = ", ".join(f"{m} {_cell(s[f'mean_{m}'], 3)}" for m in s["measures"] if f"mean_{m}" in s) or "-"
        lines.append(
            f"| {s['suite']} | {s['method']} | {success} | {rate} | {kinds} | "
            f"{_cell(s.get('mean_bg_psnr'), 1)} | {own} | {_cell(s['seconds_per_edit'])} |"
        )
    lines += ["", "Suites:", ""]
    lines += [f"- **{name}**: {title}" for name, title in titles.items()]
    measured = sorted({k for s in summaries for k in s if k.startswith("mean_") and k != "mean_bg_psnr"})
    if measured:
        lines += ["", "Every suite's own measures (means over its cases) are in summary.csv; each edit in rows.csv."]
    lines += ["", f"Plots: {', '.join(pictures)}." if pictures else "No plots (see above).", ""]
    return "\n".join(lines)


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for record in records:
        columns += [name for name in record if name not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in record.items()})


PLOTS_SKIPPED = "matplotlib is not installed: the tables are written, the plots are not (pip install -e '.[eval]')"


def can_plot() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plots(summaries: list[dict[str, Any]], folder: Path) -> list[Path]:
    """success.png, by_kind.png and background.png; matplotlib (the `eval` extra) draws them."""
    if not can_plot():
        print(PLOTS_SKIPPED, file=sys.stderr)
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [s for s in summaries if s["rate"] is not None]
    written = []
    suites = list(dict.fromkeys(s["suite"] for s in summaries))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(suites)}

    def bars(items, value, low=None, high=None, xlabel="", name="", xlim=None):
        figure, axes = plt.subplots(figsize=(8, 0.45 * len(items) + 1.2))
        ys = np.arange(len(items))[::-1]
        values = [value(s) for s in items]
        errors = None
        if low and high:
            errors = np.array([[v - low(s), high(s) - v] for s, v in zip(items, values)]).T
        axes.barh(ys, values, xerr=errors, color=[colours[s["suite"]] for s in items], capsize=3)
        axes.set_yticks(ys, [f"{s['suite']}: {s['method']}" for s in items])
        axes.set_xlabel(xlabel)
        if xlim:
            axes.set_xlim(*xlim)
        figure.tight_layout()
        path = folder / name
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

    if judged:
        bars(
            judged,
            lambda s: s["rate"],
            lambda s: s["rate_low"],
            lambda s: s["rate_high"],
            "success rate (ground truth), 95 % Wilson interval",
            "success.png",
            (0, 1),
        )
    with_bg = [s for s in summaries if s.get("mean_bg_psnr") is not None]
    if with_bg:
        bars(
            with_bg,
            lambda s: s["mean_bg_psnr"],
            xlabel="background PSNR (dB), higher = more kept",
            name="background.png",
        )
    if judged:
        figure, axes_list = plt.subplots(1, len(suites), figsize=(3.2 * len(suites), 3.2), squeeze=False)
        for axes, suite in zip(axes_list[0], suites):
            members = [s for s in judged if s["suite"] == suite]
            kinds = list(dict.fromkeys(k for s in members for k in s["by_kind"]))
            width = 0.8 / max(len(members), 1)
            for i, s in enumerate(members):
                rates = []
                for kind in kinds:
                    got, total = (int(x) for x in s["by_kind"].get(kind, "0/0").split("/"))
                    rates.append(got / total if total else 0)
                axes.bar(np.arange(len(kinds)) + i * width, rates, width, label=s["method"])
            axes.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds, rotation=30)
            axes.set_ylim(0, 1)
            axes.set_title(suite)
            axes.legend(fontsize=7)
        axes_list[0][0].set_ylabel("success rate")
        figure.tight_layout()
        path = folder / "by_kind.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def write_report(entries: list[dict[str, Any]], out: Path, titles: dict[str, str], meta: dict[str, Any]) -> dict:
    summaries = summarise(entries)
    meta = {**meta, "edits": len(entries), "written": time.strftime("%Y-%m-%d %H:%M")}
    pictures = [path.name for path in plots(summaries, out)]
    (out / "report.md").write_text(markdown(summaries, titles, meta, pictures))
    write_csv(out / "summary.csv", summaries)
    flat = [
        {"suite": e["suite"], "method": e["method"], "case": e["case"], "kind": e["kind"], "seconds": e["seconds"]}
        | e["row"]
        for e in entries
    ]
    write_csv(out / "rows.csv", flat)
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summaries": summaries}, indent=2))
    return {"summaries": summaries, "meta": meta}


# --- command line ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend eval", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suites",
        help=f"built-in toy-world suites, comma-separated, of: {', '.join(BUILTIN)} (default: all, none with --cases)",
    )
    parser.add_argument("--count", type=int, help="cases per kind in each suite (default: each suite's report count)")
    parser.add_argument("--methods", default="", help="only these methods / variants (comma-separated labels)")
    parser.add_argument("--ablations", action="store_true", help="also the papers' ablations (mde, cora, transfer)")
    parser.add_argument("--cases", type=Path, help="a folder of your own cases (cases.json or cases.yaml)")
    parser.add_argument("--model", default=None, help="model of --cases (toy-world suites use the toy-world model)")
    parser.add_argument("--clip", default="", help="CLIP weights (folder or cached hub id) for CLIP score / CLIP-Acc")
    parser.add_argument("--dino", default="", help="DINO ViT weights for Dist / Dist_v")
    parser.add_argument("--lpips", default="", help="folder with VGG16 + LPIPS layers for background LPIPS")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter of every run")
    parser.add_argument("--out", type=Path, default=Path("eval-report"), help="report folder (default: eval-report)")
    parser.add_argument("--fresh", action="store_true", help="forget the rows of earlier runs in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.suites is None:
        args.suites = "" if args.cases is not None else ",".join(BUILTIN)
    names = [name for name in args.suites.split(",") if name]
    unknown = [name for name in names if name not in BUILTIN]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; expected some of {', '.join(BUILTIN)}")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    suites = [BUILTIN[name]() for name in names]
    extra = {name: param_value(value) for name, _, value in (item.partition("=") for item in args.param)}
    if args.cases is not None:
        from backend.eval.cases import user_suite

        suites.append(user_suite(args.cases, args.model, clip=args.clip, dino=args.dino, lpips=args.lpips))
    if not suites:
        parser.error("nothing to run: give --suites or --cases")
    if not can_plot():  # said before the run, not after it
        print(PLOTS_SKIPPED, file=sys.stderr)
    if args.fresh and (args.out / "rows.jsonl").exists():
        (args.out / "rows.jsonl").unlink()
    labels = {label for label in args.methods.split(",") if label} or None
    began = time.perf_counter()
    before = len(_load_rows(args.out / "rows.jsonl"))
    entries = run_suites(
        suites, args.out, args.count, labels, extra, progress=not args.no_progress, ablations=args.ablations
    )
    ran = len(_load_rows(args.out / "rows.jsonl")) - before
    meta = {
        "model": ", ".join(dict.fromkeys(s.model for s in suites)),
        "wall_seconds": time.perf_counter() - began,
        "ran": ran,
        "count": args.count,
        "params": extra,
    }
    report = write_report(entries, args.out, {s.name: s.title for s in suites}, meta)
    print((args.out / "report.md").read_text())
    print(f"written to {args.out}/ (report.md, summary.csv, rows.csv and the plots it names)")
    return 0 if report["summaries"] else 1
