"""The ``steering`` probe: move features within the null space toward a prompt.

For a linear translator everything comes in closed form (:mod:`sing_audit.steering`);
for any other translator that offers ``torch_forward`` (a differentiable torch version
of ``predict``), the gradient comes from autograd in batches.

Step length ε (``epsilon_mode``):

- ``relative`` (default): ``ε_i = epsilon · ‖Π_n f_i‖`` — each image moves by a fixed
  share of its own null component, so architectures with different feature scales and
  null dimensions compare fairly;
- ``absolute``: ``ε_i = epsilon`` in feature units;
- ``calibrated``: the relative multiplier is chosen per model (bisection) so that the mean
  steering IS over all images and prompts equals ``calibrate_is`` degrees — the models are
  then compared at the same amount of movement in the target space, as the paper does when
  it calibrates steps.

Summary (rendered by the report, paper Table 1 layout)::

    {"epsilon_mode": str, "epsilon": float, "zero_directions": int,
     "targets": [{"prompt", "source", "n", "as_mean", "as_std", "is_mean", "epsilon",
                  "logit_drift", "zero_directions"}]}

``logit_drift`` is the largest relative logit change ``‖W(f_ε − f)‖ / ‖W f + b‖`` (≈ 0
under the exact rank rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sing_audit.components import PluginOptions
from sing_audit.errors import ConfigError
from sing_audit.hookspecs import hookimpl
from sing_audit.nullspace import null_component
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary, row_chunks
from sing_audit.steering import SteeringResult, steer_linear, steering_operators


class Pair(BaseModel):
    """Steer the images of class ``source`` toward ``target`` (a class name or free text)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(alias="from")
    target: str = Field(alias="to")


class SteeringTarget(BaseModel):
    """One prompt's steering result (degrees; ``logit_drift`` relative)."""

    prompt: str
    source: str | None = None
    n: int | None = None
    as_mean: float | None = None
    as_std: float | None = None
    is_mean: float | None = None
    epsilon: float | None = None
    logit_drift: float | None = None
    zero_directions: int | None = None


class SteeringSummary(ProbeSummary):
    """The ``steering`` probe's summary (module docstring); ``note`` instead of ``epsilon``
    when there was nothing to steer."""

    probe = "steering"

    epsilon_mode: str | None = None
    epsilon: float | None = None
    zero_directions: int | None = None
    targets: list[SteeringTarget] = Field(default_factory=list)
    note: str | None = None

    def explain_lines(self, shorten: Callable[[Any], str]) -> list[str]:
        return [
            f"  steering toward {shorten(t.prompt)!r}: AS {t.as_mean:+.2f}°, IS {t.is_mean:.2f}°, "
            f"logit drift {t.logit_drift:.2e}"
            for t in self.targets
        ]

    def names(self) -> list[str]:
        return [x for t in self.targets for x in (t.prompt, t.source) if x]


