"""Bad image files are bad data, whatever else the process has imported.

- A truncated JPEG is unreadable even after a library (weasyprint, imported by the pdf
  reporter) switched on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (the sing-audit-pdf
  family's tests check both import orders with weasyprint itself).
- A decompression bomb (a header declaring far more pixels than Pillow decodes) is a
  ``DataError`` naming the image, its pixel count and the limit; ``max_image_pixels``
  moves the limit either way.
- Whatever else Pillow's plugins raise on a hostile file (struct.error, IndexError,
  EOFError, ...) is bad data too, never an internal error.

Under ``on_bad_image: skip`` each of these images is skipped and counted.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sing_audit.errors import DataError
from sing_audit.builtins.image_datasets import ImageFolderDataset
from sing_audit.synthetic import SYNSETS, write_image_folder
from sing_audit.testing import save_random_target

from .conftest import PIPELINE_POLICY, write_config

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- files


def jpeg_bytes(size: int = 48, seed: int = 0) -> bytes:
    """A valid JPEG of noise (noise keeps the entropy-coded data long)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = jpeg_bytes()
    return data[: len(data) // 2]


def bomb_jpeg(width: int = 20000, height: int = 10000) -> bytes:
    """A tiny JPEG whose frame header (SOF0) declares ``width``×``height`` pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    # FFC0, length (2 bytes), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_bytes(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 240)).save(buf, format="PNG")
    return buf.getvalue()


def folder_with(tmp_path: Path, name: str, data: bytes) -> tuple[Path, str]:
    """A tiny image folder (3 classes × 4 PNGs) plus one extra file ``name`` in the second
    class; returns the root and the extra file's image id."""
    root = write_image_folder(tmp_path / "val", per_class=4, size=32)
    (root / SYNSETS[1] / name).write_bytes(data)
    return root, f"{SYNSETS[1]}/{name}"


def dataset(root: Path, **options) -> ImageFolderDataset:
    return ImageFolderDataset(ImageFolderDataset.Options(root=root, **options))


def record(ds: ImageFolderDataset, image_id: str):
    return next(r for r in ds.records() if r.image_id == image_id)


def audit_config(tmp_path: Path, root: Path, on_bad_image: str, formats=("json",), **dataset_options) -> Path:
    """An image-folder audit of ``root`` (random-init resnet18, precomputed target
    aligned by the dataset's own image ids), writing ``formats``."""
    save_random_target(tmp_path / "t.npz", [r.image_id for r in dataset(root).records()])
    return write_config(
        tmp_path,
        {
            "output": "out",
            "dataset": {"plugin": "image_folder", "root": str(root), "on_bad_image": on_bad_image, **dataset_options},
            "target": {"plugin": "precomputed", "path": "t.npz"},
            "backbones": [{"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}],
            "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
            "policy": PIPELINE_POLICY,
            "report": {"formats": list(formats)},
        },
    )


def results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "results.json").read_text())


def run_cli(cfg: Path) -> subprocess.CompletedProcess:
    """A real ``sing-audit run`` in a fresh interpreter (nothing imported beforehand)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "sing_audit", "run", str(cfg)],
        capture_output=True, text=True, env=env, timeout=600, cwd=cfg.parent,
    )


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, env=env, timeout=300
    )


# --------------------------------------------------------------------------- truncated images


@pytest.fixture
def flag_restored(monkeypatch):
    """Whatever a test does to LOAD_TRUNCATED_IMAGES is undone afterwards."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", ImageFile.LOAD_TRUNCATED_IMAGES)


def test_truncated_jpeg_is_unreadable(tmp_path, flag_restored):
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    root, image_id = folder_with(tmp_path, "cut.jpg", truncated_jpeg())
    ds = dataset(root)
    with pytest.raises(DataError, match="truncated") as err:
        ds.open(record(ds, image_id))
    assert image_id in str(err.value) and "on_bad_image: skip" in str(err.value)


def test_truncated_jpeg_stays_bad_data_after_a_library_allowed_truncated_images(tmp_path, flag_restored, caplog):
    """What importing weasyprint does to the whole process, done by hand: the dataset
    switches it back off, says so once, and still refuses the truncated image."""
    root, image_id = folder_with(tmp_path, "cut.jpg", truncated_jpeg())
    ds = dataset(root)
    good = [r for r in ds.records() if r.image_id != image_id]
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    with caplog.at_level(logging.WARNING, logger="sing_audit"):
        with pytest.raises(DataError, match="truncated"):
            ds.open(record(ds, image_id))
        for r in good[:3]:
            assert ds.open(r).size == (32, 32)
        with pytest.raises(DataError, match="truncated"):
            ds.open(record(ds, image_id))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    notes = [r.getMessage() for r in caplog.records if r.name == "sing_audit" and r.levelno == logging.WARNING]
    assert len(notes) == 1, notes
    assert "LOAD_TRUNCATED_IMAGES" in notes[0] and "weasyprint" in notes[0] and "truncated" in notes[0]


