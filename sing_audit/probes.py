"""What a probe receives and returns.

The run (:func:`sing_audit.pipeline.model.probe_context`) builds one :class:`ProbeContext` per (backbone, target) pair after the
translator is cross-fitted; every configured probe runs on it and returns a
:class:`ProbeOutput`: per-image columns (they go into the model's CSV) and a summary
(a :class:`ProbeSummary`, the pydantic model the probe declares as ``Probe.Summary``; it
goes into ``results.json`` under ``models[i].probes[<name>]`` as its JSON form).

Exactly one configured probe has the **headline role** (``role = HEADLINE``): its
``scores`` (IS, AS, AS contrast per image) set the model's headline numbers, its
per-image columns go into the CSV unprefixed, and its summary is a
:class:`HeadlineSummary` (the logit drift of the null removal). The built-in
``null_removal`` has it; :func:`headline_probe` finds it among the configured probes.

Readers never look a probe's output up by a raw key: :func:`probe_summary` validates a
model's stored summary into the probe's own model, whose methods
(:meth:`ProbeSummary.explain_lines`, :meth:`ProbeSummary.names`) the core calls over
every probe alike.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from .components import LinearHead, Target
from .errors import ConfigError
from .nullspace import HeadSubspaces

__all__ = [
    "HEADLINE",
    "NO_HEADLINE",
    "HeadlineSummary",
    "Probe",
    "ProbeContext",
    "ProbeOutput",
    "ProbeSummary",
    "Scores",
    "explain_lines",
    "headline_names",
    "headline_probe",
    "probe_summary",
    "row_chunks",
]

#: the role of the probe whose scores are the audit's headline IS/AS
HEADLINE = "headline"
#: the error when no configured probe has the headline role
NO_HEADLINE = (
    "probes must include a probe with the headline role (its scores are the audit's IS and AS): "
    "add the built-in null_removal, which has it"
)

S = TypeVar("S", bound="ProbeSummary")

CHUNK_ROWS = 8192


def row_chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    """Slices covering ``range(n)`` in chunks of ``size`` rows."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass
class ProbeContext:
    """Everything a probe may read about one model under one target.

    ``features`` N×m (possibly memory-mapped float32), ``labels`` N head indices (ground
    truth, or the prediction when the data has no labels), ``embeddings`` N×n the
    target's raw image embeddings, ``translated`` N×n the cross-fitted ``T(f)``,
    ``class_text`` c×n unit class prompt embeddings. ``translate(F, rows)`` applies, to
    changed features of the images ``rows``, the translator that did not see them.
    """

    model_name: str
    target_name: str
    features: np.ndarray
    labels: np.ndarray
    head: LinearHead
    subspaces: HeadSubspaces
    embeddings: np.ndarray
    translated: np.ndarray
    class_text: np.ndarray
    class_names: list[str]
    folds: np.ndarray
    translate: Callable[[np.ndarray, slice], np.ndarray]
    target: Target
    generator: np.random.Generator
    image_ids: list[str] = field(default_factory=list)
    #: the fitted translator of each fold (``folds[i]`` indexes the one that scored image i)
    translators: list = field(default_factory=list)
    #: K prompts -> K×n raw text embeddings through the target, loaded on demand and cached
    #: on disk by the runner (raises DataError for a target without a text encoder)
    encode_text: Callable[[list[str]], np.ndarray] | None = None
    #: the run's plugin registry (probes that look up other components use it)
    registry: Any = None
    #: the loaded image backbone (``None`` for precomputed features); filled for probes
    #: whose class sets ``needs_backbone``
    backbone: Any = None
    #: ``images(rows)``: the images of the given rows (1-D int array into ``features``)
    #: exactly as ``backbone.features`` receives them, a k×C×H×W float tensor
    images: Callable[[np.ndarray], Any] | None = None


@dataclass
class Scores:
    """Per-image IS, AS toward the image's own class prompt, and AS contrast (N each)."""

    image_score: np.ndarray
    attribute_score: np.ndarray
    attribute_contrast: np.ndarray


