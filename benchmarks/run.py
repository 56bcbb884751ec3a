"""sing-audit benchmarks: ratios measured in one run on one machine (not timed tests).

    python benchmarks/run.py OUT.json [--scale tiny|small|issue|full] [--only ...]

Prints a table and writes every measurement as JSON to OUT.json. Scales:

- ``tiny``: analysis at N=2,000 (and against ``RidgeCV`` at 2k); growth at 1k, 2k; 96 images
  for extraction (a smoke test);
- ``small`` (default): analysis at N=10,000 (``RidgeCV`` at 2k); growth at 2k, 10k; LOO at 2k;
- ``issue``: the issue's sizes: analysis at N=10,000 and 50,000 (``RidgeCV`` at 10k); growth at
  10k, 50k, 200k with a fixed α; α by leave-one-out at 10k; extraction with resnet50 at 224 px
  on 256 images;
- ``full``: as ``issue`` plus α by leave-one-out at 50k.

``extraction`` compares the default decoding (threads) and the other ``run.decode_threads``
and ``run.num_workers`` values against a bare loop; with a CUDA device it also reports
images/s of each image model's extraction against its bare forward (``--autocast``,
``--channels-last``), and says it was skipped otherwise.

``analysis`` is the whole analysis (every stage, bootstrap statistics included) against
plain numpy/scikit-learn computing the same numbers with the same resamples.

``report-names`` (report.html and report.pdf of 5 models × 1000 classes, ordinary names
against 5000-character names), ``process-rerun`` (a cold and a warm ``sing-audit run``,
whole processes), ``startup`` (``--help``, ``plugins``, ``validate`` and a warm rerun as
whole processes, with their ``-X importtime`` totals) and ``forwards`` (cold audit ÷ bare
forwards, warm ÷ cold, new folder ÷ cold, whole processes) are the same at every scale.

m=2048 features, n=768 embedding dimensions and c=1000 classes at every scale.
Analysis and growth each run in a fresh subprocess so peak memory is per measurement:
``tracemalloc`` peak over the analysis (numpy reports its buffers to it), and the
process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout runs without installing

M, NDIM, C = 2048, 768, 1000
FIXED_ALPHA = 100.0
SCALES = {
    "tiny": {"analysis": [2_000], "cv": [2_000], "growth": [1_000, 2_000], "loo": [1_000], "images": 96, "model": "resnet18", "px": 96},
    "small": {"analysis": [10_000], "cv": [2_000], "growth": [2_000, 10_000], "loo": [2_000], "images": 128, "model": "resnet18", "px": 224},
    "issue": {"analysis": [10_000, 50_000], "cv": [10_000], "growth": [10_000, 50_000, 200_000], "loo": [10_000], "images": 256, "model": "resnet50", "px": 224},
    "full": {"analysis": [10_000, 50_000], "cv": [10_000], "growth": [10_000, 50_000, 200_000], "loo": [10_000, 50_000], "images": 256, "model": "resnet50", "px": 224},
}


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (the machine may be shared: ratios are taken in one run)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
    }


# --------------------------------------------------------------------------- synthetic analysis inputs


def synthetic(n: int, folder: Path, seed: int = 0) -> dict:
    """Features with a low-rank class structure, a head, embeddings as a noisy linear map."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, size=n)
    centers = rng.normal(size=(C, M)).astype(np.float32)
    feats = np.empty((n, M), dtype=np.float32)
    for s in range(0, n, 10_000):
        e = min(n, s + 10_000)
        feats[s:e] = 0.5 * centers[labels[s:e]] + rng.normal(size=(e - s, M)).astype(np.float32)
    weight = (rng.normal(size=(C, M)) / np.sqrt(M)).astype(np.float32)
    bias = (0.01 * rng.normal(size=C)).astype(np.float32)
    a_true = (rng.normal(size=(NDIM, M)) / np.sqrt(M)).astype(np.float32)
    emb = np.empty((n, NDIM), dtype=np.float32)
    for s in range(0, n, 10_000):
        e = min(n, s + 10_000)
        emb[s:e] = feats[s:e] @ a_true.T + 0.3 * rng.normal(size=(e - s, NDIM)).astype(np.float32)
    text = (centers @ a_true.T + 0.1 * rng.normal(size=(C, NDIM))).astype(np.float32)
    names = np.array([f"class {k}" for k in range(C)])
    ids = np.array([f"img{i:07d}" for i in range(n)])
    np.savez(folder / "backbone.npz", features=feats, labels=labels, head_weight=weight, head_bias=bias, class_names=names, image_ids=ids)
    np.savez(folder / "target.npz", image_embeddings=emb, text_embeddings=text, image_ids=ids)
    return {"features_mb": feats.nbytes / 2**20, "embeddings_mb": emb.nbytes / 2**20}


def _plan(folder: Path, translator: dict | None = None):
    from sing_audit.config import load_config
    from sing_audit.host import create_registry
    from sing_audit.pipeline import build_plan

    cfg = {
        "output": str(folder / "out"),
        "target": {"plugin": "precomputed", "name": "t", "path": str(folder / "target.npz")},
        "backbones": [{"name": "b", "plugin": "precomputed", "path": str(folder / "backbone.npz")}],
        "translator": translator or {"plugin": "linear"},
        "report": {"formats": ["json"]},
    }  # run.bootstrap at its default (1000 resamples), as an audit runs
    (folder / "audit.yaml").write_text(json.dumps(cfg))
    return build_plan(load_config(folder / "audit.yaml"), create_registry())


def ours(folder: Path, translator: dict | None = None, trace: bool = True) -> dict:
    """The audit's whole analysis (SVD, cross-fitted translator, probes, statistics with
    ``run.bootstrap`` resamples, every figure of the model's result) on stored features.

    ``trace``: measure the peak allocation with tracemalloc (it slows allocation-heavy
    code, so the timed comparison with the plain way runs without it on both sides)."""
    import shutil

    from sing_audit.pipeline.model import Services, analyse_model
    from sing_audit.pipeline.sources import Sources

    shutil.rmtree(folder / "out", ignore_errors=True)
    plan = _plan(folder, translator)
    sources = Sources.create(plan)
    services = Services.of(sources)
    fsrc = sources.load_backbone(plan.backbones[0])
    esrc = sources.load_target(plan.targets[0])
    import tracemalloc

    rss0 = _maxrss_mb()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result, per_image = analyse_model(services, fsrc, esrc, services.text_encoder(esrc))
    seconds = time.perf_counter() - start
    peak = None
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "analysis_peak_alloc_mb": peak / 2**20 if peak is not None else None,
        "seconds": seconds,
        "stages": dict(sources.clock.seconds),
        "alpha": result.fidelity.params.get("alpha"),
        "is": np.asarray(per_image["is"]),
        "as": np.asarray(per_image["as"]),
        "as_contrast": np.asarray(per_image["as_contrast"]),
        "folds": np.asarray(per_image["fold"]),
        "figures": _figures_of(result),
        "bootstrap": plan.config.run.bootstrap,
        "seed": plan.config.run.seed,
        "rss_before_mb": rss0,
    }


def _figures_of(result) -> dict:
    """The numbers of a ``ModelResult`` that the plain way computes too: per-class means and
    bootstrap intervals (class order), model means and intervals, fidelity, null energies,
    logit drift, sanity accuracies."""
    def ci(x):
        return [np.nan if x is None or x.low is None else x.low, np.nan if x is None or x.high is None else x.high]

    cls = result.classes
    fid, drift, san = result.fidelity, result.logit_drift, result.sanity
    return {
        "class_means": np.array([[c.as_mean, c.as_abs_mean, c.is_mean, c.as_contrast] for c in cls], dtype=np.float64),
        "class_cis": np.array([ci(c.as_mean_ci) + ci(c.as_abs_ci) + ci(c.is_ci) + ci(c.as_contrast_ci) for c in cls], dtype=np.float64),
        "model": np.array([result.is_mean, result.as_abs_mean, result.is_as_ratio, *ci(result.is_ci), *ci(result.as_abs_ci),
                           *ci(result.is_as_ratio_ci)], dtype=np.float64),
        "fidelity": np.array([fid.cosine, fid.r2, fid.mse, fid.null_energy, fid.logit_correlation, result.null_energy], dtype=np.float64),
        "drift": np.array([drift.relative_max, drift.relative_mean, drift.prediction_agreement], dtype=np.float64),
        "sanity": np.array([san.classifier_top1, san.target_zero_shot, san.translator_zero_shot], dtype=np.float64),
    }


