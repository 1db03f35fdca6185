"""Files: .ora projects (ours and other apps'), picture loading and its errors, PNG export, autosave, settings."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image, ImageFile

from desktop_app.document import (
    Document,
    DragLayer,
    HistoryEntry,
    MaskLayer,
    ObjectLayer,
    RasterLayer,
    ReferenceLayer,
    RegionMove,
)
from desktop_app.document.atomic import atomic_write
from desktop_app.document.autosave import Autosaver, discard, pid_alive, recoverable
from desktop_app.document.export import a1111_parameters, export_png, read_png_metadata, read_png_recipe
from desktop_app.document.imagefile import ImageFileError, load_image, load_image_bytes, load_mask_bytes
from desktop_app.document.ora import ATELIER_NS, ProjectFileError, load_ora, save_ora
from desktop_app.settings import Settings, load_settings, save_settings, settings_path

W, H = 48, 32
NS = f"{{{ATELIER_NS}}}"


def random_rgba(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)


def png_bytes(array: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def rich_document() -> Document:
    """One of every layer kind, with values a sloppy writer would get wrong (soft masks, odd opacities)."""
    document = Document.from_image(random_rgba(H, W)[..., :3], name="Photo")
    glaze = random_rgba(H, W, seed=1)
    document.add_layer(RasterLayer(name="Glaze & <shine>", pixels=glaze, opacity=0.35, recipe={"method": "sdedit"}))
    soft = np.tile(np.arange(W, dtype=np.uint8) * 5, (H, 1))
    keep = document.add_layer(MaskLayer(name="keep this", mask=soft, role="keep", opacity=0.4))
    document.set_property(keep.id, "visible", False)
    cat = np.zeros((H, W), np.uint8)
    cat[4:12, 5:20] = 255
    cat[12, 5:20] = 77
    document.add_layer(ObjectLayer(name="cat", mask=cat, prompt="a tiger cub", source="cat"))
    drag = document.add_layer(DragLayer(name="drag"))
    document.set_property(drag.id, "points", [((3.5, 4), (10, 12.25)), ((0, 0), (W - 1, H - 1))])
    document.set_property(drag.id, "regions", [RegionMove(keep.id, dx=4, dy=-2.5, scale=1.25)])
    reference_mask = np.zeros((20, 30), np.uint8)
    reference_mask[5:15, 5:25] = 180
    document.add_layer(
        ReferenceLayer(name="ref", image=random_rgba(20, 30, seed=2), mask=reference_mask, x=-3.5, y=7.0, scale=0.75)
    )
    document.add_history(
        HistoryEntry("SDEdit: glaze", document.layers[1].id, {"method": "sdedit", "seed": 7}, {"seconds": 1.5})
    )
    document.set_active(keep.id)
    return document


# --- .ora round trip ----------------------------------------------------------------------------------------------


def test_ora_round_trip_keeps_every_layer_and_annotation(tmp_path):
    document = rich_document()
    path = save_ora(document, tmp_path / "project.ora")
    loaded = load_ora(path)

    assert loaded.size == document.size and not loaded.modified
    assert [(layer.kind, layer.id, layer.name) for layer in loaded.layers] == [
        (layer.kind, layer.id, layer.name) for layer in document.layers
    ]
    for old, new in zip(document.layers, loaded.layers):
        assert (new.visible, new.opacity) == (old.visible, old.opacity), old.name
    photo, glaze, keep, cat, drag, reference = loaded.layers
    assert np.array_equal(photo.pixels, document.layers[0].pixels)
    assert np.array_equal(glaze.pixels, document.layers[1].pixels) and glaze.recipe == {"method": "sdedit"}
    assert keep.role == "keep" and np.array_equal(keep.mask, document.layers[2].mask)  # soft values exact
    assert np.array_equal(cat.mask, document.layers[3].mask) and (cat.prompt, cat.source) == ("a tiger cub", "cat")
    assert drag.points == [((3.5, 4.0), (10.0, 12.25)), ((0.0, 0.0), (W - 1.0, H - 1.0))]
    assert drag.regions == [RegionMove(keep.id, 4, -2.5, 1.25)]
    original_reference = document.layers[5]
    assert np.array_equal(reference.image, original_reference.image)
    assert np.array_equal(reference.mask, original_reference.mask)
    assert (reference.x, reference.y, reference.scale) == (-3.5, 7.0, 0.75)
    assert loaded.active_id == keep.id
    assert loaded.history == document.history
    assert np.array_equal(loaded.composite(), document.composite())


def test_ora_round_trip_of_a_reference_without_mask_and_an_empty_document(tmp_path):
    document = Document(5, 4)
    document.add_layer(ReferenceLayer(name="ref", image=random_rgba(3, 3)))
    loaded = load_ora(save_ora(document, tmp_path / "a.ora"))
    assert loaded.layers[0].mask is None and loaded.active_id == document.active_id
    assert load_ora(save_ora(Document(5, 4), tmp_path / "empty.ora")).layers == []


def test_ora_follows_the_openraster_layout(tmp_path):
    document = Document.from_image(random_rgba(200, 300)[..., :3], name="Photo")
    document.add_layer(RasterLayer(name="Top", pixels=random_rgba(200, 300, seed=3), opacity=0.5))
    soft = np.random.default_rng(4).integers(0, 256, (200, 300), dtype=np.uint8)
    document.add_layer(MaskLayer(name="Edit area", mask=soft, role="edit"))
    document.add_layer(DragLayer(name="Points"))
    path = save_ora(document, tmp_path / "layout.ora")

    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED and first.extra == b""
        assert archive.read("mimetype") == b"image/openraster"
        stack_xml = archive.read("stack.xml")
        root = ElementTree.fromstring(stack_xml)
        assert root.tag == "image" and (root.get("w"), root.get("h")) == ("300", "200")
        assert root.get("version") == "0.0.5"
        assert b'xmlns:atelier="urn:atelier:openraster:1"' in stack_xml
        layers = root.findall("./stack/layer")
        assert [layer.get("name") for layer in layers] == ["Edit area", "Top", "Photo"]  # topmost first
        for layer in layers:
            assert layer.get("src") in archive.namelist()
            assert layer.get("composite-op") == "svg:src-over" and (layer.get("x"), layer.get("y")) == ("0", "0")
        edit, top, photo = layers
        assert (edit.get("visibility"), edit.get(NS + "kind"), edit.get(NS + "role")) == ("hidden", "mask", "edit")
        assert (top.get("visibility"), float(top.get("opacity"))) == ("visible", 0.5)
        with Image.open(io.BytesIO(archive.read(edit.get("src")))) as tinted:  # others see a tint, alpha = mask
            assert tinted.size == (300, 200) and np.array_equal(np.asarray(tinted)[..., 3], soft)
        with Image.open(io.BytesIO(archive.read("mergedimage.png"))) as merged:
            assert merged.size == (300, 200) and np.array_equal(np.asarray(merged), document.composite())
        with Image.open(io.BytesIO(archive.read("Thumbnails/thumbnail.png"))) as thumbnail:
            assert max(thumbnail.size) == 256 and abs(thumbnail.size[0] / thumbnail.size[1] - 1.5) < 0.01
        assert json.loads(archive.read("atelier/document.json"))["version"] == 1


def test_small_documents_get_a_thumbnail_of_their_own_size(tmp_path):
    path = save_ora(Document.from_image(random_rgba(H, W)), tmp_path / "small.ora")
    with zipfile.ZipFile(path) as archive, Image.open(io.BytesIO(archive.read("Thumbnails/thumbnail.png"))) as thumb:
        assert thumb.size == (W, H)


def test_awkward_layer_names_survive(tmp_path):
    document = Document.from_image(random_rgba(4, 4), name='Cat & "dog" <1>\x01 ✓')
    assert load_ora(save_ora(document, tmp_path / "names.ora")).layers[0].name == 'Cat & "dog" <1>\x01 ✓'


def foreign_ora(path: Path, stack_xml: str, pictures: dict[str, np.ndarray]) -> Path:
    """An .ora as Krita/GIMP/MyPaint write it: no atelier entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "image/openraster", compress_type=zipfile.ZIP_STORED)
        archive.writestr("stack.xml", stack_xml)
        for name, array in pictures.items():
            archive.writestr(name, png_bytes(array))
    return path


