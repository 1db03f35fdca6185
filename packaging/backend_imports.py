"""The modules of diffusers, transformers and accelerate that Atelier's backend really imports: measured, not guessed.

diffusers and transformers import their parts lazily (`_LazyModule`, importlib by name), which PyInstaller's static
analysis cannot follow; and the `if TYPE_CHECKING:` import lists in transformers would otherwise drag all ~450
transformers model families (hundreds of MB of source) into the build. So atelier.spec runs this file in a
subprocess of the build's Python: it imports the backend's job machinery and every method, loads both built-in
tiny models (the real CLIP tokenizer and text encoders, UNet, VAE, schedulers) and the SD/SDXL pipeline classes
the single-file loader uses, then prints the modules of those libraries it imported, one per line. The spec makes
them hidden imports and excludes the transformers model families that are not among them.

`python packaging/backend_imports.py` prints the list (seconds: it imports torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LAZY_PACKAGES = ("diffusers", "transformers", "accelerate")
REPO = Path(__file__).resolve().parent.parent


def traced_modules(python: str = sys.executable) -> list[str]:
    """Run this file with `python` (from the repository root, offline) and return the modules it printed."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [python, str(Path(__file__).resolve())], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"tracing the backend's imports failed:\n{done.stderr[-3000:]}")
    return [line for line in done.stdout.splitlines() if line.split(".")[0] in LAZY_PACKAGES]


def unused_transformers_models(traced: list[str]) -> list[str]:
    """`transformers.models.<family>` for each model family installed here that the trace did not import."""
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return []
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    used = {name.split(".")[2] for name in traced if name.startswith("transformers.models.") and name.count(".") >= 2}
    return sorted(
        f"transformers.models.{folder.name}"
        for folder in models.iterdir()
        if (folder / "__init__.py").is_file() and folder.name not in used
    )


def main() -> None:
    import backend.jobs  # noqa: F401 - the worker's job machinery: torch, the engine, the model loaders
    from backend.methods.registry import all_methods
    from backend.models import load_model

    all_methods()
    for model in ("tiny", "tiny-xl"):
        bundle = load_model(model, device="cpu")
        bundle.tokenizers[0]("a red circle")
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    print("\n".join(sorted(name for name in sys.modules if name.split(".")[0] in LAZY_PACKAGES)))


if __name__ == "__main__":
    main()