class ProbeSummary(BaseModel):
    """Base of a probe's summary model (declare yours as the probe's ``Summary``).

    Its JSON form (:meth:`as_json`) is what results.json stores under
    ``models[i].probes[<name>]``; :func:`probe_summary` turns it back into the model.
    ``probe`` names the registered probe whose summary this is (the key in
    ``models[i].probes``).
    """

    #: extra keys are kept (a summary read back from an older or a third party's results.json)
    model_config = ConfigDict(protected_namespaces=(), populate_by_name=True, extra="allow")

    #: the registered name of the probe that writes this summary
    probe: ClassVar[str] = ""
    #: ``python``: values kept as the probe gave them; ``json``: JSON-ready (tuples as lists)
    dump_mode: ClassVar[Literal["python", "json"]] = "python"
    #: leave out the fields the probe did not set, so that the JSON holds exactly the keys
    #: the probe gave (in the order of the fields); ``False``: every field, defaults too
    omit_unset: ClassVar[bool] = True

    def as_json(self) -> dict[str, Any]:
        """The summary as results.json stores it (fields under their aliases)."""
        return self.model_dump(mode=self.dump_mode, exclude_unset=self.omit_unset, by_alias=True)

    def explain_lines(self, shorten: Callable[[Any], str]) -> list[str]:
        """Lines ``sing-audit explain`` prints for one image (``shorten`` cuts and cleans a
        user-controlled name for the terminal). Default: nothing."""
        return []

    def names(self) -> list[str]:
        """The user-controlled names (classes, concepts, prompts) the summary holds: the
        report cuts them where they are long. Default: none."""
        return []


class HeadlineSummary(ProbeSummary):
    """The summary of the headline probe: how much removing the null space moved the logits."""

    logit_drift_relative_max: float | None = None
    logit_drift_relative_mean: float | None = None
    prediction_agreement: float | None = None


@dataclass
class ProbeOutput:
    """Per-image columns, the summary (a :class:`ProbeSummary`, or already its JSON form;
    ``summary`` holds the JSON form after construction) and, for the headline probe, the
    scores."""

    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    scores: Scores | None = None

    def __post_init__(self) -> None:
        if isinstance(self.summary, ProbeSummary):
            self.summary = self.summary.as_json()


class Probe(abc.ABC):
    """A measurement on one model; built by ``factory(options)``."""

    #: ``HEADLINE`` for the probe whose scores are the audit's IS/AS (see :func:`headline_probe`)
    role: ClassVar[str | None] = None
    #: the model of the probe's summary
    Summary: ClassVar[type[ProbeSummary]] = ProbeSummary

    #: True when the probe needs the loaded image backbone and the images themselves
    #: (``ctx.backbone`` and ``ctx.images``); the runner then loads the model even when
    #: the features come from the cache.
    needs_backbone: bool = False
    #: True when the probe needs the target's own image encoder (``ctx.target`` loaded,
    #: an ``ImageTarget``); the runner then loads it even when the embeddings are cached.
    needs_target: bool = False

    @abc.abstractmethod
    def run(self, ctx: ProbeContext) -> ProbeOutput:
        """Measure; pure computation on the context (no I/O)."""

    def aggregate(self, summaries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """Optional audit-level result from every model's summary (keyed ``name@target``);
        stored under ``probe_aggregates[<probe>]`` in results.json. ``None``: nothing to add."""
        return None


def _probe_class(component: Any) -> Any:
    """A built component's probe (``.instance``), a probe, or a probe factory."""
    return getattr(component, "instance", component)


def headline_probe(probes: list[Any]) -> Any:
    """The one probe of ``probes`` (built components, probes or probe classes) with the
    headline role: its scores are the audit's IS/AS.

    Raises :class:`ConfigError` when none has it (or several do)."""
    found = [p for p in probes if getattr(_probe_class(p), "role", None) == HEADLINE]
    if not found:
        raise ConfigError(NO_HEADLINE)
    if len(found) > 1:
        names = ", ".join(str(getattr(p, "plugin", type(_probe_class(p)).__name__)) for p in found)
        raise ConfigError(f"probes: only one probe may have the headline role, got {names}")
    return found[0]


def probe_summary(model_result: Any, summary: type[S], name: str | None = None) -> S | None:
    """The summary of probe ``name`` (default ``summary.probe``) in a
    :class:`~sing_audit.results.ModelResult`, validated into ``summary``; ``None`` when
    that probe did not run (or left nothing)."""
    key = name or summary.probe
    raw = (getattr(model_result, "probes", None) or {}).get(key)
    if not isinstance(raw, dict) or not raw:
        return None
    return summary.model_validate(raw)


def headline_names(registry: Any) -> set[str]:
    """The registered probes (names) whose factory has the headline role."""
    return {n for n in registry.names("probe") if getattr(registry.get("probe", n).factory, "role", None) == HEADLINE}


def explain_lines(registry: Any, summaries: dict[str, dict[str, Any]], shorten: Callable[[Any], str]) -> list[str]:
    """What ``sing-audit explain`` prints of every probe's summary (keyed by probe name, as
    in ``models[i].probes``), through each probe's own summary model, in probe order."""
    known = set(registry.names("probe"))
    lines: list[str] = []
    for name, raw in summaries.items():
        if name in known and isinstance(raw, dict) and raw:
            model = getattr(registry.get("probe", name).factory, "Summary", ProbeSummary)
            lines += model.model_validate(raw).explain_lines(shorten)
    return lines
