"""The PyInstaller build without building it (a build takes many minutes: packaging/README.md): the spec ships
resources/ and names what PyInstaller cannot find by itself, build.py says what it would run, the frozen entry point
calls freeze_support first, and `--self-test` passes from source with the tiny model.

PyInstaller itself is not needed: the spec runs here against stand-ins for PyInstaller's hooks and build classes.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest
from app_process import run_app
from PIL import Image

from desktop_app.self_test import FALLBACK_MODEL, TOYWORLD, choose_model

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"


def load_script(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, PACKAGING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def backend_imports() -> types.ModuleType:
    return load_script("backend_imports")


@pytest.fixture(scope="module")
def traced(backend_imports) -> list[str]:
    """The real trace of the backend's lazy imports (one subprocess that imports torch and loads the tiny models)."""
    return backend_imports.traced_modules()


# A few of the files the torch hook collects, as PyInstaller lists them (name in the bundle, source, kind).
TORCH_BINARIES = [
    (f"torch/{name}", f"/site-packages/torch/{name}", "BINARY")
    for name in ("lib/libtorch_cpu.so", "bin/torch_shm_manager", "bin/test_api", "bin/protoc", "test/Dict_test")
]


class Recorded:
    """Stands in for PyInstaller's Analysis / PYZ / EXE / COLLECT: keeps what the spec passed."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs
        self.pure, self.scripts, self.binaries, self.datas = [], [], list(TORCH_BINARIES), []


@pytest.fixture
def spec_globals(monkeypatch, backend_imports, traced) -> dict:
    """Execute packaging/atelier.spec as PyInstaller would; returns the spec's namespace."""
    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_submodules = lambda package: [package, f"{package}.worker"] if package == "backend" else [package]
    hooks.copy_metadata = lambda distribution, recursive=False: [
        (f"{distribution}.dist-info", f"{distribution}.dist-info")
    ]
    for name in ("PyInstaller", "PyInstaller.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)
    stub = types.ModuleType("backend_imports")
    stub.traced_modules = lambda: traced
    stub.unused_transformers_models = backend_imports.unused_transformers_models
    monkeypatch.setitem(sys.modules, "backend_imports", stub)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the spec puts packaging/ first
    namespace = {"SPECPATH": str(PACKAGING), "__file__": str(PACKAGING / "atelier.spec")}
    namespace |= {name: Recorded for name in ("Analysis", "PYZ", "EXE", "COLLECT")}
    code = compile((PACKAGING / "atelier.spec").read_text(), str(PACKAGING / "atelier.spec"), "exec")
    exec(code, namespace)
    return namespace


def test_the_trace_finds_the_lazily_imported_model_parts(backend_imports, traced):
    for module in (
        "diffusers.models.unets.unet_2d_condition",
        "diffusers.models.autoencoders.autoencoder_kl",
        "diffusers.schedulers.scheduling_ddim",
        "transformers.models.clip.modeling_clip",
        "transformers.models.clip.tokenization_clip",
    ):
        assert module in traced
    unused = backend_imports.unused_transformers_models(traced)
    assert "transformers.models.bert" in unused and "transformers.models.llama" in unused
    assert "transformers.models.clip" not in unused


def test_the_spec_ships_resources_and_names_hidden_imports_and_excludes(spec_globals):
    analysis = spec_globals["a"].kwargs
    shipped = {
        Path(source).relative_to(REPO).as_posix(): folder for source, folder in analysis["datas"] if "/" in source
    }
    assert shipped["resources/tokenizers/clip/vocab.json"] == str(Path("resources/tokenizers/clip"))
    assert shipped["resources/tokenizers/clip/merges.txt"] == str(Path("resources/tokenizers/clip"))
    assert "resources/samples/red_circle_blue_square.png" in shipped
    assert not any(name.startswith("resources/screenshots/") for name in shipped)
    assert ("torch.dist-info", "torch.dist-info") in analysis["datas"]  # diffusers asks for torch's version
    hidden = analysis["hiddenimports"]
    assert "backend.worker" in hidden and "transformers.models.clip.modeling_clip" in hidden
    excludes = analysis["excludes"]
    for module in ("PySide6.QtWebEngineCore", "PySide6.Qt3DCore", "PySide6.QtQuick", "PySide6.QtMultimedia"):
        assert module in excludes
    assert "PySide6.QtWidgets" not in excludes and "transformers.models.clip" not in excludes
    assert "transformers.models.bert" in excludes
    assert not any(module.startswith("torch") and module != "torch.utils.tensorboard" for module in excludes)
    assert Path(analysis["pathex"][0]) == REPO
    assert spec_globals["exe"].kwargs["exclude_binaries"] is True, "one folder, never one file"
    assert spec_globals["coll"].kwargs["name"] == "atelier"


def test_the_spec_leaves_out_torchs_own_test_programs_only(spec_globals):
    shipped = [name for name, _source, _kind in spec_globals["coll"].args[1]]
    assert shipped == ["torch/lib/libtorch_cpu.so", "torch/bin/torch_shm_manager"]


def test_the_spec_names_no_torch_variant():
    """CPU and CUDA builds use the same spec: whichever torch the build environment has ships."""
    tree = ast.parse((PACKAGING / "atelier.spec").read_text())
    documented = [node for node in ast.walk(tree) if isinstance(node, (ast.Module, ast.FunctionDef))]
    docstrings = {id(node.body[0].value) for node in documented if ast.get_docstring(node)}
    words = [node.id for node in ast.walk(tree) if isinstance(node, ast.Name)]
    words += [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]
    assert not [word for word in words if any(variant in word.lower() for variant in ("cpu", "cuda", "nvidia"))]


def test_build_dry_run_prints_the_pyinstaller_command_and_the_archive(capsys):
    build = load_script("build")
    assert build.main(["--dry-run"]) == 0
    command, archive = capsys.readouterr().out.strip().splitlines()
    assert "-m PyInstaller --noconfirm --distpath" in command
    assert command.endswith(str(PACKAGING / "atelier.spec"))
    assert str(REPO / "build" / "pyinstaller") in command
    suffix = ".zip" if sys.platform == "win32" else ".tar.gz"
    assert archive.startswith(f"then archive {REPO / 'dist' / 'atelier'} as ") and archive.endswith(suffix)
    assert "-torch-" in archive


def test_build_help_works():
    done = subprocess.run(
        [sys.executable, str(PACKAGING / "build.py"), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "--dry-run" in done.stdout


def test_the_frozen_entry_point_calls_freeze_support_before_anything_else():
    """The backend process is the same executable started again: freeze_support must divert it before the GUI."""
    tree = ast.parse((PACKAGING / "atelier_main.py").read_text())
    module_level = [node for node in tree.body if not isinstance(node, ast.Expr)]  # past the docstring
    assert isinstance(module_level[0], ast.Import) and module_level[0].names[0].name == "multiprocessing"
    main_block = module_level[1]
    assert isinstance(main_block, ast.If) and "__main__" in ast.unparse(main_block.test)
    assert ast.unparse(main_block.body[0]) == "multiprocessing.freeze_support()"


def test_the_self_test_loads_the_toy_world_model_when_shipped_else_says_it_falls_back():
    assert choose_model([TOYWORLD, "tiny", "sd15"]) == (TOYWORLD, "")
    model, note = choose_model(["tiny", "tiny-xl", "sd15"])
    assert model == FALLBACK_MODEL and "toy-world model is not in this installation" in note
    assert choose_model([TOYWORLD], requested="tiny-xl") == ("tiny-xl", "")


def test_self_test_from_source_runs_an_edit_in_the_backend_process():
    done = run_app("--self-test", "--model", "tiny", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("atelier self-test ok: model tiny on cpu in backend pid "), summary
    assert "loaded tiny (sd1)" in summary and "128x128 result" in summary


def test_screenshot_saves_the_window_once_the_backend_has_answered(tmp_path):
    picture = tmp_path / "window.png"
    sample = REPO / "resources" / "samples" / "red_circle_blue_square.png"
    done = run_app("--image", str(sample), "--screenshot", str(picture), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith(f"atelier screenshot: {picture} (")
    with Image.open(picture) as image:
        assert image.width >= 400 and image.height >= 300
