"""Hook specifications: one ``register_*`` hook per component kind.

Every hook receives a ``register(name, factory)`` callback. ``factory`` is a callable
with an ``Options`` attribute (a pydantic model of its options, see
:class:`sing_audit.components.PluginOptions`); ``factory(options)`` builds the component.
A plugin may implement a hook without the ``register`` argument's siblings, so hooks can
grow new arguments without breaking anyone.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("sing_audit")
hookimpl = pluggy.HookimplMarker("sing_audit")


@hookspec
def register_backbones(register):
    """Register classifier backbones (features + linear head).

    :param register: ``register(name, factory)``; factories build
        :class:`~sing_audit.components.ImageBackbone` or
        :class:`~sing_audit.components.FeatureBackbone`.
    """


@hookspec
def register_targets(register):
    """Register vision-language targets (image embeddings, text encoder).

    :param register: ``register(name, factory)``; factories build
        :class:`~sing_audit.components.ImageTarget` or
        :class:`~sing_audit.components.EmbeddingTarget`.
    """


@hookspec
def register_translators(register):
    """Register translators from classifier features to target embeddings.

    :param register: ``register(name, factory)``; factories build
        :class:`~sing_audit.components.Translator`.
    """


@hookspec
def register_probes(register):
    """Register probes: measurements on one model's features, head and translator.

    :param register: ``register(name, factory)``; factories build
        :class:`~sing_audit.probes.Probe`.
    """


@hookspec
def register_datasets(register):
    """Register image datasets.

    :param register: ``register(name, factory)``; factories build
        :class:`~sing_audit.components.ImageDataset`.
    """


@hookspec
def register_concept_sets(register):
    """Register open-vocabulary concept sets (lists of words or phrases).

    :param register: ``register(name, factory)``; factories build objects with a
        ``concepts() -> list[str]`` method.
    """


@hookspec
def register_reporters(register):
    """Register reporters (output formats written from the typed result alone).

    :param register: ``register(name, factory)``; factories build
        :class:`~sing_audit.components.Reporter` (answering to the formats in their
        ``formats`` attribute).
    """


@hookspec
def register_report_sections(register):
    """Register sections of the HTML and PDF reports (a probe ships its own beside it).

    :param register: ``register(key, section_class)``; each a
        :class:`~sing_audit.report_sections.ReportSection` subclass, rendered in
        ``order`` with its own template.
    """


@hookspec
def register_visualizers(register):
    """Register visualizers that render features or images as pictures for the report.

    :param register: ``register(name, factory)``.
    """


@hookspec
def register_head_folders(register):
    """Teach the head folder (:mod:`sing_audit.heads`) a module type that is an affine map.

    :param register: ``register(type_path, folder)``; ``type_path`` is the type's
        ``module.QualName`` (:func:`sing_audit.heads.type_path`, so the library that
        defines it is not imported to register it), ``folder(module)`` returns a
        :class:`sing_audit.heads.Affine`. It applies to that type and its subclasses.
    """


@hookspec
def register_commands(register):
    """Register ``sing-audit`` subcommands (``sing-audit export``, ``attest``, ...).

    :param register: ``register(name, factory)``; ``factory()`` builds a
        :class:`~sing_audit.commands.Command`. A name the core's own commands use
        (``run``, ``report``, ...) is refused.
    """
