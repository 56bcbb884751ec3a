"""Built-in concept sets for the ``concepts`` probe: ``imagenet1k``, ``attributes``, ``file``.

Every set is a :class:`sing_audit.concepts.ConceptSet`: ``concepts()``, ``name``,
``version`` and ``digest()`` (sha256 of the ordered list), so results say exactly which
vocabulary was measured.

User files (``file``):

- ``.txt``: one concept per line; ``#`` starts a comment (a whole line, or after a space);
  a ``# version: X`` comment sets the version.
- ``.yaml`` / ``.yml``: a list of concepts; or a mapping ``{concepts: [...], version: X}``;
  or a mapping of groups to lists (``colours: [red, blue]``, flattened in file order).
- ``.csv``: a header row with a ``concept`` column (other columns are ignored).

Embedding files (``embedding_file``): an ``.npz`` with names and their text embeddings,
e.g. the SING authors' ``attribute_embeddings_broden_style_fp16.npz`` used as it is
published. The set brings its own vectors, so the target's text encoder is not asked (and
a precomputed target needs no ``concept_embeddings``). Names are read without pickle
(:func:`sing_audit.authors_files.read_npz`).

Empty sets, empty entries and duplicates (case-insensitive) are
:class:`~sing_audit.errors.DataError`\\ s naming the file and line.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from importlib import resources
from pathlib import Path

from pydantic import Field, field_validator

from sing_audit.authors_files import read_embedding_table
from sing_audit.components import PluginOptions
from sing_audit.concepts import ConceptSet, check_concepts
from sing_audit.errors import DataError
from sing_audit.hookspecs import hookimpl
from sing_audit.imagenet import imagenet_descriptions

__all__ = [
    "AttributeConcepts",
    "EmbeddingFileConcepts",
    "FileConcepts",
    "ImageNet1kConcepts",
    "attribute_versions",
    "imagenet_readable_names",
    "parse_csv",
    "parse_txt",
    "parse_yaml",
    "read_concept_file",
]

_VERSION = re.compile(r"^#\s*version\s*:\s*(\S.*?)\s*$", re.IGNORECASE)
_ATTRIBUTE_FILE = re.compile(r"^attributes-(.+)\.txt$")
DEFAULT_ATTRIBUTES_VERSION = "1.0"


# --------------------------------------------------------------------------- parsers


def parse_txt(text: str, source: str) -> tuple[list[str], str | None]:
    """``(concepts, declared version)`` of a one-per-line text file."""
    items: list[tuple[str, int]] = []
    version: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            m = _VERSION.match(stripped)
            if m and version is None:
                version = m.group(1)
            continue
        # inline comment: '#' after whitespace
        content = re.split(r"\s#", line, maxsplit=1)[0].strip()
        if not content:
            continue  # blank line
        items.append((content, lineno))
    return check_concepts(items, source), version


def parse_yaml(text: str, source: str) -> tuple[list[str], str | None]:
    """``(concepts, declared version)`` of a YAML list or mapping (see module doc)."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{source}: not valid YAML: {exc}") from exc
    if root is None:
        raise DataError(f"{source}: no concepts (the file is empty)")

    def line(node) -> int:
        return node.start_mark.line + 1

    def scalars(node, what: str) -> list[tuple[str, int]]:
        if not isinstance(node, yaml.SequenceNode):
            raise DataError(f"{source}, line {line(node)}: {what} must be a list of concepts")
        out = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode):
                raise DataError(f"{source}, line {line(item)}: each concept must be a plain string, not a list or mapping")
            value = "" if item.tag == "tag:yaml.org,2002:null" else item.value
            out.append((value, line(item)))
        return out

    version: str | None = None
    if isinstance(root, yaml.SequenceNode):
        items = scalars(root, "the file")
    elif isinstance(root, yaml.MappingNode):
        keys = {k.value: (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}
        if "concepts" in keys:
            extra = sorted(set(keys) - {"concepts", "version", "name"})
            if extra:
                raise DataError(f"{source}: unknown key(s) {extra} next to 'concepts' (allowed: concepts, version, name)")
            items = scalars(keys["concepts"][1], "'concepts'")
            if "version" in keys:
                vnode = keys["version"][1]
                if not isinstance(vnode, yaml.ScalarNode) or not vnode.value.strip():
                    raise DataError(f"{source}, line {line(vnode)}: version must be a non-empty string")
                version = vnode.value.strip()
        else:
            items = []
            for k, v in root.value:
                group = k.value if isinstance(k, yaml.ScalarNode) else "?"
                items.extend(scalars(v, f"group {group!r}"))
    else:
        raise DataError(f"{source}: expected a list of concepts or a mapping, got a single value")
    return check_concepts(items, source), version


def parse_csv(text: str, source: str) -> list[str]:
    """Concepts of the ``concept`` column of a CSV file with a header row."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{source}: no concepts (the file is empty)") from None
    except csv.Error as exc:
        raise DataError(f"{source}, line 1: not valid CSV: {exc}") from exc
    names = [h.strip().casefold() for h in header]
    if "concept" not in names:
        raise DataError(f"{source}, line 1: the header has no 'concept' column (columns: {', '.join(header) or 'none'})")
    col = names.index("concept")
    items: list[tuple[str, int]] = []
    try:
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue  # blank line
            lineno = reader.line_num
            items.append((row[col] if col < len(row) else "", lineno))
    except csv.Error as exc:
        raise DataError(f"{source}, line {reader.line_num}: not valid CSV: {exc}") from exc
    return check_concepts(items, source)


def read_concept_file(path: Path) -> tuple[list[str], str | None]:
    """``(concepts, declared version)`` of a ``.txt``, ``.yaml``/``.yml`` or ``.csv`` file."""
    source = str(path)
    if not path.is_file():
        raise DataError(f"concept file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".yaml", ".yml", ".csv"):
        raise DataError(f"{source}: concept files must be .txt, .yaml, .yml or .csv, not {path.suffix or 'no suffix'}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not UTF-8 text ({exc})") from exc
    if suffix == ".txt":
        return parse_txt(text, source)
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, source)
    return parse_csv(text, source), None


# --------------------------------------------------------------------------- imagenet1k

#: readable names for first names ImageNet uses twice, keyed by synset
_DISAMBIGUATE = {"n02012849": "crane bird", "n03126707": "construction crane"}


@functools.lru_cache(maxsize=1)
def imagenet_readable_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, unique and readable.

    The first comma-separated name of its description (:mod:`sing_audit.imagenet`:
    ``"tench, Tinca tinca"`` -> ``"tench"``); a first name used by two classes takes its next synonym
    (``"maillot, tank suit"`` -> ``"tank suit"``) or a fixed qualifier
    (``crane`` -> ``"crane bird"`` / ``"construction crane"``).
    """
    keys, descriptions = imagenet_descriptions()
    synonyms = [[s.strip() for s in d.split(",") if s.strip()] for d in descriptions]
    firsts = [s[0] for s in synonyms]
    counts: dict[str, int] = {}
    for f in firsts:
        counts[f.casefold()] = counts.get(f.casefold(), 0) + 1
    names = list(firsts)
    taken = {f.casefold() for f in firsts}
    for i, first in enumerate(firsts):
        if counts[first.casefold()] < 2:
            continue
        if keys[i] in _DISAMBIGUATE:
            names[i] = _DISAMBIGUATE[keys[i]]
            continue
        alt = next((s for s in synonyms[i][1:] if s.casefold() not in taken), None)
        if alt is not None:
            names[i] = alt
            taken.add(alt.casefold())
    # a first name with no free synonym keeps it (maillot / "maillot, tank suit"); a pair left
    # over would be a new timm class list: fail loudly rather than ship ambiguous prompts
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = name.casefold()
        if key in seen:
            raise DataError(f"imagenet1k: class names {seen[key]} and {i} are both {name!r}; add a qualifier")  # pragma: no cover
        seen[key] = i
    return tuple(names)


class ImageNet1kConcepts(ConceptSet):
    """The 1000 ImageNet-1k class names (readable first names, unique), in index order."""

    class Options(PluginOptions):
        pass

    name = "imagenet1k"
    #: version of the naming rule (names from the ImageNet-1k descriptions timm also gives)
    version = "1.0"

    def __init__(self, options: ImageNet1kConcepts.Options | None = None):
        self.options = options or self.Options()

    def concepts(self) -> list[str]:
        return list(imagenet_readable_names())


# --------------------------------------------------------------------------- attributes


def attribute_versions() -> list[str]:
    """Versions of the attribute vocabulary shipped in ``sing_audit/data``."""
    folder = resources.files("sing_audit") / "data"
    out = []
    for entry in folder.iterdir():
        m = _ATTRIBUTE_FILE.match(entry.name)
        if m:
            out.append(m.group(1))
    return sorted(out)


@functools.lru_cache(maxsize=8)
def _attributes(version: str) -> tuple[str, ...]:
    res = resources.files("sing_audit") / "data" / f"attributes-{version}.txt"
    concepts, declared = parse_txt(res.read_text(encoding="utf-8"), f"sing_audit/data/attributes-{version}.txt")
    if declared != version:  # pragma: no cover - a packaging mistake
        raise DataError(f"attributes-{version}.txt declares version {declared!r}")
    return tuple(concepts)


class AttributeConcepts(ConceptSet):
    """A broad visual attribute vocabulary: colours, patterns, textures, materials, scenes,
    object parts, shapes, lighting, blur, viewpoint, clutter, weather, medium."""

    class Options(PluginOptions):
        version: str = Field(DEFAULT_ATTRIBUTES_VERSION, description="vocabulary version (a file shipped in sing_audit/data)")

        @field_validator("version")
        @classmethod
        def _known(cls, v: str) -> str:
            v = v.strip()
            known = attribute_versions()
            if v not in known:
                raise ValueError(f"no attribute vocabulary version {v!r}; shipped: {', '.join(known)}")
            return v

    name = "attributes"

    def __init__(self, options: AttributeConcepts.Options | None = None):
        self.options = options or self.Options()
        self.version = self.options.version

    def concepts(self) -> list[str]:
        return list(_attributes(self.version))


# --------------------------------------------------------------------------- user files


class FileConcepts(ConceptSet):
    """Concepts from a user file: .txt (one per line, # comments), .yaml (list or mapping)
    or .csv (a ``concept`` column)."""

    class Options(PluginOptions):
        path: Path = Field(description=".txt, .yaml or .csv file of concepts (relative to the config's folder)")
        name: str | None = Field(None, min_length=1, description="name recorded in results (default: the file's stem)")
        version: str | None = Field(None, min_length=1, description="version recorded in results (default: the one the file declares)")
        base_dir: Path | None = None

    def __init__(self, options: FileConcepts.Options):
        self.options = options
        base = options.base_dir or Path.cwd()
        self.path = options.path if options.path.is_absolute() else base / options.path
        self.name = options.name or self.path.stem
        self._concepts: list[str] | None = None
        self._declared: str | None = None

    def _load(self) -> list[str]:
        if self._concepts is None:
            self._concepts, self._declared = read_concept_file(self.path)
        return self._concepts

    @property
    def version(self) -> str:  # type: ignore[override]
        if self.options.version:
            return self.options.version
        self._load()
        return self._declared or "unversioned"

    def concepts(self) -> list[str]:
        return list(self._load())


class EmbeddingFileConcepts(ConceptSet):
    """Concepts with their own text embeddings from an ``.npz``: names under ``names``,
    ``classes`` or ``concept_names`` (a ``U`` array, or an object array of strings, read
    without pickle); vectors under ``embeddings`` or ``concept_embeddings``, K×n, or K×P×n
    with the P column names in ``prompts`` (the SING authors' layout: ``prompt1`` …
    ``prompt5`` unit vectors and ``mean``, their mean, which is not unit length).

    ``column`` picks one of the P columns; the default ``mean`` is the authors' prompt
    ensemble, and since angles ignore length it is the same direction as this tool's
    template ensemble (mean of unit prompt vectors, renormalised). The vectors must live in
    the target's embedding space: the probe checks their dimension, not their meaning.
    """

    class Options(PluginOptions):
        path: Path = Field(description=".npz of concept names and their text embeddings (relative to the config's folder)")
        column: str | None = Field(
            None, min_length=1,
            description="K×P×n files: which prompt column (e.g. prompt1 … prompt5); default mean, the prompt ensemble",
        )
        name: str | None = Field(None, min_length=1, description="name recorded in results (default: the file's stem)")
        base_dir: Path | None = None

    def __init__(self, options: EmbeddingFileConcepts.Options):
        self.options = options
        base = options.base_dir or Path.cwd()
        self.path = options.path if options.path.is_absolute() else base / options.path
        self.name = options.name or self.path.stem
        self._loaded: tuple[list[str], object, dict] | None = None

    def _load(self):
        if self._loaded is None:
            names, vectors, info = read_embedding_table(self.path, self.options.column)
            names = check_concepts([(n, i) for i, n in enumerate(names)], f"{self.path}: {info['names_key']}", unit="entry")
            self._loaded = (names, vectors, info)
        return self._loaded

    @property
    def version(self) -> str:  # type: ignore[override]
        """The file's sha256: the vectors, not only the names, are what was measured."""
        return self._load()[2]["sha256"]

    def concepts(self) -> list[str]:
        return list(self._load()[0])

    def embeddings(self):
        return self._load()[1]

    def describe(self) -> dict:
        info = self._load()[2]
        return {**super().describe(), "embeddings": "file", "file": str(self.path), "sha256": info["sha256"],
                "column": info["column"]}


@hookimpl
def register_concept_sets(register):
    register("imagenet1k", ImageNet1kConcepts)
    register("attributes", AttributeConcepts)
    register("file", FileConcepts)
    register("embedding_file", EmbeddingFileConcepts)
