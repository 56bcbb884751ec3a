"""The ``concepts`` probe: angles and Attribute Scores toward open-vocabulary concepts.

For every class and every concept ``t`` of the chosen concept sets: the mean angle
``angle(T(f), t)`` over the class's images, and the mean ``AS = angle(T(f), t) −
angle(T(f̃), t)`` after null removal. Per model: mean AS and mean |AS| pooled over images.

Concept embeddings come from the target's text encoder (a template ensemble, see
:func:`sing_audit.concepts.ensemble_embeddings`), or, for a precomputed target, from the
``concept_names`` + ``concept_embeddings`` its file carries (set name ``precomputed``).
A precomputed target has no text encoder: a set whose concepts its file does not carry
fails with a :class:`~sing_audit.errors.DataError`.

Options::

    probes:
      - null_removal
      - plugin: concepts
        sets: [attributes, imagenet1k, {plugin: file, path: my_concepts.txt}]
        templates: ["a photo of a {}", "an image of a {}"]   # default: the target's own
        top_k: 10
        max_concepts: 5000

Summary (``results.json`` → ``models[i].probes.concepts``)::

    {"sets": [{"name", "version", "digest", "size"}, ...],
     "per_class": {class_name: [{"concept", "as", "angle"}, ...]},   # top_k by |as|
     "model_top": [{"concept", "as", "abs_as"}, ...],                # top_k by abs_as
     "templates": [...] | None, "embeddings": "text_encoder" | "precomputed" | "file" | "…+file",
     "n_concepts": K,
     "authors_per_class": {class_name: [{"concept", "dcos"}, ...]},     # the SING authors' ranking
     "authors_model_top": [{"concept", "dcos", "abs_dcos"}, ...]}

Beside ours, the SING authors' dictionary ranking: ``dcos = cos(T(f), t) − cos(T(f̃), t)``
(their code's ``delta``: original minus equivalent, unitless), ranked by magnitude. It has
the opposite sign to AS (a concept the equivalent feature moves toward has AS > 0 and
dcos < 0) and, being a difference of cosines, weighs concepts near 90° more than ones
near 0° or 180°, so the two rankings can differ.

A set that brings its own embeddings (``{plugin: embedding_file, path: X.npz}``, e.g. the
SING authors' attribute file) is used as it is with any target: its vectors are checked
against the target's dimension, and its descriptor in ``sets`` records the file and sha256.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from sing_audit.components import EmbeddingTarget, ImageTarget, PluginOptions, Target
from sing_audit.concepts import (
    ConceptAccumulator,
    ConceptSet,
    check_concepts,
    check_templates,
    chunk_rows_for,
    concept_digest,
    ensemble_embeddings,
    normalize_concept,
    rank_by_magnitude,
)
from sing_audit.config import ComponentSpec
from sing_audit.errors import ConfigError, DataError
from sing_audit.hookspecs import hookimpl
from sing_audit.nullspace import remove_null
from sing_audit.builtins.concepts_summary import AuthorsConceptScore, ConceptScore, ConceptsSummary
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, row_chunks
from sing_audit.scores import unit_rows

__all__ = ["PRECOMPUTED_SET", "ConceptsProbe", "ConceptsSummary"]

#: the set name meaning "the concepts a precomputed target's file carries"
PRECOMPUTED_SET = "precomputed"


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


class _PrecomputedSet:
    """Placeholder for the target file's own concepts (known only at run time)."""

    name = PRECOMPUTED_SET


