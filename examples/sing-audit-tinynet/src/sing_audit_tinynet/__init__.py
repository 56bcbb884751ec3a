"""sing-audit-tinynet: an example third-party sing-audit plugin package.

It registers, through the ``sing_audit`` entry point ``tinynet``:

- backbone ``tinynet``: :class:`~sing_audit_tinynet.backbone.TinyNetBackbone`, a small
  hand-written CNN whose classifier is a custom module (a linear map times a learned
  temperature), which no built-in backbone can fold;
- concept set ``dtd_textures``: the 47 texture words of the Describable Textures Dataset;
- probe ``prompt_flip``: how often null removal changes the class prompt nearest to an
  image's translated feature.
"""

__version__ = "0.1.0"