class SteeringProbe(Probe):
    """Steer null-space features toward class or text prompts; AS, IS and logit drift."""

    Summary = SteeringSummary

    class Options(PluginOptions):
        classes: list[str] | Literal["all"] | None = Field(
            default=None, description="class prompts to steer every image toward ('all': every head class)"
        )
        prompts: list[str] = Field(default_factory=list, description="free-text prompts (need a text encoder)")
        pairs: list[Pair] = Field(default_factory=list, description="[{from: class, to: class or text}]")
        epsilon: float = Field(default=1.0, gt=0)
        epsilon_mode: Literal["relative", "absolute", "calibrated"] = "relative"
        calibrate_is: float = Field(default=10.0, gt=0, lt=180, description="mean IS (degrees) for 'calibrated'")
        batch_size: int = Field(default=256, ge=1, description="images per autograd batch (nonlinear translators)")

    def __init__(self, options: "SteeringProbe.Options | None" = None):
        self.options = options or self.Options()
        o = self.options
        if o.classes is None and not o.prompts and not o.pairs:
            self.options = o.model_copy(update={"pairs": [], "classes": "all"})
        #: fold -> its translator's steering operators, for one run (the calibration steers again and again)
        self._operators: dict = {}

    # ---------------------------------------------------------------- prompts

    def _prompt_table(self, ctx: ProbeContext) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Names, K×n embeddings and source class (None = every image) of each prompt."""
        o = self.options
        index = {name: i for i, name in enumerate(ctx.class_names)}
        present = sorted(set(int(k) for k in np.unique(ctx.labels)))
        names: list[str] = []
        emb: list[np.ndarray] = []
        sources: list[str | None] = []

        def class_vec(name: str) -> np.ndarray:
            if name not in index:
                from sing_audit.host import suggest

                raise ConfigError(f"steering: unknown class {name!r}{suggest(name, list(index))}")
            return ctx.class_text[index[name]]

        if o.classes == "all":
            for k in present:
                names.append(ctx.class_names[k]), emb.append(ctx.class_text[k]), sources.append(None)
        elif o.classes:
            for name in o.classes:
                names.append(name), emb.append(class_vec(name)), sources.append(None)
        free = list(o.prompts) + [p.target for p in o.pairs if p.target not in index]
        encoded = {}
        if free:
            vecs = ctx.encode_text(free) if ctx.encode_text is not None else ctx.target.encode_text(free)
            encoded = dict(zip(free, np.asarray(vecs, dtype=np.float64), strict=True))
        for p in o.prompts:
            names.append(p), emb.append(encoded[p]), sources.append(None)
        for pair in o.pairs:
            class_vec(pair.source)
            vec = class_vec(pair.target) if pair.target in index else encoded[pair.target]
            names.append(pair.target), emb.append(vec), sources.append(pair.source)
        table = np.stack(emb)
        return names, table / np.linalg.norm(table, axis=1, keepdims=True), sources

    # ---------------------------------------------------------------- steering

    @staticmethod
    def _prepare(ctx: ProbeContext, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The features of ``rows``, their null components' norms and their logits' norms:
        what every step length needs, computed once per set of rows (not per calibration step)."""
        feats = np.asarray(ctx.features[rows], dtype=np.float64)
        null_norm = np.linalg.norm(null_component(feats, ctx.subspaces), axis=1)
        logit_norm = np.linalg.norm(feats @ ctx.head.weight.T + ctx.head.bias, axis=1)
        return feats, null_norm, logit_norm

    def _steer(self, ctx: ProbeContext, prompts: np.ndarray, scale: float, rows: np.ndarray,
               prepared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> SteeringResult:
        feats, null_norm, logit_norm = prepared if prepared is not None else self._prepare(ctx, rows)
        eps = np.full(len(rows), scale) if self.options.epsilon_mode == "absolute" else scale * null_norm
        k = prompts.shape[0]
        out = SteeringResult(
            np.full((len(rows), k), np.nan), np.full((len(rows), k), np.nan),
            np.full((len(rows), k), np.nan), np.zeros((len(rows), k), dtype=bool),
        )
        folds = ctx.folds[rows]
        for fold in np.unique(folds):
            sel = folds == fold
            translator = ctx.translators[fold]
            lin = translator.linear_map()
            if lin is not None:
                a, c = lin
                ops = self._operators.get(fold)
                if ops is None:
                    ops = self._operators[fold] = steering_operators(a, ctx.subspaces, ctx.head.weight)
                r = steer_linear(feats[sel] @ a.T + c, prompts, eps[sel], ops, logit_norm[sel])
            else:
                r = self._steer_autograd(translator, ctx, feats[sel], prompts, eps[sel], logit_norm[sel])
            out.attribute_score[sel], out.image_score[sel] = r.attribute_score, r.image_score
            out.logit_change[sel], out.zero_direction[sel] = r.logit_change, r.zero_direction
        return out

    def _steer_autograd(self, translator, ctx, feats, prompts, eps, logit_norm) -> SteeringResult:
        import torch

        forward = getattr(translator, "torch_forward", None)
        if forward is None:
            raise ConfigError(
                f"steering: translator {type(translator).__name__} is not linear and offers no torch_forward, "
                "so its gradient cannot be computed; use the linear translator for steering"
            )
        vn = torch.as_tensor(ctx.subspaces.null, dtype=torch.float64)
        w = torch.as_tensor(ctx.head.weight, dtype=torch.float64)
        t = torch.as_tensor(prompts, dtype=torch.float64)
        n_img, k = feats.shape[0], prompts.shape[0]
        res = [np.full((n_img, k), np.nan) for _ in range(3)]
        zero = np.zeros((n_img, k), dtype=bool)
        for rows in row_chunks(n_img, self.options.batch_size):
            f = torch.as_tensor(feats[rows], dtype=torch.float64)
            e = torch.as_tensor(eps[rows], dtype=torch.float64)[:, None]
            for j in range(k):
                x = f.clone().requires_grad_(True)
                u = forward(x)
                s = torch.nn.functional.cosine_similarity(u, t[j][None, :], dim=1).sum()
                (g,) = torch.autograd.grad(s, x)
                with torch.no_grad():
                    d = (g @ vn) @ vn.T
                    dn = d.norm(dim=1, keepdim=True)
                    z = (dn <= 1e-12 * g.norm(dim=1, keepdim=True) + 1e-300).squeeze(1)
                    step = torch.where(dn > 0, e / dn.clamp_min(1e-300), torch.zeros_like(dn))
                    fe = f + step * d
                    u0, ue = forward(f), forward(fe)
                    before = torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(u0, t[j][None], dim=1).clamp(-1, 1)))
                    after = torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(ue, t[j][None], dim=1).clamp(-1, 1)))
                    is_ = torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(u0, ue, dim=1).clamp(-1, 1)))
                    lc = ((fe - f) @ w.T).norm(dim=1) / torch.as_tensor(logit_norm[rows])
                zn = z.numpy()
                res[0][rows, j] = np.where(zn, np.nan, (before - after).numpy())
                res[1][rows, j] = np.where(zn, np.nan, is_.numpy())
                res[2][rows, j] = np.where(zn, np.nan, lc.numpy())
                zero[rows, j] = zn
        return SteeringResult(res[0], res[1], res[2], zero)

    def _calibrate(self, ctx: ProbeContext, jobs: list) -> float:
        """Relative multiplier whose mean steering IS over every (prompt, image) pair that
        is reported equals ``calibrate_is`` (bisection; IS grows with the step)."""
        goal = self.options.calibrate_is

        prepared = [self._prepare(ctx, rows) for _, _, _, rows in jobs]

        def mean_is(scale: float) -> float:
            values = [self._steer(ctx, vec, scale, rows, prep).image_score.ravel()
                      for (_, _, vec, rows), prep in zip(jobs, prepared, strict=True)]
            return float(np.nanmean(np.concatenate(values)))

        lo, hi = 0.0, 1.0
        for _ in range(40):
            if mean_is(hi) >= goal:
                break
            lo, hi = hi, hi * 2
        else:
            raise ConfigError(f"steering: no step reaches a mean IS of {goal}°; lower calibrate_is")
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean_is(mid) < goal else (lo, mid)
        return (lo + hi) / 2

    # ---------------------------------------------------------------- run

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        self._operators = {}  # a new model: its own translators
        names, prompts, sources = self._prompt_table(ctx)
        index = {name: i for i, name in enumerate(ctx.class_names)}
        if ctx.subspaces.null_dim == 0:
            return ProbeOutput(summary=SteeringSummary(
                epsilon_mode=self.options.epsilon_mode, targets=[], note="no null space: nothing to steer"))
        every = np.arange(ctx.features.shape[0])
        o = self.options
        jobs = []
        for k, (name, source) in enumerate(zip(names, sources, strict=True)):
            if source is not None:
                rows = np.flatnonzero(ctx.labels == index[source])
            else:
                own = index.get(name)
                rows = every if own is None else np.flatnonzero(ctx.labels != own)  # toward another class
            if rows.size:
                jobs.append((name, source, prompts[k : k + 1], rows))
        scale = self._calibrate(ctx, jobs) if o.epsilon_mode == "calibrated" else o.epsilon
        targets = []
        zero_total = 0
        for name, source, vec, rows in jobs:
            r = self._steer(ctx, vec, scale, rows)
            a = r.attribute_score[:, 0]
            zeros = int(r.zero_direction.sum())
            zero_total += zeros
            finite = np.isfinite(a)
            if source is None:
                source = "all other classes" if name in index else "all images"
            targets.append(
                SteeringTarget(
                    prompt=name,
                    source=source,
                    n=int(finite.sum()),
                    as_mean=float(np.mean(a[finite])) if finite.any() else None,
                    as_std=float(np.std(a[finite])) if finite.any() else None,
                    is_mean=float(np.nanmean(r.image_score)) if finite.any() else None,
                    epsilon=float(scale),
                    logit_drift=float(np.nanmax(r.logit_change)) if finite.any() else None,
                    zero_directions=zeros,
                )
            )
        summary = SteeringSummary(epsilon_mode=o.epsilon_mode, epsilon=float(scale), zero_directions=zero_total, targets=targets)
        return ProbeOutput(summary=summary)


@hookimpl
def register_probes(register):
    register("steering", SteeringProbe)


@hookimpl
def register_report_sections(register):
    from sing_audit.builtins.steering_section import SteeringSection  # the section imports this module's summary

    register(SteeringSection.key, SteeringSection)
