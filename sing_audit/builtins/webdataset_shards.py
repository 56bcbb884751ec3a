"""The ``webdataset`` dataset: images in tar shards (``data/val-{000..063}.tar``).

One sample is the tar members that share a key (``n01440764/img_0.jpg`` and
``n01440764/img_0.cls`` are the sample ``n01440764/img_0`` with the keys ``jpg`` and
``cls``), split exactly as the ``webdataset`` library splits them
(:func:`webdataset.tariterators.base_plus_ext`); the patterns are expanded with
``braceexpand``, as webdataset does.

Why the shards are read with :mod:`tarfile` and not through ``webdataset.WebDataset``:
that pipeline streams every shard from its first byte and decodes every member, so
it cannot hand one image to one process. An audit needs the opposite: the sorted list of
every record first (cheap), then each process — a ``--shard i/N`` job, a torchrun rank —
reading the image bytes of its own rows only (a contiguous block of whole batches,
:mod:`sing_audit.pipeline.shard`). So the listing reads the tar headers of every shard
(:mod:`tarfile` seeks over each member's data: 512 bytes a member) and the small label
members, and remembers where each image's bytes lie; opening an image reads that member
alone. With the ``index`` option the listing comes from a shard index written once
(:mod:`.webdataset_index`, ``sing-audit index-shards``) and the shards are only
stat()ed, so a process opens no tar file but those of its own rows: records are in
shard order (the patterns' order), then member order, so its rows lie in a contiguous
run of shards. Decoding goes through :func:`sing_audit.datasets.open_image` (the format
allow-list and pixel limit of every dataset), never webdataset's decoders.

Only plain (uncompressed) tars can be read member by member; hostile members (absolute
paths, ``..``, links, devices, FIFOs) are refused, never followed.

The cache key: by default (``digest: headers``) each shard's size, modification time and
the listing (every member's name, size and place, and each label), so that a process
never reads another's image bytes to compute it; a shard rewritten by any ordinary tool
changes them. ``digest: content`` hashes every shard's bytes instead (what
``image_folder`` does with its files), at the cost of every process reading them all.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, field_validator

from sing_audit.components import ImageRecord
from sing_audit.datasets import open_image
from sing_audit.errors import DataError
from sing_audit.extras import require
from sing_audit.hookspecs import hookimpl
from sing_audit.store import file_sha256

from .image_datasets import LabelledImageOptions, _BaseImageDataset, _resolve, normalize_extensions

__all__ = ["WEBDATASET_IMAGE_KEYS", "Sample", "WebDatasetShards", "expand_names", "expand_shards"]

#: the image keys webdataset's own decoders recognise as images, in order of preference
WEBDATASET_IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

#: a label member larger than this is not a label (a mislabelled image, say)
_MAX_LABEL_BYTES = 4096
_CHUNK = 1 << 20
#: the first bytes of gzip, bzip2, xz and zstd files
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")


def _libraries(feature: str = "the webdataset dataset"):
    """webdataset's key splitting and braceexpand, or exit 2 naming the ``webdataset`` extra."""
    tariterators = require("webdataset.tariterators", extra="webdataset", feature=feature)
    braceexpand = require("braceexpand", extra="webdataset", feature=feature)
    return tariterators, braceexpand


def expand_shards(patterns: list[str], base_dir: Path | None) -> list[Path]:
    """Every shard the brace ``patterns`` name (``val-{000..063}.tar``), in their order,
    relative to ``base_dir``; a :class:`DataError` for a malformed pattern, a shard named
    twice, or a shard that does not exist (all missing ones named)."""
    paths = [_resolve(Path(name), base_dir) for name in expand_names(patterns)]
    seen: set[Path] = set()
    for p in paths:
        if p in seen:
            raise DataError(f"shard {p} is named twice by the shards patterns", field="shards")
        seen.add(p)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f", … {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{len(missing)} of {len(paths)} shard(s) not found: {', '.join(map(str, missing[:5]))}{more}; "
            "check the shards pattern (it is relative to the config's folder)",
            field="shards",
        )
    return paths


def expand_names(patterns: list[str]) -> list[str]:
    """The shard names the brace ``patterns`` expand to, as written (not resolved), in
    their order; a :class:`DataError` for a malformed pattern."""
    _, braceexpand = _libraries()
    names: list[str] = []
    for pattern in patterns:
        try:
            expanded = list(braceexpand.braceexpand(pattern))
        except ValueError as exc:  # braceexpand.UnbalancedBracesError
            raise DataError(
                f"shards pattern {pattern!r} is malformed ({exc}); write ranges as {{000..063}} with balanced braces",
                field="shards",
            ) from None
        for name in expanded:
            if "{" in name or "}" in name:
                raise DataError(
                    f"shards pattern {pattern!r} leaves {name!r} unexpanded; a range is {{FIRST..LAST}} of integers "
                    "or letters (e.g. {000..063}), a list is {a,b}",
                    field="shards",
                )
            names.append(name)
    return names


