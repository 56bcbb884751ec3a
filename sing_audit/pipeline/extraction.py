"""Running image models over a dataset in batches, with the on-disk cache.

Extraction runs under ``torch.inference_mode`` with a progress bar; results go to the
:class:`~sing_audit.pipeline.cache.ArrayStore` keyed by everything they depend on, so a rerun with
nothing changed loads them without building the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..components import ImageDataset, ImageRecord
from ..progress import progress
from ..errors import DataError, HeadError

__all__ = ["Extracted", "autocast_context", "effective_autocast", "extract", "resolve_device"]

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
        from ..errors import ConfigError

        raise ConfigError(f"run.device is {name!r} but no CUDA device is available; use device: auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        from ..errors import ConfigError

        raise ConfigError("run.device is 'mps' but no Apple GPU (MPS) is available; use device: auto or cpu")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            from ..errors import ConfigError

            raise ConfigError(f"run.device is {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif name not in ("cpu", "cuda", "mps"):
        from ..errors import ConfigError

        raise ConfigError(f"run.device must be auto, cpu, cuda, cuda:N or mps, not {name!r}")
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


#: images of the first batch used to check that features and head reproduce the logits
CHECK_IMAGES = 4

#: images per resumable chunk (rounded up to whole batches)
DEFAULT_CHUNK_IMAGES = 1024


def autocast_context(device: str, autocast: str):
    """``torch.autocast`` for ``bf16``/``fp16`` on a GPU; a no-op (with a logged note) on CPU."""
    import contextlib

    import torch

    if autocast in (None, "none"):
        return contextlib.nullcontext()
    kind = device.split(":")[0]
    if kind not in ("cuda", "mps"):
        log.info("run.autocast %s is for GPU extraction; ignored on %s (extraction stays float32)", autocast, device)
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
    return torch.autocast(device_type=kind, dtype=dtype)


def effective_autocast(device: str, autocast: str) -> str:
    """The autocast that actually applies on ``device`` (``none`` on CPU)."""
    return autocast if autocast not in (None, "none") and device.split(":")[0] in ("cuda", "mps") else "none"


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
    sink=None,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    autocast: str = "none",
) -> Extracted:
    """Run ``forward`` (B×C×H×W tensor -> B×d tensor) over every record, streaming batches.

    :param check_first: called once with the first images of the first batch (e.g. to
        check that features and head reproduce the model's logits); with ``features=`` their
        rows of the batch's output too when it has ``accepts_features = True``.

    The extra ``timing`` (also logged) splits the wall time into waiting for data (the
    device idles), forward and store writes.
    :param sink: a :class:`~sing_audit.pipeline.cache.PartialEntry`: rows go straight into its
        memory-mapped files, committed every ``chunk_images`` images (whole batches), and
        extraction starts after its last committed row. Without a sink rows are kept in
        memory (float32).
    :param autocast: ``none``, ``bf16`` or ``fp16`` (GPU only).
    """
    import time

    import torch
    from torch.utils.data import DataLoader

    skip = getattr(dataset, "on_bad_image", "fail") == "skip"
    start = sink.done if sink is not None else 0
    if start:
        log.info("%s: resuming extraction at image %d of %d", label, start, len(records))
    workers = num_workers if len(records) - start > batch_size else 0
    loader = DataLoader(
        _Images(dataset, records[start:], transform, skip),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    chunk_batches = max(1, -(-int(chunk_images) // batch_size))
    values: np.ndarray | None = sink.values if sink is not None else None
    ok = np.zeros(len(records), dtype=bool)
    checked = check_first is None
    done = start
    # where the time goes: waiting for the next batch (decode, transform, collate; the
    # device idles), in forward (up to the copy back), and the rest (store writes, commits)
    timing = {"wait_seconds": 0.0, "forward_seconds": 0.0, "write_seconds": 0.0, "batches": 0, "images": 0}
    batches = iter(progress(loader, desc=f"extract {label}", unit="batch"))
    started = time.perf_counter()
    with torch.inference_mode(), autocast_context(device, autocast):
        b = -1
        while True:
            t0 = time.perf_counter()
            try:
                idx, good, bad, x = next(batches)
            except StopIteration:
                timing["wait_seconds"] += time.perf_counter() - t0
                break
            t1 = time.perf_counter()
            b += 1
            good = [start + i for i in good]
            bad = [start + i for i in bad]
            for i in bad:
                log.warning("skipped unreadable image %s", records[i].image_id)
            out = None
            if x is not None:
                x = x.to(device, non_blocking=True)
                features = forward(x)
                if not checked:
                    # a few images suffice, and their features are the batch's: one small forward
                    _check(check_first, x[:CHECK_IMAGES], features[:CHECK_IMAGES])
                    checked = True
                out = features.float().cpu().numpy()
                out = out.reshape(out.shape[0], -1)
            t2 = time.perf_counter()
            done += len(idx)
            if sink is not None:
                sink.write(good, out, bad)
                if (b + 1) % chunk_batches == 0 and done < len(records):
                    sink.commit(done)
            elif out is not None:
                if values is None:
                    values = np.zeros((len(records), out.shape[1]), dtype=np.float32)
                values[good] = out
                ok[good] = True
            timing["wait_seconds"] += t1 - t0
            timing["forward_seconds"] += t2 - t1
            timing["write_seconds"] += time.perf_counter() - t2
            timing["batches"] += 1
            timing["images"] += len(idx)
    timing["total_seconds"] = time.perf_counter() - started
    if timing["batches"]:
        timing["compute_idle_share"] = timing["wait_seconds"] / max(timing["total_seconds"], 1e-12)
        log.info(
            "%s: %d images in %.2fs: %.2fs waiting for data (compute idle %.1f%%), %.2fs forward, %.2fs writing",
            label, timing["images"], timing["total_seconds"], timing["wait_seconds"],
            100 * timing["compute_idle_share"], timing["forward_seconds"], timing["write_seconds"],
            extra={"extraction_timing": dict(timing, label=label, device=device)},
        )
    if sink is not None:
        values, ok = sink.values, sink.ok
        if values is None or not np.asarray(ok).any():
            raise DataError(f"{label}: no image of the dataset could be read ({len(records)} tried)")
    if values is None:
        raise DataError(f"{label}: no image of the dataset could be read ({len(records)} tried)")
    return Extracted(values=values, ok=ok, extra={"timing": timing})


def _check(check_first: Callable, x, features) -> None:
    """Call ``check_first`` with the batch's own features when it accepts them."""
    if getattr(check_first, "accepts_features", False):
        check_first(x, features=features)
    else:
        check_first(x)


def check_head_reproduces_logits(features_fn: Callable, logits_fn: Callable, weight, bias, name: str) -> Callable:
    """A ``check_first`` that verifies ``features @ Wᵀ + b`` equals the model's logits."""

    def check(x, features=None) -> None:
        f = (features_fn(x) if features is None else features).double().cpu().numpy()
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

    check.accepts_features = True  # extract() passes the first images' features: no second forward
    return check