def _plain_ci(v: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval, the plain way (every resample at once)."""
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    if v.size < 2:
        return float(v.mean()), np.nan, np.nan
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(v.mean()), float(low), float(high)


def plain(folder: Path, folds: np.ndarray, alphas: list[float] | None, n_boot: int = 1000, seed: int = 0) -> dict:
    """The same numbers the plain way: numpy SVD, scikit-learn ``Ridge(alpha)`` per fold
    (``alphas`` None: ``RidgeCV`` over the tool's default grid, α by leave-one-out as the
    tool's default), vectorised angles, per-class and model bootstrap intervals drawn with
    ``np.random.default_rng(seed)`` in the tool's order (so the resamples, and the intervals,
    are the same), fidelity, null energies, logit drift and sanity accuracies."""
    from sklearn.linear_model import Ridge, RidgeCV

    b = np.load(folder / "backbone.npz")
    t = np.load(folder / "target.npz")
    start = time.perf_counter()
    f = b["features"].astype(np.float64)
    z = t["image_embeddings"].astype(np.float64)
    w = b["head_weight"].astype(np.float64)
    bias = b["head_bias"].astype(np.float64)
    text = t["text_embeddings"].astype(np.float64)
    labels = b["labels"]
    _, s, vt = np.linalg.svd(w)
    tol = s.max() * max(w.shape) * np.finfo(np.float32).eps
    r = int((s > tol).sum())
    vn = vt[r:].T
    null_part = (f @ vn) @ vn.T
    removed = f - null_part
    t_f = np.empty((f.shape[0], z.shape[1]))
    t_r = np.empty_like(t_f)
    null_share, chosen = [], []
    for k in np.unique(folds):
        test = folds == k
        if alphas is None:
            xtr = f[~test]
            grid = float(np.sum((xtr - xtr.mean(axis=0)) ** 2)) / f.shape[1] * np.logspace(-6, 2, 17)
            model = RidgeCV(alphas=grid).fit(xtr, z[~test])
            del xtr
            chosen.append(float(model.alpha_))
        else:
            model = Ridge(alpha=alphas[int(k)]).fit(f[~test], z[~test])
        t_f[test] = model.predict(f[test])
        t_r[test] = model.predict(removed[test])
        null_share.append(np.linalg.norm(model.coef_ @ vn) / np.linalg.norm(model.coef_))

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def ang(cos):
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    uf, ur, ut, uz = unit(t_f), unit(t_r), unit(text), unit(z)
    is_ = ang(np.sum(uf * ur, axis=1))
    cos_f = uf @ ut.T
    as_all = ang(cos_f) - ang(ur @ ut.T)
    rows = np.arange(f.shape[0])
    as_own = as_all[rows, labels]
    others = as_all.copy()
    others[rows, labels] = np.nan
    contrast = as_own - np.nanmedian(others, axis=1)
    # statistics: the tool's order of draws (per class: AS, |AS|, IS, contrast; then the model's)
    rng = np.random.default_rng(seed)
    class_means, class_cis = [], []
    for k in np.unique(labels):
        sel = labels == k
        got = [_plain_ci(v, rng, n_boot) for v in (as_own[sel], np.abs(as_own[sel]), is_[sel], contrast[sel])]
        class_means.append([g[0] for g in got])
        class_cis.append([x for g in got for x in g[1:]])
    abs_as = np.abs(as_own)
    is_ci = _plain_ci(is_, rng, n_boot)
    abs_ci = _plain_ci(abs_as, rng, n_boot)
    idx = rng.integers(0, is_.size, size=(n_boot, is_.size))
    d = abs_as[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(d > 0, is_[idx].mean(axis=1) / d, np.nan)
    ratio_ci = np.quantile(ratios[np.isfinite(ratios)], [0.025, 0.975])
    del idx
    # fidelity, null energies, logit drift, sanity
    cosine = float(np.mean(np.sum(uf * uz, axis=1)))
    resid = float(np.sum((z - t_f) ** 2))
    r2 = 1.0 - resid / float(np.sum((z - z.mean(axis=0)) ** 2))
    logit_r = float(np.corrcoef((uz @ ut.T).ravel(), cos_f.ravel())[0, 1])
    data_null = float(np.mean(np.linalg.norm(null_part, axis=1) / np.linalg.norm(f, axis=1)))
    before = f @ w.T + bias
    after = removed @ w.T + bias
    drift = np.linalg.norm(before - after, axis=1) / np.linalg.norm(before, axis=1)
    pred = np.argmax(before, axis=1)
    figures = {
        "class_means": np.array(class_means), "class_cis": np.array(class_cis),
        "model": np.array([is_ci[0], abs_ci[0], is_ci[0] / abs_ci[0], *is_ci[1:], *abs_ci[1:], *ratio_ci]),
        "fidelity": np.array([cosine, r2, resid / z.size, float(np.mean(null_share)), logit_r, data_null]),
        "drift": np.array([drift.max(), drift.mean(), float(np.mean(pred == np.argmax(after, axis=1)))]),
        "sanity": np.array([np.mean(pred == labels), np.mean(np.argmax(uz @ ut.T, axis=1) == labels),
                            np.mean(np.argmax(cos_f, axis=1) == labels)]),
    }
    return {"seconds": time.perf_counter() - start, "is": is_, "as": as_own, "as_contrast": contrast, "figures": figures,
            "alphas": chosen or alphas}


def plain_traced(folder: Path, folds: np.ndarray, alphas, n_boot: int, seed: int) -> float:
    """The plain way's tracemalloc peak (MB), run apart from its timed run."""
    import tracemalloc

    tracemalloc.start()
    plain(folder, folds, alphas, n_boot, seed)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a − b| where both are finite (NaN where they disagree on which are)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("nan")
    ok = np.isfinite(a)
    return float(np.max(np.abs(a[ok] - b[ok]), initial=0.0))


def _chunked_null_energy_patch() -> None:
    """What-if for ``--only growth-chunked``: ``analyse_model()``'s model-level null energy read in
    row chunks (today it converts all features to float64 at once: the analysis' peak)."""
    from sing_audit import nullspace
    from sing_audit.pipeline import build
    from sing_audit.probes import row_chunks

    def chunked(features, sub):
        return np.concatenate([nullspace.null_energy(features[r], sub) for r in row_chunks(features.shape[0])])

    build.null_energy = chunked


def child_analysis(n: int, mode: str) -> dict:
    """``compare``: fixed α, ours and the plain way (``Ridge``), both timed without
    tracemalloc, then each again under it for its peak; ``compare-cv``: α by leave-one-out
    (the default) against ``RidgeCV``, timed only; ``fixed``: ours, fixed α; ``loo``: ours,
    α by LOO; ``chunked``: as ``fixed`` with :func:`_chunked_null_energy_patch`."""
    if mode == "chunked":
        _chunked_null_energy_patch()
    fixed = mode in ("compare", "fixed", "chunked")
    with tempfile.TemporaryDirectory(prefix="sing-bench-") as tmp:
        folder = Path(tmp)
        sizes = synthetic(n, folder)
        rss_start = _maxrss_mb()
        translator = {"plugin": "linear", "alpha": FIXED_ALPHA} if fixed else None
        mine = ours(folder, translator, trace=mode not in ("compare", "compare-cv"))
        out = {
            "n": n, "m": M, "n_embed": NDIM, "c": C, **sizes, "alpha_mode": "fixed" if fixed else "loo", "mode": mode,
            "seconds": mine["seconds"], "stages": mine["stages"], "bootstrap": mine["bootstrap"],
            "analysis_peak_alloc_mb": mine["analysis_peak_alloc_mb"],
            "peak_rss_mb": _maxrss_mb(), "rss_before_analysis_mb": rss_start,
        }
        if mode in ("loo", "compare-cv"):
            out["alphas"] = mine["alpha"]
        if mode in ("compare", "compare-cv"):
            k_folds = int(mine["folds"].max()) + 1
            alphas = [FIXED_ALPHA] * k_folds if mode == "compare" else None
            ref = plain(folder, mine["folds"], alphas, mine["bootstrap"], mine["seed"])
            out["plain_seconds"] = ref["seconds"]
            out["ours_over_plain"] = mine["seconds"] / ref["seconds"]
            out["plain_alphas"] = ref["alphas"]
            out["alphas"] = mine["alpha"]
            out["max_abs_diff_deg"] = {k: _max_diff(mine[k], ref[k]) for k in ("is", "as", "as_contrast")}
            # class means and intervals in degrees; model figures, fidelity, drift, sanity as they are
            out["max_abs_diff"] = {k: _max_diff(mine["figures"][k], ref["figures"][k]) for k in ref["figures"]}
            if mode == "compare":
                del ref
                out["analysis_peak_alloc_mb"] = ours(folder, translator, trace=True)["analysis_peak_alloc_mb"]
                out["plain_peak_alloc_mb"] = plain_traced(folder, mine["folds"], alphas, mine["bootstrap"], mine["seed"])
                out["peak_rss_mb"] = _maxrss_mb()
    return out


# --------------------------------------------------------------------------- steering


def bench_steering(n: int = 10_000, k: int = 1_000, autograd_prompts: int = 4) -> dict:
    import tracemalloc

    import torch

    from sing_audit.nullspace import split_head
    from sing_audit.steering import steer_linear, steering_operators

    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, M))
    a = rng.normal(size=(NDIM, M)) / np.sqrt(M)
    c = rng.normal(size=NDIM) * 0.1
    w = rng.normal(size=(C, M)) / np.sqrt(M)
    bias = np.zeros(C)
    prompts = rng.normal(size=(k, NDIM))
    sub = split_head(w)
    u = f @ a.T + c
    nf = np.linalg.norm(f - (f @ sub.null) @ sub.null.T, axis=1)
    eps = 0.5 * np.linalg.norm((f @ sub.null), axis=1)
    logit_norm = np.linalg.norm(f @ w.T + bias, axis=1)
    del nf
    tracemalloc.start()
    start = time.perf_counter()
    ops = steering_operators(a, sub, w)
    res = steer_linear(u, prompts, eps, ops, logit_norm)
    closed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # autograd on the first prompts, all images: per prompt one backward over N×m
    ft = torch.tensor(f)
    at, ct = torch.tensor(a), torch.tensor(c)
    vn = torch.tensor(sub.null)
    tp = torch.tensor(prompts[:autograd_prompts])
    tp = tp / tp.norm(dim=1, keepdim=True)
    epst = torch.tensor(eps)
    start = time.perf_counter()
    as_auto = np.empty((n, autograd_prompts))
    for j in range(autograd_prompts):
        x = ft.clone().requires_grad_(True)
        uu = x @ at.T + ct
        s = torch.nn.functional.cosine_similarity(uu, tp[j][None, :], dim=1).sum()
        (g,) = torch.autograd.grad(s, x)
        d = (g @ vn) @ vn.T
        fe = ft + epst[:, None] * d / d.norm(dim=1, keepdim=True)
        ue = fe @ at.T + ct
        with torch.no_grad():
            before = torch.rad2deg(torch.arccos(torch.clamp((uu @ tp[j]) / uu.norm(dim=1), -1, 1)))
            after = torch.rad2deg(torch.arccos(torch.clamp((ue @ tp[j]) / ue.norm(dim=1), -1, 1)))
        as_auto[:, j] = (before - after).detach().numpy()
    auto = time.perf_counter() - start
    diff = float(np.nanmax(np.abs(as_auto - res.attribute_score[:, :autograd_prompts])))
    return {
        "n": n, "prompts": k, "m": M, "n_embed": NDIM,
        "closed_seconds": closed, "closed_peak_mb": peak / 2**20,
        "autograd_prompts": autograd_prompts, "autograd_seconds": auto,
        "autograd_seconds_extrapolated": auto * k / autograd_prompts,
        "speedup": auto * k / autograd_prompts / closed,
        "max_abs_diff_deg": diff,
        "n_by_k_by_m_float64_mb": n * k * M * 8 / 2**20,
    }


