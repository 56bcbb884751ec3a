"""Reading ``.npz`` files whose name arrays numpy stored as pickled object arrays, without
running their pickles.

The SING authors' published embedding files (e.g. ``attribute_embeddings_broden_style_fp16.npz``:
``embeddings`` 173×6×768 float16, ``classes`` and ``prompts`` as object arrays of ``str``)
can be read by numpy only with ``allow_pickle=True``, which would run whatever the file's
pickle says. :func:`read_npz` reads numeric members with ``allow_pickle=False`` and object
members with :class:`NamesUnpickler`, an unpickler that can build nothing but a numpy
array of plain Python values: its only globals are the three numpy's object-array pickle
needs (``numpy.core.multiarray._reconstruct`` — ``numpy._core`` since numpy 2 —
``numpy.ndarray`` and ``numpy.dtype``). Anything else (``os.system``, ``builtins.eval``, a
class of any module) is refused before it is looked up, so nothing in the file runs. An
object array is then accepted only if every element is a ``str``, and returned as a
fixed-width ``U`` array.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from sing_audit.errors import DataError
from sing_audit.store import file_sha256 as store_file_sha256

__all__ = ["NamesUnpickler", "read_npz", "read_embedding_table", "read_class_prompt_embeddings", "file_sha256"]

# ``np.ndarray.__reduce__`` names the reconstructor of the running numpy; files written by
# numpy 1.x name it ``numpy.core.multiarray``, by numpy 2.x ``numpy._core.multiarray``
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

#: members larger than this (uncompressed) are refused: a name array is small
MAX_OBJECT_MEMBER_BYTES = 64 * 2**20


class NamesUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are numpy's array reconstructor, ``ndarray`` and
    ``dtype``: it can rebuild an object array of strings and nothing that runs code."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy arrays of strings may be read"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: only numpy arrays of strings may be read")


def _object_array(raw: io.BytesIO, source: str) -> np.ndarray:
    try:
        arr = NamesUnpickler(raw).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(
            f"{source}: its object array is not a plain array of strings, so it is not read ({exc}); "
            "store names as a fixed-width string array (numpy dtype 'U') instead"
        ) from exc
    if type(arr) is not np.ndarray or arr.dtype != object:
        raise DataError(f"{source}: the pickled member is not an object array (got {type(arr).__name__}); not read")
    flat = arr.ravel()
    bad = next((i for i, x in enumerate(flat) if type(x) is not str), None)
    if bad is not None:
        raise DataError(
            f"{source}: element {bad} of the object array is a {type(flat[bad]).__name__}, not a string; "
            "only arrays of strings are read"
        )
    return np.array(flat.tolist(), dtype=str).reshape(arr.shape) if flat.size else np.zeros(arr.shape, dtype="U1")


def read_npz(path: Path | str) -> dict[str, np.ndarray]:
    """Every member of an ``.npz`` as a plain array: numeric ones as stored, object arrays
    of strings as ``U`` arrays (through :class:`NamesUnpickler`, never ``allow_pickle``).

    :raises DataError: not an npz, a member that is not an array, or an object array
        holding anything but strings (including any pickle that names another global).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embedding file not found: {path}")
    out: dict[str, np.ndarray] = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not an .npz (zip) file: {exc}") from exc
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            source = f"{path}: {key}"
            with zf.open(info) as fh:
                try:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:  # 3.0 (utf-8 header): numpy's own reader, which refuses pickles
                        shape, fortran, dtype = None, None, None
                except ValueError as exc:
                    raise DataError(f"{source}: not a numpy array ({exc})") from exc
                if dtype is not None and dtype.hasobject:
                    if info.file_size > MAX_OBJECT_MEMBER_BYTES:
                        raise DataError(f"{source}: object array of {info.file_size} bytes, too large for names")
                    out[key] = _object_array(io.BytesIO(fh.read()), source)
                    continue
            with zf.open(info) as fh:
                try:
                    out[key] = np.lib.format.read_array(fh, allow_pickle=False)
                except ValueError as exc:
                    raise DataError(f"{source}: not readable without pickle ({exc})") from exc
    if not out:
        raise DataError(f"{path}: holds no arrays")
    return out


