"""The typed result of an audit (``results.json``).

Arrays never go into the JSON: per-image numbers are in CSV files the result names.
Undefined numbers (an IS/AS ratio with no null space, an interval of one image) are
``null``, never 0 or NaN.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SCHEMA_VERSION",
    "Interval",
    "ClassResult",
    "Fidelity",
    "TranslatorComparison",
    "SanityFigures",
    "NullRemovalDrift",
    "ImageEvidence",
    "ModelResult",
    "TargetAgreement",
    "ModelComparison",
    "Provenance",
    "AuditResult",
]

SCHEMA_VERSION = "1.3"


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_nan(cls, v: Any) -> Any:
        return _finite_or_none(v)


class Interval(_Result):
    """A 95% percentile-bootstrap interval (``null`` bounds with fewer than 2 images)."""

    low: float | None = None
    high: float | None = None


class ClassResult(_Result):
    index: int = Field(description="head index")
    name: str
    n: int = Field(description="images of this class in the audit")
    as_mean: float | None = None
    as_abs_mean: float | None = None
    as_contrast: float | None = None
    is_mean: float | None = None
    as_mean_ci: Interval = Field(default_factory=Interval)
    as_abs_ci: Interval = Field(default_factory=Interval)
    as_contrast_ci: Interval = Field(default_factory=Interval)
    is_ci: Interval = Field(default_factory=Interval)
    flagged: bool = False
    flag_reasons: list[str] = Field(default_factory=list)
    outlier: bool = False
    waived: bool = False
    waiver_reason: str | None = None
    waiver_expires: str | None = None


class Fidelity(_Result):
    """Held-out quality of the cross-fitted translator."""

    cosine: float | None = Field(None, description="mean cosine between T(f) and z on held-out images")
    r2: float | None = Field(None, description="held-out R² (variance-weighted over embedding dimensions)")
    mse: float | None = None
    folds: int = 0
    translator: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    null_energy: float | None = Field(None, description="‖A Π_n‖_F / ‖A‖_F, mean over folds (linear translators)")
    normalized_targets: bool = False
    logit_correlation: float | None = Field(
        None,
        description="Pearson r, pooled over held-out images × head classes, between the target's zero-shot logits "
        "(cosine to each class prompt) of the image embedding z and of its translation T(f) (schema 1.3)",
    )


class TranslatorComparison(_Result):
    """Another translator family on the same folds: its fidelity and the scores it would give."""

    translator: str
    linear: bool
    cosine: float | None = None
    r2: float | None = None
    mse: float | None = None
    null_energy: float | None = None
    is_mean: float | None = None
    as_abs_mean: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class SanityFigures(_Result):
    classifier_top1: float | None = None
    target_zero_shot: float | None = None
    translator_zero_shot: float | None = None


class NullRemovalDrift(_Result):
    """Logit change caused by null removal (≈ 0 under the exact rank rule)."""

    relative_max: float | None = None
    relative_mean: float | None = None
    prediction_agreement: float | None = None


class ImageEvidence(_Result):
    """One of a model's most leaking images (largest |AS|)."""

    image_id: str
    label: int
    class_name: str
    as_score: float | None = None
    is_score: float | None = None
    as_contrast: float | None = None
    thumbnail: str | None = Field(None, description="relative path of a small JPEG, when the images were available")


