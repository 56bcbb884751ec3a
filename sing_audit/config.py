"""``audit.yaml``: the pydantic model, loading with overrides, and plugin option checks.

Relative paths in a config file resolve against the file's folder. Errors name the file,
the field path and the valid choices, with "did you mean" for misspelled keys and
plugin names.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from .errors import ConfigError
from .probes import NO_HEADLINE, headline_names
from .terminal import suggest

__all__ = [
    "ComponentSpec",
    "BackboneSpec",
    "NullspaceConfig",
    "Waiver",
    "PolicyConfig",
    "ReportConfig",
    "RunSettings",
    "AuditConfig",
    "load_config",
    "apply_overrides",
    "format_validation_error",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentSpec(BaseModel):
    """A component chosen by its registered ``plugin`` name plus that plugin's options."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    plugin: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BackboneSpec(ComponentSpec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Name of the model in the results.")


class TargetSpec(ComponentSpec):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class NullspaceConfig(_Strict):
    rule: Literal["rank", "energy", "fixed", "fraction"] = "rank"
    rtol: float | None = Field(default=None, gt=0, description="rank rule: cut relative to σ_max")
    atol: float | None = Field(
        default=None, gt=0,
        description="rank rule: absolute cut, keep singular values above it (the SING authors' 1e-5); not with rtol",
    )
    keep: float | None = Field(default=None, gt=0, le=1, description="energy rule: share of Σσ² kept")
    rank: int | None = Field(default=None, ge=0, description="fixed rule: the rank")
    null_fraction: float | None = Field(
        default=None, ge=0, lt=1, description="fraction rule: share of feature dimensions treated as null"
    )

    @model_validator(mode="after")
    def _rule_options(self) -> "NullspaceConfig":
        if self.rule == "energy" and self.keep is None:
            raise ValueError("rule 'energy' needs keep (e.g. keep: 0.999)")
        if self.rule == "fixed" and self.rank is None:
            raise ValueError("rule 'fixed' needs rank (e.g. rank: 700)")
        if self.rule == "fraction" and self.null_fraction is None:
            raise ValueError("rule 'fraction' needs null_fraction (e.g. null_fraction: 0.25)")
        if self.rule != "fraction" and self.null_fraction is not None:
            raise ValueError(f"null_fraction applies to rule 'fraction' only, not {self.rule!r}")
        if self.rule != "rank" and self.rtol is not None:
            raise ValueError(f"rtol applies to rule 'rank' only, not {self.rule!r}")
        if self.rule != "rank" and self.atol is not None:
            raise ValueError(f"atol applies to rule 'rank' only, not {self.rule!r}")
        if self.rtol is not None and self.atol is not None:
            raise ValueError("give rtol (relative cut) or atol (absolute cut), not both")
        if self.rule != "energy" and self.keep is not None:
            raise ValueError(f"keep applies to rule 'energy' only, not {self.rule!r}")
        if self.rule != "fixed" and self.rank is not None:
            raise ValueError(f"rank applies to rule 'fixed' only, not {self.rule!r}")
        return self


