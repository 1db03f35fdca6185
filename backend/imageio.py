"""Reading the user's image and mask files, and writing results with their recipe. No torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from backend.errors import InputError
from backend.protocol import a1111_parameters, without_insight


def read_image(path: str | Path) -> np.ndarray:
    """uint8 H x W x 3. Transparent pixels are composited over white (what the user sees in viewers)."""
    with _open(path, "image") as image:
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """uint8 H x W, 0 = outside, 255 = inside. An RGBA file's alpha channel is the mask if it has one."""
    with _open(path, "mask") as image:
        if image.mode in ("RGBA", "LA"):
            alpha = np.asarray(image.getchannel("A"))
            if alpha.min() < 255:
                return alpha.copy()
        return np.asarray(image.convert("L")).copy()


class _open:
    """Open and fully decode an image file, turning every failure into an InputError naming the file."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what

    def __enter__(self) -> Image.Image:
        if not self.path.is_file():
            raise InputError(f"{self.what} file '{self.path}' does not exist")
        try:
            self.image = Image.open(self.path)
            self.image.load()  # decode now: a truncated file fails here, not later inside a method
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InputError(f"cannot read {self.what} file '{self.path}': {error}") from None
        return self.image

    def __exit__(self, *exc: object) -> None:
        self.image.close()


def write_result(path: str | Path, image: np.ndarray, metadata: dict) -> Path:
    """PNG with a `parameters` chunk and the full Atelier recipe as JSON (`atelier` chunk)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    metadata = {**without_insight(metadata), "height": image.shape[0], "width": image.shape[1]}
    info.add_text("parameters", a1111_parameters(metadata))
    info.add_text("atelier", json.dumps(metadata, default=str))
    temporary = path.with_name(path.name + ".part")
    Image.fromarray(image).save(temporary, format="PNG", pnginfo=info)
    temporary.replace(path)  # atomic: a crash never leaves half a file under the real name
    return path