def test_truncated_jpeg_is_skipped_under_skip(tmp_path, flag_restored):
    from sing_audit.pipeline.extraction import _Images

    root, image_id = folder_with(tmp_path, "cut.jpg", truncated_jpeg())
    ds = dataset(root, on_bad_image="skip")
    records = ds.records()
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    images = _Images(ds, records, lambda img: img.size, skip_bad=True)
    bad = [i for i in range(len(records)) if images[i][1] is None]
    assert [records[i].image_id for i in bad] == [image_id]


# --------------------------------------------------------------------------- decompression bombs


def test_bomb_is_data_error_naming_image_size_limit_and_ways_out(tmp_path):
    root, image_id = folder_with(tmp_path, "bomb.jpg", bomb_jpeg())
    ds = dataset(root)
    with pytest.raises(DataError) as err:
        ds.open(record(ds, image_id))
    msg = str(err.value)
    assert image_id in msg
    assert "200,000,000 pixels" in msg
    assert f"{2 * Image.MAX_IMAGE_PIXELS:,}" in msg
    assert "decompression bomb" in msg and "on_bad_image: skip" in msg and "max_image_pixels" in msg
    assert "\n" not in msg


def test_bomb_fails_the_run_naming_the_file(tmp_path, capsys):
    from sing_audit.cli import main

    root, image_id = folder_with(tmp_path, "bomb.jpg", bomb_jpeg())
    assert main(["run", str(audit_config(tmp_path, root, "fail"))]) == 2
    err = capsys.readouterr().err
    assert image_id in err and "200,000,000 pixels" in err and "max_image_pixels" in err


def test_bomb_is_skipped_and_counted(tmp_path):
    from sing_audit.cli import main

    root, image_id = folder_with(tmp_path, "bomb.jpg", bomb_jpeg())
    assert main(["run", str(audit_config(tmp_path, root, "skip"))]) == 0
    res = results(tmp_path)
    assert res["passed"] is True
    assert res["provenance"]["skipped_images"] == [image_id]
    assert res["models"][0]["n_images"] == 12


