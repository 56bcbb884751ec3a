"""Single-image analysis: one image's IS/AS, its most affected classes, and what the
audit's probes say about it (concepts, steering, ...), for debugging a failure case.

The image is either one of the audit's images (by image id or path: it is scored by the
translator of the fold that did not see it) or a new image file (scored by the mean of the
fold translators, which never saw it either). The audit's config drives everything:
models, target, rank rule, probes; the cache makes a second look cheap.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..components import ImageBackbone, ImageRecord, ImageTarget, Translator, open_image
from ..config import load_config
from ..errors import ConfigError, DataError
from ..host import create_registry, suggest
from ..nullspace import null_energy, remove_null
from ..scores import attribute_scores
from .crossfit import translate_by_fold
from .model import Services, headline_scores, prepare_model, probe_context, probe_summaries, run_probes
from .plan import audit_identity, build_plan
from .run_folder import RunFolder
from .sources import Sources

__all__ = ["ExplainResult", "explain_image"]


class ClassShift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    name: str
    attribute_score: float


class ExplainResult(BaseModel):
    """What the audit sees in one image."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    image: str
    source: str = Field(description="'dataset' (one of the audit's images) or 'file' (a new image)")
    model: str
    target: str
    translator: str = Field(description="which translator scored the image")
    class_index: int
    class_name: str
    label_source: str = Field(description="'labels', 'given' (--label) or 'predicted'")
    predicted_index: int
    predicted_name: str
    null_energy: float
    image_score: float
    attribute_score: float
    attribute_contrast: float | None
    top_classes: list[ClassShift] = Field(description="classes whose prompt moves most under null removal (|AS|)")
    probes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    random_weights: bool = False


class _MeanTranslator(Translator):
    """The mean of the fold translators (for an image none of them saw)."""

    def __init__(self, translators: list[Translator]):
        self.parts = translators

    def fit(self, features, targets, groups=None):  # pragma: no cover - never refitted
        raise RuntimeError("the mean translator is built from fitted folds")

    def predict(self, features):
        return np.mean([t.predict(features) for t in self.parts], axis=0)

    def linear_map(self):
        maps = [t.linear_map() for t in self.parts]
        if any(m is None for m in maps):
            return None
        return np.mean([a for a, _ in maps], axis=0), np.mean([c for _, c in maps], axis=0)


def _pick(components, name: str | None, what: str):
    if name is None:
        return components[0]
    for c in components:
        if c.name == name:
            return c
    raise ConfigError(f"no {what} named {name!r}{suggest(name, [c.name for c in components])}")


def _find_record(records, image: str) -> int | None:
    if records is None:
        return None
    path = Path(image).expanduser()
    resolved = path.resolve() if path.exists() else None
    for i, r in enumerate(records):
        if r.image_id == image or (resolved is not None and Path(r.path).resolve() == resolved):
            return i
    return None


