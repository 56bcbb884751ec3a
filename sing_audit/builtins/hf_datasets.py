"""The ``hf_datasets`` dataset: a Hugging Face ``datasets`` data set on this machine.

Three layouts (``format: auto`` tells them apart):

* ``disk``: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
  opened with ``datasets.load_from_disk`` (memory-mapped Arrow files; nothing is copied);
* ``parquet``: a ``.parquet`` file, or a folder of them (the Hub's ``data/<split>-*.parquet``
  layout), read row group by row group with ``pyarrow`` — ``load_dataset("parquet")``
  would first copy every image into Arrow files in the datasets cache, outside the
  output folder; the features (a ``ClassLabel``'s names, the ``Image`` column) come from
  the files' own ``huggingface`` schema metadata through ``datasets.Features``;
* ``imagefolder``: ``datasets``' own image-folder builder (``root/<class>/<image>``, an
  optional ``metadata.csv``), listed in streaming mode with a throw-away cache folder, so
  nothing is written and images are read from their files.

Local paths only, never the network: hub ids are refused (download the data set once,
``save_to_disk`` it, and give that folder), and ``datasets`` is used with
``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set. Images are decoded by
:func:`sing_audit.datasets.open_image` (the format allow-list and pixel limit of every
dataset), never by ``datasets``' own ``Image`` feature. A ``ClassLabel`` label column's
names are the labels (``labels: key``, mapped to the head like ``image_folder``'s folder
names) or, with ``labels: index``, the readable names of head indices the column holds.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sing_audit.classmap import looks_like_synset
from sing_audit.components import ImageRecord
from sing_audit.datasets import open_image
from sing_audit.errors import DataError
from sing_audit.extras import environment, require
from sing_audit.hookspecs import hookimpl
from sing_audit.store import file_sha256
from sing_audit.terminal import close_matches

from .image_datasets import DEFAULT_EXTENSIONS, LabelledImageOptions, _BaseImageDataset, _resolve

__all__ = ["HfDataset"]

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _datasets():
    """The ``datasets`` package (offline), or exit 2 naming the ``hf-datasets`` extra."""
    with environment(_OFFLINE):
        return require("datasets", extra="hf-datasets", feature="the hf_datasets dataset")


class HfDataset(_BaseImageDataset):
    """A local Hugging Face data set: ``save_to_disk`` folder, parquet files or an image folder."""

    class Options(LabelledImageOptions):
        path: Path = Field(description="the data set's folder or parquet file (relative to the config's folder)")
        format: Literal["auto", "disk", "parquet", "imagefolder"] = Field(
            "auto", description="disk (save_to_disk), parquet, imagefolder, or auto: told apart by the files")
        split: str | None = Field(None, description="the split to audit (needed when there are several)")
        image_column: str = Field("image", description="the column of the images")
        label_column: str | None = Field("label", description="the column of the labels (null: unlabelled)")
        id_column: str | None = Field(
            None, description="a column of unique image ids (default: the images' file names when unique, else row numbers)")
        labels: Literal["key", "index"] = Field(
            "key",
            description="key: a label is a class key (a ClassLabel's name, a synset, as image_folder's folder names); "
                        "index: a label is the head's class index (a ClassLabel's names then name the classes)",
        )

    plugin_name = "hf_datasets"
    listing_field = "path"

    def __init__(self, options) -> None:
        _datasets()  # exit 2 naming the extra before anything runs
        super().__init__(options)
        self._kind: str | None = None
        self._table = None  # disk: the Dataset in arrow format
        self._rows: list[tuple[Path, int, int]] = []  # parquet: (file, row group, row in it) per record
        self._row_of: dict[str, int] = {}
        self._files: list[Path] = []
        self._label_names: list[str] | None = None
        self._group: tuple[tuple[Path, int], Any] | None = None  # parquet: the row group last read

    @property
    def image_extensions(self) -> list[str]:
        return list(DEFAULT_EXTENSIONS)

    @property
    def root(self) -> Path:
        return _resolve(self.options.path, self.options.base_dir)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: not the row group last read
        state = dict(self.__dict__)
        state["_group"] = None
        return state

    # ---------------------------------------------------------------- layout

    def _format(self) -> str:
        path = self.root
        if not path.exists():
            written = str(self.options.path)
            if _HUB_ID.match(written) and not written.startswith((".", "/")):
                raise DataError(
                    f"hf_datasets reads data sets on this machine only, and {written!r} is no file or folder here (it "
                    "looks like a Hugging Face Hub id); download it once (datasets.load_dataset(...).save_to_disk(FOLDER)) "
                    "and set path to that folder", field="path")
            raise DataError(f"data set not found: {path}", field="path")
        fmt = self.options.format
        if fmt != "auto":
            return fmt
        if path.is_file():
            if path.suffix.lower() == ".parquet":
                return "parquet"
            raise DataError(f"{path} is a file but not a .parquet file; give a data set folder or parquet file",
                            field="path")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "disk"
        if any(path.rglob("*.parquet")):
            return "parquet"
        return "imagefolder"

    # ---------------------------------------------------------------- listing

    def _scan(self) -> list[ImageRecord]:
        self._kind = self._format()
        with environment(_OFFLINE):
            rows = {"disk": self._scan_disk, "parquet": self._scan_parquet, "imagefolder": self._scan_imagefolder}[
                self._kind]()
        ids, labels, paths = rows
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            twice = next(i for i in ids if i in seen or seen.add(i))
            raise DataError(f"image id {twice!r} occurs twice in {self.options.id_column!r}; give a column of unique "
                            "ids as id_column", field="id_column")
        records: list[ImageRecord] = []
        counts: dict[str | None, int] = {}
        limit = self.options.limit_per_class
        for row, (image_id, label, path) in enumerate(zip(ids, labels, paths)):
            if limit is not None and counts.get(label, 0) >= limit:
                continue
            counts[label] = counts.get(label, 0) + 1
            self._row_of[image_id] = row
            records.append(ImageRecord(image_id=image_id, path=path, label=label))
        return records

    def _pick_split(self, splits: list[str], where: str) -> str:
        split = self.options.split
        if split is None:
            if len(splits) == 1:
                return splits[0]
            raise DataError(f"{where} has the splits {', '.join(splits)}; set split to one of them", field="split")
        if split not in splits:
            close = close_matches(split, splits)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise DataError(f"{where} has no split {split!r}{hint}; its splits: {', '.join(splits)}", field="split")
        return split

    def _column(self, names: list[str], option: str, what: str) -> str | None:
        name = getattr(self.options, option)
        if name is None or name in names:
            return name
        close = close_matches(name, names)
        hint = f" (close: {', '.join(repr(c) for c in close)})" if close else ""
        extra = "; set label_column: null for an unlabelled data set" if option == "label_column" else ""
        raise DataError(f"data set {self.root} has no column {name!r} for {what}{hint}; its columns: "
                        f"{', '.join(names)}{extra}", field=option)

    def _labels_of(self, features, column: str | None, values: list) -> list[str | None]:
        if column is None:
            return [None] * len(values)
        datasets = _datasets()
        feature = features.get(column) if features is not None else None
        if isinstance(feature, datasets.ClassLabel):
            names = list(feature.names)
            self._label_names = names
            if self.options.labels == "index":
                return [None if v is None or v < 0 else str(int(v)) for v in values]
            return [None if v is None or v < 0 else names[int(v)] for v in values]
        out = []
        for v in values:
            out.append(None if v is None or str(v).strip() == "" else str(v).strip())
        if self.options.labels == "index":
            bad = next((v for v in out if v is not None and not v.isdigit()), None)
            if bad is not None:
                raise DataError(f"label {bad!r} in column {column!r} is not a head index (labels: index wants 0, 1, …); "
                                "set labels: key for class keys", field="labels")
        return out

    def _ids(self, names: list[str], id_values: list | None, image_paths: list | None, n: int) -> list[str]:
        """The records' ids: ``id_column``'s values, else the images' file names when they
        are unique, else row numbers."""
        if self._column(names, "id_column", "the image ids") is not None:
            return [str(v) for v in id_values]
        files = [Path(p).name if p else None for p in (image_paths or [])]
        if len(files) == n and all(files) and len(set(files)) == n:
            return files
        width = len(str(max(n - 1, 0)))
        return [f"row-{i:0{width}d}" for i in range(n)]

    def _scan_disk(self):
        datasets = _datasets()
        try:
            loaded = datasets.load_from_disk(str(self.root))
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise DataError(f"{self.root} cannot be opened with datasets.load_from_disk: {exc}", field="path") from exc
        if isinstance(loaded, datasets.DatasetDict):
            split = self._pick_split(list(loaded), str(self.root))
            ds = loaded[split]
            self._files = sorted((self.root / split).glob("*"))
        else:
            ds = loaded
            self._files = sorted(self.root.glob("*"))
        names = list(ds.column_names)
        image = self._column(names, "image_column", "the images")
        label = self._column(names, "label_column", "the labels")
        self._table = ds.with_format("arrow")  # rows as Arrow: the image bytes stay undecoded
        data = ds.with_format("arrow")[:]  # the indices mapping applied; the memory map read lazily
        n = len(ds)
        column = data.column(image)
        # chunk by chunk: combining the chunks would copy every image's bytes into memory
        image_paths = [p for chunk in column.chunks for p in chunk.field("path").to_pylist()] \
            if _is_image_struct(column) else None
        id_values = data.column(self.options.id_column).to_pylist() if self.options.id_column in names else None
        ids = self._ids(names, id_values, image_paths, n)
        labels = self._labels_of(ds.features, label, data.column(label).to_pylist() if label else [None] * n)
        return ids, labels, [self.root] * n

    def _scan_parquet(self):
        datasets = _datasets()
        pq = require("pyarrow.parquet", extra="hf-datasets", feature="the hf_datasets dataset")
        root = self.root
        if root.is_file():
            files = [root]
        else:
            by_split: dict[str, list[Path]] = {}
            for f in sorted(root.rglob("*.parquet")):
                # the Hub's layouts: data/<split>-00000-of-00001.parquet, or <split>/<any>.parquet
                in_folder = f.parent != root and f.parent.name != "data"
                by_split.setdefault(f.parent.name if in_folder else f.name.split("-")[0].removesuffix(".parquet"),
                                    []).append(f)
            if not by_split:
                raise DataError(f"{root} holds no .parquet files", field="path")
            files = by_split[self._pick_split(sorted(by_split), str(root))]
        self._files = files
        labels: list[str | None] = []
        paths: list[Path] = []
        id_values: list | None = [] if self.options.id_column is not None else None
        image_paths: list | None = []
        names: list[str] = []
        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:  # pyarrow raises ArrowInvalid/OSError on a damaged file
                raise DataError(f"parquet file {f} cannot be read ({exc}); copy or rebuild it", field="path") from exc
            names = list(pf.schema_arrow.names)
            image = self._column(names, "image_column", "the images")
            label = self._column(names, "label_column", "the labels")
            self._column(names, "id_column", "the image ids")
            features = datasets.Features.from_arrow_schema(pf.schema_arrow)
            n = pf.metadata.num_rows
            if id_values is not None:
                id_values.extend(pf.read(columns=[self.options.id_column]).column(0).to_pylist())
            elif image_paths is not None and _is_image_struct(pf.schema_arrow.field(image)):
                image_paths.extend(pf.read(columns=[f"{image}.path"]).column(0).combine_chunks().field("path").to_pylist())
            else:
                image_paths = None
            values = pf.read(columns=[label]).column(0).to_pylist() if label else [None] * n
            labels.extend(self._labels_of(features, label, values))
            for g in range(pf.metadata.num_row_groups):
                for r in range(pf.metadata.row_group(g).num_rows):
                    self._rows.append((f, g, r))
            paths.extend([f] * n)
        return self._ids(names, id_values, image_paths, len(paths)), labels, paths

    def _scan_imagefolder(self):
        datasets = _datasets()
        with tempfile.TemporaryDirectory(prefix="sing-audit-hf-") as cache:
            try:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(self.root), streaming=True, cache_dir=cache)
            except (FileNotFoundError, ValueError) as exc:
                raise DataError(f"{self.root} cannot be read as an imagefolder data set: {exc}", field="path") from exc
            split = self._pick_split(list(loaded), str(self.root))
            ds = loaded[split]
            names = list(ds.column_names or ds.features)
            image = self._column(names, "image_column", "the images")
            label = self._column(names, "label_column", "the labels")
            ds = ds.cast_column(image, datasets.Image(decode=False))
            rows = list(ds)
        paths = [Path(r[image]["path"]) for r in rows]
        if self.options.id_column is not None:
            ids = [str(r[self.options.id_column]) for r in rows]
        else:
            ids = [p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else p.as_posix() for p in paths]
        labels = self._labels_of(ds.features, label, [r[label] for r in rows] if label else [None] * len(rows))
        return ids, labels, paths

    # ---------------------------------------------------------------- mappings

    def _load_maps(self) -> None:
        if self._maps_loaded:
            return
        super()._load_maps()
        self.records()  # the ClassLabel's names
        names = self._label_names
        if self.options.labels == "index":
            if self._class_map is None:
                self._class_map = {label: int(label) for label in self.labels()}
            if names is not None:
                own = {str(i): n for i, n in enumerate(names) if n and not looks_like_synset(n)}
                self._class_names = {**own, **(self._class_names or {})} or None

    # ---------------------------------------------------------------- images

    def open(self, record: ImageRecord):
        """One image, decoded from its bytes in the data set (or its file, for imagefolder)."""
        if self._records is None:
            self.records()
        if self._kind == "imagefolder":
            return super().open(record)
        row = self._row_of.get(record.image_id)
        if row is None:
            raise DataError(f"image {record.image_id!r} is not in the data set {self.root}")
        cell = self._image_cell(row)
        if not isinstance(cell, dict) or not (cell.get("bytes") or cell.get("path")):
            raise DataError(f"image {record.image_id!r}: the column {self.options.image_column!r} holds no image here")
        if cell.get("bytes"):
            return open_image(record, max_image_pixels=self.max_image_pixels, formats=self.image_formats,
                              fp=io.BytesIO(cell["bytes"]))
        file = Path(cell["path"])
        folder = self.root if self.root.is_dir() else self.root.parent
        file = file if file.is_absolute() else folder / file  # a path-only image: relative to the data set
        return open_image(ImageRecord(record.image_id, file, record.label), max_image_pixels=self.max_image_pixels,
                          formats=self.image_formats)

    def _image_cell(self, row: int):
        column = self.options.image_column
        if self._kind == "disk":
            return self._table[row].column(column)[0].as_py()
        pq = require("pyarrow.parquet", extra="hf-datasets", feature="the hf_datasets dataset")
        file, group, offset = self._rows[row]
        if self._group is None or self._group[0] != (file, group):
            try:
                self._group = ((file, group), pq.ParquetFile(file).read_row_group(group, columns=[column]))
            except Exception as exc:
                raise DataError(f"parquet file {file} cannot be read ({exc}); copy or rebuild it") from exc
        return self._group[1].column(column)[offset].as_py()

    # ---------------------------------------------------------------- provenance

    def _digest(self, records: list[ImageRecord]) -> str:
        if self._kind == "imagefolder":
            return super()._digest(records)
        h = hashlib.sha256()
        for f in self._files:
            if f.is_file():
                h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
        for r in records:
            h.update(f"{r.image_id}\0{r.label}\n".encode())
        return h.hexdigest()

    def _options_description(self) -> dict[str, Any]:
        out = super()._options_description()
        out.update({"format": self._kind, "split": self.options.split, "image_column": self.options.image_column,
                    "label_column": self.options.label_column, "id_column": self.options.id_column,
                    "labels": self.options.labels})
        return out


def _is_image_struct(column) -> bool:
    """An Arrow column (or schema field) of ``datasets``' ``Image`` storage: ``{bytes, path}``."""
    import pyarrow as pa

    return pa.types.is_struct(column.type) and column.type.get_field_index("path") >= 0


def _file_digest(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc}") from exc


@hookimpl
def register_datasets(register):
    register("hf_datasets", HfDataset)
