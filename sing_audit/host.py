"""The plugin host: a fresh pluggy manager per call, and the registry it fills.

Built-in plugins are ordinary ``@hookimpl`` modules registered through the same path as
third-party packages (entry-point group ``sing_audit``). ``SING_AUDIT_LOAD_PLUGINS``
(comma list of entry-point or distribution names; empty = built-ins only) restricts
which installed plugins load.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from pathlib import Path

from . import __version__, hookspecs
from .errors import BadInputError, ConfigError, PluginError
from .terminal import suggest

__all__ = [
    "DEFAULT_PLUGINS",
    "KINDS",
    "BuildContext",
    "Component",
    "check_component",
    "Registered",
    "Registry",
    "create_component",
    "create_plugin_manager",
    "create_registry",
    "resolve_options",
    "suggest",
]

DEFAULT_PLUGINS: tuple[str, ...] = (
    "sing_audit.builtins.precomputed",
    "sing_audit.builtins.torch_module",
    "sing_audit.builtins.image_datasets",
    "sing_audit.builtins.webdataset_shards",
    "sing_audit.builtins.webdataset_index",
    "sing_audit.builtins.hf_datasets",
    "sing_audit.builtins.linear_translator",
    "sing_audit.builtins.mlp_translators",
    "sing_audit.builtins.sing_reference",
    "sing_audit.builtins.null_removal",
    "sing_audit.builtins.concept_sets",
    "sing_audit.builtins.concepts_probe",
    "sing_audit.builtins.steering_probe",
    "sing_audit.builtins.nullspace_validation",
    "sing_audit.builtins.principal_consistency",
    "sing_audit.builtins.rank_sensitivity",
    "sing_audit.builtins.input_probes",
    "sing_audit.builtins.reporters",
    "sing_audit.builtins.report_sections",
    "sing_audit.builtins.ci_reporters",
    "sing_audit.builtins.input_sections",
    "sing_audit.builtins.paper_claims",
    "sing_audit.integrations.attest",
    "sing_audit.integrations.sarif",
    "sing_audit.integrations.model_card",
    "sing_audit.integrations.mlflow_reporter",
    "sing_audit.integrations.wandb_reporter",
)

#: component kind -> hook name
KINDS: dict[str, str] = {
    "backbone": "register_backbones",
    "target": "register_targets",
    "translator": "register_translators",
    "probe": "register_probes",
    "dataset": "register_datasets",
    "concept_set": "register_concept_sets",
    "reporter": "register_reporters",
    "report_section": "register_report_sections",
    "visualizer": "register_visualizers",
    "head_folder": "register_head_folders",
    "command": "register_commands",
}

BUILTIN_PACKAGE = f"sing-audit {__version__} (built-in)"


@dataclass(frozen=True)
class Registered:
    """One registered component: its kind, name, factory and where it came from."""

    kind: str
    name: str
    factory: Any
    plugin: str
    package: str

    @property
    def options_model(self):
        return getattr(self.factory, "Options", None)


def _allowed_entry_points() -> set[str] | None:
    raw = os.environ.get("SING_AUDIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__("sing_audit")
        self.packages: dict[str, str] = {}


def create_plugin_manager(load_entry_points: bool = True) -> PluginManager:
    """A new manager with the hook specs, the built-ins and the installed plugins."""
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise PluginError(f"built-in plugin {module_name} failed to import: {exc}") from exc
        pm.register(module, name=module_name)
    if not load_entry_points:
        return pm
    allowed = _allowed_entry_points()
    for ep in metadata.entry_points(group="sing_audit"):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if allowed is not None and ep.name not in allowed and dist not in allowed:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - named and re-raised
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}, from package {dist}) failed to import: "
                f"{exc.__class__.__name__}: {exc}. Uninstall or fix it, or leave it out with "
                "SING_AUDIT_LOAD_PLUGINS."
            ) from exc
        if pm.is_registered(plugin):
            continue
        version = ep.dist.version if ep.dist is not None else "?"
        package = f"{dist} {version}"
        if pm.get_plugin(ep.name) is not None:
            raise PluginError(
                f"two installed packages register a plugin named {ep.name!r}: {pm.packages.get(ep.name, 'sing-audit')} "
                f"and {package}; uninstall one, or choose with SING_AUDIT_LOAD_PLUGINS"
            )
        try:
            pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {ep.name!r} (from package {package}) has an invalid hook: {exc}") from exc
        pm.packages[ep.name] = package
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook that does not exist (misspelled?): {exc}") from exc
    return pm


class Registry:
    """Every registered component, by kind and name."""

    def __init__(self, entries: dict[str, dict[str, Registered]]):
        self._entries = entries

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries.get(kind, {}))

    def all(self) -> list[Registered]:
        return [r for kind in KINDS for _, r in sorted(self._entries.get(kind, {}).items())]

    def head_folders(self) -> dict[str, Any]:
        """Every registered head folder: type path -> ``folder(module)`` (see :mod:`sing_audit.heads`)."""
        return {name: reg.factory for name, reg in sorted(self._entries.get("head_folder", {}).items())}

    def reporters_by_format(self) -> dict[str, Registered]:
        """Every output format (``report.formats``) and the reporter that writes it."""
        out: dict[str, Registered] = {}
        for name in self.names("reporter"):
            reg = self.get("reporter", name)
            for fmt in getattr(reg.factory, "formats", ()):
                out[fmt] = reg
        return out

    def get(self, kind: str, name: str, where: str = "") -> Registered:
        """Look up a component; unknown names raise :class:`ConfigError` with close matches."""
        entries = self._entries.get(kind, {})
        if name in entries:
            return entries[name]
        at = f" at {where}" if where else ""
        raise ConfigError(f"unknown {kind.replace('_', ' ')} plugin {name!r}{at}{suggest(name, list(entries))}")


def create_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every ``register_*`` hook of every plugin and collect the components.

    A name registered twice within one kind is a :class:`PluginError` naming both packages.
    """
    pm = pm if pm is not None else create_plugin_manager()
    packages: dict[str, str] = getattr(pm, "packages", {})
    entries: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):
            plugin_name = impl.plugin_name
            package = packages.get(plugin_name, BUILTIN_PACKAGE)

            def register(name: str, factory: Any, *, _kind=kind, _plugin=plugin_name, _package=package) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_plugin} registered a {_kind} with an invalid name {name!r}")
                if name in entries[_kind]:
                    first = entries[_kind][name]
                    raise PluginError(
                        f"{_kind} name {name!r} is registered twice: by {first.plugin} "
                        f"({first.package}) and by {_plugin} ({_package}); uninstall one, or "
                        "restrict plugins with SING_AUDIT_LOAD_PLUGINS"
                    )
                entries[_kind][name] = Registered(_kind, name, factory, _plugin, _package)

            args = {"register": register}
            impl.function(**{a: args[a] for a in impl.argnames if a in args})
    return Registry(entries)