@dataclass(frozen=True)
class Sample:
    """A shard's sample: its key, image member (the record's id), where its bytes lie, label."""

    key: str
    image: str
    offset: int
    size: int
    label: str | None


def _refuse_hostile(shard: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    kind = None
    if member.issym() or member.islnk():
        kind = f"a link (to {member.linkname!r})"
    elif member.ischr() or member.isblk():
        kind = "a device"
    elif member.isfifo():
        kind = "a FIFO"
    elif not (member.isreg() or member.isdir()):
        kind = f"of tar type {member.type!r}"
    if kind is not None:
        raise DataError(f"shard {shard}: member {name!r} is {kind}; a webdataset shard holds regular files only "
                        "(rebuild the shard without it)", field="shards")
    _refuse_hostile_name(shard, name)


def _refuse_hostile_name(shard: Path, name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"shard {shard}: member {name!r} has an absolute path; refused (rebuild the shard with "
                        "relative member names)", field="shards")
    if ".." in posix.parts:
        raise DataError(f"shard {shard}: member {name!r} climbs out of the archive with '..'; refused (rebuild the "
                        "shard with plain relative member names)", field="shards")


class WebDatasetShards(_BaseImageDataset):
    """Tar shards in webdataset's layout: one sample per key, the image under one of
    ``image_key``, the label (text: a class key such as a synset, or a head index with
    ``labels: index``) under ``label_key``."""

    class Options(LabelledImageOptions):
        shards: str | list[str] = Field(
            description="tar shards: a brace pattern such as data/val-{000..063}.tar (relative to the config's "
                        "folder), or a list of them")
        image_key: list[str] = Field(
            default_factory=lambda: list(WEBDATASET_IMAGE_KEYS),
            description="the keys (member extensions) a sample's image may have, in order of preference",
        )
        label_key: str | None = Field("cls", description="the key of a sample's label member (null: unlabelled)")
        labels: Literal["key", "index"] = Field(
            "key",
            description="key: a label is a class key (a synset, a class name, as image_folder's folder names); "
                        "index: a label is the head's class index (0-based)",
        )
        index: Path | None = Field(None, description=(
            "a shard index written by sing-audit index-shards (relative to the config's folder): the listing is read "
            "from it, the shards only stat()ed, so each process opens only its own rows' tar files (null: read "
            "every shard's tar headers)"))
        digest: Literal["headers", "content"] = Field(
            "headers",
            description="what keys the cache: headers (each shard's size, modification time and member listing; no "
                        "process reads another's images) or content (every shard's bytes, read by every process)",
        )

        @field_validator("image_key")
        @classmethod
        def _norm_keys(cls, v: list[str]) -> list[str]:
            return normalize_extensions(v)

        @field_validator("shards")
        @classmethod
        def _some_shards(cls, v: str | list[str]) -> str | list[str]:
            patterns = [v] if isinstance(v, str) else v
            if not patterns or not all(p.strip() for p in patterns):
                raise ValueError("give a shard pattern such as data/val-{000..063}.tar")
            return v

    plugin_name = "webdataset"
    listing_field = "shards"

    def __init__(self, options) -> None:
        _libraries()  # exit 2 naming the extra before anything runs
        super().__init__(options)
        self._shards: list[Path] | None = None
        self._members: dict[str, Sample] = {}  # image id -> where its bytes lie
        self._fingerprints: list[list[Any]] = []

    @property
    def image_extensions(self) -> list[str]:
        return list(self.options.image_key)

    @property
    def patterns(self) -> list[str]:
        s = self.options.shards
        return [s] if isinstance(s, str) else list(s)

    @property
    def root(self) -> Path:
        """The folder of the first shard (for messages and provenance)."""
        return self.shard_paths()[0].parent

    def shard_paths(self) -> list[Path]:
        if self._shards is None:
            self._shards = expand_shards(self.patterns, self.options.base_dir)
        return list(self._shards)

    # ---------------------------------------------------------------- listing

    def _scan(self) -> list[ImageRecord]:
        records: list[ImageRecord] = []
        members: dict[str, Sample] = {}
        owner: dict[str, Path] = {}  # sample key -> its shard
        counts: dict[str | None, int] = {}
        limit = self.options.limit_per_class
        self._fingerprints = []
        for shard, samples, fingerprint in self.shard_listings():
            self._fingerprints.append(fingerprint)
            for sample in samples:
                key, label = sample.key, sample.label
                if key in owner:
                    raise DataError(f"sample {key!r} is in two shards ({owner[key]} and {shard}); keys must be unique "
                                    "across the shards", field="shards")
                owner[key] = shard
                if limit is not None and counts.get(label, 0) >= limit:
                    continue
                counts[label] = counts.get(label, 0) + 1
                members[sample.image] = sample
                records.append(ImageRecord(image_id=sample.image, path=shard, label=label))
        self._members = members
        self._check_index_labels(records)
        return records

    def shard_listings(self) -> list[tuple[Path, list[Sample], list[Any]]]:
        """Each shard's samples (in member order) and its fingerprint for the cache key,
        in the patterns' order: from the ``index`` file when one is set (the shards are
        only stat()ed), else from every shard's tar headers."""
        if self.options.index is not None:
            from .webdataset_index import read_index  # it imports this module

            return read_index(self)
        return self._tar_listings()

    def _tar_listings(self) -> list[tuple[Path, list[Sample], list[Any]]]:
        tariterators, _ = _libraries()
        return [(shard, *self._list_shard(shard, tariterators.base_plus_ext)) for shard in self.shard_paths()]

    @property
    def index_path(self) -> Path | None:
        return None if self.options.index is None else _resolve(self.options.index, self.options.base_dir)

    def _list_shard(self, shard: Path, split_key) -> tuple[list[Sample], list[Any]]:
        """The samples of one shard, in order of first appearance, and the shard's
        fingerprint for the cache key (its name, size, mtime and the listing's hash)."""
        keys = self.options.image_key
        label_key = self.options.label_key
        try:
            stat = shard.stat()
            with open(shard, "rb") as fh:
                grouped: dict[str, dict[str, tarfile.TarInfo]] = {}
                listing = hashlib.sha256()
                try:
                    tar = tarfile.open(fileobj=fh, mode="r:")
                except tarfile.ReadError as exc:
                    raise DataError(self._not_a_tar(shard, fh, exc), field="shards") from None
                end = 0
                try:
                    for m in tar:
                        _refuse_hostile(shard, m)
                        end = m.offset_data + m.size
                        if m.isdir():
                            continue
                        if end > stat.st_size:
                            raise DataError(f"shard {shard} is truncated: member {m.name!r} runs past the end of the "
                                            "file; copy or rebuild the shard", field="shards")
                        prefix, suffix = split_key(m.name)
                        if prefix is None:  # no extension: webdataset skips such members too
                            continue
                        suffix = suffix.lower()  # webdataset's keys are lower case
                        sample = grouped.setdefault(prefix, {})
                        if suffix in sample:
                            raise DataError(f"shard {shard}: member {m.name!r} appears twice (sample {prefix!r}, key "
                                            f"{suffix!r}); rebuild the shard", field="shards")
                        sample[suffix] = m
                        listing.update(f"{m.name}\0{m.size}\0{m.offset_data}\0{m.mtime}\0{m.chksum}\n".encode())
                except (tarfile.TarError, EOFError) as exc:
                    raise DataError(f"shard {shard} is corrupt ({exc}); copy or rebuild the shard", field="shards") from None
                self._check_trailer(shard, fh, tar, stat.st_size)
                out: list[Sample] = []
                for prefix, sample in grouped.items():
                    image = next((sample[k] for k in keys if k in sample), None)
                    if image is None:
                        found = ", ".join(sorted(sample)) or "nothing"
                        raise DataError(
                            f"shard {shard}: sample {prefix!r} has no image under the keys {', '.join(keys)} (it has: "
                            f"{found}); set the dataset's image_key to the key its images have", field="image_key")
                    label = None
                    if label_key is not None and label_key.lower() in sample:
                        label = self._read_label(shard, fh, prefix, sample[label_key.lower()])
                    out.append(Sample(prefix, image.name, image.offset_data, image.size, label))
                    listing.update(f"{prefix}\0{label}\n".encode())
        except OSError as exc:
            raise DataError(f"shard {shard} cannot be read: {exc}", field="shards") from exc
        return out, [shard.name, stat.st_size, stat.st_mtime_ns, listing.hexdigest()]

    @staticmethod
    def _not_a_tar(shard: Path, fh, exc: Exception) -> str:
        fh.seek(0)
        magic = fh.read(6)
        if magic.startswith(_COMPRESSED_MAGIC):
            return (f"shard {shard} is a compressed tar; images are read member by member, which needs a plain tar: "
                    "decompress it (e.g. gunzip) and name the .tar")
        return f"shard {shard} is not a tar file or is corrupt ({exc}); copy or rebuild the shard"

    @staticmethod
    def _check_trailer(shard: Path, fh, tar: tarfile.TarFile, size: int) -> None:
        """After the last member comes tar's end-of-archive marker (zero blocks), and only
        zeros: :mod:`tarfile` ends the listing silently at a damaged header or at the end
        of a file cut after a member, which would drop the rest of the shard's images."""
        offset = tar.offset
        if size - offset < tarfile.BLOCKSIZE:
            raise DataError(f"shard {shard} is truncated: it ends at byte {size:,} without tar's end-of-archive marker; "
                            "copy or rebuild the shard", field="shards")
        fh.seek(offset)
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                at = offset + next(i for i, b in enumerate(chunk) if b)
                raise DataError(f"shard {shard} is corrupt: a damaged tar header at byte {at:,} ends the listing "
                                "early; copy or rebuild the shard", field="shards")
            offset += len(chunk)

    def _read_label(self, shard: Path, fh, key: str, member: tarfile.TarInfo) -> str | None:
        if member.size > _MAX_LABEL_BYTES:
            raise DataError(f"shard {shard}: the label of sample {key!r} ({member.name!r}) is {member.size:,} bytes, not "
                            "a label; set label_key to the key of the samples' labels", field="label_key")
        fh.seek(member.offset_data)
        raw = fh.read(member.size)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"shard {shard}: the label of sample {key!r} ({member.name!r}) is not UTF-8 text",
                            field="label_key") from None
        return text or None

    def _check_index_labels(self, records: list[ImageRecord]) -> None:
        if self.options.labels != "index":
            return
        for r in records:
            if r.label is not None and not r.label.isdigit():
                raise DataError(f"image {r.image_id!r} has the label {r.label!r}, not a head index (labels: index "
                                "wants 0, 1, …); set labels: key for class keys", field="labels")

    # ---------------------------------------------------------------- mappings

    def _load_maps(self) -> None:
        if self._maps_loaded:
            return
        super()._load_maps()
        if self.options.labels == "index" and self._class_map is None:
            self._class_map = {label: int(label) for label in self.labels()}

    # ---------------------------------------------------------------- images

    def open(self, record: ImageRecord):
        """Read one image member's bytes (and nothing else of its shard) and decode them."""
        if self._records is None:
            self.records()
        where = self._members.get(record.image_id)
        if where is None:
            raise DataError(f"image {record.image_id!r} is not in the shards {', '.join(self.patterns)}")
        try:
            with open(record.path, "rb") as fh:
                fh.seek(where.offset)
                data = fh.read(where.size)
        except OSError as exc:
            raise DataError(f"image {record.image_id!r}: shard {record.path} cannot be read: {exc}") from exc
        if len(data) != where.size:
            raise DataError(f"image {record.image_id!r}: shard {record.path} is shorter than when it was listed (was it "
                            "changed during the run?); rerun")
        return open_image(record, max_image_pixels=self.max_image_pixels, formats=self.image_formats,
                          fp=io.BytesIO(data))

    # ---------------------------------------------------------------- provenance

    def _digest(self, records: list[ImageRecord]) -> str:
        h = hashlib.sha256()
        h.update(repr(self.options.digest).encode())
        for index, shard in enumerate(self.shard_paths()):
            if self.options.digest == "content":
                h.update(f"{shard.name}\0{self._shard_hash(shard)}\n".encode())
            else:
                h.update(repr(self._fingerprints[index]).encode() + b"\n")
        for r in records:
            h.update(f"{r.image_id}\0{r.label}\n".encode())
        return h.hexdigest()

    @staticmethod
    def _shard_hash(shard: Path) -> str:
        try:
            return file_sha256(shard)
        except OSError as exc:
            raise DataError(f"shard {shard} cannot be read: {exc}") from exc

    def _options_description(self) -> dict[str, Any]:
        out = super()._options_description()
        out.update({"label_key": self.options.label_key, "labels": self.options.labels,
                    "digest": self.options.digest})
        return out

    def _extra_description(self) -> dict[str, Any]:
        return {"shards": self.patterns, "num_shards": len(self.shard_paths())}


@hookimpl
def register_datasets(register):
    register("webdataset", WebDatasetShards)
