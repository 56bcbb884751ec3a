"""Input-space probes of vision transformers: the math, with no I/O and no config.

Four measurements, each a set of functions on a torch module and a batch of
*normalised* input images ``x`` (N×C×H×W, exactly what the model consumes: resized,
centre-cropped, ``(pixel − mean) / std``):

1. **Patch-embedding null space** (Liu et al. 2024, NS-ViT). A ViT's patch embedding is
   the linear map ``W`` (D × C·p·p) applied to every p×p patch, so any per-patch
   perturbation in ``null(W)`` leaves every token, hence the output, unchanged.
   :func:`patch_null_space` computes it exactly (float64 SVD, numpy's ``matrix_rank``
   tolerance through :func:`sing_audit.nullspace.split_head`), for the full matrix and for
   each colour channel alone; :func:`bounded_null_perturbation` builds a perturbation
   that keeps pixels in ``[0, 1]`` (greedy per-basis-vector scaling, see there);
   :func:`run_patch_null` checks logits against a norm-matched permutation of the same
   noise and against the 8-bit rendering of the equivalent image.
2. **Jacobian spectrum and local Lipschitz constants** (Salman et al. 2024):
   :func:`jacobian_matrix` (exact, batched vector–Jacobian products),
   :func:`randomized_jacobian_svd` (Halko–Martinsson–Tropp with JVPs and VJPs),
   :func:`directional_lipschitz`; :func:`run_jacobian` ties them together.
3. **Approximate encoder null space** (NS-ViT): :func:`optimise_encoder_noise` learns one
   noise tensor added to the patch-embedding output that moves logits little while its
   norm grows; compared with a norm-matched random control.
4. **Embedding matching** (Salman et al.): :func:`match_embeddings` moves x by gradient
   descent until its embedding matches a target image's, pixels kept in range.
5. **Semantics of equivalent images**: :func:`equivalent_image_scores` turns a
   vision-language target's embeddings of original and equivalent images into IS and AS
   (no translator: the target's own image encoder sees both images).

Where null spaces live: the patch embedding acts on normalised inputs, so perturbations
are built in normalised space and mapped to pixels through the per-channel ``std``
(:func:`to_pixels`). Clamping to ``[0, 1]`` and 8-bit quantisation break exactness; the
functions keep float arrays and report separately how much invariance survives
quantisation.

Angles and spectra are computed in float64; the Jacobian probes run a float64 copy of the
model so that finite differences at small ε are not rounding noise.
"""

from __future__ import annotations

from ..scores import angles
from .pixels import image_to_patches, patches_to_image, valid_range, to_pixels, from_pixels, to_uint8
from .forward import output_drift
from .patch_null import (
    patch_embedding,
    PatchNullSpace,
    patch_null_space,
    channel_basis,
    bounded_null_perturbation,
    PatchNullResult,
    run_patch_null,
)
from .jacobian import (
    feature_fn,
    logits_fn,
    math_attention,
    jacobian_matrix,
    JacobianSpectrum,
    randomized_jacobian_svd,
    jacobian_spectrum,
    directional_lipschitz,
    JacobianResult,
    run_jacobian,
)
from .encoder_noise import EncoderNoiseResult, add_after_patch_embed, optimise_encoder_noise
from .embedding_match import EmbeddingMatchResult, match_embeddings
from .semantics import equivalent_image_scores

__all__ = [
    "PatchNullSpace",
    "patch_embedding",
    "patch_null_space",
    "channel_basis",
    "image_to_patches",
    "patches_to_image",
    "valid_range",
    "to_pixels",
    "from_pixels",
    "to_uint8",
    "bounded_null_perturbation",
    "output_drift",
    "PatchNullResult",
    "run_patch_null",
    "feature_fn",
    "logits_fn",
    "math_attention",
    "jacobian_matrix",
    "JacobianSpectrum",
    "jacobian_spectrum",
    "randomized_jacobian_svd",
    "directional_lipschitz",
    "JacobianResult",
    "run_jacobian",
    "EncoderNoiseResult",
    "add_after_patch_embed",
    "optimise_encoder_noise",
    "EmbeddingMatchResult",
    "match_embeddings",
    "equivalent_image_scores",
]
