"""Label mapping files (``class_map``, ``class_names``) of the image datasets: JSON, YAML or CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

from sing_audit.errors import DataError

__all__ = ["load_mapping_file"]

_HEADER_WORDS = {"label", "labels", "folder", "class", "classes", "key", "synset", "name", "index", "idx", "path"}


def load_mapping_file(path: Path, *, values: Literal["int", "str"]) -> dict[str, Any]:
    """Read a label mapping from JSON, YAML or CSV.

    JSON/YAML: an object ``{label: value}``; for integer maps also a list of labels (the
    position is the index). CSV: two columns ``label,value``, with an optional header row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mapping file not found: {path}")
    suffix = path.suffix.lower()
    what = "class_map" if values == "int" else "class_names"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} cannot be read: {exc}") from exc

    if suffix in (".json", ".yaml", ".yml"):
        try:
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise DataError(f"{what} file {path} is not valid {suffix[1:].upper()}: {exc}") from exc
        if values == "int" and isinstance(data, list):
            data = {str(label): i for i, label in enumerate(data)}
        if not isinstance(data, dict):
            raise DataError(
                f"{what} file {path} must hold a mapping label -> {'head index' if values == 'int' else 'name'}, "
                f"got a {type(data).__name__}"
            )
        rows = [(str(k), v) for k, v in data.items()]
    elif suffix in (".csv", ".tsv", ".txt"):
        delimiter = "\t" if suffix == ".tsv" else ","
        reader = csv.reader(text.splitlines(), delimiter=delimiter)
        raw = [r for r in reader if r and any(cell.strip() for cell in r)]
        if raw:
            first = [c.strip().lower() for c in raw[0]]
            is_header = first[0] in _HEADER_WORDS or (
                values == "int" and len(first) >= 2 and not first[1].lstrip("-").isdigit()
            )
            if is_header:
                raw = raw[1:]
        rows = []
        for lineno, r in enumerate(raw, start=1):
            if len(r) < 2:
                raise DataError(f"{what} file {path}: row {lineno} ({r!r}) needs two columns: label,value")
            rows.append((r[0].strip(), r[1].strip()))
    else:
        raise DataError(f"{what} file {path} must be .json, .yaml/.yml or .csv (got {suffix or 'no suffix'!r})")

    out: dict[str, Any] = {}
    for key, value in rows:
        if key in out:
            raise DataError(f"{what} file {path} lists label {key!r} twice")
        if values == "int":
            try:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out[key] = int(value)
            except (TypeError, ValueError):
                raise DataError(f"{what} file {path}: label {key!r} maps to {value!r}, which is not a head index") from None
        else:
            if value is None or not str(value).strip():
                raise DataError(f"{what} file {path}: label {key!r} has an empty name")
            out[key] = str(value).strip()
    if not out:
        raise DataError(f"{what} file {path} is empty")
    return out
