"""sing-audit benchmarks: ratios measured in one run on one machine (not timed tests).

    python benchmarks/run.py OUT.json [--scale tiny|small|issue|full] [--only ...]

Prints a table and writes every measurement as JSON to OUT.json. Scales:

- ``tiny``: analysis at N=2,000; growth at 1k, 2k; 96 images for extraction (a smoke test);
- ``small`` (default): analysis at N=10,000; growth at 2k, 10k; LOO at 2k;
- ``issue``: the issue's sizes: analysis at N=50,000; growth at 10k, 50k, 200k with a fixed α;
  α by leave-one-out at 10k; extraction with resnet50 at 224 px on 256 images;
- ``full``: as ``issue`` plus α by leave-one-out at 50k.

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
    "tiny": {"analysis": 2_000, "growth": [1_000, 2_000], "loo": [1_000], "images": 96, "model": "resnet18", "px": 96},
    "small": {"analysis": 10_000, "growth": [2_000, 10_000], "loo": [2_000], "images": 128, "model": "resnet18", "px": 224},
    "issue": {"analysis": 50_000, "growth": [10_000, 50_000, 200_000], "loo": [10_000], "images": 256, "model": "resnet50", "px": 224},
    "full": {"analysis": 50_000, "growth": [10_000, 50_000, 200_000], "loo": [10_000, 50_000], "images": 256, "model": "resnet50", "px": 224},
}


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
    from sing_audit.runner import build_plan

    cfg = {
        "output": str(folder / "out"),
        "target": {"plugin": "precomputed", "name": "t", "path": str(folder / "target.npz")},
        "backbones": [{"name": "b", "plugin": "precomputed", "path": str(folder / "backbone.npz")}],
        "translator": translator or {"plugin": "linear"},
        "report": {"formats": ["json"]},
        "run": {"bootstrap": 100},
    }
    (folder / "audit.yaml").write_text(json.dumps(cfg))
    return build_plan(load_config(folder / "audit.yaml"), create_registry())


def ours(folder: Path, translator: dict | None = None, trace: bool = True) -> dict:
    """The audit's analysis (SVD, cross-fitted translator, probes, statistics) on stored features.

    ``trace``: measure the peak allocation with tracemalloc (it slows allocation-heavy
    code, so the timed comparison with the plain way runs without it, as the plain way does)."""
    import shutil

    from sing_audit.runner import Runner, analyse

    shutil.rmtree(folder / "out", ignore_errors=True)
    plan = _plan(folder, translator)
    runner = Runner(plan)
    fsrc = runner.load_backbone(plan.backbones[0])
    esrc = runner.load_target(plan.targets[0])
    import tracemalloc

    rss0 = _maxrss_mb()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result, per_image = analyse(runner, fsrc, esrc)
    seconds = time.perf_counter() - start
    peak = None
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "analysis_peak_alloc_mb": peak / 2**20 if peak is not None else None,
        "seconds": seconds,
        "stages": dict(runner.stage_seconds),
        "alpha": result.fidelity.params.get("alpha"),
        "is": np.asarray(per_image["is"]),
        "as": np.asarray(per_image["as"]),
        "as_contrast": np.asarray(per_image["as_contrast"]),
        "folds": np.asarray(per_image["fold"]),
        "rss_before_mb": rss0,
    }


def plain(folder: Path, folds: np.ndarray, alphas: list[float]) -> dict:
    """The same numbers the plain way: numpy SVD, scikit-learn Ridge per fold, vectorised angles."""
    from sklearn.linear_model import Ridge

    b = np.load(folder / "backbone.npz")
    t = np.load(folder / "target.npz")
    start = time.perf_counter()
    f = b["features"].astype(np.float64)
    z = t["image_embeddings"].astype(np.float64)
    w = b["head_weight"].astype(np.float64)
    text = t["text_embeddings"].astype(np.float64)
    labels = b["labels"]
    _, s, vt = np.linalg.svd(w)
    tol = s.max() * max(w.shape) * np.finfo(np.float32).eps
    r = int((s > tol).sum())
    vn = vt[r:].T
    removed = f - (f @ vn) @ vn.T
    t_f = np.empty((f.shape[0], z.shape[1]))
    t_r = np.empty_like(t_f)
    for k in np.unique(folds):
        test = folds == k
        model = Ridge(alpha=alphas[int(k)]).fit(f[~test], z[~test])
        t_f[test] = model.predict(f[test])
        t_r[test] = model.predict(removed[test])

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def ang(cos):
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    uf, ur, ut = unit(t_f), unit(t_r), unit(text)
    is_ = ang(np.sum(uf * ur, axis=1))
    as_all = ang(uf @ ut.T) - ang(ur @ ut.T)
    rows = np.arange(f.shape[0])
    as_own = as_all[rows, labels]
    others = as_all.copy()
    others[rows, labels] = np.nan
    contrast = as_own - np.nanmedian(others, axis=1)
    return {"seconds": time.perf_counter() - start, "is": is_, "as": as_own, "as_contrast": contrast}


def _chunked_null_energy_patch() -> None:
    """What-if for ``--only growth-chunked``: ``analyse()``'s model-level null energy read in
    row chunks (today it converts all features to float64 at once: the analysis' peak)."""
    from sing_audit import nullspace, runner
    from sing_audit.probes import row_chunks

    def chunked(features, sub):
        return np.concatenate([nullspace.null_energy(features[r], sub) for r in row_chunks(features.shape[0])])

    runner.null_energy = chunked


def child_analysis(n: int, mode: str) -> dict:
    """``compare``: fixed α, ours and the plain way; ``fixed``: ours, fixed α; ``loo``: ours,
    α by LOO; ``chunked``: as ``fixed`` with :func:`_chunked_null_energy_patch`."""
    if mode == "chunked":
        _chunked_null_energy_patch()
    with tempfile.TemporaryDirectory(prefix="sing-bench-") as tmp:
        folder = Path(tmp)
        sizes = synthetic(n, folder)
        rss_start = _maxrss_mb()
        mine = ours(folder, {"plugin": "linear", "alpha": FIXED_ALPHA} if mode in ("compare", "fixed", "chunked") else None,
                    trace=mode != "compare")
        out = {
            "n": n, "m": M, "n_embed": NDIM, "c": C, **sizes, "alpha_mode": "loo" if mode == "loo" else "fixed", "mode": mode,
            "seconds": mine["seconds"], "stages": mine["stages"],
            "analysis_peak_alloc_mb": mine["analysis_peak_alloc_mb"],
            "peak_rss_mb": _maxrss_mb(), "rss_before_analysis_mb": rss_start,
        }
        if mode == "loo":
            out["alphas"] = mine["alpha"]
        if mode == "compare":
            ref = plain(folder, mine["folds"], [FIXED_ALPHA] * (int(mine["folds"].max()) + 1))
            out["plain_seconds"] = ref["seconds"]
            out["max_abs_diff_deg"] = {
                k: float(np.nanmax(np.abs(mine[k] - ref[k]))) for k in ("is", "as", "as_contrast")
            }
            out["alphas"] = mine["alpha"]
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
    """Collects the ``extraction_timing`` that :func:`sing_audit.extraction.extract` logs."""

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


def bench_extraction(n_images: int, size: int = 96, batch: int = 32, model_name: str = "resnet18", workers: tuple = (0,)) -> dict:
    """Audit extraction against a bare ``model(x)`` loop; warm rerun against the cold run.

    Images are 256×256 JPEGs (random pixels), resized/cropped to ``size`` by the model's
    transform. On CPU the "device" is the same CPU that decodes, so "compute idle" is the
    share of extraction wall time the consumer waits for the next batch (decode, transform
    and collate when ``num_workers`` is 0).
    """
    import torch

    from sing_audit.synthetic import SYNSETS

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
        ids = [f"{s}/{s}_{i}.jpg" for s in SYNSETS for i in range(per_class)]
        rng = np.random.default_rng(0)
        np.savez(
            tmp / "t.npz",
            image_embeddings=rng.normal(size=(len(ids), 64)).astype(np.float32),
            text_embeddings=rng.normal(size=(1000, 64)).astype(np.float32),
            image_ids=np.array(ids),
        )

        def config(out: str, num_workers: int) -> Path:
            cfg = {
                "output": str(tmp / out),
                "dataset": {"plugin": "image_folder", "root": str(root)},
                "target": {"plugin": "precomputed", "path": str(tmp / "t.npz")},
                "backbones": [{"name": "m", "plugin": "timm", "model": model_name, "weights": "random", "img_size": size}],
                "report": {"formats": ["json"]},
                "run": {"device": "cpu", "batch_size": batch, "folds": 2, "bootstrap": 100, "num_workers": num_workers},
            }
            path = tmp / f"{out}.yaml"
            path.write_text(json.dumps(cfg))
            return path

        from sing_audit.config import load_config
        from sing_audit.host import create_registry
        from sing_audit.runner import Runner, build_plan, run_audit

        timing_log = _TimingLog()
        plan = build_plan(load_config(config("out0", workers[0])), create_registry())
        runner = Runner(plan)
        runner.load_dataset()
        comp = plan.backbones[0]
        runner.ensure_loaded(comp.instance)
        bb = comp.instance
        transform = bb.transform()
        ds = plan.dataset.instance
        # the same batches, decoded once, for the bare loop
        start = time.perf_counter()
        tensors = [transform(ds.open(r)) for r in runner.records]
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
        for w in workers:
            plan_w = build_plan(load_config(config(f"out{w}", w)), create_registry())
            runner_w = Runner(plan_w)
            runner_w.load_dataset()
            plan_w.backbones[0].instance = bb  # the same loaded model (and threads)
            runner_w._loaded.add(id(bb))
            start = time.perf_counter()
            runner_w.load_backbone(plan_w.backbones[0])
            audits[w] = {"seconds": time.perf_counter() - start, "timing": timing_log.records[-1] if timing_log.records else {}}
            bares.append(bare_loop())  # interleaved, to see the spread of the noisy machine
        bare = float(np.median(bares))

        start = time.perf_counter()
        run_audit(config("cold", workers[0]))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        run_audit(config("cold", workers[0]))
        warm = time.perf_counter() - start
        timing_log.close()
        w0 = audits[workers[0]]
        return {
            "images": len(ids), "image_px": size, "batch": batch, "model": f"timm {model_name} (random init)",
            "torch_threads": torch.get_num_threads(),
            "bare_seconds": bare, "bare_runs": bares, "decode_transform_seconds": decode,
            "audit_extraction_seconds": w0["seconds"], "overhead_ratio": w0["seconds"] / bare,
            "decode_share_of_bare": decode / bare,
            "timing": w0["timing"],
            "compute_idle_share": w0["timing"].get("compute_idle_share"),
            "by_workers": {str(w): {"seconds": a["seconds"], "overhead_ratio": a["seconds"] / bare, **a["timing"]} for w, a in audits.items()},
            "cold_run_seconds": cold, "warm_run_seconds": warm, "warm_over_cold": warm / cold,
        }


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
        rows.append(("extraction ÷ bare model(x) loop", f"{x['overhead_ratio']:.2f}", "≤ 1.10",
                     f"{x['model']}, {x['images']} images {x['image_px']}px, batch {x['batch']}, num_workers 0: {x['audit_extraction_seconds']:.1f}s vs {x['bare_seconds']:.1f}s (median of {len(x['bare_runs'])}); decode+transform {x['decode_transform_seconds']:.1f}s"))
        for w, v in x.get("by_workers", {}).items():
            rows.append((f"  compute idle (CPU waits for data), num_workers {w}", f"{100 * v.get('compute_idle_share', float('nan')):.1f}%", "",
                         f"wait {v.get('wait_seconds', 0):.1f}s, forward {v.get('forward_seconds', 0):.1f}s, store writes {v.get('write_seconds', 0):.2f}s of {v.get('total_seconds', 0):.1f}s; ÷ bare {v['overhead_ratio']:.2f}"))
        rows.append(("warm rerun ÷ cold run", f"{x['warm_over_cold']:.3f}", "≤ 0.05",
                     f"{x['warm_run_seconds']:.2f}s vs {x['cold_run_seconds']:.2f}s"))
    a = res.get("analysis", {})
    if "seconds" in a:
        core = a["stages"].get("translator", 0) + a["stages"].get("probes", 0)
        rows.append((f"analysis N={a['n']:,}, fixed α (all stages)", f"{a['seconds']:.1f}s", "",
                     f"stages {', '.join(f'{k} {v:.1f}s' for k, v in a['stages'].items())}"))
        rows.append(("plain numpy/sklearn ÷ ours (same α)", f"{a['plain_seconds'] / core:.2f}×", "≥ 1×",
                     f"plain {a['plain_seconds']:.1f}s; ours translator+probes {core:.1f}s"))
        rows.append(("max |ours − plain| (IS, AS, contrast)", ", ".join(f"{v:.1e}" for v in a["max_abs_diff_deg"].values()), "≤ 1e-5", "degrees"))
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
    p.add_argument("--only", action="append", default=[], help="extraction, analysis, growth, growth-chunked (what-if, not in the default set), loo, steering, report")
    p.add_argument("--workers", default="0,2", help="num_workers values for the extraction idle measurement")
    args = p.parse_args(argv)
    sc = SCALES[args.scale]
    want = set(args.only) or {"extraction", "analysis", "growth", "loo", "steering", "report"}
    res: dict = {"scale": args.scale, "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if "report" in want:
        res["report"] = bench_report()
    if "steering" in want:
        res["steering"] = bench_steering()
        _progress(res, args.out)
    if "extraction" in want:
        workers = tuple(int(w) for w in args.workers.split(","))
        res["extraction"] = bench_extraction(sc["images"], size=sc["px"], model_name=sc["model"], workers=workers)
        _progress(res, args.out)
    if "analysis" in want:
        res["analysis"] = _child(["compare", str(sc["analysis"])])
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