def test_an_ora_from_another_app_opens_as_placed_raster_layers(tmp_path):
    bottom, top, grouped = random_rgba(8, 10, 5), random_rgba(4, 6, 6), random_rgba(2, 2, 7)
    stack = """<?xml version="1.0" encoding="UTF-8"?>
    <image version="0.0.3" w="10" h="8">
      <stack>
        <layer name="top" src="data/top.png" x="4" y="5" opacity="0.5" visibility="visible"/>
        <stack name="group" opacity="0.5" x="1" y="2" visibility="visible">
          <layer name="in group" src="data/grouped.png" x="1" y="1" opacity="0.5"/>
        </stack>
        <layer name="bottom" src="data/bottom.png" x="0" y="0" visibility="hidden"/>
      </stack>
    </image>"""
    path = foreign_ora(
        tmp_path / "krita.ora",
        stack,
        {"data/top.png": top, "data/grouped.png": grouped, "data/bottom.png": bottom[..., :3]},
    )
    document = load_ora(path)
    assert document.size == (10, 8) and not document.modified
    assert [layer.name for layer in document.layers] == ["bottom", "in group", "top"]
    assert all(isinstance(layer, RasterLayer) for layer in document.layers)
    first, middle, last = document.layers
    assert first.visible is False and np.array_equal(first.pixels[..., :3], bottom[..., :3])
    assert (first.pixels[..., 3] == 255).all()
    assert middle.opacity == 0.25 and np.array_equal(middle.pixels[3:5, 2:4], grouped)
    assert last.opacity == 0.5 and last.visible is True
    expected = np.zeros((8, 10, 4), np.uint8)
    expected[5:8, 4:10] = top[:3]  # cut at the bottom edge
    assert np.array_equal(last.pixels, expected)


