"""The ``precomputed`` backbone and target: features and embeddings from ``.npz`` or
``.safetensors`` files (DESIGN.md's contract). Files are read without pickle; string
arrays must be plain unicode arrays (npz) or JSON lists in the safetensors header.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from sing_audit.components import (
    EmbeddingTable,
    EmbeddingTarget,
    FeatureBackbone,
    FeatureTable,
    LinearHead,
    PluginOptions,
)
from sing_audit.errors import DataError
from sing_audit.hookspecs import hookimpl
from sing_audit.scores import unit_rows

STRING_FIELDS = ("class_names", "image_ids", "concept_names")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def read_arrays(path: Path) -> dict[str, Any]:
    """All arrays of an ``.npz`` or ``.safetensors`` file; string fields as lists."""
    if not path.is_file():
        raise DataError(f"precomputed file not found: {path}")
    out: dict[str, Any] = {}
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    try:
                        arr = data[key]
                    except ValueError as exc:
                        raise DataError(
                            f"{path}: array {key!r} is an object array, which needs pickle to load; "
                            "save strings as a plain unicode array, e.g. np.array(names, dtype=str)"
                        ) from exc
                    out[key] = arr
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable archive is bad input
            raise DataError(f"{path}: cannot read as .npz ({exc.__class__.__name__}: {exc})") from exc
        for key in STRING_FIELDS:
            if key in out:
                if out[key].dtype.kind not in "U":
                    raise DataError(f"{path}: {key} must be a unicode string array, got dtype {out[key].dtype}")
                out[key] = [str(s) for s in out[key].tolist()]
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as fh:
                meta = fh.metadata() or {}
                for key in fh.keys():
                    out[key] = fh.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read as .safetensors ({exc})") from exc
        for key in STRING_FIELDS:
            if key in meta:
                try:
                    names = json.loads(meta[key])
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: header metadata {key!r} is not a JSON list") from exc
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise DataError(f"{path}: header metadata {key!r} must be a JSON list of strings")
                out[key] = names
    else:
        raise DataError(f"{path}: precomputed files must be .npz or .safetensors, not {path.suffix or 'no suffix'}")
    return out


def _require(arrays: dict, key: str, path: Path) -> Any:
    if key not in arrays:
        raise DataError(f"{path}: missing required array {key!r} (has: {', '.join(sorted(arrays)) or 'nothing'})")
    return arrays[key]


def _float_matrix(arrays: dict, key: str, path: Path) -> np.ndarray:
    a = np.asarray(_require(arrays, key, path))
    if a.ndim != 2 or a.dtype.kind not in "fiu":
        raise DataError(f"{path}: {key} must be a 2-D numeric array, got shape {a.shape} dtype {a.dtype}")
    return a


def array_shape(path: Path, key: str) -> tuple[int, ...] | None:
    """The shape of array ``key`` of an ``.npz`` or ``.safetensors`` file, from its header alone
    (nothing but the header is read); ``None`` when the file or the array is not there or
    cannot be read (reading the file itself then says why)."""
    try:
        if path.suffix == ".npz":
            import zipfile

            with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, _ = read(fh)  # the header only
                return tuple(int(d) for d in shape)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                if key not in fh.keys():
                    return None
                return tuple(int(d) for d in fh.get_slice(key).get_shape())
    except Exception:  # noqa: BLE001 - unreadable here: load_features reports it
        return None
    return None


def _check_ids(ids: list[str] | None, n: int, path: Path) -> None:
    if ids is None:
        return
    if len(ids) != n:
        raise DataError(f"{path}: image_ids has {len(ids)} entries for {n} rows")
    if len(set(ids)) != n:
        raise DataError(f"{path}: image_ids are not unique")


class PrecomputedBackbone(FeatureBackbone):
    """Features, labels and head read from a file."""

    class Options(PluginOptions):
        path: Path = Field(description=".npz or .safetensors with features, labels, head_weight, class_names")
        random_weights: bool = Field(default=False, description="the features come from a random-init model")
        base_dir: Path | None = None

    def __init__(self, options: "PrecomputedBackbone.Options"):
        self.options = options
        base = options.base_dir or Path.cwd()
        self.path = options.path if options.path.is_absolute() else base / options.path
        self.random_weights = options.random_weights
        self._arrays: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = read_arrays(self.path)
        return self._arrays

    def describe(self) -> dict[str, Any]:
        return {"plugin": "precomputed", "path": str(self.path), "digest": _digest(self.path) if self.path.is_file() else None}

    def declared_feature_dim(self) -> int | None:
        """The width of ``features`` (N×m), from the file's header: no array is read."""
        shape = array_shape(self.path, "features")
        return shape[1] if shape is not None and len(shape) == 2 else None

    def head(self) -> LinearHead:
        a = self._load()
        weight = _float_matrix(a, "head_weight", self.path)
        bias = a.get("head_bias")
        names = a.get("class_names")
        if names is None:
            raise DataError(f"{self.path}: missing class_names (c readable names, one per head row)")
        eps = float(np.finfo(weight.dtype).eps) if weight.dtype.kind == "f" else float(np.finfo(np.float64).eps)
        return LinearHead(weight=weight, bias=bias, weight_eps=eps, class_names=list(names))

    def load_features(self) -> FeatureTable:
        a = self._load()
        feats = _float_matrix(a, "features", self.path)
        n = feats.shape[0]
        labels = a.get("labels")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
                raise DataError(f"{self.path}: labels must be {n} integers (head indices), got shape {labels.shape} dtype {labels.dtype}")
            labels = labels.astype(np.int64)
        ids = a.get("image_ids")
        _check_ids(ids, n, self.path)
        return FeatureTable(features=feats, labels=labels, image_ids=ids)