# --------------------------------------------------------------------------- extraction, warm rerun


class _TimingLog:
    """Collects the ``extraction_timing`` that :func:`sing_audit.pipeline.extraction.extract` logs."""

    def __init__(self):
        import logging

        self.records: list[dict] = []
        handler = logging.Handler()
        handler.emit = lambda record: self.records.append(record.extraction_timing) if hasattr(record, "extraction_timing") else None
        self.handler = handler
        logger = logging.getLogger("sing_audit")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def close(self):
        import logging

        logging.getLogger("sing_audit").removeHandler(self.handler)


def _variant_name(v: dict) -> str:
    """``threads auto (default)``, ``threads 0 (serial)``, ``num_workers 2``: one extraction configuration."""
    if v.get("num_workers", 0):
        return f"num_workers {v['num_workers']}"
    t = v.get("decode_threads", "auto")
    return {"auto": "decode threads auto (default)", 0: "decode threads 0 (serial)"}.get(t, f"decode threads {t}")


def bench_extraction(n_images: int, size: int = 96, batch: int = 32, model_name: str = "resnet18",
                     workers: tuple = (2,), decode_threads: tuple = ("auto", 0)) -> dict:
    """Audit extraction against a bare ``model(x)`` loop, per decoding configuration; warm
    rerun against the cold run.

    The bare loop decodes the same images once beforehand, then runs ``backbone.features``
    over the same batches. Configurations: ``run.decode_threads`` in ``decode_threads``
    (with ``num_workers: 0``; ``auto`` is the default) and ``run.num_workers`` in
    ``workers`` (worker processes). A bare loop runs after each configuration; the ratio is
    against their median (the machine may be shared).

    Images are 256×256 JPEGs (random pixels), resized/cropped to ``size`` by the model's
    transform. On CPU the "device" is the same CPU that decodes, so "compute idle" is the
    share of extraction wall time the consumer waits for the next batch.
    """
    import torch

    from sing_audit.synthetic import SYNSETS
    from sing_audit.testing import save_random_target

    variants = [{"decode_threads": t} for t in decode_threads] + [{"num_workers": w} for w in workers if w > 0]
    with tempfile.TemporaryDirectory(prefix="sing-bench-x-") as tmp:
        tmp = Path(tmp)
        from PIL import Image

        per_class = max(1, n_images // len(SYNSETS))
        root = tmp / "val"
        src_px = max(size, 256)
        for s in SYNSETS:
            (root / s).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.random.default_rng(i).integers(0, 255, size=(src_px, src_px, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / s / f"{s}_{i}.jpg", quality=90)
        save_random_target(tmp / "t.npz", [f"{s}/{s}_{i}.jpg" for s in SYNSETS for i in range(per_class)], dim=64)

        def config(out: str, **run) -> Path:
            cfg = {
                "output": str(tmp / out),
                "dataset": {"plugin": "image_folder", "root": str(root)},
                "target": {"plugin": "precomputed", "path": str(tmp / "t.npz")},
                "backbones": [{"name": "m", "plugin": "timm", "model": model_name, "weights": "random", "img_size": size}],
                "report": {"formats": ["json"]},
                "run": {"device": "cpu", "batch_size": batch, "folds": 2, "bootstrap": 100, **run},
            }
            path = tmp / f"{out}.yaml"
            path.write_text(json.dumps(cfg))
            return path

        from sing_audit.config import load_config
        from sing_audit.host import create_registry
        from sing_audit.pipeline import build_plan, run_audit
        from sing_audit.pipeline.sources import Sources

        timing_log = _TimingLog()
        plan = build_plan(load_config(config("out")), create_registry())
        sources = Sources.create(plan)
        sources.load_dataset()
        comp = plan.backbones[0]
        sources.loader.ensure_loaded(comp.instance)
        bb = comp.instance
        transform = bb.transform()
        ds = plan.dataset.instance
        # the same batches, decoded once, for the bare loop
        start = time.perf_counter()
        tensors = [transform(ds.open(r)) for r in sources.records]
        decode = time.perf_counter() - start
        batches = [torch.stack(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
        del tensors

        def bare_loop() -> float:
            with torch.inference_mode():
                start = time.perf_counter()
                for x in batches:
                    bb.features(x)
                return time.perf_counter() - start

        with torch.inference_mode():
            bb.features(batches[0])  # warm-up, as the audit's first batch is warm after the check
        bares = [bare_loop()]
        audits = {}
        for k, v in enumerate(variants):
            plan_w = build_plan(load_config(config(f"out{k}", **v)), create_registry())
            sources_w = Sources.create(plan_w)
            sources_w.load_dataset()
            plan_w.backbones[0].instance = bb  # the same loaded model (and threads)
            sources_w.loader._loaded.add(id(bb))
            start = time.perf_counter()
            sources_w.load_backbone(plan_w.backbones[0])
            audits[_variant_name(v)] = {"seconds": time.perf_counter() - start, "run": v,
                                        "timing": timing_log.records[-1] if timing_log.records else {}}
            bares.append(bare_loop())  # interleaved, to see the spread of the noisy machine
        bare = float(np.median(bares))

        start = time.perf_counter()
        run_audit(config("cold"))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        run_audit(config("cold"))
        warm = time.perf_counter() - start
        timing_log.close()
        w0 = audits[_variant_name(variants[0])]
        return {
            "images": len(sources.records), "image_px": size, "batch": batch, "model": f"timm {model_name} (random init)",
            "torch_threads": torch.get_num_threads(), "default": _variant_name(variants[0]),
            "bare_seconds": bare, "bare_runs": bares, "decode_transform_seconds": decode,
            "audit_extraction_seconds": w0["seconds"], "overhead_ratio": w0["seconds"] / bare,
            "decode_share_of_bare": decode / bare,
            "timing": w0["timing"],
            "compute_idle_share": w0["timing"].get("compute_idle_share"),
            "by_config": {name: {"seconds": a["seconds"], "overhead_ratio": a["seconds"] / bare, "run": a["run"], **a["timing"]}
                          for name, a in audits.items()},
            "cold_run_seconds": cold, "warm_run_seconds": warm, "warm_over_cold": warm / cold,
        }


def bench_gpu_extraction(device: str = "cuda", n_images: int = 512, batch: int = 64, size: int = 224,
                         backbone: str = "resnet50", target: str = "ViT-B-32", autocast: str = "none",
                         channels_last: bool = False, repeats: int = 3) -> dict:
    """Images/s of the tool's extraction of each image model (the timm ``backbone`` and the
    open_clip ``target``'s image encoder, random init) against the bare forward on the same
    device: the same batches decoded once beforehand and already on the device, under the
    same ``autocast`` and ``channels_last``, synchronised before the clock stops. The tool's
    side includes decoding (``run.num_workers`` 0, decode threads auto), the copy to the
    device and the store writes. ``device`` is ``cuda`` in the benchmark; any device runs
    (a CPU smoke test of the code)."""
    import torch

    from sing_audit.pipeline.extraction import autocast_context
    from sing_audit.synthetic import SYNSETS

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory(prefix="sing-bench-gpu-") as tmp:
        tmp = Path(tmp)
        from PIL import Image

        per_class = max(1, n_images // len(SYNSETS))
        root = tmp / "val"
        for s in SYNSETS:
            (root / s).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.random.default_rng(i).integers(0, 255, size=(256, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / s / f"{s}_{i}.jpg", quality=90)

        def config(out: str) -> Path:
            cfg = {
                "output": str(tmp / out),
                "dataset": {"plugin": "image_folder", "root": str(root)},
                "target": {"plugin": "open_clip", "name": "clip", "model": target, "weights": "random"},
                "backbones": [{"name": "m", "plugin": "timm", "model": backbone, "weights": "random", "img_size": size}],
                "report": {"formats": ["json"]},
                "run": {"device": device, "batch_size": batch, "folds": 2, "bootstrap": 100,
                        "autocast": autocast, "channels_last": channels_last},
            }
            path = tmp / f"{out}.yaml"
            path.write_text(json.dumps(cfg))
            return path

        from sing_audit.config import load_config
        from sing_audit.host import create_registry
        from sing_audit.pipeline import build_plan
        from sing_audit.pipeline.sources import Sources

        out: dict = {"device": device, "images": per_class * len(SYNSETS), "image_px": size, "batch": batch,
                     "autocast": autocast, "channels_last": channels_last, "models": {}}
        plan = build_plan(load_config(config("load")), create_registry())
        sources = Sources.create(plan)
        sources.load_dataset()
        ds = plan.dataset.instance
        models = [("backbone", f"timm {backbone}", plan.backbones[0], lambda c: c.instance.features,
                   lambda s, c: s.load_backbone(c)),
                  ("target", f"open_clip {target} image encoder", plan.targets[0],
                   lambda c: c.instance.encode_images, lambda s, c: s.load_target(c))]
        for role, what, comp, forward_of, tool in models:
            sources.loader.ensure_loaded(comp.instance)  # with channels_last when asked
            transform = comp.instance.transform()
            tensors = [transform(ds.open(r)) for r in sources.records]
            batches = [torch.stack(tensors[i : i + batch]).to(device) for i in range(0, len(tensors), batch)]
            if channels_last:
                batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]
            del tensors
            forward = forward_of(comp)

            def bare() -> float:
                with torch.inference_mode(), autocast_context(device, autocast):
                    sync()
                    start = time.perf_counter()
                    for x in batches:
                        forward(x)
                    sync()
                    return time.perf_counter() - start

            bare()  # warm-up (cudnn autotuning, allocator)
            bares, tools = [], []
            for k in range(repeats):
                plan_k = build_plan(load_config(config(f"run-{role}-{k}")), create_registry())
                sources_k = Sources.create(plan_k)
                sources_k.load_dataset()
                comp_k = plan_k.backbones[0] if role == "backbone" else plan_k.targets[0]
                comp_k.instance = comp.instance  # the same loaded model
                sources_k.loader._loaded.add(id(comp.instance))
                sync()
                start = time.perf_counter()
                tool(sources_k, comp_k)
                sync()
                tools.append(time.perf_counter() - start)
                bares.append(bare())
            n = len(sources.records)
            t_tool, t_bare = float(np.median(tools)), float(np.median(bares))
            out["models"][role] = {"model": what, "tool_images_per_second": n / t_tool, "bare_images_per_second": n / t_bare,
                                   "tool_over_bare_seconds": t_tool / t_bare, "tool_runs": tools, "bare_runs": bares}
            del batches
        return out


# --------------------------------------------------------------------------- report


def bench_report(n_models: int = 5, n_classes: int = 1000) -> dict:
    from sing_audit.host import create_registry
    from sing_audit.results import (
        AuditResult,
        ClassResult,
        Fidelity,
        Interval,
        ModelResult,
        Provenance,
    )

    rng = np.random.default_rng(0)
    models = []
    for j in range(n_models):
        classes = []
        for k in range(n_classes):
            m = float(abs(rng.normal(2, 1)))
            classes.append(ClassResult(
                index=k, name=f"class {k:04d}", n=50, as_mean=-m, as_abs_mean=m, as_contrast=-0.8 * m,
                is_mean=m + 3, as_abs_ci=Interval(low=m - 0.4, high=m + 0.4), as_mean_ci=Interval(low=-m - 0.4, high=-m + 0.4),
                is_ci=Interval(low=m + 2.7, high=m + 3.3), flagged=m - 0.4 > 4, outlier=False,
                flag_reasons=["lower bound above 4°"] if m - 0.4 > 4 else [],
            ))
        n_flag = sum(c.flagged for c in classes)
        models.append(ModelResult(
            name=f"model-{j}", backbone=f"model-{j}", target="clip", random_weights=False, rank_rule="rank",
            rank=n_classes, null_dim=M - n_classes, num_features=M, num_classes=n_classes, null_energy=0.4,
            n_images=50 * n_classes, is_mean=5.0, as_abs_mean=2.0, is_as_ratio=2.5,
            fidelity=Fidelity(cosine=0.8, r2=0.6, mse=0.002, folds=5, translator="linear", null_energy=0.3),
            n_flagged=n_flag, flagged_classes=[c.name for c in classes if c.flagged], passed=n_flag == 0, classes=classes,
        ))
    result = AuditResult(
        name="bench", passed=all(m.passed for m in models), verdict="bench", models=models,
        policy={"as_threshold": 4.0, "min_images": 10, "max_flagged": 0},
        provenance=Provenance(config={"name": "bench"}, versions={}),
    )
    registry = create_registry()
    reporter = None
    for name in registry.names("reporter"):
        reg = registry.get("reporter", name)
        if "html" in getattr(reg.factory, "formats", ()):
            reporter = reg.factory()
    with tempfile.TemporaryDirectory(prefix="sing-bench-r-") as tmp:
        start = time.perf_counter()
        paths = reporter.write(result, Path(tmp), "html")
        seconds = time.perf_counter() - start
        size = sum(Path(p).stat().st_size for p in paths if str(p).endswith(".html"))
    return {"models": n_models, "classes": n_classes, "seconds": seconds, "html_mb": size / 2**20}


def _report_names(n_classes: int, kind: str) -> list[str]:
    """Class names for the ``report-names`` measure. ``ordinary``: ImageNet's own (timm's
    WordNet descriptions, "tabby, tabby cat", up to 121 characters; "class k" without timm);
    ``long``: 5000 characters each, one unbreakable word (the worst case for layout);
    ``long-words``: 5000 characters of words."""
    if kind == "ordinary":
        try:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            return [info.index_to_description(k % 1000) + ("" if k < 1000 else f" {k}") for k in range(n_classes)]
        except Exception:  # noqa: BLE001 - no timm: plain names
            return [f"class {k}" for k in range(n_classes)]
    if kind == "long":
        return [f"{k:04d}" + "x" * (5000 - 4) for k in range(n_classes)]
    if kind == "long-words":
        return [(f"{k:04d} " + "tabby cat " * 500)[:5000] for k in range(n_classes)]
    raise ValueError(kind)


def _named_result(run_dir: Path, names: list[str], n_models: int = 5, per_class: int = 10, seed: int = 0):
    """``n_models`` models × ``len(names)`` classes called ``names``, with what makes the report
    print a name: per-image CSVs (violins), the 12 most leaking images (no thumbnails: the image
    table), concepts of every class, and a steering prompt toward every class."""
    from sing_audit.results import AuditResult, ClassResult, Fidelity, ImageEvidence, Interval, ModelResult, Provenance

    rng = np.random.default_rng(seed)
    c = len(names)
    models = []
    for j in range(n_models):
        labels = np.repeat(np.arange(c), per_class)
        leak = rng.gamma(1.0, 0.6, size=c)
        leak[rng.choice(c, 3, replace=False)] += 12.0
        as_img = rng.normal(-leak[labels], 0.8)
        is_img = np.abs(rng.normal(3 + leak[labels], 1.0))
        rel = f"models/m{j}/images.csv"
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        with (run_dir / rel).open("w", encoding="utf-8") as fh:
            fh.write("image_id,label,is,as\n")
            fh.writelines(f"img{i:06d},{labels[i]},{float(is_img[i])!r},{float(as_img[i])!r}\n" for i in range(labels.size))
        classes = []
        for k in range(c):
            a, s = as_img[labels == k], is_img[labels == k]
            m_abs = float(np.mean(np.abs(a)))
            flagged = m_abs - 0.5 > 4.0
            classes.append(ClassResult(
                index=k, name=names[k], n=per_class, as_mean=float(a.mean()), as_abs_mean=m_abs, as_contrast=float(0.9 * a.mean()),
                is_mean=float(s.mean()), as_mean_ci=Interval(low=float(a.mean()) - 0.4, high=float(a.mean()) + 0.4),
                as_abs_ci=Interval(low=m_abs - 0.5, high=m_abs + 0.5), is_ci=Interval(low=float(s.mean()) - 0.3, high=float(s.mean()) + 0.3),
                flagged=flagged, flag_reasons=["the lower bound of mean |AS| is above the 4° threshold"] if flagged else [],
            ))
        top = [ImageEvidence(image_id=f"img{i:06d}", label=int(labels[i]), class_name=names[labels[i]], as_score=float(as_img[i]),
                             is_score=float(is_img[i]), as_contrast=float(0.9 * as_img[i])) for i in np.argsort(-np.abs(as_img))[:12]]
        concepts = {"per_class": {names[k]: [{"concept": f"concept {q}", "as": float(rng.normal(0, 3)), "angle": float(rng.uniform(60, 90))}
                                             for q in range(5)] for k in range(c)}}
        steering = {"epsilon_mode": "relative", "epsilon": 1.0, "targets": [
            {"prompt": names[k], "source": "all other classes", "n": per_class * (c - 1), "as_mean": float(rng.normal(5, 2)),
             "as_std": 1.0, "epsilon": 1.0, "logit_drift": 2e-15} for k in range(c)]}
        flagged_names = [x.name for x in classes if x.flagged]
        models.append(ModelResult(
            name=f"model-{j}", backbone=f"model-{j}", target="clip", random_weights=False, rank_rule="rank", rank=c,
            null_dim=M - c, num_features=M, num_classes=c, null_energy=0.4, n_images=int(labels.size),
            is_mean=float(is_img.mean()), as_abs_mean=float(np.abs(as_img).mean()), is_as_ratio=2.5,
            is_as_ratio_ci=Interval(low=2.2, high=2.8),
            summary=f"model-{j} (with clip) hides class meaning in its null space for {len(flagged_names)} class(es) ({', '.join(flagged_names[:3])}).",
            policy_failures=[f"{len(flagged_names)} flagged class(es) ({', '.join(flagged_names[:5])}), more than the 0 allowed"],
            fidelity=Fidelity(cosine=0.8, r2=0.6, mse=0.002, folds=5, translator="linear", null_energy=0.3),
            n_flagged=len(flagged_names), flagged_classes=flagged_names, passed=not flagged_names, classes=classes,
            top_images=top, probes={"concepts": concepts, "steering": steering}, files={"images_csv": rel},
        ))
    return AuditResult(
        name="bench-names", passed=all(m.passed for m in models), verdict="bench", models=models,
        policy={"as_threshold": 4.0, "min_images": 10, "max_flagged": 0},
        provenance=Provenance(config={"name": "bench-names", "steering": {"pairs": [{"from": names[0], "to": names[1]}]}},
                              versions={}),
    )


def text_of(page: str) -> str:
    """An HTML page's text: ``<wbr>`` dropped, every other tag (and its attributes) a line
    break (two table cells are not one text), entities decoded."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]*>", "\n", page.replace("<wbr>", "")))


def _longest_name_piece(text: str, names: list[str], cap: int) -> int:
    """Length of the longest piece of any of ``names`` that occurs in ``text`` (``cap + 1``
    when a piece longer than ``cap`` does). Pieces neither start nor end with a space (the
    space before a name in "sing-audit · name" is not part of it)."""

    def found(n: int) -> bool:
        return any(w in text for name in names for w in {name[i:i + n] for i in range(len(name) - n + 1)} if w == w.strip())

    return max((n for n in range(1, cap + 2) if found(n)), default=0)


def bench_report_names(n_models: int = 5, n_classes: int = 1000, kinds: tuple = ("ordinary", "long", "long-words")) -> dict:
    """report.html and report.pdf of the same result with ordinary class names and with names of
    5000 characters, through the registered reporters (as a run writes them: html, then pdf,
    which reuses the charts the html drew)."""
    from sing_audit import plots
    from sing_audit.host import create_registry
    from sing_audit.report import NAME_CHARS, render_report

    registry = create_registry()
    html = registry.get("reporter", "html").factory()
    pdf = registry.get("reporter", "pdf").factory()
    out = {"models": n_models, "classes": n_classes, "name_chars": NAME_CHARS, "load_average_before": _load()}
    for kind in kinds:
        names = _report_names(n_classes, kind)
        with tempfile.TemporaryDirectory(prefix="sing-bench-n-") as tmp:
            run_dir = Path(tmp)
            result = _named_result(run_dir, names, n_models)
            plots._CACHE.clear()
            start = time.perf_counter()
            [h] = html.write(result, run_dir, "html")
            html_s = time.perf_counter() - start
            start = time.perf_counter()
            [p] = pdf.write(result, run_dir, "pdf")
            pdf_s = time.perf_counter() - start
            pages = None
            try:
                info = subprocess.run(["pdfinfo", str(p)], capture_output=True, text=True, check=True).stdout
                pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
            except (OSError, subprocess.CalledProcessError, StopIteration, ValueError):
                pass
            printed = render_report(result, run_dir, medium="print", registry=registry)
            long_ones = sorted({n for n in names if len(n) > NAME_CHARS})[:20]
            out[kind] = {
                "name_chars_max": max(len(n) for n in names), "names_cut": sum(len(" ".join(n.split())) > NAME_CHARS for n in names),
                "html_seconds": html_s, "pdf_seconds": pdf_s, "html_mb": h.stat().st_size / 2**20, "pdf_mb": p.stat().st_size / 2**20,
                "pdf_pages": pages, "print_html_mb": len(printed.encode()) / 2**20,
                "charts": printed.count("data:image/png;base64,"),  # scatter, ratio bars, a violin and a concept chart per model
                # in the text weasyprint lays out (tags and attributes dropped)
                "longest_name_piece_in_print_text": _longest_name_piece(text_of(printed), long_ones, NAME_CHARS) if long_ones else None,
            }
        print(f"report-names {kind}: html {html_s:.1f}s, pdf {pdf_s:.1f}s", flush=True)
    out["load_average_after"] = _load()
    return out


# --------------------------------------------------------------------------- whole processes: cold and warm rerun


def _user_env(tmp: Path) -> dict:
    """The environment of a measured ``sing-audit`` process, as a user's install has it:
    this checkout first on ``PYTHONPATH``, every installed plugin distribution (no
    ``SING_AUDIT_LOAD_PLUGINS``), the machine-wide cache in ``tmp`` (empty, so a first run
    is cold) and bytecode cached as an installed package's is (``PYTHONPYCACHEPREFIX`` in
    ``tmp``, so nothing lands in the source tree even when ``PYTHONDONTWRITEBYTECODE`` is
    set: without it every process compiles the sources again, about 0.5 s)."""
    env = dict(os.environ)
    root_dir = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["SING_AUDIT_CACHE_DIR"] = str(tmp / "machine-cache")
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SING_AUDIT_LOAD_PLUGINS", None)
    return env


def _two_model_audit(tmp: Path, name: str, images: Path, model: str, target: str) -> Path:
    """``tmp/audit.yaml``: timm ``model`` and open_clip ``target`` at random weights on the
    image folder ``images``, ``[null_removal]``, ``[json]``, 2 folds, 100 resamples, on the CPU."""
    cfg = {
        "name": name,
        "output": str(tmp / "out"),
        "dataset": {"plugin": "image_folder", "root": str(images)},
        "target": {"plugin": "open_clip", "name": "clip-random", "model": target, "weights": "random"},
        "backbones": [{"name": f"{model}-random", "plugin": "timm", "model": model, "weights": "random"}],
        "probes": ["null_removal"],
        "report": {"formats": ["json"]},
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
    }
    path = tmp / "audit.yaml"
    path.write_text(json.dumps(cfg))
    return path


def bench_process_rerun(n_images: int = 160, image_px: int = 64, model: str = "resnet50", target: str = "ViT-B-32") -> dict:
    """Two whole ``sing-audit run`` processes on a fresh output folder, as a user meets them:
    cold (nothing in the store), then warm (the same config again, nothing changed).
    Start-up, imports, model construction and writing results.json are included; the
    operating system's file cache is warm for both (a process importing the libraries runs
    first, and is timed too). timm ``model`` and open_clip ``target`` at ``weights: random``
    (no download), ``n_images`` JPEGs of ``image_px`` pixels in three ImageNet classes,
    probes [null_removal], formats [json]."""

    from sing_audit.synthetic import SYNSETS

    exe = Path(sys.executable).with_name("sing-audit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sing_audit"]
    with tempfile.TemporaryDirectory(prefix="sing-bench-p-") as tmp:
        tmp = Path(tmp)
        env = _user_env(tmp)
        root = tmp / "images"
        per_class = max(1, n_images // len(SYNSETS))
        _write_jpegs(root, per_class * len(SYNSETS), image_px)
        path = _two_model_audit(tmp, "process-rerun", root, model, target)

        def one(*args: str, argv: list[str] | None = None) -> dict:
            argv = argv or [*cmd, *args]
            start = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            seconds = time.perf_counter() - start
            if proc.returncode not in (0, 1):  # 1: the policy failed, still a complete run
                raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
            return {"seconds": seconds, "exit": proc.returncode}

        load_before = _load()
        # what every run pays before any work: importing the libraries of these components
        imports = one(argv=[sys.executable, "-c", "import torch, timm, open_clip, sing_audit.pipeline"])
        cold = one("run", str(path))
        cold_stages = json.loads((tmp / "out" / "results.json").read_text())["provenance"]["stage_seconds"]
        warm = one("run", str(path))
        warm_stages = json.loads((tmp / "out" / "results.json").read_text())["provenance"]["stage_seconds"]
    return {
        "images": per_class * len(SYNSETS), "image_px": image_px, "backbone": f"timm {model} (random init)",
        "target": f"open_clip {target} (random init)", "command": " ".join(Path(c).name for c in cmd) + " run audit.yaml",
        "import_seconds": imports["seconds"], "cold_seconds": cold["seconds"], "warm_seconds": warm["seconds"],
        "warm_over_cold": warm["seconds"] / cold["seconds"], "exit": [cold["exit"], warm["exit"]],
        "cold_stage_seconds": cold_stages, "warm_stage_seconds": warm_stages,
        "load_average_before": load_before, "load_average_after": _load(),
    }


# --------------------------------------------------------------------------- text stage


def bench_text(target: str = "ViT-B-32", old_batch: int = 256) -> dict:
    """The text stage for the 1000 ImageNet class names × the default templates through
    open_clip ``target`` at random init, before and after, as a ratio in one run (same
    process, same loaded model, after a warm-up of both).

    before: the code at main, inline: every prompt at the full 77-token context, batches of
    ``old_batch`` in class order, then the template ensemble. after: the tool's path,
    ``ChunkedText.class_ensemble`` (the text stage's resumable chunks in a fresh store, each
    distinct prompt once, shortest first) over ``OpenClipTarget.encode_text``
    (length-sorted batches at the device's default size, cut after their longest prompt).
    Model loading is outside both. ``max_abs_diff``: of the c×n unit class embeddings."""
    from contextlib import nullcontext

    import torch

    from sing_audit.components import template_ensemble
    from sing_audit.imagenet import imagenet_class_info
    from sing_audit.options import DEFAULT_TEMPLATES
    from sing_audit.pipeline.cache import ArrayStore
    from sing_audit.pipeline.text import ChunkedText
    from sing_audit_open_clip.target import OpenClipTarget

    names = list(imagenet_class_info(1000)[1])
    templates = list(DEFAULT_TEMPLATES)
    prompts = [t.format(n) for n in names for t in templates]
    clip = OpenClipTarget({"model": target, "weights": "random"})
    clip.load("cpu")

    def before(ps: list[str]) -> np.ndarray:
        rows = []
        with torch.inference_mode():
            for start in range(0, len(ps), old_batch):
                rows.append(clip.model.encode_text(clip._tokenizer(ps[start : start + old_batch])).double().numpy())
        return np.concatenate(rows)

    def after(folder: Path) -> np.ndarray:
        return ChunkedText(ArrayStore(folder), clip.describe(), clip.encode_text, nullcontext, "clip").class_ensemble(names, templates)

    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="sing-bench-t-") as tmp:
        before(prompts[:8]), clip.encode_text(prompts[:8])  # warm-up of both paths
        start = time.perf_counter()
        old = template_ensemble(before(prompts), len(templates))
        before_s = time.perf_counter() - start
        start = time.perf_counter()
        new = after(Path(tmp) / "cache")
        after_s = time.perf_counter() - start
    tokens = clip._tokenizer(prompts)
    return {
        "target": f"open_clip {target} (random init)", "classes": len(names), "templates": templates,
        "prompts": len(prompts), "distinct_prompts": len(set(prompts)),
        "mean_tokens": float((tokens.argmax(dim=-1) + 1).double().mean()), "context": int(tokens.shape[1]),
        "before_seconds": before_s, "after_seconds": after_s, "after_over_before": after_s / before_s,
        "text_batch": clip._text_batch(), "old_batch": old_batch, "threads": torch.get_num_threads(),
        "max_abs_diff": float(np.abs(new - old).max()),
        "load_average_before": load_before, "load_average_after": _load(),
    }


# --------------------------------------------------------------------------- start-up: commands as whole processes


def _importtime(stderr: str, top: int = 10) -> dict:
    """``python -X importtime`` output -> the sum of the top-level imports' cumulative times and
    the ``top`` slowest top-level imports (a top-level import is one the program itself asked for)."""
    import re

    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:  # one space: a top-level import
            rows.append((int(m.group(2)) / 1e6, m.group(4)))
    rows.sort(reverse=True)
    return {"import_seconds": sum(r[0] for r in rows), "top": [[name, round(sec, 4)] for sec, name in rows[:top]]}


def bench_startup(n_images: int = 32, image_px: int = 64, model: str = "resnet50", target: str = "ViT-B-32",
                  repeats: int = 3) -> dict:
    """Whole-process wall times (median of ``repeats``) of ``sing-audit --help``, ``plugins``,
    ``validate CFG`` and a warm rerun of a cached audit (``run CFG`` a second time), and for each
    the ``python -X importtime`` total (sum of the top-level cumulative times) with its 10
    slowest top-level imports, and the median CPU time (user + system: what a loaded machine
    does not inflate as much as the wall time). CFG: timm ``model`` and open_clip ``target`` at ``weights: random``,
    ``n_images`` JPEGs of ``image_px`` pixels in 3 classes, probes [null_removal], formats [json].

    A cold run comes first (timed once, not a start-up number): it fills the store and the
    per-version name lists (in a fresh ``SING_AUDIT_CACHE_DIR``), so ``validate`` reads the names
    as it would on a user's machine after its first use. Bytecode is cached as in an installed
    package (``PYTHONPYCACHEPREFIX`` in the temporary folder, so nothing is written to the source
    tree, even when ``PYTHONDONTWRITEBYTECODE`` is set), and every command runs once unmeasured first."""

    from sing_audit.synthetic import SYNSETS

    cmd = [sys.executable, "-m", "sing_audit"]
    with tempfile.TemporaryDirectory(prefix="sing-bench-s-") as tmp:
        tmp = Path(tmp)
        root_dir = str(Path(__file__).resolve().parents[1])
        env = _user_env(tmp)
        root = tmp / "images"
        per_class = max(1, n_images // len(SYNSETS))
        _write_jpegs(root, per_class * len(SYNSETS), image_px)
        path = _two_model_audit(tmp, "startup", root, model, target)

        def one(args: list[str], *, importtime: bool = False) -> tuple[float, float, str]:
            """``(wall seconds, CPU seconds of the process: user + system, stderr)``."""
            argv = [sys.executable, "-X", "importtime", *cmd[1:], *args] if importtime else [*cmd, *args]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode not in (0, 1):  # 1: the policy failed, still a complete run
                raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return seconds, cpu, proc.stderr

        load_before = _load()
        cold = one(["run", str(path)])[0]
        commands = {"help": ["--help"], "plugins": ["plugins"], "validate": ["validate", str(path)], "warm_run": ["run", str(path)]}
        out: dict = {}
        for name, args in commands.items():
            one(args)  # unmeasured: bytecode and the operating system's file cache
            timed = [one(args) for _ in range(repeats)]
            *_, stderr = one(args, importtime=True)
            runs, cpu = [t[0] for t in timed], [t[1] for t in timed]
            out[name] = {"seconds": float(np.median(runs)), "runs": runs, "cpu_seconds": float(np.median(cpu)),
                         **_importtime(stderr)}
    return {
        "images": per_class * len(SYNSETS), "image_px": image_px, "backbone": f"timm {model} (random init)",
        "target": f"open_clip {target} (random init)", "code": root_dir, "cold_run_seconds": cold, "commands": out,
        "load_average_before": load_before, "load_average_after": _load(),
    }


def _startup_rows(res: dict) -> list[tuple[str, str, str, str]]:
    st = res.get("startup", {})
    goals = {"validate": "< 2 s", "warm_run": "< 2 s"}
    return [
        (f"start-up: `sing-audit {name.replace('_', ' ')}`, whole process", f"{v['seconds']:.2f}s", goals.get(name, ""),
         f"median of {len(v['runs'])}, CPU (user + system) {v.get('cpu_seconds', float('nan')):.2f}s; imports "
         f"{v['import_seconds']:.2f}s (-X importtime), slowest: "
         + ", ".join(f"{m} {t:.2f}s" for m, t in v["top"][:4]))
        for name, v in st.get("commands", {}).items()
    ]


# --------------------------------------------------------------------------- whole audit against its forward passes

#: the bare forwards, a lean expert's script: each image decoded once and given both
#: transforms, the backbone's pre-logit features and the image encoder in batches under
#: inference mode, and the text encoder over the class prompts sorted by tokenised length,
#: each batch cut to its longest prompt (causal CLIP text towers pool at the end-of-text
#: token, so the padding after it changes nothing). Written to a file and run as its own
#: process, so its imports count as the audit's do.
_BARE_FORWARDS = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, torch, timm, open_clip
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from open_clip.transformer import text_global_pool


def encode_text_cut(model, text):
    # open_clip's CLIP.encode_text for tokens cut to L <= the context length: the first L
    # positional embeddings and the L x L corner of the causal mask (open_clip's own
    # encode_text adds all 77 positions, so it takes full-length tokens only)
    n = text.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


spec = json.loads(sys.argv[1])
paths, batch, text_batch = spec["paths"], spec["batch"], spec["text_batch"]
imported = time.perf_counter()
with torch.inference_mode():
    backbone = timm.create_model(spec["backbone"], pretrained=False).eval()
    bb_tf = create_transform(**resolve_data_config(model=backbone), is_training=False)
    clip, _, clip_tf = open_clip.create_model_and_transforms(spec["target"], pretrained=None)
    clip.eval()
    tokenizer = open_clip.get_tokenizer(spec["target"])
    built = time.perf_counter()
    feats, embs = [], []
    for i in range(0, len(paths), batch):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + batch]]
        x = torch.stack([bb_tf(im) for im in images])
        y = torch.stack([clip_tf(im) for im in images])
        feats.append(backbone.forward_head(backbone.forward_features(x), pre_logits=True))
        embs.append(clip.encode_image(y))
    images_done = time.perf_counter()
    info = ImageNetInfo()
    names = [info.index_to_description(k).split(",")[0].strip() for k in range(backbone.num_classes)]
    prompts = [t.format(n) for n in names for t in spec["templates"]]
    tokens = tokenizer(prompts)
    eot = tokens.argmax(dim=1)  # the end-of-text token has the largest id: its position
    order = torch.argsort(eot)
    text = torch.empty(len(prompts), clip.text_projection.shape[-1])
    for i in range(0, len(prompts), text_batch):
        rows = order[i : i + text_batch]
        text[rows] = encode_text_cut(clip, tokens[rows, : int(eot[rows].max()) + 1])
    done = time.perf_counter()
    # (not timed) the cut prompts' embeddings against the model's own full-length encode_text
    check = order[-8:]
    cut_diff = float((clip.encode_text(tokens[check]) - text[check]).abs().max())
print(json.dumps({"imports": imported - t0, "build": built - imported, "images": images_done - built,
                  "text": done - images_done, "prompts": len(prompts), "n_images": len(paths),
                  "features": list(torch.cat(feats).shape), "embeddings": list(torch.cat(embs).shape),
                  "threads": torch.get_num_threads(), "text_cut_max_abs_diff": cut_diff}))
"""


def _write_jpegs(root: Path, n_images: int, px: int, seed: int = 0) -> list[Path]:
    """``n_images`` random-pixel JPEGs of ``px``×``px`` in the three ImageNet classes of
    :data:`sing_audit.synthetic.SYNSETS` (as evenly as they go), in an image folder."""
    from PIL import Image

    from sing_audit.synthetic import SYNSETS

    rng = np.random.default_rng(seed)
    paths = []
    for j, syn in enumerate(SYNSETS):
        (root / syn).mkdir(parents=True, exist_ok=True)
        for i in range(n_images // len(SYNSETS) + (j < n_images % len(SYNSETS))):
            path = root / syn / f"{syn}_{i}.jpg"
            Image.fromarray(rng.integers(0, 255, size=(px, px, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)
    return sorted(paths)


def _timed_process(argv: list[str], env: dict) -> dict:
    """One whole process, timed from outside; its last stdout line parsed when it is JSON."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: the policy failed (or not assessed), still a complete run
        raise RuntimeError(f"{' '.join(argv[:3])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    out = {"seconds": seconds, "exit": proc.returncode}
    last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    if last and last[0].startswith("{"):
        try:
            out["report"] = json.loads(last[0])
        except ValueError:
            pass
    return out


def bench_forwards(n_images: int = 160, image_px: int = 224, model: str = "resnet50", target: str = "ViT-B-32",
                   bare_repeats: int = 2) -> dict:
    """The whole audit against its forward passes, as ratios taken in one run, every figure
    a whole process (start-up and imports included; the OS file cache is warmed first by a
    process that imports the libraries):

    - cold ``sing-audit run`` (fresh output folder, empty machine-wide cache) ÷ the bare
      forwards (:data:`_BARE_FORWARDS`: decode, backbone, image encoder, text encoder over
      every head class × the default templates at its floor), run ``bare_repeats`` times
      around the audits (their mean is the divisor; each is recorded);
    - warm ÷ cold: the same config again in the same folder;
    - new folder ÷ cold: the same config in a new output folder, sharing the machine-wide
      cache (``SING_AUDIT_CACHE_DIR``, a fresh temporary folder for this measure) with the
      cold run.

    timm ``model`` and open_clip ``target`` at ``weights: random``, ``n_images`` JPEGs of
    ``image_px`` pixels in 3 ImageNet classes, probes [null_removal], formats [json], every
    other setting at its default (``run.device: cpu``)."""
    from sing_audit.options import DEFAULT_TEMPLATES

    exe = Path(sys.executable).with_name("sing-audit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sing_audit"]
    with tempfile.TemporaryDirectory(prefix="sing-bench-f-") as tmp:
        tmp = Path(tmp)
        paths = _write_jpegs(tmp / "images", n_images, image_px)
        env = _user_env(tmp)  # its machine-wide cache starts empty: the cold run is cold
        base = {
            "name": "forwards",
            "dataset": {"plugin": "image_folder", "root": str(tmp / "images")},
            "target": {"plugin": "open_clip", "name": "clip-random", "model": target, "weights": "random"},
            "backbones": [{"name": f"{model}-random", "plugin": "timm", "model": model, "weights": "random"}],
            "probes": ["null_removal"],
            "report": {"formats": ["json"]},
            "run": {"device": "cpu"},
        }
        configs = {}
        for folder in ("out", "out-new"):
            configs[folder] = tmp / f"{folder}.yaml"
            configs[folder].write_text(json.dumps(base | {"output": str(tmp / folder)}))
        from sing_audit.config import load_config

        batch = load_config(configs["out"]).run.batch_size
        script = tmp / "bare_forwards.py"
        script.write_text(_BARE_FORWARDS)
        spec = json.dumps({"paths": [str(p) for p in paths], "batch": batch, "text_batch": 256,
                           "backbone": model, "target": target, "templates": list(DEFAULT_TEMPLATES)})

        def stages(folder: str) -> dict:
            try:
                return json.loads((tmp / folder / "results.json").read_text())["provenance"]["stage_seconds"]
            except (OSError, ValueError, KeyError):
                return {}

        def timed(what: str, argv: list[str], folder: str | None = None) -> dict:
            got = _timed_process(argv, env) | ({"stages": stages(folder)} if folder else {})
            print(f"forwards: {what} {got['seconds']:.1f}s", flush=True)  # a long run shows where it is
            return got

        load_before = _load()
        # twice: the first also compiles every module into the fresh bytecode cache (_user_env)
        # and fills the OS file cache; the second is what importing costs a user
        importing = [sys.executable, "-c", "import torch, timm, open_clip, sing_audit.pipeline"]
        timed("imports (compiling bytecode)", importing)
        imports = timed("imports", importing)
        bares = [timed("bare forwards", [sys.executable, str(script), spec])]
        cold = timed("cold", [*cmd, "run", str(configs["out"])], "out")
        warm = timed("warm", [*cmd, "run", str(configs["out"])], "out")
        new = timed("new folder", [*cmd, "run", str(configs["out-new"])], "out-new")
        for _ in range(bare_repeats - 1):
            bares.append(timed("bare forwards", [sys.executable, str(script), spec]))
    bare = float(np.mean([b["seconds"] for b in bares]))
    return {
        "images": len(paths), "image_px": image_px, "backbone": f"timm {model} (random init)",
        "target": f"open_clip {target} (random init)", "batch": batch,
        "command": " ".join(Path(c).name for c in cmd) + " run audit.yaml", "import_seconds": imports["seconds"],
        "bare_seconds": bare, "bare_runs": [b["seconds"] for b in bares], "bare_parts": [b.get("report", {}) for b in bares],
        "cold_seconds": cold["seconds"], "warm_seconds": warm["seconds"], "new_folder_seconds": new["seconds"],
        "cold_over_bare": cold["seconds"] / bare, "warm_over_cold": warm["seconds"] / cold["seconds"],
        "new_folder_over_cold": new["seconds"] / cold["seconds"],
        "exit": [cold["exit"], warm["exit"], new["exit"]],
        "cold_stage_seconds": cold["stages"], "warm_stage_seconds": warm["stages"], "new_folder_stage_seconds": new["stages"],
        "load_average_before": load_before, "load_average_after": _load(),
    }


# --------------------------------------------------------------------------- driver


def _child(args: list[str]) -> dict:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(res: dict) -> str:
    rows = []
    x = res.get("extraction", {})
    if "overhead_ratio" in x:
        rows.append((f"extraction ÷ bare model(x) loop, {x['default']}", f"{x['overhead_ratio']:.2f}", "≤ 1.05",
                     f"{x['model']}, {x['images']} images {x['image_px']}px, batch {x['batch']}, torch threads {x['torch_threads']}: "
                     f"{x['audit_extraction_seconds']:.1f}s vs {x['bare_seconds']:.1f}s (median of {len(x['bare_runs'])}); decode+transform {x['decode_transform_seconds']:.1f}s"))
        for name, v in x.get("by_config", {}).items():
            rows.append((f"  {name}: ÷ bare, compute idle", f"{v['overhead_ratio']:.2f}, {100 * v.get('compute_idle_share', float('nan')):.1f}%", "",
                         f"wait {v.get('wait_seconds', 0):.1f}s, forward {v.get('forward_seconds', 0):.1f}s, store writes {v.get('write_seconds', 0):.2f}s of {v.get('total_seconds', 0):.1f}s"))
        rows.append(("warm rerun ÷ cold run, in-process run_audit", f"{x['warm_over_cold']:.3f}", "",
                     f"{x['warm_run_seconds']:.2f}s vs {x['cold_run_seconds']:.2f}s (start-up and imports not included)"))
    g = res.get("gpu_extraction")
    if g is not None and "skipped" in g:
        rows.append(("GPU extraction images/s ÷ bare forward", "skipped", "", g["skipped"]))
    elif g is not None:
        for role, v in g.get("models", {}).items():
            rows.append((f"GPU {role} images/s: extraction vs bare forward", f"{v['tool_images_per_second']:.4g} vs {v['bare_images_per_second']:.4g}", "",
                         f"{v['model']} on {g['device']}, autocast {g['autocast']}, channels_last {g['channels_last']}, {g['images']} images {g['image_px']}px, "
                         f"batch {g['batch']}; extraction ÷ bare time {v['tool_over_bare_seconds']:.2f}"))
    for a in res.get("analysis", []):
        if "plain_seconds" not in a:
            rows.append((f"analysis N={a.get('n')}", "error", "", a.get("error", "")[-200:]))
            continue
        rows.append((f"analysis N={a['n']:,}, fixed α, whole (all stages, bootstrap {a['bootstrap']})", f"{a['seconds']:.1f}s", "",
                     f"stages {', '.join(f'{k} {v:.1f}s' for k, v in a['stages'].items())}"))
        rows.append((f"  ours ÷ plain numpy/sklearn Ridge, N={a['n']:,}", f"{a['ours_over_plain']:.2f}×", "≤ 1.0×",
                     f"ours {a['seconds']:.1f}s, plain {a['plain_seconds']:.1f}s (bootstrap on both sides); peak alloc ours "
                     f"{a['analysis_peak_alloc_mb']:.0f} MB, plain {a['plain_peak_alloc_mb']:.0f} MB"))
        rows.append(("  max |ours − plain| (IS, AS, contrast)", ", ".join(f"{v:.1e}" for v in a["max_abs_diff_deg"].values()), "≤ 1e-5",
                     "degrees; classes, model, fidelity, drift, sanity: "
                     + ", ".join(f"{k} {v:.1e}" for k, v in a.get("max_abs_diff", {}).items())))
    for a in res.get("analysis_cv", []):
        if "plain_seconds" in a:
            rows.append((f"  ours (α by LOO) ÷ sklearn RidgeCV, N={a['n']:,}", f"{a['ours_over_plain']:.2f}×", "reported",
                         f"ours {a['seconds']:.1f}s, plain {a['plain_seconds']:.1f}s; α per fold ours {', '.join(f'{x:.4g}' for x in a['alphas'])}, "
                         f"RidgeCV {', '.join(f'{x:.4g}' for x in a['plain_alphas'])}; "
                         f"max |ΔIS, ΔAS, Δcontrast| {', '.join(f'{v:.1e}' for v in a['max_abs_diff_deg'].values())}"))
        else:
            rows.append((f"analysis-cv N={a.get('n')}", "error", "", a.get("error", "")[-200:]))
    for key, what in (("growth", "fixed α"), ("growth_chunked", "fixed α, chunked null energy (what-if)"), ("loo", "α by LOO")):
        for g in res.get(key, []):
            if "seconds" in g:
                st = g["stages"]
                rows.append((f"{'LOO' if key == 'loo' else 'growth'} N={g['n']:,} ({what}, all stages)", f"{g['seconds']:.1f}s", "linear" if key == "growth" else "",
                             (f"translator {st.get('translator', 0):.1f}s, probes {st.get('probes', 0):.1f}s; analysis peak alloc {g['analysis_peak_alloc_mb']:.0f} MB"
                              f" = {g['analysis_peak_alloc_mb'] / g['features_mb']:.2f}× the features ({g['features_mb']:.0f} MB float32); peak RSS {g['peak_rss_mb']:.0f} MB")))
            else:
                rows.append((f"{key} N={g.get('n')}", "error", "", g.get("error", "")[-200:]))
    s = res.get("steering", {})
    if s:
        rows.append((f"steering {s['prompts']:,} prompts × {s['n']:,} features", f"{s['closed_seconds']:.1f}s", "",
                     f"peak {s['closed_peak_mb']:.0f} MB (N×K×m float64 would be {s['n_by_k_by_m_float64_mb'] / 1024:.0f} GB)"))
        rows.append(("  autograd ÷ closed form", f"{s['speedup']:.0f}×", "", f"autograd {s['autograd_seconds']:.1f}s for {s['autograd_prompts']} prompts, extrapolated; max |ΔAS| {s['max_abs_diff_deg']:.1e}°"))
    r = res.get("report", {})
    if r:
        rows.append((f"report {r['models']} models × {r['classes']} classes", f"{r['seconds']:.1f}s", "", f"HTML {r['html_mb']:.1f} MB"))
    rn = res.get("report_names", {})
    base = rn.get("ordinary")
    for kind, what in (("ordinary", "ordinary names (ImageNet's)"), ("long", "5000-character names, one word each"),
                       ("long-words", "5000-character names of words")):
        v = rn.get(kind)
        if not v:
            continue
        ratio = f" ({v['pdf_seconds'] / base['pdf_seconds']:.2f}× ordinary)" if base and kind != "ordinary" else ""
        rows.append((f"report {rn['models']} × {rn['classes']} classes, {what}", f"PDF {v['pdf_seconds']:.1f}s", "bounded" if kind != "ordinary" else "",
                     f"HTML {v['html_seconds']:.1f}s ({v['html_mb']:.1f} MB), PDF {v['pdf_mb']:.1f} MB, {v['pdf_pages']} pages{ratio}; "
                     f"{v['names_cut']} names cut to {rn['name_chars']}; longest piece of a cut name in the print text {v['longest_name_piece_in_print_text']}"))
    pr = res.get("process_rerun", {})
    if "warm_over_cold" in pr:
        rows.append(("warm rerun ÷ cold run, whole `sing-audit run` processes", f"{pr['warm_over_cold']:.3f}", "≤ 0.05",
                     f"{pr['warm_seconds']:.2f}s vs {pr['cold_seconds']:.2f}s; {pr['backbone']} + {pr['target']}, {pr['images']} JPEGs {pr['image_px']}px, "
                     f"[null_removal], [json]; a process importing torch, timm, open_clip alone {pr['import_seconds']:.2f}s; "
                     f"warm stages {sum(pr['warm_stage_seconds'].values()):.2f}s"))
    tx = res.get("text", {})
    if "after_over_before" in tx:
        rows.append((f"text stage {tx['prompts']:,} ImageNet prompts, after ÷ before", f"{tx['after_over_before']:.3f}", "",
                     f"{tx['after_seconds']:.2f}s vs {tx['before_seconds']:.2f}s (full {tx['context']}-token context, batches of "
                     f"{tx['old_batch']}); {tx['target']}, mean {tx['mean_tokens']:.1f} tokens, batches of {tx['text_batch']}; "
                     f"max |Δ| unit class embeddings {tx['max_abs_diff']:.1e}"))
    fw = res.get("forwards", {})
    if "cold_over_bare" in fw:
        common = f"{fw['backbone']} + {fw['target']}, {fw['images']} JPEGs {fw['image_px']}px, [null_removal], [json]"
        bare_parts = fw["bare_parts"][0] if fw.get("bare_parts") else {}
        rows.append(("cold audit ÷ bare forwards, whole processes", f"{fw['cold_over_bare']:.2f}", "≤ 1.15",
                     f"{fw['cold_seconds']:.1f}s vs {fw['bare_seconds']:.1f}s (mean of {', '.join(f'{b:.1f}' for b in fw['bare_runs'])}; "
                     f"bare: imports {bare_parts.get('imports', 0):.1f}s, images {bare_parts.get('images', 0):.1f}s, "
                     f"text {bare_parts.get('text', 0):.1f}s for {bare_parts.get('prompts', '?')} prompts); {common}; "
                     f"cold stages {', '.join(f'{k} {v:.1f}s' for k, v in fw['cold_stage_seconds'].items())}"))
        rows.append(("  warm rerun ÷ cold, same folder", f"{fw['warm_over_cold']:.3f}", "≤ 0.05, < 2 s",
                     f"{fw['warm_seconds']:.2f}s; imports alone {fw['import_seconds']:.2f}s; "
                     f"warm stages {sum(fw['warm_stage_seconds'].values()):.2f}s"))
        rows.append(("  new folder ÷ cold, machine-wide cache", f"{fw['new_folder_over_cold']:.3f}", "≤ 0.05",
                     f"{fw['new_folder_seconds']:.2f}s; stages {sum(fw['new_folder_stage_seconds'].values()):.2f}s"))
    rows += _startup_rows(res)
    w = [max(len(str(row[i])) for row in rows + [("measure", "value", "goal", "detail")]) for i in range(3)]
    lines = [f"| {'measure':<{w[0]}} | {'value':<{w[1]}} | {'goal':<{w[2]}} | detail |", f"|{'-' * (w[0] + 2)}|{'-' * (w[1] + 2)}|{'-' * (w[2] + 2)}|---|"]
    lines += [f"| {r0:<{w[0]}} | {r1:<{w[1]}} | {r2:<{w[2]}} | {r3} |" for r0, r1, r2, r3 in rows]
    return "\n".join(lines)


def _progress(res: dict, out: Path) -> None:
    """Write what is measured so far (a long run that is stopped keeps its numbers)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".partial.json").write_text(json.dumps(res, indent=2, default=float))
    print(table(res), flush=True)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, n = sys.argv[2], int(sys.argv[3])
        print(json.dumps(child_analysis(n, kind), default=float))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="where to write the JSON")
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--only", action="append", default=[],
                   help="extraction (with gpu-extraction), gpu-extraction, analysis, growth, growth-chunked (what-if, not in the default set), loo, steering, report, "
                        "report-names, process-rerun, startup, forwards, text (not in the default set)")
    p.add_argument("--workers", default="2", help="run.num_workers values (> 0: worker processes) compared in the extraction measure")
    p.add_argument("--decode-threads", default="auto,0",
                   help="run.decode_threads values (with num_workers 0) compared in the extraction measure; the first is the headline")
    p.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none", help="run.autocast of the GPU extraction measure")
    p.add_argument("--channels-last", action="store_true", help="run.channels_last in the GPU extraction measure")
    args = p.parse_args(argv)
    # in-process measures compare settings the cache key leaves out (decode_threads, num_workers):
    # the machine-wide cache would hand the second one the first one's features. The
    # whole-process measures give their processes a fresh cache folder of their own (_user_env).
    os.environ["SING_AUDIT_CACHE_DIR"] = "off"
    sc = SCALES[args.scale]
    want = set(args.only) or {"extraction", "analysis", "growth", "loo", "steering", "report", "report-names", "process-rerun",
                              "startup", "forwards"}
    res: dict = {"scale": args.scale, "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if "report" in want:
        res["report"] = bench_report()
    if "report-names" in want:
        res["report_names"] = bench_report_names()
        _progress(res, args.out)
    if "process-rerun" in want:
        res["process_rerun"] = bench_process_rerun()
        _progress(res, args.out)
    if "text" in want:
        res["text"] = bench_text()
    if "startup" in want:
        res["startup"] = bench_startup()
        _progress(res, args.out)
    if "forwards" in want:
        res["forwards"] = bench_forwards()
        _progress(res, args.out)
    if "steering" in want:
        res["steering"] = bench_steering()
        _progress(res, args.out)
    if "extraction" in want:
        workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
        threads = tuple(t if t == "auto" else int(t) for t in (t.strip() for t in args.decode_threads.split(",")) if t)
        res["extraction"] = bench_extraction(sc["images"], size=sc["px"], model_name=sc["model"], workers=workers,
                                             decode_threads=threads)
        _progress(res, args.out)
    if want & {"extraction", "gpu-extraction"}:
        import torch

        if torch.cuda.is_available():
            res["gpu_extraction"] = bench_gpu_extraction("cuda", autocast=args.autocast, channels_last=args.channels_last)
        else:
            res["gpu_extraction"] = {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
        _progress(res, args.out)
    if "analysis" in want:
        res["analysis"] = []
        for n in sc["analysis"]:
            res["analysis"].append(_child(["compare", str(n)]) | {"n": n})
            _progress(res, args.out)
        res["analysis_cv"] = []
        for n in sc["cv"]:
            res["analysis_cv"].append(_child(["compare-cv", str(n)]) | {"n": n})
            _progress(res, args.out)
    if "growth" in want:
        res["growth"] = []
        for n in sc["growth"]:
            res["growth"].append(_child(["fixed", str(n)]) | {"n": n})
            _progress(res, args.out)
    if "growth-chunked" in want:
        res["growth_chunked"] = []
        for n in sc["growth"]:
            res["growth_chunked"].append(_child(["chunked", str(n)]) | {"n": n})
            _progress(res, args.out)
    if "loo" in want:
        res["loo"] = []
        for n in sc["loo"]:
            res["loo"].append(_child(["loo", str(n)]) | {"n": n})
            _progress(res, args.out)
    text = table(res)
    print(f"machine: {res['machine']}")
    print(text)
    res["table"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
