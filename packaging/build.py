"""Build Atelier's one-folder app with PyInstaller and archive it: `python packaging/build.py`.

Needs the packaging extra (`pip install -e ".[package]"`) in the environment whose torch should ship (CPU or CUDA:
packaging/README.md). Writes dist/atelier/ (the app: run dist/atelier/atelier) and next to it
atelier-<version>-<platform>-torch-<version>.tar.gz (.zip on Windows, to feed packaging/atelier.iss); PyInstaller's
scratch files go to build/pyinstaller/. `--self-test` then runs the frozen app's own `--self-test`, headless.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "packaging" / "atelier.spec"
APP_NAME = "atelier"  # the spec's APP_NAME: the folder and the executable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python packaging/build.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the app folder goes (default: dist/)")
    parser.add_argument(
        "--work", type=Path, default=REPO / "build" / "pyinstaller", help="PyInstaller's scratch folder"
    )
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's caches first (a from-scratch build)")
    parser.add_argument("--no-archive", action="store_true", help="build the folder only")
    parser.add_argument("--self-test", action="store_true", help="run the frozen app's --self-test after building")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and the archive name, build nothing")
    return parser.parse_args(argv)


def pyinstaller_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--distpath", str(args.dist)]
    command += ["--workpath", str(args.work)]
    return command + (["--clean"] if args.clean else []) + [str(SPEC)]


def archive_name() -> str:
    """atelier-0.1.0-linux-x86_64-torch-2.13.0-cpu: what is inside, readable from the name."""
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    try:
        torch_version = importlib.metadata.version("torch").replace("+", "-")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "missing"
    system = f"{platform.system().lower()}-{platform.machine().lower()}"
    return f"{APP_NAME}-{version.group(1) if version else '0'}-{system}-torch-{torch_version}"


def archive_format() -> str:
    return "zip" if sys.platform == "win32" else "gztar"


def executable(app_folder: Path) -> Path:
    return app_folder / (f"{APP_NAME}.exe" if sys.platform == "win32" else APP_NAME)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def self_test(app_folder: Path) -> int:
    """Run the frozen app's --self-test offscreen, with throw-away settings; print its output and how long it took."""
    scratch = app_folder.parent / "self-test-home"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    for name in ("CONFIG", "DATA", "CACHE", "LOG"):
        env[f"ATELIER_{name}_DIR"] = str(scratch / name.lower())
    started = time.perf_counter()
    done = subprocess.run([str(executable(app_folder)), "--self-test"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("atelier")]
    print("\n".join(lines) or done.stderr[-3000:])
    print(f"frozen self-test: exit code {done.returncode} after {seconds:.1f} s")
    shutil.rmtree(scratch, ignore_errors=True)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.dist, args.work = args.dist.resolve(), args.work.resolve()
    command = pyinstaller_command(args)
    app_folder = args.dist / APP_NAME
    archive = args.dist / archive_name()
    if args.dry_run:
        print(shlex.join(command))
        if not args.no_archive:
            print(f"then archive {app_folder} as {archive}.{'zip' if archive_format() == 'zip' else 'tar.gz'}")
        return 0
    if importlib.util.find_spec("PyInstaller") is None:
        print('PyInstaller is not installed: pip install -e ".[package]"', file=sys.stderr)
        return 2
    # 1. The folder.
    started = time.perf_counter()
    if subprocess.run(command, cwd=REPO).returncode != 0:
        print("PyInstaller failed; see its output above", file=sys.stderr)
        return 1
    print(f"built {app_folder} in {time.perf_counter() - started:.0f} s: {megabytes(folder_bytes(app_folder))}")
    # 2. The archive.
    if not args.no_archive:
        started = time.perf_counter()
        written = Path(shutil.make_archive(str(archive), archive_format(), root_dir=args.dist, base_dir=APP_NAME))
        print(f"archived as {written} in {time.perf_counter() - started:.0f} s: {megabytes(written.stat().st_size)}")
        if sys.platform == "win32":
            print(f'installer: iscc /DSourceDir="{app_folder}" packaging\\atelier.iss')
    # 3. The frozen app proves it runs.
    return self_test(app_folder) if args.self_test else 0


if __name__ == "__main__":
    raise SystemExit(main())
