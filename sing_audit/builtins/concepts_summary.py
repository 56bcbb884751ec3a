"""The ``concepts`` probe's summary models (what ``results.json`` holds under
``models[i].probes.concepts``; the probe is :mod:`sing_audit.builtins.concepts_probe`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sing_audit.probes import ProbeSummary

__all__ = ["AuthorsConceptScore", "ConceptScore", "ConceptsSummary"]


class ConceptScore(BaseModel):
    """A concept's AS (degrees) toward its text embedding; ``angle``: between T(f) and the
    embedding (per class), ``abs_as``: mean |AS| (over the model's images)."""

    model_config = ConfigDict(populate_by_name=True)

    concept: str = ""
    as_: float | None = Field(default=None, alias="as")
    angle: float | None = None
    abs_as: float | None = None


class AuthorsConceptScore(BaseModel):
    """A concept under the SING authors' dictionary score: ``dcos = cos(T(f), t) −
    cos(T(f̃), t)`` (unitless, of opposite sign to AS), mean over the class's (``dcos``) or
    all images; ``abs_dcos``: mean |dcos| over the model's images."""

    concept: str = ""
    dcos: float | None = None
    abs_dcos: float | None = None


class ConceptsSummary(ProbeSummary):
    """The ``concepts`` probe's summary: per class (and over the model) the concepts with
    the largest |AS|, the concept sets used and how the concepts were embedded."""

    probe = "concepts"

    sets: list[dict[str, Any]] = Field(default_factory=list)
    per_class: dict[str, list[ConceptScore]] = Field(default_factory=dict)
    model_top: list[ConceptScore] = Field(default_factory=list)
    templates: list[str] | None = None
    embeddings: str | None = None
    n_concepts: int | None = None
    #: the SING authors' ranking beside ours: per class by |mean dcos|, over the model by mean |dcos|
    authors_per_class: dict[str, list[AuthorsConceptScore]] = Field(default_factory=dict)
    authors_model_top: list[AuthorsConceptScore] = Field(default_factory=list)

    def explain_lines(self, shorten: Callable[[Any], str]) -> list[str]:
        lines = []
        for name, rows in self.per_class.items():
            lines.append(f"  top concepts ({shorten(name)}):")
            lines += [f"    {row.as_:+8.2f}°  {shorten(row.concept)}  (angle {row.angle:.1f}°)" for row in rows]
        return lines

    def names(self) -> list[str]:
        return [*self.per_class, *(x.concept for rows in self.per_class.values() for x in rows)]