@pytest.fixture
def small_pillow_limit(monkeypatch):
    """Pillow's limit shrunk to 1000 pixels (it refuses above 2000), so small images stand
    in for huge ones; restored afterwards, including any raise by the dataset."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def test_max_image_pixels_lets_a_genuine_large_image_through(tmp_path, small_pillow_limit):
    root, image_id = folder_with(tmp_path, "large.png", png_bytes(64))  # 4096 px > 2 × 1000
    ds = dataset(root)
    with pytest.raises(DataError, match="4,096 pixels"):
        ds.open(record(ds, image_id))
    ds = dataset(root, max_image_pixels=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert ds.open(record(ds, image_id)).size == (64, 64)


def test_a_bomb_names_the_datasets_limit_when_it_is_set(tmp_path, small_pillow_limit):
    """max_image_pixels 1200 raises Pillow's limit to 1200 (it refuses above 2400): a
    4096-pixel image is refused by Pillow itself, but the limit that applies is 1200."""
    root, image_id = folder_with(tmp_path, "large.png", png_bytes(64))
    ds = dataset(root, max_image_pixels=1200)
    with pytest.raises(DataError) as err:
        ds.open(record(ds, image_id))
    msg = str(err.value)
    assert "4,096 pixels" in msg and "max_image_pixels of 1,200" in msg and "2,400" not in msg


def test_max_image_pixels_refuses_larger_images(tmp_path):
    root, image_id = folder_with(tmp_path, "big.png", png_bytes(40))
    ds = dataset(root, max_image_pixels=1500)  # the folder's other images are 32×32 = 1024
    with pytest.raises(DataError) as err:
        ds.open(record(ds, image_id))
    msg = str(err.value)
    assert image_id in msg and "40×40" in msg and "1,600 pixels" in msg and "1,500" in msg
    assert "max_image_pixels" in msg and "on_bad_image: skip" in msg
    assert ds.open(next(r for r in ds.records() if r.image_id != image_id)).size == (32, 32)


def test_max_image_pixels_in_a_run_skips_and_counts(tmp_path):
    from sing_audit.cli import main

    root, image_id = folder_with(tmp_path, "big.png", png_bytes(40))
    assert main(["run", str(audit_config(tmp_path, root, "skip", max_image_pixels=1500))]) == 0
    assert results(tmp_path)["provenance"]["skipped_images"] == [image_id]


def test_max_image_pixels_is_validated_and_keys_the_cache(tmp_path):
    from pydantic import ValidationError

    root = write_image_folder(tmp_path / "val", per_class=1, size=8)
    with pytest.raises(ValidationError):
        dataset(root, max_image_pixels=0)
    assert "max_image_pixels" not in dataset(root).describe()["options"]  # unchanged cache keys
    assert dataset(root, max_image_pixels=10**9).describe()["options"]["max_image_pixels"] == 10**9


def test_bomb_warning_turned_into_an_error_is_bad_data(tmp_path, small_pillow_limit):
    """Between Pillow's limit and twice it Pillow only warns; under ``-W error`` that
    warning is raised, and it is still bad data, not an internal error."""
    root, image_id = folder_with(tmp_path, "warn.png", png_bytes(40))  # 1600 px: 1000 < 1600 <= 2000
    ds = dataset(root)
    with pytest.warns(Image.DecompressionBombWarning):
        assert ds.open(record(ds, image_id)).size == (40, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DataError, match="decompression bomb"):
            ds.open(record(ds, image_id))


# --------------------------------------------------------------------------- what plugins raise


@pytest.mark.parametrize(
    "error",
    [
        struct.error("unpack requires a buffer of 4 bytes"),
        IndexError("index out of range"),
        EOFError("no more images in GIF file"),
        KeyError(7),
        TypeError("bad tag type"),
        ZeroDivisionError("division by zero"),
        OverflowError("Python int too large to convert to C long"),
        NotImplementedError("Unsupported DDS pixel format"),
    ],
    ids=lambda e: "struct.error" if isinstance(e, struct.error) else type(e).__name__,
)
def test_whatever_a_pillow_plugin_raises_is_bad_data(tmp_path, monkeypatch, error):
    root, image_id = folder_with(tmp_path, "hostile.png", png_bytes(8))
    ds = dataset(root)
    rec = record(ds, image_id)
    real_open = Image.open

    def hostile_open(fp, *args, **kwargs):
        if Path(fp) == rec.path:
            raise error
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", hostile_open)
    with pytest.raises(DataError) as err:
        ds.open(rec)
    msg = str(err.value)
    assert image_id in msg and type(error).__name__ in msg and "on_bad_image: skip" in msg

    from sing_audit.pipeline.extraction import _Images

    skipping = dataset(root, on_bad_image="skip")
    records = skipping.records()
    images = _Images(skipping, records, lambda img: img.size, skip_bad=True)
    assert [records[i].image_id for i in range(len(records)) if images[i][1] is None] == [image_id]


def test_image_list_has_max_image_pixels_too(tmp_path):
    from sing_audit.builtins.image_datasets import ImageListDataset

    (tmp_path / "big.png").write_bytes(png_bytes(40))
    (tmp_path / "small.png").write_bytes(png_bytes(8))
    (tmp_path / "list.csv").write_text("path,label\nbig.png,a\nsmall.png,b\n")
    ds = ImageListDataset(ImageListDataset.Options(csv=tmp_path / "list.csv", max_image_pixels=1000))
    big, small = ds.records()
    with pytest.raises(DataError, match="max_image_pixels of 1,000"):
        ds.open(big)
    assert ds.open(small).size == (8, 8)
    assert ds.describe()["options"]["max_image_pixels"] == 1000


# --------------------------------------------------------------------------- formats


def _eps_bytes() -> bytes:
    """A minimal EPS file: Pillow would hand it to Ghostscript to decode."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
        b"newpath 0 0 moveto 8 0 lineto 8 8 lineto closepath fill\nshowpage\n%%EOF\n"
    )


def test_a_file_is_decoded_only_as_a_format_of_the_datasets_extensions(tmp_path):
    """Pillow picks the decoder from the content; an EPS file named .jpg must not reach
    Ghostscript, while a PNG named .jpg (ImageNet has such files) still opens."""
    root = write_image_folder(tmp_path / "val", per_class=2, size=16)
    folder = root / SYNSETS[0]
    eps = folder / "disguised.jpg"
    eps.write_bytes(_eps_bytes())
    Image.new("RGB", (8, 8), "red").save(folder / "png-inside.jpg", format="PNG")
    ds = ImageFolderDataset({"root": root})
    records = {r.path.name: r for r in ds.records()}
    assert ds.image_formats is not None and "EPS" not in ds.image_formats and "PNG" in ds.image_formats
    assert ds.open(records["png-inside.jpg"]).size == (8, 8)
    with pytest.raises(DataError, match=r"disguised\.jpg.*not an image file of a known format \(only .*JPEG"):
        ds.open(records["disguised.jpg"])


def test_explain_of_a_file_outside_the_dataset_uses_the_same_checks(tmp_path):
    from sing_audit.components import ImageRecord, open_image

    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bomb_jpeg())
    with pytest.raises(DataError, match="bomb.jpg"):
        open_image(ImageRecord(image_id="bomb.jpg", path=bomb, label=None))