class ConceptsProbe(Probe):
    """Angles and AS after null removal toward open-vocabulary concepts, per class and model."""

    Summary = ConceptsSummary

    class Options(PluginOptions):
        sets: list[str | ComponentSpec] = Field(
            default_factory=lambda: ["attributes"],
            min_length=1,
            description="concept sets: registered names (attributes, imagenet1k), {plugin: file, path: ...}, "
            "or 'precomputed' for the concepts a precomputed target's file carries",
        )
        templates: list[str] | None = Field(
            None, description="prompt templates ('a photo of a {}'); default: the target's own"
        )
        top_k: int = Field(10, ge=1, description="concepts listed per class and per model")
        max_concepts: int = Field(5000, ge=1, description="refuse more concepts than this (cost guard)")
        per_image: bool = Field(True, description="add each image's top concept (largest |AS|) to the image CSV")
        base_dir: Path | None = None

        @field_validator("templates")
        @classmethod
        def _templates(cls, v: list[str] | None) -> list[str] | None:
            return None if v is None else check_templates(v)

    def __init__(self, options: ConceptsProbe.Options | None = None, context=None):
        """``context``: the run's :class:`~sing_audit.host.BuildContext`; concept sets are
        looked up in its registry, so a set a third-party plugin registers is found. Without
        one (a probe built by hand), a fresh registry of the installed plugins is used."""
        self.options = options or self.Options()
        self._context = context
        self.sets: list[ConceptSet | _PrecomputedSet] = []
        seen: set[str] = set()
        for j, spec in enumerate(self.options.sets):
            spec = ComponentSpec(plugin=spec) if isinstance(spec, str) else spec
            where = f"sets[{j}]"
            if spec.plugin == PRECOMPUTED_SET:
                if spec.options():
                    raise ValueError(f"{where}: the '{PRECOMPUTED_SET}' set takes no options")
                entry: ConceptSet | _PrecomputedSet = _PrecomputedSet()
            else:
                entry = self._build_set(spec, where)
            key = entry.name if isinstance(entry, _PrecomputedSet) else f"{entry.name}@{entry.version}@{entry.digest()}"
            if key in seen:
                raise ValueError(f"{where}: concept set {entry.name!r} is listed twice")
            seen.add(key)
            self.sets.append(entry)
        # fail early (before any model runs) on unreadable files and oversized vocabularies
        total = len({c.casefold() for s in self.sets if isinstance(s, ConceptSet) for c in s.concepts()})
        if total > self.options.max_concepts:
            raise ValueError(
                f"the concept sets hold {total} concepts, more than max_concepts = {self.options.max_concepts}; "
                "raise max_concepts or choose fewer sets"
            )
        self._text_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ sets

    def _build_context(self, where: str):
        from sing_audit.host import BuildContext

        if self._context is None:  # built directly in Python, not by a run
            self._context = BuildContext.standalone(self.options.base_dir, "concepts probe")
        base = self._context
        prefix = f"{base.where}." if base.where else ""
        return BuildContext(base.registry, self.options.base_dir or base.base_dir, base.source, f"{prefix}{where}")

    def _build_set(self, spec: ComponentSpec, where: str) -> ConceptSet:
        from sing_audit.host import create_component

        obj = create_component(self._build_context(where), "concept_set", spec).instance
        if not callable(getattr(obj, "concepts", None)):
            raise ConfigError(f"{self._build_context(where).where}: plugin {spec.plugin!r} does not build a concept set")
        if not isinstance(obj, ConceptSet):  # a third-party set with only concepts(): give it the rest
            obj = _Adapted(obj, spec.plugin)
        obj.concepts()  # read files now: a missing or malformed file fails before any model runs
        return obj

    # ------------------------------------------------------------------ embeddings

    def _precomputed(self, ctx: ProbeContext) -> tuple[list[dict], list[str], np.ndarray]:
        target = ctx.target
        table = target.load_embeddings()  # type: ignore[attr-defined]
        file_names = list(table.concept_names) if table.concept_names is not None else None
        file_emb = np.asarray(table.concept_embeddings, dtype=np.float64) if table.concept_embeddings is not None else None
        where = getattr(target, "path", ctx.target_name)
        lookup = {normalize_concept(n).casefold(): i for i, n in enumerate(file_names or [])}
        descriptors, names, rows = [], [], []
        for s in self.sets:
            if isinstance(s, _PrecomputedSet):
                if file_names is None:
                    raise DataError(
                        f"concepts probe: target {ctx.target_name!r} ({where}) carries no concept_names + "
                        "concept_embeddings, so the 'precomputed' concept set is empty; add them to the file"
                    )
                concepts = check_concepts([(n, i) for i, n in enumerate(file_names)], f"{where}: concept_names", unit="entry")
                desc = {
                    "name": PRECOMPUTED_SET,
                    "version": str((target.describe() or {}).get("digest") or "unversioned"),
                    "digest": concept_digest(concepts),
                    "size": len(concepts),
                }
            elif _own_embeddings(s) is not None:
                descriptors.append(s.describe())
                for c, row in zip(s.concepts(), _own_embeddings(s)):
                    names.append(c)
                    rows.append(row)
                continue
            else:
                concepts = s.concepts()
                missing = [c for c in concepts if normalize_concept(c).casefold() not in lookup]
                if missing:
                    carried = f"its file carries {len(file_names)} concept(s)" if file_names else "its file carries no concepts"
                    raise DataError(
                        f"concepts probe: concept set {s.name!r} needs text embeddings for {len(missing)} concept(s) "
                        f"(e.g. {', '.join(repr(c) for c in missing[:3])}), but target {ctx.target_name!r} is a "
                        f"precomputed target: it has no text encoder, so it cannot embed new text ({carried}). "
                        f"Use sets: [{PRECOMPUTED_SET}] for the concepts in {where}, add concept_names + "
                        "concept_embeddings for these concepts to it, or use a target with a text encoder (open_clip)"
                    )
                desc = s.describe()
            descriptors.append(desc)
            for c in concepts:
                names.append(c)
                rows.append(file_emb[lookup[normalize_concept(c).casefold()]])  # type: ignore[index]
        emb = np.stack(rows) if rows else np.zeros((0, ctx.translated.shape[1]))
        return descriptors, names, emb

    def _encoded(self, ctx: ProbeContext, names: list[str], templates: list[str]) -> np.ndarray:
        target = ctx.target
        key = (id(target), tuple(templates), concept_digest(names))
        if key in self._text_cache:
            return self._text_cache[key]
        encode = ctx.encode_text or (lambda prompts: _encode_text(target, prompts))
        try:
            emb = ensemble_embeddings(encode, names, templates)
        except DataError as exc:
            raise DataError(f"concepts probe: target {ctx.target_name!r} cannot embed the concepts: {exc}") from exc
        self._text_cache[key] = emb
        return emb

    def _check_own(self, ctx: ProbeContext) -> None:
        """A set bringing its own embeddings must match the target's dimension (checked per
        set, so the error names the file)."""
        n_dim = ctx.translated.shape[1]
        for s in self.sets:
            own = _own_embeddings(s)
            if own is None:
                continue
            if own.ndim != 2 or own.shape != (len(s.concepts()), n_dim):
                where = getattr(s, "path", s.name)
                raise DataError(
                    f"concepts probe: concept set {s.name!r} ({where}) has embeddings of shape {own.shape}, but target "
                    f"{ctx.target_name!r} embeds in {n_dim} dimensions: the file must hold vectors of the target's "
                    "own space (e.g. the SING authors' files are CLIP ViT-L/14, 768-d: the karlo target)"
                )

    def _text_encoder(self, ctx: ProbeContext) -> tuple[list[dict], list[str], list[str]]:
        if any(isinstance(s, _PrecomputedSet) for s in self.sets):
            raise DataError(
                f"concepts probe: the '{PRECOMPUTED_SET}' concept set means the concepts a precomputed target's file "
                f"carries, but target {ctx.target_name!r} is not a precomputed target; name the sets to embed instead"
            )
        templates = list(self.options.templates or ctx.target.templates)
        check_templates(templates)
        descriptors = [s.describe() for s in self.sets]  # type: ignore[union-attr]
        names = [c for s in self.sets for c in s.concepts()]  # type: ignore[union-attr]
        return descriptors, names, templates

    # ------------------------------------------------------------------ run

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        precomputed = isinstance(ctx.target, EmbeddingTarget)
        self._check_own(ctx)
        own_sets = [s for s in self.sets if _own_embeddings(s) is not None]
        if precomputed:
            descriptors, names, emb = self._precomputed(ctx)
            templates = None
        else:
            descriptors, names, templates = self._text_encoder(ctx)
            # rows the sets bring themselves, in the order of names (None: to be encoded)
            given = [row for s in self.sets for row in (
                _own_embeddings(s) if _own_embeddings(s) is not None else [None] * len(s.concepts()))]
        # one column per distinct concept (sets may share concepts: the first keeps it)
        keep: dict[str, int] = {}
        for i, c in enumerate(names):
            keep.setdefault(c.casefold(), i)
        index = np.fromiter(keep.values(), dtype=np.int64, count=len(keep))
        names = [names[i] for i in index]
        if len(names) > self.options.max_concepts:
            raise DataError(
                f"concepts probe: {len(names)} concepts, more than max_concepts = {self.options.max_concepts}; "
                "raise max_concepts or choose fewer sets"
            )
        if precomputed:
            emb = emb[index]
        else:
            given = [given[i] for i in index]
            todo = [j for j, g in enumerate(given) if g is None]
            emb = np.zeros((len(names), ctx.translated.shape[1]))
            if todo:
                emb[todo] = self._encoded(ctx, [names[j] for j in todo], templates)  # type: ignore[arg-type]
            for j, g in enumerate(given):
                if g is not None:
                    emb[j] = g
            if not todo:
                templates = None  # no prompt was encoded: no template was used
        emb = np.asarray(emb, dtype=np.float64)
        n_dim = ctx.translated.shape[1]
        if emb.ndim != 2 or emb.shape != (len(names), n_dim):
            raise DataError(
                f"concepts probe: concept embeddings have shape {emb.shape}, expected {len(names)}×{n_dim} "
                f"(the dimension of target {ctx.target_name!r})"
            )
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=1) | (np.linalg.norm(emb, axis=1) == 0))
        if bad.size:
            raise DataError(
                f"concepts probe: {bad.size} concept embedding(s) are zero or not finite, e.g. {names[int(bad[0])]!r}"
            )

        c = ctx.head.num_classes
        acc = ConceptAccumulator(unit_rows(emb), c)
        n = ctx.features.shape[0]
        top_idx = np.zeros(n, dtype=np.int64)
        top_as = np.zeros(n)
        for rows in row_chunks(n, chunk_rows_for(len(names))):
            f = np.asarray(ctx.features[rows], dtype=np.float64)
            t_f = np.asarray(ctx.translated[rows], dtype=np.float64)
            t_r = t_f if ctx.subspaces.null_dim == 0 else ctx.translate(remove_null(f, ctx.subspaces), rows)
            as_ = acc.add(t_f, t_r, ctx.labels[rows])
            if self.options.per_image and as_.shape[1]:
                best = np.argmax(np.abs(as_), axis=1)
                top_idx[rows] = best
                top_as[rows] = as_[np.arange(as_.shape[0]), best]
        scores = acc.result()

        k = self.options.top_k
        class_names = list(ctx.class_names)
        dupes = {nm for nm in class_names if class_names.count(nm) > 1}
        per_class: dict[str, list[ConceptScore]] = {}
        authors_per_class: dict[str, list[AuthorsConceptScore]] = {}
        for ci in np.flatnonzero(scores.counts > 0):
            name = class_names[ci] if ci < len(class_names) else f"class {ci}"
            key = f"{name} [{ci}]" if name in dupes else name
            per_class[key] = [
                ConceptScore(concept=names[j], as_=_finite(scores.as_mean[ci, j]), angle=_finite(scores.angle_mean[ci, j]))
                for j in rank_by_magnitude(scores.as_mean[ci], k)
            ]
            authors_per_class[key] = [
                AuthorsConceptScore(concept=names[j], dcos=_finite(scores.dcos_mean[ci, j]))
                for j in rank_by_magnitude(scores.dcos_mean[ci], k)
            ]
        model_top = [
            ConceptScore(concept=names[j], as_=_finite(scores.model_as_mean[j]), abs_as=_finite(scores.model_abs_as_mean[j]))
            for j in rank_by_magnitude(scores.model_abs_as_mean, k)
        ]
        authors_model_top = [
            AuthorsConceptScore(concept=names[j], dcos=_finite(scores.model_dcos_mean[j]),
                                abs_dcos=_finite(scores.model_abs_dcos_mean[j]))
            for j in rank_by_magnitude(scores.model_abs_dcos_mean, k)
        ]
        summary = ConceptsSummary(
            sets=descriptors,
            per_class=per_class,
            model_top=model_top,
            templates=templates,
            embeddings=_embeddings_source(precomputed, len(own_sets), len(self.sets)),
            n_concepts=len(names),
            authors_per_class=authors_per_class,
            authors_model_top=authors_model_top,
        )
        per_image: dict[str, np.ndarray] = {}
        if self.options.per_image and names:
            top_names = np.array([names[j] for j in top_idx], dtype=object)
            top_names[top_as == 0] = ""
            per_image = {"top_concept": top_names, "top_concept_as": top_as}
        return ProbeOutput(per_image=per_image, summary=summary)