class PrecomputedTarget(EmbeddingTarget):
    """Image and text embeddings read from a file; no text encoder."""

    class Options(PluginOptions):
        path: Path = Field(description=".npz or .safetensors with image_embeddings and text_embeddings")
        random_weights: bool = False
        base_dir: Path | None = None

    def __init__(self, options: "PrecomputedTarget.Options"):
        self.options = options
        base = options.base_dir or Path.cwd()
        self.path = options.path if options.path.is_absolute() else base / options.path
        self.random_weights = options.random_weights
        self._table: EmbeddingTable | None = None

    def describe(self) -> dict[str, Any]:
        return {"plugin": "precomputed", "path": str(self.path), "digest": _digest(self.path) if self.path.is_file() else None}

    def load_embeddings(self) -> EmbeddingTable:
        if self._table is not None:
            return self._table
        a = read_arrays(self.path)
        img = _float_matrix(a, "image_embeddings", self.path)
        text = a.get("text_embeddings")
        if text is not None:
            text = np.asarray(text)
            if text.ndim != 2 or text.shape[1] != img.shape[1]:
                raise DataError(f"{self.path}: text_embeddings must be c×{img.shape[1]}, got shape {text.shape}")
        ids = a.get("image_ids")
        _check_ids(ids, img.shape[0], self.path)
        cnames = a.get("concept_names")
        cemb = a.get("concept_embeddings")
        if (cnames is None) != (cemb is None):
            raise DataError(f"{self.path}: concept_names and concept_embeddings come together")
        if cemb is not None and (cemb.ndim != 2 or cemb.shape != (len(cnames), img.shape[1])):
            raise DataError(f"{self.path}: concept_embeddings must be {len(cnames)}×{img.shape[1]}, got {cemb.shape}")
        self._table = EmbeddingTable(img, ids, text, cnames, cemb)
        return self._table

    def class_text_embeddings(self, class_names) -> np.ndarray:
        text = self.load_embeddings().text_embeddings
        if text is None:
            raise DataError(
                f"{self.path}: has no text_embeddings, and a precomputed target cannot embed the class "
                "prompts itself; add text_embeddings (c×n, one per head class)"
            )
        if text.shape[0] != len(class_names):
            raise DataError(f"{self.path}: text_embeddings has {text.shape[0]} rows but the head has {len(class_names)} classes")
        return unit_rows(text)


@hookimpl
def register_backbones(register):
    register("precomputed", PrecomputedBackbone)


@hookimpl
def register_targets(register):
    register("precomputed", PrecomputedTarget)
