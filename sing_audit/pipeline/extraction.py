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

__all__ = [
    "Extracted", "autocast_context", "batches_ahead", "decode_threads_for", "effective_autocast", "extract", "resolve_device", "to_channels_last",
]

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


#: decode threads under ``run.decode_threads: auto`` on a CPU device: the forward runs on the
#: same cores, so one thread hides the decode and more only take cores from the forward
#: (measured on 2 cores, docs/performance.md "Decoding overlaps the forward")
AUTO_DECODE_THREADS_CPU = 1

#: ... on a GPU, where the CPU only decodes: all cores but the one feeding the device, at most
#: this many (each thread decodes whole batches, and every thread's batch waits in memory)
AUTO_DECODE_THREADS_GPU = 4


def decode_threads_for(setting: int | str, device: str = "cpu") -> int:
    """The decode threads of ``run.decode_threads`` on ``device``: ``auto`` →
    :data:`AUTO_DECODE_THREADS_CPU` on a CPU, up to :data:`AUTO_DECODE_THREADS_GPU` on a GPU
    (never more than the CPUs less one); 0 decodes in the calling thread between forwards."""
    import os

    if setting != "auto":
        return int(setting)
    cpus = os.cpu_count() or 1
    if device.split(":")[0] in ("cuda", "mps"):
        return max(1, min(AUTO_DECODE_THREADS_GPU, cpus - 1))
    return max(1, min(AUTO_DECODE_THREADS_CPU, cpus))


def batches_ahead(threads: int) -> int:
    """Batches decoded or queued before the consumer: one per thread and one ready, so
    memory stays bounded by a few batches whatever the dataset's size."""
    return threads + 1


class _ThreadBatches:
    """Collated batches of ``images`` in order, decoded by a thread pool up to ``ahead``
    batches before the consumer: decoding (PIL and torch release the GIL) overlaps the
    forward, and nothing is pickled, unlike DataLoader workers (processes).

    Use as a context manager: leaving it (normally, on an error or on Ctrl-C) cancels the
    batches not started and tells the running ones to stop at their next image, so an
    interrupt neither waits for the queue nor leaves threads that hold the process at exit.
    An exception raised while decoding a batch is raised again, unchanged, when the
    consumer reaches that batch: the same error, in the same place, as the serial path.
    """

    def __init__(self, images: "_Images", batch_size: int, threads: int, ahead: int, pin: bool):
        self.images, self.batch_size, self.threads, self.pin = images, batch_size, threads, pin
        self.ahead = max(1, ahead)
        self.starts = range(0, len(images), batch_size)
        self._pool = None
        self._stop = None

    def __len__(self) -> int:
        return len(self.starts)

    def _batch(self, s: int):
        items = []
        for i in range(s, min(s + self.batch_size, len(self.images))):
            if self._stop.is_set():
                return None  # the consumer is gone: nobody will read this batch
            items.append(self.images[i])
        idx, good, bad, x = _collate(items)
        if self.pin and x is not None:
            x = x.pin_memory()
        return idx, good, bad, x

    def __enter__(self) -> "_ThreadBatches":
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="sing-audit-decode")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def __iter__(self):
        from collections import deque

        pending = deque()
        starts = iter(self.starts)
        for s in starts:
            pending.append(self._pool.submit(self._batch, s))
            if len(pending) >= self.ahead:
                break
        while pending:
            batch = _result(pending.popleft())
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(self._pool.submit(self._batch, nxt))
            yield batch


def _result(future):
    """``future.result()``, waiting in short slices: a Ctrl-C whose signal reached another
    thread (Python then only flags it for the main thread) still stops the wait at once,
    not when the batch is done."""
    from concurrent.futures import FIRST_COMPLETED, wait

    while not future.done():
        wait([future], timeout=0.05, return_when=FIRST_COMPLETED)
    return future.result()


def to_channels_last(component) -> None:
    """Convert the torch modules a loaded component holds to ``torch.channels_last`` (a
    no-op for parameters that are not 4-D, so transformers keep their layout)."""
    import torch

    for value in list(vars(component).values()):
        if isinstance(value, torch.nn.Module):
            value.to(memory_format=torch.channels_last)


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
    decode_threads: int | str = "auto",
    channels_last: bool = False,
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
    :param num_workers: > 0: decode in that many DataLoader worker processes;
        0: in ``decode_threads`` threads of this process (``auto``, see
        :func:`decode_threads_for`), or, with ``decode_threads=0``, in this thread between
        forwards. Every choice gives the same batches in the same order, so the same rows.
    :param channels_last: pass 4-D batches as ``torch.channels_last`` (the model should be
        converted too: :func:`to_channels_last`).
    """
    import contextlib
    import time

    import torch
    from torch.utils.data import DataLoader

    skip = getattr(dataset, "on_bad_image", "fail") == "skip"
    start = sink.done if sink is not None else 0
    if start:
        log.info("%s: resuming extraction at image %d of %d", label, start, len(records))
    several = len(records) - start > batch_size  # one batch has nothing to overlap
    workers = num_workers if several else 0
    threads = decode_threads_for(decode_threads, device) if several and not workers else 0
    images = _Images(dataset, records[start:], transform, skip)
    pin = device.startswith("cuda")
    if threads:
        loader = _ThreadBatches(images, batch_size, threads, batches_ahead(threads), pin)
    else:
        loader = contextlib.nullcontext(DataLoader(
            images,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=pin,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        ))
    chunk_batches = max(1, -(-int(chunk_images) // batch_size))
    values: np.ndarray | None = sink.values if sink is not None else None
    ok = np.zeros(len(records), dtype=bool)
    checked = check_first is None
    done = start
    # where the time goes: waiting for the next batch (decode, transform, collate; the
    # device idles), in forward (up to the copy back), and the rest (store writes, commits)
    timing = {"wait_seconds": 0.0, "forward_seconds": 0.0, "write_seconds": 0.0, "batches": 0, "images": 0,
              "num_workers": workers, "decode_threads": threads}
    started = time.perf_counter()
    with loader as batch_source, torch.inference_mode(), autocast_context(device, autocast):
        batches = iter(progress(batch_source, desc=f"extract {label}", unit="batch"))
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
                if channels_last and x.ndim == 4:
                    x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
                else:
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
