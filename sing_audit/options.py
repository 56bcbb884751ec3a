"""The options models plugins subclass: every component's ``Options`` is a pydantic model
(``extra="forbid"``) that the host validates the user's config with."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["PluginOptions", "ModelOptions", "TextTargetOptions", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("an image of a {}",)


class PluginOptions(BaseModel):
    """Base of every plugin's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelOptions(PluginOptions):
    """Options every model plugin shares: which model, which weights, how to seed them."""

    model: str = Field(min_length=1, description="the library's model name")
    weights: str = Field("pretrained", description="pretrained | random | <hub tag> | <local file>")
    seed: int = Field(0, description="seed for weights: random")
    base_dir: Path | None = Field(None, description="folder relative weight paths start from (set by the host)")

    @field_validator("model", "weights")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v


class TextTargetOptions(ModelOptions):
    """Model options of a target with a text encoder: plus the class prompt templates."""

    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    class_prompt_embeddings: Path | None = Field(
        None,
        description="class prompt text embeddings from a file instead of encoding the templates: .npz (class names "
        "+ embeddings, e.g. the SING authors' layout) or .safetensors (one vector per class, keyed by class name "
        "or head index); rows are matched to the classes by name or index, never by position",
    )

    def class_prompts_path(self) -> Path | None:
        """``class_prompt_embeddings`` resolved against ``base_dir`` (the config's folder)."""
        p = self.class_prompt_embeddings
        if p is None or p.is_absolute():
            return p
        return (self.base_dir or Path.cwd()) / p

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, v: list[str]) -> list[str]:
        from .concepts import check_templates

        return check_templates(v)