class Waiver(_Strict):
    """A flagged class accepted by a reviewer, until ``expires``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str
    class_: str | int = Field(alias="class")
    reason: str = Field(min_length=1)
    expires: dt.date | None = None

    def active(self, today: dt.date) -> bool:
        return self.expires is None or today <= self.expires


class PolicyConfig(_Strict):
    as_threshold: float = Field(default=4.0, ge=0, description="degrees of mean |AS| (lower 95% bound)")
    min_images: int = Field(default=10, ge=1)
    max_flagged: int = Field(default=0, ge=0)
    outlier_z: float = Field(default=3.5, gt=0, description="robust z-score that marks an outlier class")
    min_fidelity: float | None = Field(
        default=None, ge=-1, le=1,
        description="a model whose held-out translator cosine is below this is not assessed (its angles say nothing)",
    )
    warn_fidelity: float = Field(default=0.5, ge=-1, le=1, description="warn when the held-out cosine is below this")
    min_is_as_ratio: float | None = Field(
        default=None, ge=0, description="fail a model whose IS/AS ratio is below this (more semantic drift per degree)"
    )
    allow_not_assessed: bool = Field(
        default=False,
        description="let a run pass although some model could not be assessed (no class with min_images images, "
        "null dimension 0, fidelity below min_fidelity); such models are still reported as not assessed",
    )
    waivers: list[Waiver] = Field(default_factory=list)


class ReportConfig(_Strict):
    formats: list[str] = Field(default_factory=lambda: ["json", "csv", "html"])
    top_images: int = Field(default=12, ge=0, description="most leaking images listed per model (with thumbnails)")
    templates: Path | None = Field(
        default=None,
        description="folder of jinja2 templates searched before the built-in ones: a file of the same name "
        "overrides a built-in template, and {% extends \"default:NAME\" %} extends it",
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="options of a reporter, by format (e.g. mlflow: {tracking_uri: ..., experiment: ...}); "
        "each validated by that reporter's own options",
    )


class RunSettings(_Strict):
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps")
    batch_size: int = Field(default=32, ge=1)
    num_workers: int = Field(
        default=0, ge=0,
        description="DataLoader worker processes that decode images during extraction; 0: decode in threads of "
        "this process (run.decode_threads), nothing pickled",
    )
    decode_threads: Literal["auto"] | int = Field(
        default="auto",
        description="with num_workers 0: threads that decode the next batches while the model runs (auto: 1 on a "
        "CPU, measured fastest on 2 cores; up to 4 on a GPU; 0: decode between forwards, in the main thread)",
    )
    folds: int = Field(default=5, ge=2, description="cross-fitting folds")
    seed: int = 0
    bootstrap: int = Field(default=1000, ge=100, description="bootstrap resamples for intervals")
    store_dtype: Literal["float32", "float16"] = Field(
        default="float32", description="dtype of extracted features and embeddings in the on-disk store"
    )
    autocast: Literal["none", "bf16", "fp16"] = Field(
        default="none", description="mixed precision for extraction on a GPU (ignored, with a note, on CPU)"
    )
    chunk_images: int = Field(
        default=1024, ge=1, description="images per resumable extraction chunk (rounded up to whole batches)"
    )
    channels_last: bool = Field(
        default=False,
        description="run image models and 4-D batches in torch.channels_last memory format (often faster for "
        "convnets; the last bits of the features may change, so it is part of the cache key)",
    )

    cache_dir: Literal[False] | Path | None = Field(
        default=None,
        description="the cache shared across audits (features, embeddings, text): a folder (relative to the "
        "config's folder) or false to turn it off; unset: SING_AUDIT_CACHE_DIR, else the user's cache folder",
    )
    cache_max_size: ByteSize | None = Field(
        default=None, gt=0,
        description="bound of the shared cache, e.g. 20GB or 500MiB (least recently used entries are pruned); "
        "unset: SING_AUDIT_CACHE_MAX_SIZE, else 10GiB",
    )

    @model_validator(mode="before")
    @classmethod
    def _cache_dir_true(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("cache_dir") is True:
            raise ValueError("cache_dir: give a folder, or false to turn the shared cache off (true is not a folder)")
        return data

    @model_validator(mode="after")
    def _check_decoding(self) -> "RunSettings":
        if isinstance(self.decode_threads, int) and self.decode_threads < 0:
            raise ValueError(f"run.decode_threads must be auto or an integer >= 0, not {self.decode_threads}")
        if self.num_workers > 0 and isinstance(self.decode_threads, int) and self.decode_threads > 0:
            raise ValueError(
                f"run.num_workers {self.num_workers} decodes in worker processes, so run.decode_threads "
                f"{self.decode_threads} would not be used; set one of them (decode_threads: auto or 0 with num_workers)"
            )
        return self


class AuditConfig(_Strict):
    """The whole audit."""

    name: str | None = None
    output: Path
    dataset: ComponentSpec | None = None
    target: TargetSpec | None = None
    targets: list[TargetSpec] | None = None
    backbones: list[BackboneSpec] = Field(min_length=1)
    translator: ComponentSpec = Field(default_factory=lambda: ComponentSpec(plugin="linear"))
    compare_translators: list[ComponentSpec] = Field(
        default_factory=list, description="other translator families fitted on the same folds, shown for comparison"
    )
    nullspace: NullspaceConfig = Field(default_factory=NullspaceConfig)
    probes: list[str | ComponentSpec] = Field(default_factory=lambda: ["null_removal"])
    visualizer: ComponentSpec | None = Field(
        default=None,
        description="renders the report's top images as original/equivalent picture pairs (e.g. plugin: unclip)",
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    run: RunSettings = Field(default_factory=RunSettings)
    #: folder that relative paths resolve against (the config file's folder)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "AuditConfig":
        if (self.target is None) == (self.targets is None):
            raise ValueError("give exactly one of 'target' or 'targets'")
        names = [b.name for b in self.backbones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backbone names must be unique; repeated: {', '.join(dupes)}")
        tnames = [t.name or t.plugin for t in self.target_specs()]
        if len(set(tnames)) != len(tnames):
            raise ValueError("several targets share a name: give each one a 'name'")
        # the probes with the headline role, when the config is loaded with a registry
        # (load_config(..., registry=)); without one only an empty list is known to lack it
        headline = (info.context or {}).get("headline_probes")
        names = {p if isinstance(p, str) else p.plugin for p in self.probes}
        if not names or (headline is not None and not names & headline):
            raise ValueError(NO_HEADLINE)
        if self.report.templates is not None:
            folder = self.resolve_path(self.report.templates).resolve()
            if not folder.is_dir():
                raise ValueError(f"report.templates: {folder} is not a folder")
            self.report.templates = folder  # absolute: results.json records where the templates were
        return self

    def target_specs(self) -> list[TargetSpec]:
        return list(self.targets) if self.targets is not None else [self.target]  # type: ignore[list-item]

    def probe_specs(self) -> list[ComponentSpec]:
        return [ComponentSpec(plugin=p) if isinstance(p, str) else p for p in self.probes]

    def resolve_path(self, path: Path | str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def output_dir(self) -> Path:
        return self.resolve_path(self.output).resolve()


# --------------------------------------------------------------------------- errors


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for key suggestions)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    """One line per problem: ``file: field.path: message`` with key suggestions."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # drop pydantic's union-branch tags such as 'str' / 'ComponentSpec'
        loc = tuple(p for p in loc if not (isinstance(p, str) and p in ("str", "ComponentSpec", "function-after[_check(), AuditConfig]")))
        where = _loc(loc)
        if prefix:
            where = f"{prefix}.{where}" if where != "(top level)" else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            owner = _model_at(model, loc)
            if owner is not None:
                fields = [f.alias or n for n, f in owner.model_fields.items() if not f.exclude]
                msg = f"unknown key {loc[-1]!r}{suggest(str(loc[-1]), fields)}"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(dict.fromkeys(lines))


