"""Datasets: the interface of an image dataset, and the one safe way to open an image
file (format allow-list, pixel limit, truncated and malformed files are bad data)."""

from __future__ import annotations

import abc
import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DataError

__all__ = ["ImageRecord", "ImageDataset", "open_image"]

log = logging.getLogger("sing_audit")



@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    ``image_id`` is stable across runs (a path relative to the dataset root);
    ``label`` is the dataset's own class key (a folder name, a CSV label) or ``None``.
    """

    image_id: str
    path: Path
    label: str | None


class ImageDataset(abc.ABC):
    """A list of images with optional labels.

    ``class_map`` (dataset label -> head index) and ``class_names`` (dataset label ->
    readable name) are optional explicit mappings from the user's config; when absent
    the runner maps labels through the backbone's own class list (ImageNet synsets, or
    readable names that match).
    """

    on_bad_image: str = "fail"  # "fail" or "skip"
    #: largest image (width × height) :meth:`open` decodes; larger ones are bad data (a
    #: decompression bomb would exhaust memory). ``None``: Pillow's own limit, twice
    #: ``PIL.Image.MAX_IMAGE_PIXELS`` (178,956,970 pixels by default)
    max_image_pixels: int | None = None
    #: Pillow format names :meth:`open` reads (``None``: any format Pillow knows)
    image_formats: tuple[str, ...] | None = None

    @abc.abstractmethod
    def records(self) -> list[ImageRecord]:
        """Every image, in a deterministic order."""

    def check(self) -> None:
        """The pre-flight (before any model loads): raise :class:`DataError` if the images
        cannot be listed (a missing root, no images), cheaply: no image is decoded.
        Default: nothing."""

    def class_map(self) -> dict[str, int] | None:
        return None

    def class_names(self) -> dict[str, str] | None:
        return None

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the images are, for cache keys and provenance (root, digests, options)."""

    def open(self, record: ImageRecord):
        """Open one image as an RGB ``PIL.Image``; raise :class:`DataError` if unreadable
        (see :func:`open_image`), reading only the formats in :attr:`image_formats`."""
        return open_image(record, max_image_pixels=self.max_image_pixels, formats=self.image_formats)


def open_image(record: ImageRecord, *, max_image_pixels: int | None = None, formats: Sequence[str] | None = None,
               fp: BinaryIO | None = None):
    """Open one image file as an RGB ``PIL.Image``; raise :class:`DataError` if unreadable.

    ``fp``: the image's bytes as a file object (a member of a tar shard, a cell of a
    table) instead of the file ``record.path``; the same checks apply.

    Unreadable means missing, corrupt, truncated (always, whatever another library did
    to Pillow's process-wide settings: see :func:`_refuse_truncated_images`), larger than
    ``max_image_pixels`` (a possible decompression bomb), of a format outside ``formats``
    (Pillow names such as ``"JPEG"``; ``None``: any — Pillow picks the format from the
    content, so a ``.jpg`` holding EPS would otherwise start Ghostscript), or anything else
    Pillow's format plugins raise on a malformed file.
    """
    from PIL import Image, UnidentifiedImageError

    _refuse_truncated_images()
    limit = max_image_pixels
    if limit is not None:
        _let_pillow_decode(limit)
    try:
        with Image.open(record.path if fp is None else fp, formats=list(formats) if formats is not None else None) as img:
            if limit is not None and img.width * img.height > limit:
                raise DataError(_too_large(record, img.width * img.height, limit, "the dataset's max_image_pixels", img.size))
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"image {record.image_id!r} is missing: {record.path}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(_pillow_bomb(record, exc, limit)) from exc
    except UnidentifiedImageError as exc:
        allowed = f" (only {', '.join(sorted(formats))} are read, the formats of the dataset's extensions)" if formats else ""
        raise DataError(
            f"image {record.image_id!r} is not an image file of a known format{allowed}; "
            "fix or remove it, or set on_bad_image: skip"
        ) from exc
    except _UNREADABLE_IMAGE_ERRORS as exc:
        raise DataError(
            f"image {record.image_id!r} cannot be read ({exc.__class__.__name__}: {exc}); "
            "fix or remove it, or set on_bad_image: skip"
        ) from exc


#: what Pillow and its format plugins raise on a malformed or hostile file: besides the
#: OSError/SyntaxError/ValueError they raise on purpose, struct.error, IndexError,
#: KeyError... escape from parsing short or inconsistent headers. All are bad data.
_UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    NotImplementedError,
)

def _too_large(record: ImageRecord, pixels: int, limit: int, whose: str, size: tuple[int, int] | None = None) -> str:
    """The message for an image with more pixels than a limit allows, and the ways out."""
    dims = f"{size[0]}×{size[1]} = " if size else ""
    return (
        f"image {record.image_id!r} is {dims}{pixels:,} pixels, more than {whose} of {limit:,} (it could be a "
        "decompression bomb, which would exhaust memory); remove or downscale it, set on_bad_image: skip to "
        f"audit without it, or, if the image is genuine, set the dataset's max_image_pixels above {pixels:,}"
    )


def _pillow_bomb(record: ImageRecord, exc: Exception, limit: int | None) -> str:
    """The message for an image Pillow refused as a possible decompression bomb.

    Pillow refuses before the image object exists, so its message gives the pixel count
    (and its limit: twice ``MAX_IMAGE_PIXELS``; above ``MAX_IMAGE_PIXELS`` it only warns,
    and a warning gets here only when warnings are errors in this process). With the
    dataset's own ``limit`` set, that is the limit to name.
    """
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if found is None:  # pragma: no cover - a Pillow that words it differently
        return (
            f"image {record.image_id!r} is too large to decode ({exc}); remove or downscale it, set "
            "on_bad_image: skip to audit without it, or, if the image is genuine, raise the dataset's max_image_pixels"
        )
    pixels, pillow_limit = int(found.group(1)), int(found.group(2))
    if limit is not None:
        return _too_large(record, pixels, limit, "the dataset's max_image_pixels")
    if isinstance(exc, Warning):
        return _too_large(record, pixels, pillow_limit, "the limit above which Pillow warns (warnings are errors here)")
    return _too_large(record, pixels, pillow_limit, "the limit Pillow decodes")


def _let_pillow_decode(pixels: int) -> None:
    """Raise Pillow's process-wide ``MAX_IMAGE_PIXELS`` to ``pixels`` if it is lower (never
    lower it), so that Pillow neither refuses nor warns about the images a dataset's
    ``max_image_pixels`` admits; the dataset's own check then enforces that limit."""
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < pixels:
        Image.MAX_IMAGE_PIXELS = pixels
        log.info("raised PIL.Image.MAX_IMAGE_PIXELS from %d to %d for a dataset's max_image_pixels", current, pixels)


def _refuse_truncated_images() -> None:
    """Switch ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` back off if a library switched it on.

    The flag is process-wide: weasyprint sets it on import, and with it Pillow decodes a
    truncated file without complaint (the missing part filled in), so the image would be
    audited as if whole and ``on_bad_image`` never consulted. Checked before every
    decode, so the order of imports does not matter; no lock is needed (a flag that
    only ever gets cleared here), and the warning is logged each time the flag is found
    switched on, which is once per library that does so.
    """
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on by a library loaded in this process "
            "(weasyprint does so when imported); sing-audit switched it back off so that a truncated image "
            "is bad data (on_bad_image) rather than decoded with its missing part filled in and audited"
        )
