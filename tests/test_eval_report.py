"""`python -m backend eval`: the report runner (resumable rows, summaries, Markdown / CSV / plots) and user cases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from metric_models import save_tiny_clip, save_tiny_dino, save_tiny_lpips
from PIL import Image

from backend.errors import InputError
from backend.eval.cases import read_cases
from backend.eval.report import Suite, main, run_suites, summarise, wilson, write_report


def _fake_suite(calls: list, steps: int = 3) -> Suite:
    """Cases 0..n-1; the 'good' method succeeds on even cases, 'bad' never; each edit is recorded in `calls`."""

    def edit(_engine, case, target, params):
        calls.append((case, target, params["steps"]))
        return np.full((8, 8, 3), case * 10 + (target == "bad"), np.uint8)  # "bad" gets the picture wrong

    return Suite(
        name="fake",
        title="a fake suite",
        steps=steps,
        count=2,
        kinds=2,
        runs={"good": ("good", {}), "bad": ("bad", {"strength": 2})},
        make_cases=lambda total: list(range(total)),
        edit=edit,
        judge=lambda case, image: {
            "index": case,
            "success": case % 2 == 0 and image[0, 0, 0] == case * 10,
            "bg_psnr": 30.0 + case,
            "score": float(case),
        },
        case_id=lambda case: f"{case:03d}",
        group=lambda case: "even" if case % 2 == 0 else "odd",
        measures=("score",),
        engine=object(),
    )


def test_rows_are_kept_as_they_come_and_a_second_run_only_runs_what_is_missing(tmp_path):
    calls: list = []
    entries = run_suites([_fake_suite(calls)], tmp_path, progress=False)
    assert len(entries) == 8 and len(calls) == 8  # 2 per kind x 2 kinds x 2 methods
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 8
    assert (tmp_path / "images" / "fake" / "good" / "003.png").exists()
    assert (tmp_path / "images" / "fake" / "input" / "003.png").exists()
    again = run_suites([_fake_suite(calls)], tmp_path, progress=False)
    assert len(calls) == 8 and [e["row"] for e in again] == [e["row"] for e in entries]
    # A run killed while writing its last row: that edit runs again, the others are kept.
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    (tmp_path / "rows.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # no newline: cut short
    run_suites([_fake_suite(calls)], tmp_path, progress=False)
    assert len(calls) == 9
    assert len(run_suites([_fake_suite(calls)], tmp_path, progress=False)) == 8 and len(calls) == 9
    # Other settings are other rows: more cases or other steps run, the rows already there are reused.
    run_suites([_fake_suite(calls)], tmp_path, count=3, progress=False)
    assert len(calls) == 9 + 4
    run_suites([_fake_suite(calls, steps=5)], tmp_path, count=1, labels={"good"}, progress=False)
    assert calls[-2:] == [(0, "good", 5), (1, "good", 5)]


def test_an_edit_that_refuses_its_case_is_said_and_the_rest_runs(tmp_path, capsys):
    calls: list = []
    suite = _fake_suite(calls)
    edit = suite.edit

    def refusing(engine, case, target, params):
        if case == 1 and target == "bad":
            raise InputError("method 'bad' needs a mask")
        return edit(engine, case, target, params)

    suite.edit = refusing
    entries = run_suites([suite], tmp_path, progress=False)
    assert len(entries) == 7 and len(calls) == 7
    assert "fake bad 001: method 'bad' needs a mask" in capsys.readouterr().err


def test_summaries_count_successes_by_method_and_kind_with_wilson_intervals(tmp_path):
    entries = run_suites([_fake_suite([])], tmp_path, progress=False)
    good, bad = summarise(entries)
    assert (good["method"], good["success"], good["cases"], good["rate"]) == ("good", 2, 4, 0.5)
    assert good["by_kind"] == {"even": "2/2", "odd": "0/2"} and bad["success"] == 0
    assert good["mean_score"] == pytest.approx(1.5) and good["mean_bg_psnr"] == pytest.approx(31.5)
    assert wilson(0, 3)[0] == 0 and wilson(0, 3)[1] == pytest.approx(0.5615, abs=1e-3)
    low, high = wilson(2, 4)
    assert low < 0.5 < high and high - 0.5 == pytest.approx(0.5 - low)


def test_the_report_is_a_markdown_table_csv_files_and_plots(tmp_path):
    entries = run_suites([_fake_suite([])], tmp_path, progress=False)
    write_report(entries, tmp_path, {"fake": "a fake suite"}, {"model": "none", "wall_seconds": 1.0, "ran": 8})
    text = (tmp_path / "report.md").read_text()
    assert "| fake | good | 2/4 | 0.50 (0.15-0.85) | even 2/2, odd 0/2 | 31.5 | score 1.500 |" in text
    assert "| fake | bad | 0/4 |" in text and "**fake**: a fake suite" in text
    with (tmp_path / "summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert [row["method"] for row in summary] == ["good", "bad"] and summary[0]["mean_score"] == "1.5"
    with (tmp_path / "rows.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {"suite", "method", "case", "kind", "seconds", "success", "score"} <= rows[0].keys()
    for name in ("success.png", "by_kind.png", "background.png"):
        picture = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert picture.shape[0] > 100 and picture.std() > 10  # drawn, not blank


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch, capsys):
    import backend.eval.report as report

    monkeypatch.setattr(report, "can_plot", lambda: False)
    entries = run_suites([_fake_suite([])], tmp_path, progress=False)
    write_report(entries, tmp_path, {"fake": "a fake suite"}, {"model": "none", "wall_seconds": 1.0, "ran": 8})
    assert (tmp_path / "report.md").exists() and (tmp_path / "summary.csv").exists()
    assert not (tmp_path / "success.png").exists()
    assert "the tables are written, the plots are not" in capsys.readouterr().err


def test_eval_runs_the_toy_world_suites_and_resumes(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--suites", "cora", "--count", "1", "--out", str(out), "--no-progress"]) == 0
    text = (out / "report.md").read_text()
    assert "| cora | turboedit | " in text and "| cora | cora | " in text and "shape " in text
    assert "6 to run" in capsys.readouterr().err  # shape, move, add x turboedit, cora
    assert main(["--suites", "cora", "--count", "1", "--out", str(out), "--no-progress"]) == 0
    assert "6 already in" in capsys.readouterr().err
    arguments = ["--suites", "cora", "--count", "1", "--out", str(out), "--no-progress", "--ablations"]
    assert main(arguments) == 0  # only the ablation's three edits run
    assert (
        "6 already in" in capsys.readouterr().err
        and "| cora | cora-no-correction | " in (out / "report.md").read_text()
    )
    with pytest.raises(SystemExit):
        main(["--suites", "cora,nope", "--out", str(out)])
    assert "unknown suite(s) nope" in capsys.readouterr().err


def test_the_dragon_suite_measures_drags_by_md_beside_the_true_distance(tmp_path):
    out = tmp_path / "report"
    assert main(["--suites", "dragon", "--count", "1", "--param", "steps=4", "--out", str(out), "--no-progress"]) == 0
    rows = {e["kind"]: e["row"] for e in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {"move", "resize", "appearance", "paste", "drag"}
    truth = rows["drag"]["true_distance"]
    assert rows["drag"]["md"] >= 0 and (truth == "inf" or truth >= 0)  # inf: the object was not found
    assert "md" not in rows["move"]


@pytest.fixture
def case_folder(tmp_path):
    """A toy-world picture with a red circle: a Cora rewording, a drag and an appearance transfer."""
    image = np.full((128, 128, 3), 235, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    circle = (yy - 64) ** 2 + (xx - 40) ** 2 < 18**2
    image[circle] = (210, 40, 40)
    reference = np.full((128, 128, 3), 235, np.uint8)
    square = (abs(yy - 60) < 16) & (abs(xx - 80) < 16)
    reference[square] = (40, 60, 200)
    Image.fromarray(image).save(tmp_path / "scene.png")
    Image.fromarray(reference).save(tmp_path / "ref.png")
    Image.fromarray((circle * 255).astype(np.uint8)).save(tmp_path / "circle.png")
    Image.fromarray((square * 255).astype(np.uint8)).save(tmp_path / "square.png")
    cases = [
        {
            "name": "reword",
            "image": "scene.png",
            "methods": ["cora", "turboedit"],
            "source_prompt": "a red circle on a plain white background",
            "target_prompt": "a red square on a plain white background",
        },
        {
            "name": "drag",
            "image": "scene.png",
            "method": "dragon-drag",
            "points": [[[40, 64], [80, 64]]],
            "params": {"steps": 4},
        },
        {
            "name": "look",
            "image": "scene.png",
            "method": "eye-for-an-eye",
            "reference": "ref.png",
            "reference_mask": "square.png",
            "masks": {"edit": "circle.png"},
            "params": {"steps": 4},
        },
    ]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": cases}))
    return tmp_path


def test_user_cases_run_their_methods_and_get_the_metrics_that_apply(case_folder, tmp_path, capsys):
    out = tmp_path / "out"
    weights = [
        *("--clip", str(save_tiny_clip(tmp_path / "clip"))),
        *("--dino", str(save_tiny_dino(tmp_path / "dino"))),
        *("--lpips", str(save_tiny_lpips(tmp_path / "lpips"))),
    ]
    arguments = ["--cases", str(case_folder), "--model", "toyworld", "--out", str(out), "--no-progress"]
    assert main([*arguments, *weights]) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    ran = {(e["method"], e["case"]) for e in rows}
    assert ran == {("cora", "reword"), ("turboedit", "reword"), ("dragon-drag", "drag"), ("eye-for-an-eye", "look")}
    by_case = {(e["method"], e["case"]): e["row"] for e in rows}
    for row in by_case.values():
        assert row["success"] is None and 0 < row["bg_ssim"] <= 1  # no ground truth; background always measured
    assert "md" in by_case[("dragon-drag", "drag")] and by_case[("dragon-drag", "drag")]["md"] >= 0
    assert 0 <= by_case[("eye-for-an-eye", "look")]["a_hist"] <= 1
    assert "a_hist" not in by_case[("cora", "reword")] and "md" not in by_case[("cora", "reword")]
    # With weights given: CLIP score (whole and, without a mask, the same crop), CLIP-Acc (both prompts), DINO, LPIPS.
    reword = by_case[("cora", "reword")]
    assert reword["clip_score"] == reword["clip_score_region"] >= 0 and reword["clip_acc"] in (0.0, 1.0)
    assert reword["dist"] >= 0 and 0 <= reword["dist_v"] <= 2 and reword["bg_lpips"] > 0
    assert "clip_acc" not in by_case[("dragon-drag", "drag")]  # no prompts: nothing to compare
    # The masked transfer keeps everything outside its (grown) mask: the composite puts the input back there.
    assert (
        by_case[("eye-for-an-eye", "look")]["bg_psnr"] in ("inf", None)
        or by_case[("eye-for-an-eye", "look")]["bg_psnr"] > 40
    )
    look = np.asarray(Image.open(next((out / "images").glob("cases*/input/look.png"))))
    assert look.shape == (128, 256, 3)  # the picture and its reference side by side
    text = (out / "report.md").read_text()
    assert "| cases-" in text and "| dragon-drag |" in text
    assert main(["--cases", str(case_folder), "--model", "toyworld", "--out", str(out), "--methods", "cora"]) == 0
    assert "1 edits in 1 suite(s): 1 already in" in capsys.readouterr().err


def test_bad_case_files_are_refused_by_case_name_before_anything_runs(case_folder):
    document = json.loads((case_folder / "cases.json").read_text())
    for change, message in [
        ({"image": "gone.png"}, "case 'reword' (cases.json): image"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"methods": ["no-such-method"]}, "unknown method(s) no-such-method"),
        ({"methods": [], "method": None}, "names no method"),
    ]:
        broken = json.loads(json.dumps(document))
        broken["cases"][0].update(change)
        (case_folder / "cases.json").write_text(json.dumps(broken))
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_cases(case_folder)
    (case_folder / "cases.json").unlink()
    with pytest.raises(InputError, match="no cases.json or cases.yaml"):
        read_cases(case_folder)
    (case_folder / "cases.yaml").write_text("cases:\n  - name: one\n    image: scene.png\n    method: cora\n")
    (found,) = read_cases(case_folder)
    assert found.name == "one" and found.methods == ["cora"] and found.image.shape == (128, 128, 3)
