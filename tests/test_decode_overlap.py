"""Extraction decodes the next batches in threads while the model runs (the default,
``run.num_workers: 0``, ``run.decode_threads: auto``), and gives exactly the rows of the
serial path: same transform, same batches, same order; skip, resume, errors and Ctrl-C
behave as before. ``run.channels_last`` converts model and batches and keys the cache."""

from __future__ import annotations

import _thread
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sing_audit.builtins.image_datasets import ImageFolderDataset
from sing_audit.errors import DataError
from sing_audit.pipeline.cache import ArrayStore, PartialEntry
from sing_audit.pipeline.extraction import batches_ahead, decode_threads_for, extract, to_channels_last
from sing_audit.synthetic import SYNSETS, write_image_folder

BATCH = 5


def _jpeg(seed: int, size: int = 80) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """36 images (3 classes × 12: PNG shapes and JPEG noise) and, in the middle class, a truncated JPEG."""
    root = write_image_folder(tmp_path_factory.mktemp("decode") / "val", per_class=6, size=72)
    for k, s in enumerate(SYNSETS):
        for i in range(6):
            (root / s / f"noise_{i}.jpg").write_bytes(_jpeg(10 * k + i))
    data = _jpeg(99)
    (root / SYNSETS[1] / "m_cut.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def resnet():
    """timm resnet18 at random init, 64 px."""
    from sing_audit_timm.backbone import TimmBackbone

    b = TimmBackbone({"model": "resnet18", "weights": "random", "img_size": 64})
    b.load("cpu")
    return b


def _dataset(root: Path, **options) -> ImageFolderDataset:
    return ImageFolderDataset(ImageFolderDataset.Options(root=root, **options))


def _extract(ds, model, records=None, **kw):
    records = ds.records() if records is None else records
    kw = {"num_workers": 0, "batch_size": BATCH, "label": "r18", "device": "cpu", **kw}
    return extract(records, ds, model.transform(), kw.pop("forward", model.features), **kw)


def _decode_threads_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sing-audit-decode")]


def _no_decode_threads_within(seconds: float) -> bool:
    end = time.time() + seconds
    while _decode_threads_alive() and time.time() < end:
        time.sleep(0.01)
    return not _decode_threads_alive()


# --------------------------------------------------------------------------- the same rows


def test_threaded_rows_equal_the_serial_ones_bit_for_bit_with_a_bad_image_skipped(image_root, resnet, caplog):
    ds = _dataset(image_root, on_bad_image="skip")
    records = ds.records()
    bad = [i for i, r in enumerate(records) if r.image_id.endswith("m_cut.jpg")]
    assert len(records) == 37 and bad and 0 < bad[0] < len(records) - BATCH  # in the middle
    serial = _extract(ds, resnet, decode_threads=0)
    assert serial.extra["timing"]["decode_threads"] == 0
    for threads in ("auto", 3):  # auto is 1 thread on a CPU
        caplog.clear()
        got = _extract(ds, resnet, decode_threads=threads)
        assert got.extra["timing"]["decode_threads"] == decode_threads_for(threads) >= 1
        assert np.array_equal(got.values, serial.values) and np.array_equal(got.ok, serial.ok)
        assert np.flatnonzero(~got.ok).tolist() == bad
        assert f"skipped unreadable image {records[bad[0]].image_id}" in caplog.text
    # against the model run by hand on each batch of the same transform
    t = resnet.transform()
    import torch

    good = [i for i in range(len(records)) if i not in bad]
    expected = np.zeros_like(serial.values)
    for s in range(0, len(records), BATCH):
        rows = [i for i in range(s, min(s + BATCH, len(records))) if i in good]
        with torch.inference_mode():
            expected[rows] = resnet.features(torch.stack([t(ds.open(records[i])) for i in rows])).numpy()
    assert np.array_equal(serial.values, expected)


def test_decoding_happens_in_threads_and_nothing_is_pickled(image_root, resnet):
    """The default decodes in this process's threads: a dataset that cannot be pickled works."""

    class Unpicklable(ImageFolderDataset):
        threads: set

        def open(self, record):
            self.threads.add(threading.current_thread().name)
            return super().open(record)

        def __reduce__(self):
            raise AssertionError("the dataset was pickled")

        def __getstate__(self):
            raise AssertionError("the dataset was pickled")

    ds = Unpicklable(ImageFolderDataset.Options(root=image_root, on_bad_image="skip"))
    ds.threads = set()
    from sing_audit.config import RunSettings

    run = RunSettings()
    assert (run.num_workers, run.decode_threads) == (0, "auto")
    got = _extract(ds, resnet, num_workers=run.num_workers, decode_threads=run.decode_threads)
    assert got.ok.sum() == 36
    assert ds.threads and all(name.startswith("sing-audit-decode") for name in ds.threads), ds.threads
    assert _no_decode_threads_within(2.0)


def test_a_decoding_error_surfaces_with_the_serial_message(image_root, resnet):
    ds = _dataset(image_root)  # on_bad_image: fail
    with pytest.raises(DataError) as serial:
        _extract(ds, resnet, decode_threads=0)
    with pytest.raises(DataError) as threaded:
        _extract(ds, resnet, decode_threads=2)
    assert str(threaded.value) == str(serial.value)
    assert "m_cut.jpg" in str(threaded.value) and "on_bad_image: skip" in str(threaded.value)
    assert _no_decode_threads_within(2.0)


def test_resume_after_an_interrupted_chunk_gives_the_same_rows(image_root, resnet, tmp_path):
    ds = _dataset(image_root, on_bad_image="skip")
    records = ds.records()
    serial = _extract(ds, resnet, decode_threads=0)
    store = ArrayStore(tmp_path / "cache")

    def sink():
        return PartialEntry(store, "features", "k", len(records), "float32", {"batch_size": BATCH})

    calls = []

    def interrupt_fifth_batch(x):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return resnet.features(x)

    with pytest.raises(KeyboardInterrupt):
        _extract(ds, resnet, forward=interrupt_fifth_batch, sink=sink(), chunk_images=2 * BATCH)
    assert _no_decode_threads_within(2.0)
    resumed_sink = sink()
    assert resumed_sink.done == 4 * BATCH  # two chunks of two batches were committed
    calls.clear()
    got = _extract(ds, resnet, forward=lambda x: (calls.append(1), resnet.features(x))[1], sink=resumed_sink,
                   chunk_images=2 * BATCH)
    assert len(calls) == -(-(len(records) - 4 * BATCH) // BATCH)  # only the batches after the last commit
    assert np.array_equal(np.asarray(got.values), serial.values) and np.array_equal(np.asarray(got.ok), serial.ok)


def test_the_check_sees_the_first_batch(image_root, resnet):
    ds = _dataset(image_root, on_bad_image="skip")
    seen = []

    def check(x, features=None):
        seen.append((x.clone(), features.clone()))

    check.accepts_features = True
    got = _extract(ds, resnet, check_first=check)
    (x, f), = seen
    assert x.shape[0] == 4 and np.array_equal(f.numpy(), got.values[:4])


# --------------------------------------------------------------------------- Ctrl-C


class _Slow(ImageFolderDataset):
    """Each image takes ``delay`` seconds; the ``interrupt_at``-th opened image sends
    this process a Ctrl-C (KeyboardInterrupt in the main thread, as SIGINT does)."""

    delay = 0.05
    interrupt_at: int | None = None

    def open(self, record):
        with self.lock:
            self.opened += 1
            n = self.opened
        if n == self.interrupt_at:
            _thread.interrupt_main()
        time.sleep(self.delay)
        return super().open(record)


def _slow(root, **kw) -> _Slow:
    ds = _Slow(ImageFolderDataset.Options(root=root, on_bad_image="skip"))
    ds.lock, ds.opened = threading.Lock(), 0
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_ctrl_c_while_waiting_for_a_batch_stops_promptly(image_root, resnet):
    ds = _slow(image_root, delay=0.3, interrupt_at=2)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _extract(ds, resnet, decode_threads=1)
    # the rest of the running batch (3 more images, 0.9 s) is not waited for
    assert time.perf_counter() - start < 0.9
    assert _no_decode_threads_within(1.0)  # the running batch stops at its next image
    assert ds.opened <= 3


def test_ctrl_c_in_the_forward_cancels_the_batches_ahead(image_root, resnet):
    ds = _slow(image_root, delay=0.01)
    calls = []

    def interrupt_second_batch(x):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return resnet.features(x)

    with pytest.raises(KeyboardInterrupt):
        _extract(ds, resnet, forward=interrupt_second_batch, decode_threads=1)
    assert _no_decode_threads_within(1.0)
    opened = ds.opened
    time.sleep(0.2)
    assert ds.opened == opened  # nothing decodes after the interrupt
    # at most the two consumed batches, the ones queued ahead and one image more
    assert opened <= (2 + batches_ahead(1)) * BATCH + 1 < len(ds.records())


# --------------------------------------------------------------------------- settings


def test_decode_threads_setting_is_validated(tmp_path):
    from sing_audit.config import RunSettings

    assert RunSettings().decode_threads == "auto" and RunSettings(decode_threads=0).decode_threads == 0
    with pytest.raises(ValueError, match="decode_threads"):
        RunSettings(decode_threads=-1)
    with pytest.raises(ValueError, match="decode_threads"):
        RunSettings(decode_threads="many")
    with pytest.raises(ValueError, match="num_workers 2 decodes in worker processes"):
        RunSettings(num_workers=2, decode_threads=2)
    assert RunSettings(num_workers=2).decode_threads == "auto"  # auto: threads only without workers
    assert decode_threads_for("auto", "cpu") == 1 and decode_threads_for(3, "cpu") == 3
    import os

    assert 1 <= decode_threads_for("auto", "cuda:0") <= max(1, (os.cpu_count() or 1) - 1)


def test_worker_processes_still_give_the_same_rows(image_root, resnet):
    ds = _dataset(image_root, on_bad_image="skip")
    serial = _extract(ds, resnet, decode_threads=0)
    got = _extract(ds, resnet, num_workers=2)
    assert got.extra["timing"]["num_workers"] == 2 and got.extra["timing"]["decode_threads"] == 0
    assert np.array_equal(got.values, serial.values)


# --------------------------------------------------------------------------- channels_last


def test_channels_last_features_are_close_and_keyed_apart(tmp_path, image_root):
    import json

    import torch

    from sing_audit.config import load_config
    from sing_audit.host import create_registry
    from sing_audit.pipeline import build_plan
    from sing_audit.pipeline.sources import Sources
    from sing_audit.testing import save_random_target

    ids = [r.image_id for r in _dataset(image_root, on_bad_image="skip").records()]
    save_random_target(tmp_path / "t.npz", ids, dim=16)

    def sources(out: str, **run) -> Sources:
        cfg = {
            "output": str(tmp_path / out),
            "dataset": {"plugin": "image_folder", "root": str(image_root), "on_bad_image": "skip"},
            "target": {"plugin": "precomputed", "path": str(tmp_path / "t.npz")},
            "backbones": [{"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 64}],
            "run": {"device": "cpu", "batch_size": BATCH, "folds": 2, "bootstrap": 100, **run},
        }
        (tmp_path / f"{out}.yaml").write_text(json.dumps(cfg))
        s = Sources.create(build_plan(load_config(tmp_path / f"{out}.yaml"), create_registry()))
        s.load_dataset()
        return s

    default, last = sources("default"), sources("last", channels_last=True)
    assert default._precision_key() == ()  # the default key is the one of older caches
    assert last._precision_key() == ({"channels_last": True},)
    a = default.load_backbone(default.plan.backbones[0])
    b = last.load_backbone(last.plan.backbones[0])
    model = last.plan.backbones[0].instance.model
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not default.plan.backbones[0].instance.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # another memory layout sums the convolutions in another order: float32 rounding
    # (~1e-7 relative per operation) grows over resnet18's ~20 layers, far below 1e-4
    scale = float(np.abs(a.features).max())
    np.testing.assert_allclose(b.features, a.features, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(b.ok, a.ok)
    keys = {s: [p.name for p in (tmp_path / s / "cache" / "features").iterdir() if not p.name.startswith(".")]
            for s in ("default", "last")}
    assert len(keys["default"]) == len(keys["last"]) == 1 and keys["default"] != keys["last"]


def test_channels_last_converts_a_components_modules(resnet):
    import copy

    import torch

    c = copy.deepcopy(resnet)
    to_channels_last(c)
    assert c.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert resnet.model.conv1.weight.is_contiguous()  # the original is untouched


def test_channels_last_batches_reach_the_forward_in_that_layout(image_root, resnet):
    import torch

    ds = _dataset(image_root, on_bad_image="skip")
    for channels_last in (False, True):
        layouts = []

        def forward(x):
            layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return x.mean(dim=(2, 3))

        _extract(ds, resnet, forward=forward, channels_last=channels_last)
        assert layouts and set(layouts) == {channels_last}
