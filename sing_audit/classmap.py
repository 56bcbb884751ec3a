"""Mapping dataset labels to head indices, and naming every head class readably.

Rules, in order:

1. an explicit ``class_map`` (dataset label -> head index) from the dataset options;
2. labels that are all machine keys of the head (``head.class_keys``, e.g. ImageNet
   synsets such as ``n01440764``);
3. labels that match the head's readable names (case-insensitive, ``_`` = space); for an
   ImageNet-1k head, any of a class's listed synonyms (``tabby cat`` for class 281
   "tabby, tabby cat") when no readable name matches; a label that is a machine key
   among labels that are names maps by its key;
4. otherwise a :class:`DataError` listing the labels that did not map, with close matches,
   and telling the user to add ``class_map`` to the dataset.

Readable name of head index ``i``: the dataset's ``class_names`` option > the head's own
names > the dataset label mapped to ``i`` (``_`` -> space) > ``"class {i}"``. Prompts must
never carry raw synset ids, so a name that still looks like one is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .components import LinearHead
from .errors import DataError
from .imagenet import NUM_CLASSES, imagenet_class_info, imagenet_synonyms
from .terminal import close_matches

__all__ = ["LabelMapping", "map_labels", "normalize_name", "looks_like_synset"]

_SYNSET = re.compile(r"^n\d{8}$")


@dataclass
class LabelMapping:
    """How dataset labels map to head indices.

    ``label_to_index``: dataset label -> head index; ``class_names``: one readable name per
    head index (length c); ``how``: ``"class_map"``, ``"synset"`` or ``"name"``.
    """

    label_to_index: dict[str, int]
    class_names: list[str]
    how: str


def normalize_name(name: str) -> str:
    """Case-insensitive, underscores as spaces: ``"Golden_Retriever"`` -> ``"golden retriever"``."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def looks_like_synset(name: str) -> bool:
    """True for WordNet ids such as ``n01440764``."""
    return bool(_SYNSET.match(str(name).strip()))


def _unique(labels: Iterable[str | None]) -> list[str]:
    seen: dict[str, None] = {}
    for label in labels:
        if label is not None:
            seen.setdefault(str(label), None)
    return list(seen)


#: how close a dataset label must be to a class name to be offered as "did you mean"
_CUTOFF = 0.6


def _unmapped_error(unmapped: list[str], candidates: Sequence[str], against: str, num_classes: int) -> DataError:
    shown = []
    for label in unmapped[:10]:
        close = close_matches(label, candidates, cutoff=_CUTOFF) or close_matches(
            normalize_name(label), [normalize_name(c) for c in candidates], cutoff=_CUTOFF
        )
        shown.append(f"{label!r}" + (f" (close: {', '.join(repr(c) for c in close)})" if close else ""))
    more = f", … {len(unmapped) - 10} more" if len(unmapped) > 10 else ""
    return DataError(
        f"{len(unmapped)} dataset label(s) do not match {against}: {', '.join(shown)}{more}; "
        f"add class_map to the dataset (label: head index, 0–{num_classes - 1}) to say which class each label is"
    )


def _synonym_index(head: LinearHead) -> dict[str, list[int]]:
    """Normalised synonym -> head indices, for a head with ImageNet-1k's classes (its keys
    or its readable names are ImageNet's, in order); empty for any other head."""
    info = imagenet_class_info(head.num_classes) if head.num_classes == NUM_CLASSES else None
    if info is None:
        return {}
    keys, names = info
    if not ((head.class_keys is not None and tuple(head.class_keys) == keys)
            or (head.class_names is not None and tuple(head.class_names) == names)):
        return {}
    out: dict[str, list[int]] = {}
    for i, listed in enumerate(imagenet_synonyms()):
        for name in listed:
            hits = out.setdefault(normalize_name(name), [])
            if i not in hits:
                hits.append(i)
    return out