class ModelResult(_Result):
    name: str
    backbone: str
    target: str
    random_weights: bool
    random_weights_parts: list[str] = Field(default_factory=list)
    rank_rule: str = Field(description="the rank rule: rank, energy, fixed or fraction")
    rank_cut: str | None = Field(
        None,
        description="the singular-value cut the config set for the rank rule, e.g. 'atol 1e-05' (the SING authors' "
        "absolute cut) or 'rtol 1e-06'; None: the default relative cut, or another rule",
    )
    null_exact: bool | None = Field(
        None,
        description="whether W·Π_n = 0 up to the weights' precision (the rank rule dropped no singular value above "
        "the noise floor); false: an approximate null space, read logit_drift; None in results that predate it",
    )
    rank: int
    class_prompts: dict[str, Any] = Field(
        default_factory=dict,
        description="where the class prompt text embeddings came from: {source: templates, templates}, "
        "{source: file, file, sha256, column, matched_by, rows, unused} or {source: precomputed}",
    )
    null_dim: int
    num_features: int
    num_classes: int
    null_energy: float | None
    n_images: int
    labels_source: str = Field("labels", description="'labels' or 'predicted' (no labels given)")
    is_mean: float | None = None
    is_ci: Interval = Field(default_factory=Interval)
    as_mean: float | None = None
    as_abs_mean: float | None = None
    as_abs_ci: Interval = Field(default_factory=Interval)
    as_contrast_mean: float | None = None
    is_as_ratio: float | None = None
    is_as_ratio_ci: Interval = Field(default_factory=Interval)
    summary: str = Field("", description="one sentence a manager can read")
    policy_failures: list[str] = Field(default_factory=list, description="why this model fails the policy")
    top_images: list[ImageEvidence] = Field(default_factory=list)
    logit_drift: NullRemovalDrift = Field(default_factory=NullRemovalDrift)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    translator_comparison: list[TranslatorComparison] = Field(default_factory=list)
    sanity: SanityFigures = Field(default_factory=SanityFigures)
    n_flagged: int = 0
    n_waived: int = 0
    n_outliers: int = 0
    n_judged: int = Field(0, description="classes with at least policy.min_images images: those the policy judges")
    outliers_computed: bool = Field(
        False, description="whether outliers were looked for (they need at least 10 judged classes)"
    )
    flagged_classes: list[str] = Field(default_factory=list)
    assessed: bool = Field(
        True,
        description="false when nothing could be judged: no class with min_images images, null dimension 0 "
        "under the rule, or translator fidelity below its floor; a model not assessed never passes",
    )
    not_assessed_reasons: list[str] = Field(default_factory=list, description="why the model was not assessed")
    passed: bool = Field(True, description="assessed, and no policy failure")
    classes: list[ClassResult] = Field(default_factory=list)
    probes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="relative paths of per-model files")
    weights_digest: str | None = None

    @property
    def outcome(self) -> str:
        """``"passed"``, ``"failed"`` or ``"not assessed"``."""
        return "not assessed" if not self.assessed else "passed" if self.passed else "failed"

    @property
    def rank_rule_label(self) -> str:
        """The rule with its cut, as reports show it: ``rank``, ``rank (atol 1e-05)``, ``energy``."""
        return f"{self.rank_rule} ({self.rank_cut})" if self.rank_cut else self.rank_rule

    @property
    def exact_null(self) -> bool:
        """``null_exact``, or for results without it whether the rule was the default ``rank``."""
        return self.null_exact if self.null_exact is not None else self.rank_rule == "rank"


class TargetAgreement(_Result):
    """Whether two targets order the models the same way (by mean |AS|)."""

    targets: list[str]
    models: list[str]
    kendall_tau: float | None = None
    same_order: bool


class ModelComparison(_Result):
    """Do two models' per-image |AS| distributions differ (same target)?"""

    target: str
    model_a: str
    model_b: str
    as_abs_mean_diff: float | None = Field(None, description="mean |AS| of b minus a (degrees)")
    diff_ci: Interval = Field(default_factory=Interval)
    mannwhitney_u: float | None = None
    p_value: float | None = Field(None, description="two-sided Mann–Whitney U test")
    differ: bool = Field(False, description="p < 0.05 and the interval of the difference excludes 0")


class Provenance(_Result):
    config: dict[str, Any] = Field(default_factory=dict)
    config_digest: str = ""
    config_dir: str = Field(
        "", description="absolute folder the config's relative paths were resolved against (its file's folder)"
    )
    versions: dict[str, str] = Field(default_factory=dict)
    components: dict[str, dict[str, Any]] = Field(default_factory=dict)
    dataset: dict[str, Any] | None = None
    seed: int = 0
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    skipped_images: list[str] = Field(default_factory=list)
    started: str = ""
    finished: str = ""


class AuditResult(_Result):
    schema_version: str = SCHEMA_VERSION
    name: str = "audit"
    passed: bool = Field(description="no model failed, and every model was assessed (unless allow_not_assessed)")
    assessed: bool = Field(True, description="every model was assessed")
    random_weights: bool = False
    verdict: str = ""
    policy: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelResult]
    target_agreement: list[TargetAgreement] = Field(default_factory=list)
    model_comparisons: list[ModelComparison] = Field(default_factory=list)
    probe_aggregates: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="audit-level results of probes that aggregate over models"
    )
    provenance: Provenance = Field(default_factory=Provenance)
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """``"passed"``, ``"failed"`` (some assessed model failed) or ``"not assessed"``
        (no model failed, but some could not be assessed and the policy does not allow it)."""
        if self.passed:
            return "passed"
        return "failed" if any(m.assessed and not m.passed for m in self.models) else "not assessed"

    def model(self, name: str, target: str | None = None) -> ModelResult:
        for m in self.models:
            if m.name == name and (target is None or m.target == target):
                return m
        raise KeyError(name)
