"""Files of the run folder a report section may read: pictures (embedded as ``data:``
URIs) and a model's per-image CSV, always through :func:`sing_audit.store.safe_child`, so
nothing outside the run folder is read."""

from __future__ import annotations

import base64
import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import safe_child

__all__ = ["MAX_EMBEDDED_IMAGE_BYTES", "ImagesTable", "embed_image", "read_images_csv"]

log = logging.getLogger(__name__)

#: largest picture file embedded into the report (bytes); bigger files are skipped
MAX_EMBEDDED_IMAGE_BYTES = 512 * 1024

_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def embed_image(run_dir: Path | None, relative: str | None) -> str | None:
    """A ``data:`` URI of a JPEG/PNG/GIF the result names inside the run folder.

    ``None`` when there is no run folder, the path leaves the run folder, the file is
    missing, too large, or not a picture of a known type.
    """
    if run_dir is None or not relative:
        return None
    try:
        path = safe_child(Path(run_dir), str(relative))
    except (ValueError, OSError):
        log.warning("report: picture %r is outside the run folder; not embedded", relative)
        return None
    try:
        if not path.is_file() or path.stat().st_size > MAX_EMBEDDED_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return None


@dataclass
class ImagesTable:
    """The per-image values of one model (its ``images.csv``), grouped by head index."""

    path: str
    as_by_label: dict[int, np.ndarray] = field(default_factory=dict)
    is_by_label: dict[int, np.ndarray] = field(default_factory=dict)
    n_rows: int = 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_images_csv(run_dir: Path | None, relative: str | None) -> ImagesTable | None:
    """Read a model's per-image CSV (columns ``label``, ``as``, ``is``) from the run folder.

    ``None`` when it is absent, outside the run folder or unreadable.
    """
    if run_dir is None or not relative:
        return None
    try:
        path = safe_child(Path(run_dir), str(relative))
    except (ValueError, OSError):
        log.warning("report: per-image file %r is outside the run folder; not read", relative)
        return None
    if not path.is_file():
        return None
    labels: list[int] = []
    as_vals: list[float] = []
    is_vals: list[float] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or "label" not in header or "as" not in header:
                return None
            i_label, i_as = header.index("label"), header.index("as")
            i_is = header.index("is") if "is" in header else None
            for row in reader:
                if len(row) <= max(i_label, i_as):
                    continue
                try:
                    labels.append(int(row[i_label]))
                except ValueError:
                    continue
                as_vals.append(_float(row[i_as]))
                is_vals.append(_float(row[i_is]) if i_is is not None and i_is < len(row) else math.nan)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("report: cannot read %s: %s", relative, exc)
        return None
    table = ImagesTable(path=str(relative), n_rows=len(labels))
    if not labels:
        return table
    lab = np.asarray(labels)
    a = np.asarray(as_vals, dtype=np.float64)
    s = np.asarray(is_vals, dtype=np.float64)
    order = np.argsort(lab, kind="stable")
    lab, a, s = lab[order], a[order], s[order]
    uniq, starts = np.unique(lab, return_index=True)
    ends = list(starts[1:]) + [lab.size]
    for k, b, e in zip(uniq, starts, ends):
        table.as_by_label[int(k)] = a[b:e]
        table.is_by_label[int(k)] = s[b:e]
    return table
