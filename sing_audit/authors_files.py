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

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from sing_audit.errors import DataError

__all__ = ["NamesUnpickler", "read_npz", "read_embedding_table", "file_sha256"]

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
                    shape, fortran, dtype = (
                        np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                        else np.lib.format.read_array_header_2_0(fh)
                    )
                except ValueError as exc:
                    raise DataError(f"{source}: not a numpy array ({exc})") from exc
                if dtype.hasobject:
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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


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
