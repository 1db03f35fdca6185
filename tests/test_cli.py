"""`python -m backend`: the commands a user types, their output, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from backend.cli import main


@pytest.fixture
def files(tmp_path, scene):
    Image.fromarray(scene).save(tmp_path / "scene.png")
    mask = np.zeros(scene.shape[:2], np.uint8)
    mask[10:40, 30:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "scene.png").read_bytes()[:150])
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small_mask.png")
    return tmp_path


def sdedit_command(files, mask: str, prompt: str, out, *extra: str) -> list[str]:
    """`python -m backend edit --method sdedit` on the scene with `mask`, as a user would type it."""
    image, mask_path = str(files / "scene.png"), str(files / mask)
    head = [sys.executable, "-m", "backend", "edit", "--method", "sdedit", "--image", image, "--mask", mask_path]
    return [*head, "--prompt", prompt, "--out", str(out), *extra]


def test_list_methods_and_describe(capsys):
    assert main(["list-methods"]) == 0
    listing = capsys.readouterr().out
    assert "sdedit" in listing and "ddim-word-swap" in listing and "reconstruct" in listing
    assert main(["describe", "sdedit"]) == 0
    described = capsys.readouterr().out
    assert "--strength  float = 0.6 [0 .. 1]" in described and "mask:edit" in described
    assert main(["describe", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_edit_writes_a_png_with_its_recipe_and_shows_progress(files):
    out = files / "out" / "edited.png"
    extra = ["--steps", "6", "--strength", "0.5", "--seed", "3", "--previews", str(files / "previews")]
    command = sdedit_command(files, "mask.png", "a green circle", out, *extra)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "3/3 sdedit" in done.stderr  # strength 0.5 of 6 steps: three denoising steps, each reported
    assert f"wrote {out}" in done.stdout
    with Image.open(out) as image:
        assert image.size == (64, 64)
        parameters, recipe = image.text["parameters"], json.loads(image.text["atelier"])
    assert parameters.splitlines()[0] == "a green circle"
    assert "Steps: 6" in parameters and "Seed: 3" in parameters and "Model: toyworld" in parameters  # the default model
    assert recipe["recipe"]["params"]["strength"] == 0.5 and recipe["method"] == "sdedit"
    assert sorted(p.name for p in (files / "previews").iterdir()) == [f"step_000{i}.png" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "sdedit", "--image", "truncated.png", "--prompt", "x"], "cannot read image file"),
        (["--method", "sdedit", "--image", "missing.png", "--prompt", "x"], "does not exist"),
        (["--method", "sdedit", "--image", "scene.png", "--mask", "missing.png", "--prompt", "x"], "does not exist"),
        (["--method", "nope", "--image", "scene.png"], "unknown method 'nope'"),
        (["--method", "sdedit", "--image", "scene.png", "--points", "1,2", "--prompt", "x"], "HX,HY:TX,TY"),
        (["--method", "dragon-move", "--image", "scene.png", "--mask", "mask.png", "--move", "3"], "DX,DY[,SCALE]"),
        (["--method", "dragon-paste", "--image", "scene.png", "--placement", "a,b,c"], "X,Y,SCALE"),
    ],
)
def test_edit_input_errors_before_any_model_work(files, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(files)
    assert main(["edit", *arguments, "--out", "o.png"]) == 2
    assert message in capsys.readouterr().err
    assert not (files / "o.png").exists()


def test_edit_errors_from_the_worker_are_printed_with_their_hint(files):
    command = sdedit_command(files, "small_mask.png", "x", files / "o.png")
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2
    assert "error (bad-input): mask 'edit' is 20x20 but the image is 64x64" in done.stderr
    assert "hint: Masks must have the size of the image" in done.stderr
    assert not (files / "o.png").exists()


def test_bench_reports_each_method_as_a_ratio_to_sampling(tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert main(["bench", "--steps", "2", "--json", str(report)]) == 0
    rows = {row["method"]: row for row in json.loads(report.read_text())["rows"]}
    assert rows["ddim-sampling"]["ratio"] == 1.0
    assert {"sdedit", "reconstruct", "ddim-word-swap", "dragon-move", "dragon-drag", "dragon-paste"} <= rows.keys()
    for row in rows.values():
        assert row["seconds"] > 0 and row["ratio"] == pytest.approx(row["seconds"] / rows["ddim-sampling"]["seconds"])
    moved = rows["dragon-move"]
    assert moved["rerun_ratio"] == pytest.approx(moved["rerun_seconds"] / rows["ddim-sampling"]["seconds"])
    # One preview per denoising step, costed from the measured per-step preview time; memory measured on the CPU too.
    setup = json.loads(report.read_text())["setup"]
    assert setup["preview_seconds_per_step"] > 0
    assert rows["sdedit"]["previews"] >= 1 and rows["reconstruct"]["previews"] >= 2
    for row in rows.values():
        if row["method"] != "ddim-sampling":
            assert row["preview_seconds"] == pytest.approx(row["previews"] * setup["preview_seconds_per_step"])
            assert 0 < row["preview_share"] < 1
    assert all(row["peak_bytes"] >= 0 for row in rows.values())
    out = capsys.readouterr().out
    assert "ratio = method time / plain DDIM sampling time" in out and "re-run = the same edit again" in out
    assert "ms per step (latent -> RGB + PNG event)" in out and "CPU peak allocated above the start" in out


def test_bench_memory_peak_sees_each_runs_allocation_even_after_the_memory_was_freed_once():
    import time

    import torch

    from backend.bench import MemoryPeak

    for _ in range(2):  # the second time the freed pages may still be resident: the figure must not read 0
        with MemoryPeak() as peak:
            block = torch.ones(12_500_000)  # 50 MB
            time.sleep(0.05)
            del block
        assert 45e6 < peak.growth < 80e6


def test_bench_goals_measure_each_method_at_its_issues_steps_against_its_aim(tmp_path, capsys):
    report = tmp_path / "goals.json"
    arguments = ["bench", "--goals", "--methods", "cora,turboedit,dragon-move", "--repeat", "1", "--json", str(report)]
    assert main(arguments) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [(row["method"], row["steps"]) for row in rows] == [
        ("ddim-sampling", 4),
        ("turboedit", 4),
        ("cora", 4),
        ("ddim-sampling", 50),
        ("dragon-move", 50),
    ]
    by_method = {row["method"]: row for row in rows}
    assert by_method["cora"]["goal"] == 2.0 and by_method["dragon-move"]["goal"] == 3.0
    assert "goal" not in by_method["turboedit"]  # a baseline beside Cora, no aim of its own
    for name in ("cora", "dragon-move"):
        row = by_method[name]
        assert row["met"] == (row["ratio"] <= row["goal"]) and row["rerun_met"] == (row["rerun_ratio"] <= row["goal"])
    assert "met (first / re-run)" in capsys.readouterr().out


def test_segment_writes_the_clicked_objects_mask(tmp_path, scene, capsys):
    Image.fromarray(scene).save(tmp_path / "scene.png")
    out = tmp_path / "mask.png"
    assert main(["segment", "--image", str(tmp_path / "scene.png"), "--click", "15,30", "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out))
    square = np.zeros(scene.shape[:2], bool)
    square[20:44, 6:30] = True  # the red square of the scene fixture
    assert (mask[square] == 255).mean() > 0.95 and (mask[~square] == 0).mean() > 0.98
    assert "fallback" in capsys.readouterr().out
    assert main(["segment", "--image", str(tmp_path / "scene.png"), "--click", "15", "--out", str(out)]) == 2
    assert "--click '15' needs 2 comma-separated numbers" in capsys.readouterr().err


def test_the_toy_world_suites_run_from_the_cli_and_write_their_tables(tmp_path, capsys):
    """`eval-dragon`, `eval-mde`, `eval-pix2pix`, `eval-cora` and `eval-transfer` (their own flags, sweeps) on a few
    cases: the JSON holds the judged rows and the summary; a wrong variant is refused by name."""
    dragon, mde = tmp_path / "dragon.json", tmp_path / "mde.json"
    assert main(["eval-dragon", "--tasks", "move", "--count", "1", "--steps", "2", "--json", str(dragon)]) == 0
    moved = json.loads(dragon.read_text())["tasks"]["move"]
    assert moved["summary"]["cases"] == 1 and {"reached", "bg_psnr", "success"} <= moved["rows"][0].keys()
    arguments = ["eval-mde", "--count", "1", "--steps", "2", "--variants", "nti-p2p", "--json", str(mde)]
    assert main([*arguments, "--param", "nti_inner_steps=1"]) == 0
    report = json.loads(mde.read_text())["variants"]["nti-p2p"]
    assert report["summary"]["cases"] == 1 and {"edited", "bg_ssim", "overlapping"} <= report["rows"][0].keys()
    assert "nti-p2p SUMMARY" in capsys.readouterr().out
    words = tmp_path / "pix2pix.json"
    arguments = ["eval-pix2pix", "--count", "2", "--steps", "2", "--variants", "pix2pix-zero", "--json", str(words)]
    assert main([*arguments, "--param", "bank_size=10", "--sweep", "free_steps=0,1"]) == 0
    runs = json.loads(words.read_text())["runs"]
    assert list(runs) == ["pix2pix-zero", "sirg free_steps=0", "sirg free_steps=1"]
    assert [r["kind"] for r in runs["pix2pix-zero"]["rows"]] == ["shape", "colour"]
    assert {"edit_ok", "position_error", "structure_iou", "bg_psnr"} <= runs["sirg free_steps=1"]["rows"][0].keys()
    few = tmp_path / "cora.json"
    assert main(["eval-cora", "--count", "3", "--sweep", "alpha=0,1", "--json", str(few)]) == 0
    runs = json.loads(few.read_text())["runs"]
    assert list(runs) == ["turboedit", "cora", "cora alpha=0", "cora alpha=1"]
    assert [r["kind"] for r in runs["cora"]["rows"]] == ["shape", "move", "add"]
    assert {"look_change", "iou_source", "left_behind"} <= runs["cora alpha=0"]["rows"][1].keys()
    arguments = ["eval-cora", "--count", "2", "--kinds", "colour,move", "--mask", "--variants", "cora"]
    assert main([*arguments, "--json", str(few)]) == 0
    rows = json.loads(few.read_text())["runs"]["cora"]["rows"]
    assert [r["kind"] for r in rows] == ["colour", "move"] and all(-1 < r["toward_prompt"] < 2 for r in rows)
    with pytest.raises(SystemExit):
        main(["eval-cora", "--kinds", "colour,nope"])
    transfer = tmp_path / "transfer.json"
    arguments = ["eval-transfer", "--count", "2", "--steps", "10", "--variants", "eye-for-an-eye,kv-swap"]
    assert main([*arguments, "--json", str(transfer)]) == 0
    runs = json.loads(transfer.read_text())["runs"]
    assert [r["kind"] for r in runs["eye-for-an-eye"]["rows"]] == ["whole", "halves"]
    assert 0 <= runs["eye-for-an-eye"]["rows"][0]["side_agreement"] <= 1
    assert {"a_hist", "edges", "iou", "halves_ok"} <= runs["kv-swap"]["rows"][1].keys()
    with pytest.raises(SystemExit):
        main(["eval-mde", "--variants", "mde-edit,nope"])
    assert "unknown variant(s) nope" in capsys.readouterr().err