def test_an_ora_with_only_a_merged_image_opens_as_one_layer(tmp_path):
    merged = random_rgba(6, 7)
    stack = '<image w="7" h="6"><stack/></image>'
    document = load_ora(foreign_ora(tmp_path / "flat.ora", stack, {"mergedimage.png": merged}))
    assert [layer.name for layer in document.layers] == ["Merged image"]
    assert np.array_equal(document.layers[0].pixels, merged)


def test_masks_survive_even_if_the_atelier_json_is_lost(tmp_path):
    """Another app that keeps unknown attributes but drops unknown entries still leaves us the masks."""
    path = save_ora(rich_document(), tmp_path / "project.ora")
    stripped = tmp_path / "stripped.ora"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(stripped, "w") as target:
        for info in source.infolist():
            if not info.filename.startswith("atelier/"):
                target.writestr(info, source.read(info))
    kinds = [(layer.kind, layer.name) for layer in load_ora(stripped).layers]
    assert kinds == [("raster", "Photo"), ("raster", "Glaze & <shine>"), ("mask", "keep this"), ("object", "cat")]
    keep = load_ora(stripped).layers[2]
    assert keep.role == "keep" and np.array_equal(keep.mask, rich_document().layers[2].mask)


# --- atomic saves -------------------------------------------------------------------------------------------------


