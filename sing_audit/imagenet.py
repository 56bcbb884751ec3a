"""ImageNet-1k class information for model plugins: the standard preprocessing constants
and, for a head with 1000 classes, the WordNet synset and a readable name per index.

The table (``sing_audit/data/imagenet-1k.txt``, ``synset<TAB>description`` in the
standard class order) holds what timm's ``ImageNetInfo`` gives for ImageNet-1k: the
WordNet synset and its comma-separated synonyms (``"tench, Tinca tinca"``); the readable
name is the first of them (``"tench"``), and a dataset label may be any of them
(``imagenet_synonyms``). So a plugin needs no model library to name ImageNet classes.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "imagenet_class_info",
    "imagenet_descriptions",
    "imagenet_synonyms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(synsets, descriptions)`` of the 1000 ImageNet-1k classes in index order."""
    text = resources.files("sing_audit.data").joinpath("imagenet-1k.txt").read_text(encoding="utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


@functools.lru_cache(maxsize=1)
def _readable() -> tuple[tuple[str, ...], tuple[str, ...]]:
    keys, descriptions = imagenet_descriptions()
    return keys, tuple(d.split(",")[0].strip() for d in descriptions)


def imagenet_class_info(num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(synsets, readable names)`` for a head with ImageNet-1k's 1000 classes, else ``None``."""
    if num_classes != NUM_CLASSES:
        return None
    return _readable()


@functools.lru_cache(maxsize=1)
def imagenet_synonyms() -> tuple[tuple[str, ...], ...]:
    """Every listed name of each ImageNet-1k class, in index order: class 281 is
    ``("tabby", "tabby cat")``; the first is the readable name."""
    _, descriptions = imagenet_descriptions()
    return tuple(tuple(part.strip() for part in d.split(",") if part.strip()) for d in descriptions)
