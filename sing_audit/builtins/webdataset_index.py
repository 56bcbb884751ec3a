"""The shard index of the ``webdataset`` dataset: the header listing written once to a
JSON file, so that a process lists the records by reading that file and stat()ing the
shards, and opens only the tar files of its own rows.

The file: ``format``/``version``, the ``patterns``, the ``image_key`` and ``label_key``
it was listed with, and per shard (in the patterns' order) its ``path`` as the pattern
expands it, its ``size`` and ``mtime_ns``, the hash of its header ``listing`` (which the
cache key holds) and its ``samples`` (``key``, ``image``: the image member's name,
``offset`` and ``size`` of its bytes, ``label``). It is made by the same listing code as
a run without it (:meth:`WebDatasetShards._tar_listings`, with every check of
hostile, corrupt and truncated shards); reading it refuses an index of other shards
or options, a shard whose size or mtime changed, and every field a hand edit could make
hostile (a member outside its shard, a negative offset, a name with ``..``). Only the
shard the pattern names is ever opened, never a path the index gives.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sing_audit.commands import Command
from sing_audit.errors import BadInputError, ConfigError, DataError
from sing_audit.hookspecs import hookimpl

from .image_datasets import _resolve
from .webdataset_shards import (
    _MAX_LABEL_BYTES,
    Sample,
    WebDatasetShards,
    _libraries,
    _refuse_hostile_name,
    expand_names,
)

__all__ = ["INDEX_FORMAT", "IndexShards", "build_index", "read_index", "write_index"]

#: the ``format`` of a shard index file (and its ``version``)
INDEX_FORMAT = "sing-audit webdataset index"
_INDEX_VERSION = 1
_SAMPLE_FIELDS = ("key", "image", "offset", "size", "label")


def read_index(dataset: WebDatasetShards) -> list[tuple[Path, list[Sample], list[Any]]]:
    """The listing of ``dataset`` from its index file, checked against the patterns, the options and
    each shard's size and mtime; every field a hand edit could make hostile refused."""
    path = dataset.index_path
    rebuild = f"rebuild it: sing-audit index-shards CONFIG --force (the audit config whose dataset.index is {path})"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"shard index {path} not found; write it: sing-audit index-shards CONFIG (the audit "
                        "config with this dataset), or remove the index option", field="index") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"shard index {path} cannot be read ({exc}); {rebuild}", field="index") from None

    def bad(what: str) -> DataError:
        return DataError(f"shard index {path}: {what}; {rebuild}", field="index")

    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise bad(f"not a sing-audit shard index (no \"format\": {INDEX_FORMAT!r})")
    if doc.get("version") != _INDEX_VERSION:
        raise bad(f"version {doc.get('version')!r}, this sing-audit reads version {_INDEX_VERSION}")
    for option in ("image_key", "label_key"):
        if doc.get(option) != getattr(dataset.options, option):
            raise bad(f"it was written with {option}: {doc.get(option)!r}, the dataset has "
                      f"{option}: {getattr(dataset.options, option)!r}")
    entries = doc.get("shards")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise bad("'shards' is not a list of shards")
    names = expand_names(dataset.patterns)
    listed = [e.get("path") for e in entries]
    if listed != names:
        first = next((k for k in range(min(len(names), len(listed))) if listed[k] != names[k]), None)
        if first is not None:
            what = f"shard {first} is {listed[first]!r} in the index but {names[first]!r} by the shards pattern"
        elif len(listed) < len(names):
            what = f"the shard {names[len(listed)]!r} the pattern names is not in the index"
        else:
            what = f"the index lists {listed[len(names)]!r}, which the shards pattern does not name"
        raise bad(f"it is for other shards than {', '.join(dataset.patterns)} ({what})")
    tariterators, _ = _libraries()
    out = []
    for shard, entry in zip(dataset.shard_paths(), entries):
        size, mtime, listing = entry.get("size"), entry.get("mtime_ns"), entry.get("listing")
        if not (_is_int(size) and _is_int(mtime) and isinstance(listing, str)):
            raise bad(f"shard {shard}: size, mtime_ns or listing missing or not a number/text")
        try:
            stat = shard.stat()
        except OSError as exc:
            raise DataError(f"shard {shard} cannot be read: {exc}", field="shards") from exc
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            raise DataError(f"shard {shard} changed since the shard index {path} was written (size {stat.st_size:,}"
                            f" bytes and mtime_ns {stat.st_mtime_ns}, the index has {size:,} and {mtime}); "
                            f"{rebuild}", field="index")
        samples = _index_samples(dataset, shard, entry.get("samples"), size, tariterators.base_plus_ext, bad)
        out.append((shard, samples, [shard.name, size, mtime, listing]))
    return out