def test_a_writer_that_fails_midway_leaves_the_previous_file(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_bytes(b"the user's work")

    def failing(temporary: Path) -> None:
        temporary.write_bytes(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"the user's work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]  # no temporary left behind


def test_an_ora_save_that_fails_midway_leaves_the_previous_project(tmp_path, monkeypatch):
    path = save_ora(rich_document(), tmp_path / "project.ora")
    before = path.read_bytes()
    calls = []

    def failing_png(archive, name, array, level):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        archive.writestr(name, b"x")

    monkeypatch.setattr("desktop_app.document.ora._write_png", failing_png)
    with pytest.raises(ProjectFileError, match="could not save .*project.ora.*No space left"):
        save_ora(Document.from_image(random_rgba(H, W)), path)
    assert path.read_bytes() == before and len(load_ora(path).layers) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project.ora"]


# --- damaged projects ---------------------------------------------------------------------------------------------


def zip_with(path: Path, entries: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"not a zip at all"), "is not an OpenRaster file"),
        (lambda p: p.write_bytes(png_bytes(random_rgba(4, 4))), "is not an OpenRaster file"),
        (lambda p: zip_with(p, {"readme.txt": "hi"}), "not an OpenRaster file \\(no mimetype, no stack.xml\\)"),
        (lambda p: zip_with(p, {"mimetype": "application/zip", "stack.xml": "<image/>"}), "not OpenRaster"),
        (lambda p: zip_with(p, {"mimetype": "image/openraster"}), "is incomplete: it has no 'stack.xml'"),
        (lambda p: zip_with(p, {"mimetype": "image/openraster", "stack.xml": "<image w="}), "damaged"),
        (lambda p: zip_with(p, {"mimetype": "image/openraster", "stack.xml": '<image w="0" h="4"/>'}), "size 0x4"),
        (
            lambda p: zip_with(
                p, {"mimetype": "image/openraster", "stack.xml": '<image w="4" h="4"><stack><layer src="a.png"/>'}
            ),
            "damaged",
        ),
        (
            lambda p: zip_with(
                p,
                {
                    "mimetype": "image/openraster",
                    "stack.xml": '<image w="4" h="4"><stack><layer src="data/a.png"/></stack></image>',
                },
            ),
            "is incomplete: it has no 'data/a.png'",
        ),
        (
            lambda p: zip_with(
                p,
                {
                    "mimetype": "image/openraster",
                    "stack.xml": '<image w="4" h="4"><stack><layer src="data/a.png"/></stack></image>',
                    "data/a.png": b"garbage",
                },
            ),
            "layer picture 'data/a.png' in .* is not an image",
        ),
    ],
)
def test_damaged_projects_give_a_clear_error(tmp_path, make, message):
    path = tmp_path / "damaged.ora"
    make(path)
    with pytest.raises(ProjectFileError, match=message) as caught:
        load_ora(path)
    assert "damaged.ora" in str(caught.value)


def test_a_truncated_project_gives_a_clear_error(tmp_path):
    path = save_ora(rich_document(), tmp_path / "cut.ora")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ProjectFileError, match="cut.ora"):
        load_ora(path)


def test_a_project_from_a_newer_atelier_says_so(tmp_path):
    path = save_ora(rich_document(), tmp_path / "new.ora")
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    entries["atelier/document.json"] = json.dumps({**json.loads(entries["atelier/document.json"]), "version": 99})
    with pytest.raises(ProjectFileError, match="newer Atelier"):
        load_ora(zip_with(tmp_path / "newer.ora", entries))


def test_missing_project_and_error_types(tmp_path):
    with pytest.raises(ProjectFileError, match="does not exist"):
        load_ora(tmp_path / "nowhere.ora")
    assert issubclass(ProjectFileError, ImageFileError) and issubclass(ImageFileError, ValueError)


# --- pictures -----------------------------------------------------------------------------------------------------


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims another size (CRC fixed): tiny on disk, huge if anyone decoded it."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello, I am a text file\n", "is not an image Atelier can read \\(it is not PNG, JPEG"),
        (png_bytes(random_rgba(64, 64))[:300], "is truncated or damaged"),
        (png_with_size(20000, 20000), "is too large \\(20000 x 20000 pixels\\): Atelier opens pictures up to 16384"),
        (png_with_size(16385, 8), "is too large \\(16385 x 8 pixels\\)"),
        (png_with_size(40000, 40000), "is too large: Atelier opens pictures up to 16384"),  # Pillow's bomb guard
    ],
)
def test_bad_pictures_give_a_clear_error_without_decoding(tmp_path, monkeypatch, content, message):
    path = tmp_path / "picture.png"
    path.write_bytes(content)
    limit = Image.MAX_IMAGE_PIXELS
    if "too large" in message:  # refused from the header: decoding would be a memory blow-up

        def no_decoding(self):
            raise AssertionError("a too-large picture was decoded")

        monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageFileError, match=message) as caught:
        load_image(path)
    assert "picture.png" in str(caught.value)
    assert limit == Image.MAX_IMAGE_PIXELS  # Pillow's global guard is put back


def test_missing_files_and_folders_give_a_clear_error(tmp_path):
    with pytest.raises(ImageFileError, match="nothing.png' does not exist"):
        load_image(tmp_path / "nothing.png")
    with pytest.raises(ImageFileError, match="is a folder"):
        load_image(tmp_path)


