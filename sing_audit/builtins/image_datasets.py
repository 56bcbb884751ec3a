"""Image datasets: a folder per class (``image_folder``) or a CSV list (``image_list``)."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, field_validator

from sing_audit.components import ImageDataset, ImageRecord, PluginOptions
from sing_audit.errors import DataError, at_field
from sing_audit.hookspecs import hookimpl
from sing_audit.store import file_sha256

from .mapping_files import load_mapping_file

__all__ = [
    "DEFAULT_EXTENSIONS",
    "LabelledImageOptions",
    "normalize_extensions",
    "pillow_formats",
    "ImageFolderDataset",
    "ImageListDataset",
    "load_mapping_file",
]

DEFAULT_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff")



def _resolve(path: Path, base_dir: Path | None) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path.resolve()


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def pillow_formats(extensions: list[str]) -> tuple[str, ...] | None:
    """The Pillow formats of ``extensions`` (``["jpg", "png"]`` -> ``("JPEG", "PNG")``): the
    only formats the dataset decodes, so a file cannot pick a riskier decoder by its content
    (an EPS file named .jpg would start Ghostscript). ``None`` when an extension is unknown
    to Pillow (a plugin may read it), so nothing the user listed is refused."""
    from PIL import Image

    known = Image.registered_extensions()
    formats = []
    for ext in extensions:
        fmt = known.get(f".{ext.lower()}")
        if fmt is None:
            return None
        if fmt not in formats:
            formats.append(fmt)
    return tuple(formats)  # (multi-picture JPEGs from phone cameras open through "JPEG")


def normalize_extensions(v: list[str]) -> list[str]:
    """Extensions (or webdataset keys) lower-cased, without dots, each once; at least one."""
    out = []
    for e in v:
        e = e.strip().lower().lstrip(".")
        if not e:
            raise ValueError("extensions must not be empty strings")
        if e not in out:
            out.append(e)
    if not out:
        raise ValueError("give at least one image extension")
    return out


class LabelledImageOptions(PluginOptions):
    """The options every image dataset shares: labels, class mappings, bad images."""

    limit_per_class: int | None = Field(None, ge=1, description="keep the first N images of each class")
    classes: list[str] | None = Field(
        None,
        min_length=1,
        description="keep only the images of these labels (class folders or CSV labels), e.g. a few ImageNet "
        "synsets of a full validation folder; a label the data lacks is an error",
    )
    class_map: dict[str, int] | Path | None = Field(None, description="label -> head index, or a JSON/YAML/CSV file")
    class_names: dict[str, str] | Path | None = Field(None, description="label -> readable name, or a file")
    on_bad_image: Literal["fail", "skip"] = "fail"
    max_image_pixels: int | None = Field(
        None,
        ge=1,
        description="largest image (width × height) to decode; a larger one is a bad image (a possible "
        "decompression bomb). Default: Pillow's limit, 178,956,970 pixels (2 × PIL.Image.MAX_IMAGE_PIXELS); "
        "raise it for genuine large images",
    )
    base_dir: Path | None = Field(None, description="folder relative paths start from (set by the host)")


class _ImageOptions(LabelledImageOptions):
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))

    @field_validator("extensions")
    @classmethod
    def _norm_extensions(cls, v: list[str]) -> list[str]:
        return normalize_extensions(v)


class _BaseImageDataset(ImageDataset):
    plugin_name = ""
    #: the option that says where the images are listed (named in pre-flight messages)
    listing_field = "root"

    def __init__(self, options) -> None:
        if not isinstance(options, self.Options):  # type: ignore[attr-defined]
            options = self.Options.model_validate(options)  # type: ignore[attr-defined]
        self.options = options
        self.on_bad_image = options.on_bad_image
        self.max_image_pixels = options.max_image_pixels
        self._records: list[ImageRecord] | None = None
        self._class_map: dict[str, int] | None = None
        self._class_names: dict[str, str] | None = None
        self._maps_loaded = False
        self._description: dict[str, Any] | None = None

    @functools.cached_property
    def image_formats(self) -> tuple[str, ...] | None:  # type: ignore[override]
        """:func:`pillow_formats` of the extensions, found when the first image is opened: a run
        whose features are all cached never imports Pillow's format plugins."""
        return pillow_formats(self.image_extensions)

    @property
    def image_extensions(self) -> list[str]:
        """The extensions (file suffixes, webdataset keys) images are read from."""
        return list(self.options.extensions)

    # ---------------------------------------------------------------- mappings

    def _load_maps(self) -> None:
        if self._maps_loaded:
            return
        base = self.options.base_dir
        cm = self.options.class_map
        if isinstance(cm, Path):
            cm = load_mapping_file(_resolve(cm, base), values="int")
        cn = self.options.class_names
        if isinstance(cn, Path):
            cn = load_mapping_file(_resolve(cn, base), values="str")
        self._class_map = None if cm is None else {str(k): int(v) for k, v in cm.items()}
        self._class_names = None if cn is None else {str(k): str(v) for k, v in cn.items()}
        self._maps_loaded = True

    def class_map(self) -> dict[str, int] | None:
        self._load_maps()
        return None if self._class_map is None else dict(self._class_map)

    def class_names(self) -> dict[str, str] | None:
        self._load_maps()
        return None if self._class_names is None else dict(self._class_names)

    def _has_extension(self, path: Path | PurePosixPath) -> bool:
        return path.suffix.lower().lstrip(".") in self.image_extensions

    # ---------------------------------------------------------------- records

    def records(self) -> list[ImageRecord]:
        if self._records is None:
            self._records = self._keep_classes(self._scan())
        return list(self._records)

    def _keep_classes(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """``records`` of the labels of ``classes`` only (all of them without the option)."""
        wanted = self.options.classes
        if wanted is None:
            return records
        present = {r.label for r in records}
        missing = [c for c in dict.fromkeys(wanted) if c not in present]
        if missing:
            shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            raise DataError(
                f"classes: dataset {self.root} has no images of {shown}; check the labels (for an ImageNet "
                f"folder, the synset folder names such as n01440764)", field="classes",
            )
        keep = set(wanted)
        return [r for r in records if r.label in keep]

    def check(self) -> None:
        """The images can be listed (root, class folders, the CSV and every file it
        lists exist) and the mapping files read; no image is decoded."""
        for what in ("class_map", "class_names"):
            with at_field(what):
                getattr(self, what)()
        with at_field(self.listing_field):
            records = self.records()
        if not records:
            raise DataError(f"dataset {self.root} holds no images (looked for extensions: "
                            f"{', '.join(self.image_extensions)})", field=self.listing_field)

    def _scan(self) -> list[ImageRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def root(self) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self) -> list[str]:
        """The distinct labels, in order of first appearance."""
        seen: dict[str, None] = {}
        for r in self.records():
            if r.label is not None:
                seen.setdefault(r.label, None)
        return list(seen)

    # ---------------------------------------------------------------- provenance

    def _file_hash(self, record: ImageRecord) -> str:
        try:
            return file_sha256(record.path)
        except FileNotFoundError:
            if self.on_bad_image == "skip":
                return "missing"
            raise DataError(f"image {record.image_id!r} is missing: {record.path}") from None
        except OSError as exc:
            if self.on_bad_image == "skip":
                return "unreadable"
            raise DataError(f"image {record.image_id!r} cannot be read: {exc}") from exc

    def _options_description(self) -> dict[str, Any]:
        self._load_maps()
        out = {
            "limit_per_class": self.options.limit_per_class,
            "extensions": list(self.image_extensions),
            "class_map": self._class_map,
            "class_names": self._class_names,
            "on_bad_image": self.options.on_bad_image,
        }
        # it decides which images are skipped, so it keys the cache; only when set, so
        # that the cache keys of existing audits stay as they were
        if self.options.max_image_pixels is not None:
            out["max_image_pixels"] = self.options.max_image_pixels
        if self.options.classes is not None:
            out["classes"] = list(self.options.classes)
        return out

    def describe(self) -> dict[str, Any]:
        if self._description is None:
            records = self.records()
            desc = {
                "plugin": self.plugin_name,
                "root": str(self.root),
                "options": self._options_description(),
                "num_images": len(records),
                "num_labels": len(self.labels()),
                "digest": f"sha256:{self._digest(records)}",
            }
            desc.update(self._extra_description())
            self._description = desc
        return json.loads(json.dumps(self._description))

    def _digest(self, records: list[ImageRecord]) -> str:
        """The hex SHA-256 of what the images are: each record's id, label and content."""
        h = hashlib.sha256()
        for r in records:
            h.update(json.dumps([r.image_id, r.label, self._file_hash(r)], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def _extra_description(self) -> dict[str, Any]:
        return {}


class ImageFolderDataset(_BaseImageDataset):
    """``root/<class>/<image>``: one folder per class, the folder name is the label.

    Folders and files are sorted; images in sub-folders of a class folder count for that
    class; hidden files and folders are ignored.
    """

    class Options(_ImageOptions):
        root: Path = Field(description="folder with one sub-folder per class")

    plugin_name = "image_folder"

    @property
    def root(self) -> Path:
        return _resolve(self.options.root, self.options.base_dir)

    def _scan(self) -> list[ImageRecord]:
        root = self.root
        if not root.exists():
            raise DataError(f"dataset root not found: {root}", field="root")
        if not root.is_dir():
            raise DataError(f"dataset root is not a folder: {root}", field="root")
        folders = sorted((p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name)), key=lambda p: p.name)
        if not folders:
            loose = [p for p in root.iterdir() if p.is_file() and self._has_extension(p)]
            hint = (
                f" (it holds {len(loose)} image(s) directly: move them into one folder per class, "
                "or use the image_list dataset)"
                if loose
                else ""
            )
            raise DataError(f"dataset root {root} has no class folders (expected root/<class>/<image>){hint}", field="root")
        records: list[ImageRecord] = []
        limit = self.options.limit_per_class
        exts = ", ".join(self.options.extensions)
        for folder in folders:
            files = []
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
                for name in filenames:
                    if _is_hidden(name):
                        continue
                    p = Path(dirpath) / name
                    if self._has_extension(p):
                        files.append(p.relative_to(root).as_posix())
            if not files:
                raise DataError(f"class folder {folder} has no images (looked for extensions: {exts})", field="root")
            files.sort()
            if limit is not None:
                files = files[:limit]
            records.extend(ImageRecord(image_id=rel, path=root / rel, label=folder.name) for rel in files)
        return records


class ImageListDataset(_BaseImageDataset):
    """A CSV with a header ``path,label``: one image per row, label optional (empty = unlabeled).

    Paths are relative to the CSV's folder, or to ``root`` when given. Rows keep the
    file's order; ``limit_per_class`` keeps the first N rows of each label.
    """

    class Options(_ImageOptions):
        csv: Path = Field(description="CSV file with columns path[,label]")
        root: Path | None = Field(None, description="folder the CSV's paths are relative to (default: the CSV's)")

    plugin_name = "image_list"
    listing_field = "csv"

    @property
    def csv_path(self) -> Path:
        return _resolve(self.options.csv, self.options.base_dir)

    @property
    def root(self) -> Path:
        if self.options.root is not None:
            return _resolve(self.options.root, self.options.base_dir)
        return self.csv_path.parent

    def _scan(self) -> list[ImageRecord]:
        path = self.csv_path
        if not path.is_file():
            raise DataError(f"image list not found: {path}", field="csv")
        root = self.root
        if self.options.root is not None and not root.is_dir():
            raise DataError(f"image list root is not a folder: {root}", field="root")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"image list {path} cannot be read: {exc}") from exc
        reader = csv.reader(text.splitlines())
        rows = [(i, r) for i, r in enumerate(reader, start=1) if r and any(c.strip() for c in r)]
        if not rows:
            raise DataError(f"image list {path} is empty; it needs a header 'path,label' and one row per image")
        header = [c.strip().lower() for c in rows[0][1]]
        if "path" not in header:
            raise DataError(
                f"image list {path} has no 'path' column (header: {','.join(header)}); "
                "the first row must be a header such as 'path,label'"
            )
        ipath = header.index("path")
        ilabel = header.index("label") if "label" in header else None
        body = rows[1:]
        if not body:
            raise DataError(f"image list {path} lists no images (only a header)")

        records: list[ImageRecord] = []
        seen: dict[str, int] = {}
        counts: dict[str | None, int] = {}
        missing: list[str] = []
        limit = self.options.limit_per_class
        for lineno, r in body:
            cell = r[ipath].strip() if ipath < len(r) else ""
            if not cell:
                raise DataError(f"image list {path}, line {lineno}: empty path")
            label = None
            if ilabel is not None and ilabel < len(r) and r[ilabel].strip():
                label = r[ilabel].strip()
            written = PurePosixPath(os.path.normpath(cell.replace("\\", "/")).replace("\\", "/"))
            if not self._has_extension(written):
                raise DataError(
                    f"image list {path}, line {lineno}: {cell!r} does not have an image extension "
                    f"({', '.join(self.options.extensions)}); add it to extensions if it is an image"
                )
            file = Path(written) if Path(cell).is_absolute() else root / Path(*written.parts)
            file = Path(os.path.normpath(file))
            try:
                image_id = file.relative_to(root).as_posix()
            except ValueError:
                image_id = file.as_posix()
            if image_id in seen:
                raise DataError(f"image list {path}: {image_id!r} is listed twice (lines {seen[image_id]} and {lineno})")
            seen[image_id] = lineno
            if limit is not None and counts.get(label, 0) >= limit:
                continue
            counts[label] = counts.get(label, 0) + 1
            if not file.is_file():
                missing.append(f"{image_id} (line {lineno})")
            records.append(ImageRecord(image_id=image_id, path=file, label=label))
        if missing and self.on_bad_image == "fail":
            more = f", … {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(
                f"image list {path}: {len(missing)} listed image(s) not found under {root}: "
                f"{', '.join(missing[:5])}{more}; fix the paths (or root), or set on_bad_image: skip"
            )
        return records

    def _extra_description(self) -> dict[str, Any]:
        return {"csv": str(self.csv_path)}


@hookimpl
def register_datasets(register):
    register("image_folder", ImageFolderDataset)
    register("image_list", ImageListDataset)