def _own_embeddings(s) -> np.ndarray | None:
    """The K×n embeddings a concept set brings itself (:meth:`ConceptSet.embeddings`), or None."""
    get = getattr(s, "embeddings", None)
    if isinstance(s, _PrecomputedSet) or not callable(get):
        return None
    own = get()
    return None if own is None else np.asarray(own, dtype=np.float64)


def _embeddings_source(precomputed: bool, own: int, total: int) -> str:
    """``text_encoder``, ``precomputed``, ``file`` (every set brought its own embeddings) or
    a mix such as ``text_encoder+file``."""
    base = "precomputed" if precomputed else "text_encoder"
    if own == 0:
        return base
    return "file" if own == total else f"{base}+file"


def _encode_text(target: Target, prompts) -> np.ndarray:
    """``target.encode_text``, loading an image target first if the run served its
    embeddings from the cache and never built the model."""
    try:
        return target.encode_text(prompts)
    except RuntimeError as exc:
        if not isinstance(target, ImageTarget) or "load" not in str(exc):
            raise
    target.load(str(getattr(target, "device", None) or "cpu"))
    return target.encode_text(prompts)


class _Adapted(ConceptSet):
    """A third-party concept set that only has ``concepts()``: name, version and digest added."""

    def __init__(self, inner, plugin: str):
        self.inner = inner
        self.name = str(getattr(inner, "name", None) or plugin)
        self.version = str(getattr(inner, "version", None) or "unversioned")

    def concepts(self) -> list[str]:
        return list(self.inner.concepts())


@hookimpl
def register_probes(register):
    register("concepts", ConceptsProbe)


@hookimpl
def register_report_sections(register):
    from sing_audit.builtins.concepts_section import ConceptsSection  # the section imports this module's summary

    register(ConceptsSection.key, ConceptsSection)