def test_pictures_from_bytes_for_the_clipboard():
    rgba = random_rgba(5, 6)
    assert np.array_equal(load_image_bytes(png_bytes(rgba)), rgba)
    with pytest.raises(ImageFileError, match="the pasted image is empty"):
        load_image_bytes(b"")
    with pytest.raises(ImageFileError, match="dropped.bin is not an image"):
        load_image_bytes(b"\x00\x01garbage", name="dropped.bin")


def test_loaded_pictures_are_writable_rgba(tmp_path):
    rgb = random_rgba(7, 9)[..., :3]
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(rgb))
    loaded = load_image(path)
    assert loaded.shape == (7, 9, 4) and loaded.dtype == np.uint8 and loaded.flags.writeable
    assert np.array_equal(loaded[..., :3], rgb) and (loaded[..., 3] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    picture = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall; left half red
    picture[:, :20] = (255, 0, 0)
    image = Image.fromarray(picture)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.shape == (40, 20, 4)  # turned upright: 20 wide, 40 tall
    assert loaded[5, 10, 0] > 200 and loaded[35, 10, 0] < 50  # the left half became the top half


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32896, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    loaded = load_image(path)
    assert list(loaded[0, :, 0]) == [0, 100, 128, 255] and (loaded[..., 3] == 255).all()
    assert np.array_equal(loaded[..., 0], loaded[..., 2])


def tiff_48_bit(rgb16: np.ndarray) -> bytes:
    """An uncompressed 16-bit-per-channel RGB TIFF, written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    pixels = rgb16.astype("<u2").tobytes()
    tags = [(256, width), (257, height), (258, None), (259, 1), (262, 2), (273, None), (277, 3), (278, height)]
    tags += [(279, len(pixels)), (284, 1)]
    ifd_size = 2 + len(tags) * 12 + 4
    bits_at, pixels_at = 8 + ifd_size, 8 + ifd_size + 6
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, value in tags:
        if tag == 258:
            out += struct.pack("<HHII", tag, 3, 3, bits_at)
        elif tag in (273, 279):
            out += struct.pack("<HHII", tag, 4, 1, pixels_at if tag == 273 else value)
        else:
            out += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    return out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels


def test_48_bit_tiff_loads_as_8_bit_rgba(tmp_path):
    rgb16 = np.array([[[0, 32896, 65535], [65535, 0, 257 * 10]]], np.uint16)
    path = tmp_path / "scan.tif"
    path.write_bytes(tiff_48_bit(rgb16))
    loaded = load_image(path)
    assert loaded.shape == (1, 2, 4)
    assert [list(pixel) for pixel in loaded[0]] == [[0, 128, 255, 255], [255, 0, 10, 255]]


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)  # full magenta + yellow
    loaded = load_image(path)
    assert loaded.shape == (8, 16, 4)
    red, green, blue, alpha = (int(v) for v in loaded[4, 8])
    assert red > 200 and green < 60 and blue < 60 and alpha == 255


def test_palette_and_grey_alpha_keep_their_transparency(tmp_path):
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    loaded = load_image(tmp_path / "palette.png")
    assert tuple(loaded[0, 0]) == (0, 0, 0, 0) and tuple(loaded[1, 1]) == (255, 0, 0, 255)
    grey = np.dstack([np.full((2, 3), 90, np.uint8), np.full((2, 3), 30, np.uint8)])
    Image.fromarray(grey, mode="LA").save(tmp_path / "la.png")
    assert tuple(load_image(tmp_path / "la.png")[1, 2]) == (90, 90, 90, 30)


def test_masks_from_bytes_use_alpha_when_there_is_one():
    soft = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert np.array_equal(load_mask_bytes(png_bytes(soft)), soft)
    tinted = np.zeros((3, 4, 4), np.uint8)
    tinted[..., 0], tinted[..., 3] = 255, soft
    assert np.array_equal(load_mask_bytes(png_bytes(tinted)), soft)


# --- PNG export ---------------------------------------------------------------------------------------------------


def a_recipe() -> dict:
    from backend.protocol import EditRequest, PointPair

    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    request = EditRequest(
        method="p2p",
        params={"steps": 20, "guidance": 7.5, "strength": 0.8},
        masks={"edit": mask},
        points=[PointPair((1.0, 2.0), (3.0, 4.0))],
        source_prompt="a cat on a sofa",
        target_prompt="a tiger on a sofa",
        negative_prompt="blurry, “low” quality",
        seed=1234,
        model="tiny",
    )
    return request.to_dict()


def test_png_export_writes_a1111_parameters_and_the_full_recipe(tmp_path):
    from backend.protocol import EditRequest

    recipe = a_recipe()
    image = random_rgba(8, 12)[..., :3]
    path = export_png(tmp_path / "out.png", image, recipe, {"method_title": "Prompt-to-Prompt", "model": "tiny"})
    with Image.open(path) as png:
        assert np.array_equal(np.asarray(png), image)
        lines = png.info["parameters"].split("\n")
    assert lines == [
        "a tiger on a sofa",
        "Negative prompt: blurry, “low” quality",
        "Steps: 20, Sampler: Prompt-to-Prompt, CFG scale: 7.5, Seed: 1234, Size: 12x8, Model: tiny",
    ]
    assert read_png_recipe(path) == recipe
    assert EditRequest.from_dict(read_png_recipe(path)) == EditRequest.from_dict(recipe)
    metadata = read_png_metadata(path)
    assert (metadata["width"], metadata["height"], metadata["method_title"]) == (12, 8, "Prompt-to-Prompt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_png_export_matches_the_backend_writer(tmp_path):
    """The GUI cannot import backend.imageio, so the two writers are pinned together here."""
    from backend.imageio import a1111_parameters as backend_parameters
    from backend.imageio import write_result

    recipe = a_recipe()
    metadata = {"method": "p2p", "method_title": "P2P", "model": "tiny", "width": 12, "height": 8, "recipe": recipe}
    assert a1111_parameters(metadata) == backend_parameters(metadata)
    path = write_result(tmp_path / "backend.png", random_rgba(8, 12)[..., :3], metadata)
    assert read_png_recipe(path) == recipe


def test_plain_png_export_has_no_recipe(tmp_path):
    path = export_png(tmp_path / "plain.png", random_rgba(4, 4))
    with Image.open(path) as png:
        assert "parameters" not in png.info and png.mode == "RGBA"
    assert read_png_recipe(path) is None and read_png_metadata(path) is None
    with pytest.raises(ValueError, match="H x W x 3 or 4 uint8"):
        export_png(tmp_path / "bad.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ImageFileError, match="is not a PNG"):
        (tmp_path / "fake.png").write_text("nope")
        read_png_recipe(tmp_path / "fake.png")


# --- autosave -----------------------------------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_autosave_writes_only_when_modified_and_not_more_often_than_the_interval(tmp_path):
    folder = tmp_path / "autosave"
    saver = Autosaver(folder, interval_s=180, session="live")
    document = Document.from_image(random_rgba(H, W))
    assert saver.maybe_save(document, now=0.0) is None and not saver.path.exists()

    layer = document.add_layer(MaskLayer(name="m", mask=np.zeros((H, W), np.uint8)))
    assert saver.maybe_save(document, now=1.0) == saver.path == folder / "autosave-live.ora"
    assert [item.name for item in load_ora(saver.path).layers] == ["Background", "m"]
    assert saver.maybe_save(document, now=500.0) is None  # nothing changed since

    document.set_property(layer.id, "name", "renamed")
    assert saver.maybe_save(document, now=100.0) is None  # too soon after the last autosave
    assert saver.maybe_save(document, now=181.0) == saver.path
    assert load_ora(saver.path).layers[1].name == "renamed"

    document.set_modified(False)  # the user saved the project: the autosave is stale
    assert saver.maybe_save(document, now=400.0) is None and not saver.path.exists()
    saver.close()


def test_recovery_finds_autosaves_of_dead_sessions_only(tmp_path):
    folder = tmp_path / "autosave"
    live = Autosaver(folder, interval_s=0, session="live")
    document = Document.from_image(random_rgba(H, W))
    document.set_modified(True)
    assert live.maybe_save(document, now=0.0) == live.path
    assert json.loads(live.marker.read_text())["pid"] == os.getpid()

    crashed = save_ora(document, folder / "autosave-crashed.ora")
    (folder / "autosave-crashed.lock").write_text(json.dumps({"pid": dead_pid()}))
    orphan = save_ora(document, folder / "autosave-orphan.ora")  # its marker was lost
    assert not pid_alive(json.loads((folder / "autosave-crashed.lock").read_text())["pid"])

    assert sorted(recoverable(folder)) == sorted([crashed, orphan])
    assert len(load_ora(recoverable(folder)[0]).layers) == 1
    discard(crashed)
    assert not crashed.exists() and not (folder / "autosave-crashed.lock").exists()
    assert recoverable(folder) == [orphan]

    live.close()  # a clean exit leaves nothing to recover
    assert not live.path.exists() and not live.marker.exists()
    assert recoverable(folder) == [orphan]
    assert recoverable(tmp_path / "never made") == []


def test_a_failed_autosave_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    saver = Autosaver(tmp_path, interval_s=0, session="s")
    document = Document.from_image(random_rgba(4, 4))
    document.set_modified(True)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("desktop_app.document.autosave.save_ora", broken)
    assert saver.maybe_save(document, now=0.0) is None
    assert isinstance(saver.last_error, OSError) and "autosave to" in caplog.text
    monkeypatch.undo()
    assert saver.maybe_save(document, now=1.0) == saver.path  # tried again next time
    saver.close()


def test_autosave_follows_a_newly_opened_document(tmp_path):
    saver = Autosaver(tmp_path, interval_s=0, session="s")
    first = Document.from_image(random_rgba(4, 4))
    first.set_modified(True)
    assert saver.maybe_save(first, now=0.0) == saver.path
    second = Document.from_image(random_rgba(6, 6))  # opened from disk: unmodified
    assert saver.maybe_save(second, now=1.0) is None
    first.add_layer(MaskLayer(name="late", mask=np.zeros((4, 4), np.uint8)))  # no longer watched
    second.add_layer(MaskLayer(name="new", mask=np.zeros((6, 6), np.uint8)))
    assert saver.maybe_save(second, now=2.0) == saver.path
    assert load_ora(saver.path).size == (6, 6)
    saver.close()


# --- settings -----------------------------------------------------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def test_settings_defaults_and_round_trip(config_dir):
    assert settings_path() == config_dir / "settings.json"
    defaults = load_settings()
    assert defaults == Settings() and defaults.model == "toyworld" and defaults.device == "auto"
    assert (defaults.brush_size, defaults.brush_hardness, defaults.autosave_minutes) == (24, 0.6, 3.0)
    changed = Settings(models_dir="/models", sam_checkpoint="/sam.pth", device="cuda:1", dtype="fp16", previews=False)
    changed.add_recent("/a.ora")
    changed.add_recent("/b.ora")
    changed.add_recent("/a.ora")
    assert changed.recent_files == ["/a.ora", "/b.ora"]
    assert changed.save() == config_dir / "settings.json"
    assert load_settings() == changed
    assert sorted(p.name for p in config_dir.iterdir()) == ["settings.json"]


def test_settings_replace_bad_values_by_defaults_and_ignore_unknown_keys(config_dir, caplog):
    config_dir.mkdir()
    bad = {
        "device": "gpu please",
        "dtype": "float8",
        "previews": "yes",
        "brush_size": -3,
        "brush_hardness": 1.5,
        "autosave_minutes": "often",
        "recent_files": ["/ok.ora", 7, "/ok.ora"],
        "model": "",
        "models_dir": "/my/models",
        "from_the_future": True,
    }
    (config_dir / "settings.json").write_text(json.dumps(bad))
    with caplog.at_level(logging.WARNING):
        settings = load_settings()
    defaults = Settings()
    assert (settings.device, settings.dtype, settings.previews) == (defaults.device, defaults.dtype, True)
    assert (settings.brush_size, settings.brush_hardness, settings.autosave_minutes) == (24, 0.6, 3.0)
    assert settings.model == defaults.model == "toyworld" and settings.models_dir == "/my/models"
    assert settings.recent_files == ["/ok.ora"]
    assert "device = 'gpu please' is not valid" in caplog.text and "from_the_future" not in caplog.text


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unreadable_settings_fall_back_to_defaults(config_dir, content, caplog):
    config_dir.mkdir()
    (config_dir / "settings.json").write_text(content)
    assert load_settings() == Settings()
    assert "using the defaults" in caplog.text


def test_settings_saved_to_an_explicit_path(tmp_path):
    path = save_settings(Settings(brush_size=99), tmp_path / "elsewhere" / "s.json")
    assert load_settings(path).brush_size == 99