# --------------------------------------------------------------------------- building components


@dataclass(frozen=True)
class BuildContext:
    """What building a component may depend on besides its options: the run's registry
    (a probe that builds concept sets looks them up there, so a third party's are found),
    the folder relative paths start from (the config file's), and where the spec came
    from (``source``: the config file; ``where``: the field path), for messages."""

    registry: Registry
    base_dir: Path
    source: str = "<config>"
    where: str = ""

    def at(self, where: str) -> "BuildContext":
        """The same context for a spec found at ``where`` (e.g. ``probes[2].sets[0]``)."""
        return BuildContext(self.registry, self.base_dir, self.source, where)

    @classmethod
    def standalone(cls, base_dir: Path | None = None, source: str = "<python>") -> "BuildContext":
        """The context of a component built directly in Python, outside a run: the
        registry of everything installed (as ``sing-audit run`` would load it), paths from
        ``base_dir`` (default: the working folder)."""
        return cls(create_registry(), Path(base_dir) if base_dir is not None else Path.cwd(), source)


@dataclass
class Component:
    """A built component: what the config asked for (``kind``, ``name``, ``plugin``), the
    package that provides it, the object and its validated options."""

    kind: str
    name: str
    plugin: str
    package: str
    instance: Any
    options: Any


def resolve_options(context: BuildContext, kind: str, spec) -> tuple[Registered, Any]:
    """Look up ``spec.plugin`` and validate the spec's options with the plugin's own
    ``Options`` model. Returns ``(registered, options)``; an options model with a
    ``base_dir`` field receives the context's folder, so relative paths resolve like the
    rest of the config."""
    from pydantic import ValidationError

    from .config import format_validation_error

    where = context.where
    registered = context.registry.get(kind, spec.plugin, where=f"{context.source}: {where}.plugin")
    model = registered.options_model
    raw = spec.options()
    if model is None:
        if raw:
            raise ConfigError(f"{context.source}: {where}: plugin {spec.plugin!r} takes no options, got {sorted(raw)}")
        return registered, None
    if "base_dir" in model.model_fields and "base_dir" not in raw:
        raw["base_dir"] = context.base_dir
    try:
        return registered, model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, context.source, prefix=where)) from None


def _wants_context(factory: Any) -> bool:
    try:
        return "context" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def create_component(context: BuildContext, kind: str, spec, name: str | None = None) -> Component:
    """Build the component ``spec`` asks for: the one function every factory is called
    through. The factory receives its validated options, and the build context as
    ``context=`` when its signature takes one (``def __init__(self, options, context)``).
    A ``ValueError`` or ``TypeError`` from the factory is a config error at ``where``."""
    registered, options = resolve_options(context, kind, spec)
    factory = registered.factory
    args = () if options is None else (options,)
    kwargs = {"context": context} if _wants_context(factory) else {}
    try:
        instance = factory(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{context.source}: {context.where}: {exc}") from exc
    except BadInputError as exc:
        if exc.field is None:
            raise
        raise _located(exc, context) from exc
    return Component(kind, name or spec.plugin, spec.plugin, registered.package, instance, options)


def check_component(context: BuildContext, component: Component) -> None:
    """The pre-flight of one built component: its optional ``check()`` (cheap, loads
    nothing; see :mod:`sing_audit.components`). A :class:`BadInputError` it raises comes
    back naming the config field: ``audit.yaml: dataset.root: ...``."""
    check = getattr(component.instance, "check", None)
    if check is None:
        return
    try:
        check()
    except BadInputError as exc:
        raise _located(exc, context) from exc


def _located(exc: BadInputError, context: BuildContext) -> BadInputError:
    """``exc`` again (same class), its message prefixed with the file and the field."""
    where = f"{context.where}.{exc.field}" if exc.field else context.where
    try:
        return type(exc)(f"{context.source}: {where}: {exc}")
    except TypeError:  # a subclass with a constructor of its own: keep it as it is
        return exc
