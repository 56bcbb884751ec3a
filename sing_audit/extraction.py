"""Running image models over a dataset in batches, with the on-disk cache.

Extraction runs under ``torch.inference_mode`` with a progress bar; results go to the
:class:`~sing_audit.store.ArrayStore` keyed by everything they depend on, so a rerun with
nothing changed loads them without building the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .components import ImageDataset, ImageRecord
from .errors import DataError, HeadError

__all__ = ["Extracted", "extract", "resolve_device"]

log = logging.getLogger("sing_audit")


def resolve_device(name: str) -> str:
    """``auto`` → cuda, then mps, then cpu; explicit names are checked to exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"run.device is {name!r} but no CUDA device is available; use device: auto or cpu")
    return name


class _Images:
    """A torch-style dataset of (index, tensor or None) for one model's transform."""

    def __init__(self, dataset: ImageDataset, records: list[ImageRecord], transform: Callable, skip_bad: bool):
        self.dataset = dataset
        self.records = records
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            img = self.dataset.open(self.records[i])
        except DataError:
            if self.skip_bad:
                return i, None
            raise
        return i, self.transform(img)


def _collate(batch):
    import torch

    idx = [i for i, _ in batch]
    good = [(i, t) for i, t in batch if t is not None]
    bad = [i for i, t in batch if t is None]
    if not good:
        return idx, [], bad, None
    return idx, [i for i, _ in good], bad, torch.stack([t for _, t in good])


@dataclass
class Extracted:
    """Rows for every record (zeros where the image was bad) and which rows are valid."""

    values: np.ndarray  # N×d float32
    ok: np.ndarray  # N bool
    extra: dict[str, Any]


def extract(
    records: list[ImageRecord],
    dataset: ImageDataset,
    transform: Callable,
    forward: Callable,
    *,
    device: str,
    batch_size: int,
    num_workers: int,
    label: str,
    check_first: Callable | None = None,
) -> Extracted:
    """Run ``forward`` (B×C×H×W tensor -> B×d tensor) over every record.

    :param check_first: called once with the first batch tensor (e.g. to check that
        features and head reproduce the model's logits).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    skip = getattr(dataset, "on_bad_image", "fail") == "skip"
    loader = DataLoader(
        _Images(dataset, records, transform, skip),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
    )
    values: np.ndarray | None = None
    ok = np.zeros(len(records), dtype=bool)
    checked = check_first is None
    with torch.inference_mode():
        for _, good, bad, x in tqdm(loader, desc=label, unit="batch", disable=None, leave=False):
            for i in bad:
                log.warning("skipped unreadable image %s", records[i].image_id)
            if x is None:
                continue
            x = x.to(device)
            if not checked:
                check_first(x)
                checked = True
            out = forward(x).float().cpu().numpy()
            out = out.reshape(out.shape[0], -1)
            if values is None:
                values = np.zeros((len(records), out.shape[1]), dtype=np.float32)
            values[good] = out
            ok[good] = True
    if values is None:
        raise DataError(f"{label}: no image of the dataset could be read ({len(records)} tried)")
    return Extracted(values=values, ok=ok, extra={})


def check_head_reproduces_logits(features_fn: Callable, logits_fn: Callable, weight, bias, name: str) -> Callable:
    """A ``check_first`` that verifies ``features @ Wᵀ + b`` equals the model's logits."""

    def check(x) -> None:
        f = features_fn(x).double().cpu().numpy()
        f = f.reshape(f.shape[0], -1)
        logits = logits_fn(x).double().cpu().numpy()
        if f.shape[1] != weight.shape[1]:
            raise HeadError(
                f"backbone {name}: features have {f.shape[1]} dimensions but the head expects {weight.shape[1]}"
            )
        if logits.ndim != 2 or logits.shape[1] != weight.shape[0]:
            raise HeadError(f"backbone {name}: the model's output has shape {logits.shape}, not B×{weight.shape[0]} logits")
        recon = f @ weight.T + bias
        scale = max(float(np.abs(logits).max()), 1e-6)
        err = float(np.abs(recon - logits).max()) / scale
        if err > 1e-3:
            raise HeadError(
                f"backbone {name}: features @ head weight + bias do not reproduce the model's logits "
                f"(relative error {err:.2g}); the head is not a plain affine map of the features "
                "(it may normalise its input, as cosine classifiers do), so it has no meaningful null space"
            )

    return check
