"""ImageNet class information for timm heads of every ImageNet subset timm knows
(ImageNet-1k, -12k, -21k, -22k, …), from timm's own tables."""

from __future__ import annotations

import functools

from sing_audit.name_lists import library_value

__all__ = ["imagenet_class_info"]


@functools.lru_cache(maxsize=8)
def _timm_class_info(num_classes: int) -> list[list[str]] | None:
    """``[synsets, readable names]`` from timm's own tables (imports timm), else ``None``."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != num_classes:
        return None
    keys = [info.index_to_label_name(i) for i in range(num_classes)]
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(num_classes)]
    return [keys, names]


def imagenet_class_info(num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(synsets, readable names)`` for an ImageNet-sized head, else ``None``.

    Readable names are the first comma-separated part of timm's description
    (``"tench, Tinca tinca"`` -> ``"tench"``). Remembered per timm version
    (:mod:`sing_audit.name_lists`), so the plan's label check does not import timm; asked
    of the name lists on every call (not cached in the process), so that a missing list
    is written wherever the cache folder is now.
    """

    def valid(v) -> bool:
        return v is None or (
            isinstance(v, list) and len(v) == 2
            and all(isinstance(part, list) and len(part) == num_classes and all(isinstance(x, str) for x in part) for part in v)
        )

    answer = library_value("timm", f"imagenet_class_info/{num_classes}", lambda: _timm_class_info(num_classes),
                           module="timm", valid=valid)
    return None if answer is None else (tuple(answer[0]), tuple(answer[1]))