# --------------------------------------------------------------------------- loading


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML; list items by index)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value (e.g. policy.as_threshold=3)")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if not isinstance(node, (list, dict)):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i]) or '(top level)'} is not a mapping")
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not an index of a {len(node)}-item list")
                node = node[int(part)]
            else:
                if part not in node or node[part] is None:
                    node[part] = [] if nxt.isdigit() else {}
                node = node[part]
        last = parts[-1]
        value = _parse_scalar(raw)
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: {last!r} is not an index of a {len(node)}-item list")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:-1])} is not a mapping")
    return data


def load_config(
    source: "AuditConfig | dict | str | Path", overrides: list[str] | None = None, registry: Any = None
) -> AuditConfig:
    """Build an :class:`AuditConfig` from a model, a dict or a YAML/JSON file.

    With the run's ``registry`` (:class:`sing_audit.host.Registry`), ``probes`` must name
    a probe with the headline role (:func:`sing_audit.probes.headline_names`)."""
    if isinstance(source, AuditConfig):
        if not overrides and registry is None:
            return source
        data = source.model_dump(mode="json", by_alias=True, exclude_none=True)
        base_dir = source.base_dir
        name = "<config>"
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source, default=str))
        base_dir = Path(data.pop("base_dir", Path.cwd()))
        name = "<config>"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys (output, backbones, ...)")
        base_dir = path.resolve().parent
    data = apply_overrides(data, overrides)
    data["base_dir"] = base_dir
    try:
        context = {"headline_probes": headline_names(registry)} if registry is not None else None
        return AuditConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, AuditConfig, name)) from None
