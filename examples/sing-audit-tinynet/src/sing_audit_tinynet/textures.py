"""The ``dtd_textures`` concept set: the 47 categories of the Describable Textures Dataset
(Cimpoi et al., CVPR 2014), for the ``concepts`` probe::

    probes:
      - plugin: concepts
        sets: [dtd_textures]
"""

from __future__ import annotations

from typing import Literal

from sing_audit.components import PluginOptions
from sing_audit.concepts import ConceptSet

__all__ = ["DTD_TEXTURES", "TextureConcepts"]

DTD_TEXTURES: tuple[str, ...] = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
    "crosshatched", "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy",
    "grid", "grooved", "honeycombed", "interlaced", "knitted", "lacelike", "lined", "marbled",
    "matted", "meshed", "paisley", "perforated", "pitted", "pleated", "polka-dotted", "porous",
    "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained", "stratified", "striped",
    "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
)


class TextureConcepts(ConceptSet):
    """The 47 texture words of the Describable Textures Dataset, as an adjective each ("striped")."""

    class Options(PluginOptions):
        suffix: Literal["", " texture"] = ""  # "striped" or "striped texture"

    name = "dtd_textures"
    version = "1"

    def __init__(self, options: TextureConcepts.Options | None = None) -> None:
        self.options = options or self.Options()

    def concepts(self) -> list[str]:
        return [word + self.options.suffix for word in DTD_TEXTURES]