def file_sha256(path: Path | str) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    return f"sha256:{store_file_sha256(path)}"


#: keys tried, in order, for the names and the vectors of an embedding table
NAME_KEYS = ("names", "classes", "concept_names", "class_names")
VECTOR_KEYS = ("embeddings", "concept_embeddings", "text_embeddings")


def read_embedding_table(path: Path | str, column: str | None = None) -> tuple[list[str], np.ndarray, dict]:
    """``(names, K×n float64, info)`` of an embedding file: names under one of
    :data:`NAME_KEYS`, vectors under one of :data:`VECTOR_KEYS`, either K×n or K×P×n with
    the P column names in ``prompts`` (the authors' layout: ``prompt1`` … ``prompt5``,
    ``mean``). ``column`` picks one of the P columns (K×P×n only; default ``mean`` when
    the file has it). ``info``: ``{"file", "sha256", "column", "names_key", "vectors_key"}``.
    """
    path = Path(path)
    arrays = read_npz(path)
    names_key = next((k for k in NAME_KEYS if k in arrays), None)
    vec_key = next((k for k in VECTOR_KEYS if k in arrays), None)
    if names_key is None or vec_key is None:
        raise DataError(
            f"{path}: needs names under one of {', '.join(NAME_KEYS)} and vectors under one of "
            f"{', '.join(VECTOR_KEYS)}; it holds {', '.join(sorted(arrays))}"
        )
    names_arr, vec = arrays[names_key], arrays[vec_key]
    if names_arr.ndim != 1 or names_arr.dtype.kind != "U":
        raise DataError(f"{path}: {names_key} must be a 1-D array of strings, got {names_arr.dtype} {names_arr.shape}")
    names = [str(x) for x in names_arr]
    if vec.dtype.kind not in "fiu":
        raise DataError(f"{path}: {vec_key} must be numeric, got {vec.dtype}")
    if vec.ndim == 3:
        if "prompts" not in arrays:
            raise DataError(f"{path}: {vec_key} is K×P×n but the file has no 'prompts' naming the P columns")
        cols = [str(x) for x in arrays["prompts"]]
        if len(cols) != vec.shape[1]:
            raise DataError(f"{path}: {len(cols)} prompt names for {vec.shape[1]} columns of {vec_key}")
        chosen = column if column is not None else ("mean" if "mean" in cols else None)
        if chosen is None or chosen not in cols:
            raise DataError(f"{path}: choose a column of {vec_key}: one of {', '.join(cols)} (column: ...)")
        vec = vec[:, cols.index(chosen), :]
    elif vec.ndim == 2:
        if column is not None:
            raise DataError(f"{path}: {vec_key} is K×n, it has no columns to choose (drop column: {column})")
        chosen = None
    else:
        raise DataError(f"{path}: {vec_key} must be K×n or K×P×n, got shape {vec.shape}")
    if vec.shape[0] != len(names):
        raise DataError(f"{path}: {len(names)} names but {vec.shape[0]} rows of {vec_key}")
    info = {"file": str(path), "sha256": file_sha256(path), "column": chosen, "names_key": names_key, "vectors_key": vec_key}
    return names, np.asarray(vec, dtype=np.float64), info


