"""The entry-point module (``[project.entry-points.sing_audit] tinynet = "sing_audit_tinynet.plugin"``).

sing-audit imports it and calls each ``@hookimpl`` with a ``register(name, factory)``
callback. Only the hooks this package implements appear here; the others are optional.
"""

from __future__ import annotations

from sing_audit import hookimpl

from .backbone import TinyNetBackbone
from .probe import PromptFlip
from .textures import TextureConcepts


@hookimpl
def register_backbones(register):
    register("tinynet", TinyNetBackbone)


@hookimpl
def register_concept_sets(register):
    register("dtd_textures", TextureConcepts)


@hookimpl
def register_probes(register):
    register("prompt_flip", PromptFlip)
