"""Input-space probes: patch-embedding null space, Jacobian spectrum, encoder
null space, embedding matching, one module each; the math is in :mod:`sing_audit.input_space`.

These probes need the backbone's torch model and the preprocessed images: they set
``needs_backbone``, and the runner fills two context attributes for them (``run`` raises
:class:`ConfigError` when they are missing, e.g. for precomputed features):

``ctx.backbone``
    the loaded :class:`~sing_audit.components.ImageBackbone` of this model (its ``.model``
    a torch module in eval mode on its device; ``.data_config()`` giving ``mean``/``std``
    of the normalisation), or ``None`` for feature-only backbones (precomputed).
``ctx.images``
    ``images(rows) -> torch.Tensor``: the preprocessed images (exactly what
    ``backbone.features`` consumes: resized, cropped, normalised; float, k×C×H×W) of the
    given row indices of ``ctx.features`` (a 1-D int array). A tensor/array of all images
    is accepted too; the runner passes the loader, as probes read only a few rows.

Each probe also has an entry point on a model and a batch directly (``run_on``), used by
the tests and usable from Python without an audit.

**Semantics of equivalent images** . ``patch_embed_null`` and
``embedding_match`` produce equivalent images (the classifier cannot tell them from the
original, or sees another image in them). When the audit's target is an
:class:`~sing_audit.components.ImageTarget`, they set ``needs_target`` (the runner loads
``ctx.target``) and score every original/equivalent pair with the target's own image
encoder through :meth:`~sing_audit.components.ImageTarget.encode_pixels`: both images are
mapped from the backbone's normalised input back to float pixels (``x·std + mean``, not
clamped, not rounded) and embedded; IS is the angle between the two embeddings and AS the
change of angle toward the image's class prompt (``ctx.class_text``), see
:func:`sing_audit.input_space.equivalent_image_scores`. The summary's
``target_semantics`` holds them; with a precomputed (embedding-only) target, or one that
cannot embed float pixels, it says why nothing was scored instead of failing.
``encoder_null`` is not scored: its noise lives after the patch embedding, so it has no
image the target could see.
"""

from __future__ import annotations

from sing_audit.builtins.input_probes.common import (
    EquivalentImageScore,
    Stat,
    TargetSemantics,
    context_inputs,
    png_base64,
    score_equivalent_images,
)
from sing_audit.builtins.input_probes.embedding_match import EmbeddingMatchProbe, EmbeddingMatchSummary
from sing_audit.builtins.input_probes.encoder_null import EncoderNullProbe, EncoderNullSummary
from sing_audit.builtins.input_probes.jacobian import JacobianProbe, JacobianSummary
from sing_audit.builtins.input_probes.patch_embed_null import (
    EquivalentImage,
    PatchEmbedNullProbe,
    PatchEmbedNullSummary,
)
from sing_audit.hookspecs import hookimpl

__all__ = [
    "PatchEmbedNullProbe",
    "JacobianProbe",
    "EncoderNullProbe",
    "EmbeddingMatchProbe",
    "context_inputs",
    "png_base64",
    "TargetSemantics",
    "EquivalentImageScore",
    "score_equivalent_images",
    "Stat",
    "EquivalentImage",
    "PatchEmbedNullSummary",
    "JacobianSummary",
    "EncoderNullSummary",
    "EmbeddingMatchSummary",
]


@hookimpl
def register_probes(register):
    register("patch_embed_null", PatchEmbedNullProbe)
    register("jacobian", JacobianProbe)
    register("encoder_null", EncoderNullProbe)
    register("embedding_match", EmbeddingMatchProbe)