def _index_samples(dataset: WebDatasetShards, shard: Path, raw, shard_size: int, split_key, bad) -> list[Sample]:
    if not isinstance(raw, list):
        raise bad(f"shard {shard}: 'samples' is not a list")
    samples: list[Sample] = []
    seen: set[str] = set()
    for k, item in enumerate(raw):
        if not isinstance(item, dict) or sorted(item) != sorted(_SAMPLE_FIELDS):
            raise bad(f"shard {shard}: sample {k} is not an object with exactly {', '.join(_SAMPLE_FIELDS)}")
        key, image, offset, size, label = (item[f] for f in _SAMPLE_FIELDS)
        if not (isinstance(key, str) and isinstance(image, str)):
            raise bad(f"shard {shard}: sample {k}'s key and image are not text")
        try:
            _refuse_hostile_name(shard, image)
        except DataError as exc:  # the index names it, not the shard: no tar member has that name
            raise bad(f"sample {k}: {str(exc).split('; refused')[0]}; refused") from None
        prefix, suffix = split_key(image)
        if prefix != key or suffix is None or suffix.lower() not in dataset.options.image_key:
            raise bad(f"shard {shard}: sample {k}'s image {image!r} is not an image member of the sample {key!r}")
        if key in seen:
            raise bad(f"shard {shard}: the sample {key!r} is listed twice")
        seen.add(key)
        if not (_is_int(offset) and _is_int(size) and offset >= 0 and size >= 0 and offset + size <= shard_size):
            raise bad(f"shard {shard}: sample {key!r} lies at bytes {offset!r} + {size!r}, not inside the shard's "
                      f"{shard_size:,} bytes")
        if label is not None and not (isinstance(label, str) and label and len(label.encode()) <= _MAX_LABEL_BYTES):
            raise bad(f"shard {shard}: sample {key!r}'s label {label!r} is not a label (text, or null)")
        samples.append(Sample(key, image, offset, size, label))
    return samples


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def build_index(dataset: WebDatasetShards) -> dict[str, Any]:
    """The shard index of ``dataset``'s shards: the header listing (every check of it:
    hostile members, corrupt or truncated shards, keys in two shards), each shard's
    size, mtime and listing hash, and its samples. The dataset's own ``index`` option,
    if any, is ignored: the tar headers are read."""
    listings = dataset._tar_listings()
    owner: dict[str, Path] = {}
    for shard, samples, _ in listings:  # the check _scan makes, before the index is written
        for sample in samples:
            if sample.key in owner:
                raise DataError(f"sample {sample.key!r} is in two shards ({owner[sample.key]} and {shard}); keys must "
                                "be unique across the shards", field="shards")
            owner[sample.key] = shard
    shards = []
    for name, (shard, samples, fingerprint) in zip(expand_names(dataset.patterns), listings):
        _, size, mtime, listing = fingerprint
        shards.append({"path": name, "size": size, "mtime_ns": mtime, "listing": listing,
                       "samples": [{f: getattr(s, f) for f in _SAMPLE_FIELDS} for s in samples]})
    return {"format": INDEX_FORMAT, "version": _INDEX_VERSION, "patterns": dataset.patterns,
            "image_key": list(dataset.options.image_key), "label_key": dataset.options.label_key, "shards": shards}


def write_index(dataset: WebDatasetShards, path: Path, force: bool = False) -> dict[str, Any]:
    """Write ``dataset``'s shard index to ``path`` atomically (a temporary file in the
    same folder, then renamed); an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise BadInputError(f"{path} exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise BadInputError(f"folder {path.parent} does not exist; create it or write the index elsewhere")
    doc = build_index(dataset)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False, separators=(",", ":"))
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return doc


class IndexShards(Command):
    """``sing-audit index-shards CONFIG``: the shard index of an audit config's webdataset."""

    help = "write the shard index of a config's webdataset dataset (each process then opens only its own shards)"
    description = (
        "Read the tar headers of every shard of the audit config's webdataset dataset (with its shards, image_key "
        "and label_key, and every check of the listing) and write the shard index its dataset.index option reads: "
        "then each --shard or torchrun process opens only the tar files of its own rows. Rebuild it after changing "
        "a shard. Exit 0 when written, 2 on bad input."
    )

    def add_arguments(dataset, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", metavar="CONFIG", type=Path, help="the audit config (YAML/JSON)")
        parser.add_argument("-o", "--output", type=Path, default=None,
                            help="where to write the index (default: the dataset's index option, relative to the "
                                 "config's folder)")
        parser.add_argument("--force", action="store_true", help="replace an existing index file")

    def run(dataset, args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from sing_audit.config import format_validation_error, load_config

        config = load_config(args.config)
        spec = config.dataset
        if spec is None or spec.plugin != "webdataset":
            got = "no dataset" if spec is None else f"dataset plugin {spec.plugin!r}"
            raise ConfigError(f"{args.config}: index-shards indexes a webdataset dataset; the config has {got}")
        raw = {**spec.options(), "base_dir": config.base_dir}
        try:
            options = WebDatasetShards.Options.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, WebDatasetShards.Options, str(args.config),
                                                      prefix="dataset")) from None
        output = args.output
        if output is None:
            if options.index is None:
                raise ConfigError(f"{args.config}: give -o FILE, or set dataset.index to the file the audit reads")
            output = _resolve(options.index, options.base_dir)
        dataset = WebDatasetShards(options.model_copy(update={"index": None}))
        doc = write_index(dataset, output, force=args.force)
        count = sum(len(s["samples"]) for s in doc["shards"])
        print(f"wrote the index of {len(doc['shards'])} shard(s), {count:,} sample(s), to {output}")
        if options.index is None or _resolve(options.index, options.base_dir).resolve() != Path(output).resolve():
            print(f"point the dataset at it: dataset.index: {os.path.relpath(Path(output).resolve(), config.base_dir)}")
        return 0



@hookimpl
def register_commands(register):
    register("index-shards", IndexShards)
