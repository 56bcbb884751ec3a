"""The ``linear`` translator: ridge regression ``T(f) = A f + c`` in closed form."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from sing_audit.components import PluginOptions, Translator
from sing_audit.hookspecs import hookimpl
from sing_audit.ridge import fit_ridge, fit_ridge_folds
from sing_audit.scores import unit_rows


class LinearTranslator(Translator):
    """Ridge with scikit-learn's objective; α fixed or chosen by leave-one-out error."""

    class Options(PluginOptions):
        alpha: float | Literal["cv"] = Field(
            default="cv", description="ridge α (scikit-learn's scale), or 'cv' to choose it by leave-one-out error"
        )
        alphas: list[float] | None = Field(
            default=None, description="candidate α for 'cv' (default: a grid scaled to the features)"
        )
        normalize_targets: bool = Field(default=False, description="fit unit-normalised target embeddings")

    def __init__(self, options: "LinearTranslator.Options | None" = None):
        self.options = options or self.Options()
        if isinstance(self.options.alpha, float) and self.options.alpha < 0:
            raise ValueError("alpha must be >= 0")

    @property
    def normalized_targets(self) -> bool:
        return self.options.normalize_targets

    def fit(self, features, targets, groups=None) -> "LinearTranslator":
        z = unit_rows(targets) if self.options.normalize_targets else np.asarray(targets, dtype=np.float64)
        alpha = None if self.options.alpha == "cv" else float(self.options.alpha)
        alphas = np.asarray(self.options.alphas, dtype=np.float64) if self.options.alphas else None
        sol = fit_ridge(features, z, alpha=alpha, alphas=alphas)
        self.coef_ = sol.coef
        self.intercept_ = sol.intercept
        self.alpha_ = sol.alpha
        return self

    def fit_folds(self, features, targets, folds, groups=None) -> list[LinearTranslator] | None:
        """With a fixed α every fold comes from one pass of per-fold sums
        (:func:`~sing_audit.ridge.fit_ridge_folds`); α by leave-one-out, or a training set
        with fewer rows than features, fits fold by fold."""
        folds = np.asarray(folds)
        if self.options.alpha == "cv" or not float(self.options.alpha) > 0 or folds.size == 0:
            return None
        smallest = folds.size - int(np.bincount(folds).max())
        if smallest < np.shape(features)[1]:
            return None
        z = unit_rows(targets) if self.options.normalize_targets else np.asarray(targets, dtype=np.float64)
        out = []
        for sol in fit_ridge_folds(features, z, folds, float(self.options.alpha)):
            t = type(self)(self.options)
            t.coef_, t.intercept_, t.alpha_ = sol.coef, sol.intercept, sol.alpha
            out.append(t)
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("LinearTranslator is not fitted yet: call fit(features, targets) first")

    def predict(self, features) -> np.ndarray:
        self._check_fitted()
        return np.asarray(features, dtype=np.float64) @ self.coef_.T + self.intercept_

    def linear_map(self):
        self._check_fitted()
        return self.coef_, self.intercept_

    def state(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {"weight": self.coef_, "bias": self.intercept_, "alpha": np.array([self.alpha_])}

    def load_state(self, state) -> "LinearTranslator":
        self.coef_ = np.asarray(state["weight"], dtype=np.float64)
        self.intercept_ = np.asarray(state["bias"], dtype=np.float64)
        self.alpha_ = float(np.asarray(state["alpha"]).reshape(-1)[0])
        return self

    def info(self) -> dict:
        self._check_fitted()
        return {"alpha": self.alpha_, "normalize_targets": self.options.normalize_targets}


@hookimpl
def register_translators(register):
    register("linear", LinearTranslator)
