"""A hand-built :class:`~sing_audit.results.AuditResult` to render and re-render: for
tests of report sections, reporters and the templates, with no audit run."""

from __future__ import annotations

from sing_audit.results import AuditResult, ClassResult, Fidelity, Interval, ModelResult, Provenance

__all__ = ["sample_result"]


def sample_result(**kw) -> AuditResult:
    """A two-class, one-model result that fails its policy (one flagged outlier class,
    one waived). Keyword arguments: ``name0`` (the first class's name), ``model_name``,
    ``audit_name``, ``random_weights``, ``cosine`` (fidelity), ``probes``, ``files``,
    ``top_images``, ``extra_models``; anything else goes to :class:`AuditResult`."""
    classes = [
        ClassResult(index=0, name=kw.pop("name0", "cat"), n=20, as_mean=5.1, as_abs_mean=5.5, as_contrast=4.9, is_mean=7.0,
                    as_mean_ci=Interval(low=4.5, high=5.7), as_abs_ci=Interval(low=5.0, high=6.0), is_ci=Interval(low=6.5, high=7.5),
                    flagged=True, flag_reasons=["mean |AS| 5.5° above 4°"], outlier=True),
        ClassResult(index=1, name="dog", n=20, as_mean=0.1, as_abs_mean=0.3, as_contrast=0.05, is_mean=3.0,
                    waived=True, waiver_reason="known issue, ticket 42", waiver_expires="2031-01-01"),
    ]
    model = ModelResult(
        name=kw.pop("model_name", "m1"), backbone="m1", target="clip", random_weights=kw.pop("random_weights", False),
        rank_rule="rank", rank=2, null_dim=6, num_features=8, num_classes=2, null_energy=0.3, n_images=40,
        is_mean=5.0, as_abs_mean=2.9, is_as_ratio=1.7, is_as_ratio_ci=Interval(low=1.5, high=1.9),
        summary="m1 leaks for cat.", policy_failures=["1 flagged class(es) (cat), more than the 0 allowed"],
        fidelity=Fidelity(cosine=kw.pop("cosine", 0.9), r2=0.8, mse=0.01, folds=5, translator="linear", null_energy=0.4),
        n_flagged=1, n_outliers=1, n_waived=1, flagged_classes=["cat"], passed=False, classes=classes,
        probes=kw.pop("probes", {}), files=kw.pop("files", {}), top_images=kw.pop("top_images", []),
    )
    models = [model] + kw.pop("extra_models", [])
    return AuditResult(
        name=kw.pop("audit_name", "hand-built"), passed=False, random_weights=any(m.random_weights for m in models),
        verdict="FAILED: m1", policy={"as_threshold": 4.0, "min_images": 10, "max_flagged": 0, "warn_fidelity": 0.5},
        models=models, provenance=Provenance(config={"name": "hand-built"}, versions={"sing-audit": "0.1.0"}), **kw,
    )
