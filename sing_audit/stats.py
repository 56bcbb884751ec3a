"""Per-class statistics: means with bootstrap confidence intervals, flags and outliers.

Pure functions; randomness only through a ``numpy.random.Generator`` argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_OUTLIER_VALUES", "MeanCI", "bootstrap_mean_ci", "bootstrap_ratio_ci", "group_mean_ci", "robust_outliers"]

#: the fewest values among which :func:`robust_outliers` marks anything. The median
#: absolute deviation of n values has a relative standard error of about 1.17/sqrt(n)
#: (normal data): 58% at 4 values, 37% at 10. Below 10 values the scale that the z-score
#: divides by is too uncertain for "3.5 robust standard deviations" to mean anything, so
#: nothing is marked.
MIN_OUTLIER_VALUES = 10


@dataclass(frozen=True)
class MeanCI:
    """A mean with a percentile-bootstrap confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


def bootstrap_mean_ci(
    values: np.ndarray, generator: np.random.Generator, n_boot: int = 1000, level: float = 0.95
) -> MeanCI:
    """Mean of ``values`` with a percentile bootstrap interval at ``level``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return MeanCI(mean, float("nan"), float("nan"), n)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound memory: at most ~2M resampled values at once
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = generator.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return MeanCI(mean, float(low), float(high), n)


def bootstrap_ratio_ci(
    numerator: np.ndarray,
    denominator: np.ndarray,
    generator: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``mean(numerator) / mean(denominator)``, resampling the
    pairs jointly (one row per image). NaN bounds with fewer than 2 rows."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    n = int(num.size)
    if n < 2:
        return float("nan"), float("nan")
    ratios = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = generator.integers(0, n, size=(stop - start, n))
        d = den[idx].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start:stop] = np.where(d > 0, num[idx].mean(axis=1) / d, np.nan)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


def group_mean_ci(
    values: np.ndarray,
    groups: np.ndarray,
    num_groups: int,
    generator: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> list[MeanCI]:
    """:func:`bootstrap_mean_ci` of ``values`` within each group ``0 … num_groups−1``."""
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups, dtype=np.int64)
    return [bootstrap_mean_ci(v[g == k], generator, n_boot, level) for k in range(num_groups)]


def robust_outliers(values: np.ndarray, threshold: float = 3.5, min_values: int = MIN_OUTLIER_VALUES) -> np.ndarray:
    """High outliers by the robust z-score ``0.6745 (x − median) / MAD`` > ``threshold``.

    NaN values are never outliers; with fewer than ``min_values`` finite values nothing
    is (see :data:`MIN_OUTLIER_VALUES`); with MAD = 0 nothing is an outlier unless it
    exceeds the median while most values equal it.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    out = np.zeros(v.shape, dtype=bool)
    if finite.sum() < max(3, min_values):
        return out
    med = np.median(v[finite])
    mad = np.median(np.abs(v[finite] - med))
    if mad == 0:
        out[finite] = v[finite] > med
        return out if out.sum() <= finite.sum() // 10 else np.zeros(v.shape, dtype=bool)
    z = 0.6745 * (v - med) / mad
    out[finite] = z[finite] > threshold
    return out