def _safetensors_rows(path: Path) -> tuple[list[str], np.ndarray]:
    """``(keys, K×n)`` of a safetensors file: a K×n ``embeddings`` tensor with the names as
    a JSON list in the header metadata (``class_names`` or ``names``, the precomputed
    target's layout), or else one 1-D tensor per class, keyed by class name or index."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as .safetensors ({exc})") from exc
    names_key = next((k for k in ("class_names", "names") if k in meta), None)
    if names_key is not None and "embeddings" in tensors:
        try:
            names = json.loads(meta[names_key])
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: header metadata {names_key!r} is not a JSON list") from exc
        vec = np.asarray(tensors["embeddings"])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path}: header metadata {names_key!r} must be a JSON list of strings")
        if vec.ndim != 2 or vec.shape[0] != len(names):
            raise DataError(f"{path}: embeddings of shape {vec.shape} for {len(names)} names")
        return names, vec.astype(np.float64)
    keys = list(tensors)
    bad = [k for k in keys if tensors[k].ndim != 1]
    if bad:
        raise DataError(
            f"{path}: needs an 'embeddings' tensor with class_names in the header metadata, or one 1-D tensor per "
            f"class; {bad[0]!r} has shape {tensors[bad[0]].shape}"
        )
    dims = {tensors[k].shape[0] for k in keys}
    if len(dims) != 1:
        raise DataError(f"{path}: the class embeddings have lengths {sorted(dims)}, not one length")
    return keys, np.stack([np.asarray(tensors[k], dtype=np.float64) for k in keys])


def read_class_prompt_embeddings(
    path: Path | str, class_names: list[str], column: str | None = None
) -> tuple[np.ndarray, dict]:
    """c×n class prompt embeddings from a file, one row per audit class, matched by key.

    - ``.npz``: names (``names`` / ``classes`` / ``class_names`` / ``concept_names``, a ``U``
      array or an object array of strings read without pickle) and vectors (K×n, or K×P×n
      with ``prompts`` naming the P columns; ``column`` default ``mean``);
    - ``.safetensors``: an ``embeddings`` tensor (K×n) with ``class_names`` as a JSON list
      in the header metadata (the precomputed target's layout), or one 1-D tensor per
      class, its key the class name (or head index).

    A key matches a class by its name (whitespace-normalised, case-insensitive), or by its
    head index written as a decimal (``"0"``, ``"17"``): never by its position in the file.
    Every class must match exactly one row; rows for other classes are ignored (and
    counted). ``info``: ``{"source": "file", "file", "sha256", "column", "matched_by",
    "rows", "unused"}``.

    :raises DataError: a class without a row, a class two rows match, a duplicate key.
    """
    from sing_audit.concepts import normalize_concept

    path = Path(path)
    if not path.is_file():
        raise DataError(f"class prompt embeddings not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        keys, vectors, info = read_embedding_table(path, column)
        chosen = info["column"]
    elif suffix == ".safetensors":
        if column is not None:
            raise DataError(f"{path}: a .safetensors file has no prompt columns (drop column: {column})")
        keys, vectors = _safetensors_rows(path)
        chosen = None
    else:
        raise DataError(f"{path}: class prompt embeddings must be .npz or .safetensors, not {path.suffix or 'no suffix'}")
    seen: dict[str, int] = {}
    for j, k in enumerate(keys):
        key = normalize_concept(k).casefold()
        if key in seen:
            raise DataError(f"{path}: key {k!r} appears twice (rows {seen[key]} and {j}); each class needs one row")
        seen[key] = j
    names = [normalize_concept(str(n)).casefold() for n in class_names]
    dupes = {n for n in names if names.count(n) > 1}
    rows, by_name, by_index, missing = [], 0, 0, []
    for i, n in enumerate(names):
        j_name = seen.get(n) if n not in dupes else None
        j_index = seen.get(str(i))
        if j_name is not None and j_index is not None and j_name != j_index:
            raise DataError(
                f"{path}: class {i} ({class_names[i]!r}) matches two rows, by name ({keys[j_name]!r}) and by "
                f"index ({keys[j_index]!r}); keep one"
            )
        j = j_name if j_name is not None else j_index
        if j is None:
            missing.append(f"{i} {class_names[i]!r}" + (" (its name is not unique: key it by index)" if n in dupes else ""))
            continue
        by_name += j == j_name
        by_index += j != j_name
        rows.append(j)
    if missing:
        raise DataError(
            f"{path}: no embedding for {len(missing)} of {len(names)} classes, e.g. {', '.join(missing[:3])}; "
            f"rows are matched by class name or head index, and the file's keys are e.g. "
            f"{', '.join(repr(k) for k in keys[:3])}"
        )
    emb = vectors[np.asarray(rows, dtype=np.int64)]
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1) | (np.linalg.norm(emb, axis=1) == 0))
    if bad.size:
        raise DataError(f"{path}: the embedding of class {class_names[int(bad[0])]!r} is zero or not finite")
    matched = "name" if by_index == 0 else "index" if by_name == 0 else "name and index"
    return emb, {
        "source": "file", "file": str(path), "sha256": file_sha256(path), "column": chosen, "matched_by": matched,
        "rows": len(keys), "unused": len(keys) - len(set(rows)),
    }