def explain_image(
    config,
    image: str,
    *,
    model: str | None = None,
    target: str | None = None,
    label: str | None = None,
    top_k: int = 10,
    overrides: list[str] | None = None,
) -> ExplainResult:
    """Explain one image under the audit described by ``config`` (see the module doc)."""
    cfg = load_config(config, overrides)
    registry = create_registry()
    plan = build_plan(cfg, registry, str(config) if isinstance(config, (str, Path)) else "<config>")
    with RunFolder(cfg.output_dir, audit_identity(cfg)) as folder:
        sources = Sources.create(plan, folder.claim)
        sources.load_dataset()
        services, loader = Services.of(sources), sources.loader
        bcomp = _pick(plan.backbones, model, "backbone")
        tcomp = _pick(plan.targets, target, "target")
        esrc = sources.load_target(tcomp)
        fsrc = sources.load_backbone(bcomp)
        text = services.text_encoder(esrc)
        mi = prepare_model(services, fsrc, esrc, text)

        row = _find_record(sources.records, image)
        if row is None and mi.ids is not None and image in mi.ids:
            pos = mi.ids.index(image)
        elif row is not None:
            hits = np.flatnonzero(mi.frows == row)
            if hits.size == 0:
                raise DataError(f"image {image!r} was skipped by the audit (unreadable), so it has no features")
            pos = int(hits[0])
        else:
            pos = None
        if pos is not None:
            source = "dataset"
            f = np.asarray(mi.feats[pos : pos + 1], dtype=np.float64)  # stored rows are float32/float16
            fold = int(mi.primary.folds[pos])
            translators, folds = mi.primary.translators, np.array([fold])
            how = f"held-out fold {fold} of {len(translators)}"
            t_f = mi.primary.translated[pos : pos + 1]
            emb = np.asarray(mi.emb[pos : pos + 1], dtype=np.float64)
            true_label = int(mi.labels[pos]) if mi.labels_source == "labels" else None
        else:
            path = Path(image).expanduser()
            if not path.is_file():
                raise DataError(f"image {image!r} is neither one of the audit's images nor a file")
            b, t = bcomp.instance, tcomp.instance
            if not isinstance(b, ImageBackbone):
                raise DataError(f"backbone {bcomp.name} reads precomputed features: it cannot embed a new image file")
            record = ImageRecord(image_id=path.name, path=path, label=None)
            img = plan.dataset.instance.open(record) if plan.dataset is not None else open_image(record)
            import torch

            loader.ensure_loaded(b)
            with torch.inference_mode():
                f = b.features(b.transform()(img)[None].to(loader.device)).double().cpu().numpy()
                if isinstance(t, ImageTarget):
                    loader.ensure_loaded(t)
                    emb = t.encode_images(t.transform()(img)[None].to(loader.device)).double().cpu().numpy()
                else:
                    emb = np.full((1, mi.emb.shape[1]), np.nan)
            source = "file"
            translators, folds = [_MeanTranslator(mi.primary.translators)], np.array([0])
            how = f"mean of the {len(mi.primary.translators)} fold translators"
            t_f = translators[0].predict(f)
            true_label = None

        head, sub = mi.head, mi.sub
        logits = f @ head.weight.T + head.bias
        predicted = int(np.argmax(logits[0]))
        if label is not None:
            names = fsrc.class_names
            if label not in names:
                raise ConfigError(f"--label: unknown class {label!r}{suggest(label, list(names))}")
            cls, label_source = names.index(label), "given"
        elif true_label is not None:
            cls, label_source = true_label, "labels"
        else:
            cls, label_source = predicted, "predicted"
        labels = np.array([cls])

        translate = partial(translate_by_fold, translators, folds, t_f.shape[1])
        ctx = probe_context(
            fsrc, esrc, mi, text, registry, np.random.default_rng(cfg.run.seed), features=f, labels=labels,
            embeddings=emb, translated=t_f, folds=folds, translate=translate, translators=translators, image_ids=[image],
        )
        outputs = run_probes(plan.probes, ctx)
        summaries = probe_summaries(outputs)
        scores = headline_scores(plan.probes, outputs).scores
        t_r = t_f if sub.null_dim == 0 else translate(remove_null(f, sub), slice(0, 1))
        shifts = attribute_scores(t_f, t_r, mi.text)[0]
        order = np.argsort(-np.abs(shifts), kind="stable")[:top_k]
        contrast = float(scores.attribute_contrast[0])
        return ExplainResult(
            image=image,
            source=source,
            model=fsrc.name,
            target=esrc.name,
            translator=how,
            class_index=cls,
            class_name=fsrc.class_names[cls],
            label_source=label_source,
            predicted_index=predicted,
            predicted_name=fsrc.class_names[predicted],
            null_energy=float(null_energy(f, sub)[0]),
            image_score=float(scores.image_score[0]) if scores is not None else float("nan"),
            attribute_score=float(scores.attribute_score[0]) if scores is not None else float("nan"),
            attribute_contrast=None if contrast is None or not np.isfinite(contrast) else contrast,
            top_classes=[ClassShift(index=int(k), name=fsrc.class_names[int(k)], attribute_score=float(shifts[k])) for k in order],
            probes=summaries,
            random_weights=fsrc.random_weights or esrc.random_weights,
        )