def map_labels(
    labels: Sequence[str | None],
    head: LinearHead,
    class_map: dict[str, int] | None = None,
    class_names: dict[str, str] | None = None,
) -> LabelMapping:
    """Map dataset labels to head indices and name every head class (see module docs)."""
    c = head.num_classes
    uniq = _unique(labels)

    # ------------------------------------------------------------------ indices
    if class_map is not None:
        bad = {k: v for k, v in class_map.items() if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < c}
        if bad:
            shown = ", ".join(f"{k!r}: {v!r}" for k, v in list(bad.items())[:10])
            raise DataError(
                f"class_map has head indices out of range for a head with {c} classes (valid: 0–{c - 1}): {shown}"
            )
        unmapped = [label for label in uniq if label not in class_map]
        if unmapped:
            raise _unmapped_error(unmapped, list(class_map), "any key of class_map", c)
        label_to_index = {label: int(class_map[label]) for label in uniq}
        how = "class_map"
    elif head.class_keys is not None and all(label in head.class_keys for label in uniq):
        key_index: dict[str, int] = {}
        for i, key in enumerate(head.class_keys):
            key_index.setdefault(key, i)
        label_to_index = {label: key_index[label] for label in uniq}
        how = "synset"
    elif head.class_names is not None:
        by_name: dict[str, list[int]] = {}
        for i, name in enumerate(head.class_names):
            by_name.setdefault(normalize_name(name), []).append(i)
        synonyms = _synonym_index(head)
        by_key: dict[str, list[int]] = {}
        for i, key in enumerate(head.class_keys or []):
            by_key.setdefault(key, [i])
        label_to_index = {}
        unmapped = []
        ambiguous = []
        for label in uniq:
            hits = by_name.get(normalize_name(label)) or synonyms.get(normalize_name(label)) or by_key.get(label)
            if not hits:
                unmapped.append(label)
            elif len(hits) > 1:
                ambiguous.append(f"{label!r} (head indices {', '.join(map(str, hits))})")
            else:
                label_to_index[label] = hits[0]
        if unmapped:
            candidates = list(head.class_names)
            against = "the head's class names"
            if head.class_keys is not None and any(looks_like_synset(label) for label in unmapped):
                candidates = list(head.class_keys)
                against = "the head's class keys"
            raise _unmapped_error(unmapped, candidates, against, c)
        if ambiguous:
            raise DataError(
                f"dataset label(s) match more than one head class by name: {', '.join(ambiguous[:10])}; "
                "add class_map to the dataset (label: head index) to say which one is meant"
            )
        how = "name"
    else:
        if head.class_keys is not None:
            missing = [label for label in uniq if label not in head.class_keys]
            raise _unmapped_error(missing, list(head.class_keys), "the head's class keys", c)
        if uniq:
            raise DataError(
                f"the head has no class names or keys to match the dataset labels against "
                f"({', '.join(repr(x) for x in uniq[:5])}{', …' if len(uniq) > 5 else ''}); "
                f"add class_map to the dataset (label: head index, 0–{c - 1})"
            )
        label_to_index = {}
        how = "name"

    # ------------------------------------------------------------------ readable names
    names: list[str | None] = [None] * c
    if class_names:
        key_index = {}
        if head.class_keys is not None:
            for i, key in enumerate(head.class_keys):
                key_index.setdefault(key, i)
        for key, readable in class_names.items():
            if class_map is not None and key in class_map and isinstance(class_map[key], int):
                idx = class_map[key]
            elif key in label_to_index:
                idx = label_to_index[key]
            else:
                idx = key_index.get(key)
            if idx is not None and 0 <= idx < c and names[idx] is None and str(readable).strip():
                names[idx] = " ".join(str(readable).split())
    for i in range(c):
        if names[i] is None and head.class_names is not None and str(head.class_names[i]).strip():
            names[i] = str(head.class_names[i]).strip()
    for label, idx in label_to_index.items():
        if names[idx] is None:
            names[idx] = " ".join(label.replace("_", " ").split())
    final = [name if name else f"class {i}" for i, name in enumerate(names)]

    synsets = [(i, n) for i, n in enumerate(final) if looks_like_synset(n)]
    if synsets:
        shown = ", ".join(f"{i}: {n!r}" for i, n in synsets[:5])
        more = f", … {len(synsets) - 5} more" if len(synsets) > 5 else ""
        raise DataError(
            f"{len(synsets)} class name(s) are raw synset ids ({shown}{more}), which would make meaningless "
            "prompts; add class_names to the dataset (label: readable name, e.g. n01440764: tench)"
        )
    return LabelMapping(label_to_index=label_to_index, class_names=final, how=how)
