"""The ``prompt_flip`` probe: does null removal change which class prompt an image looks like?

For each image, the class prompt nearest to ``T(f)`` (largest cosine with the unit class
text embeddings) and the one nearest to ``T(f̃)``, ``f̃ = f − Π_n f``. The classifier's
logits do not change under null removal (exact rule), so a flip means the null space
carried what the vision-language space reads as class identity.

Per image (CSV column): ``prompt_flip`` (1.0 flipped, 0.0 not). Summary
(``results.json`` → ``models[i].probes.prompt_flip``)::

    {"flip_rate": float, "flips": int, "n": int,
     "to_own_class": int,      # flips that land on the image's own class prompt
     "per_class": {class_name: flip rate}}
"""

from __future__ import annotations

import numpy as np

from sing_audit.components import PluginOptions
from sing_audit.nullspace import remove_null
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, row_chunks

__all__ = ["PromptFlip", "nearest_prompt"]


def nearest_prompt(embeddings: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """Index of the most similar class prompt per row: B×n, c×n (unit rows) -> B ints."""
    e = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    return np.argmax(unit @ np.asarray(class_text, dtype=np.float64).T, axis=1)


class PromptFlip(Probe):
    """Share of images whose nearest class prompt changes when their null component is removed."""

    class Options(PluginOptions):
        pass

    def __init__(self, options: PromptFlip.Options | None = None) -> None:
        self.options = options or self.Options()

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        n = ctx.features.shape[0]
        flips = np.zeros(n)
        to_own = 0
        for rows in row_chunks(n):
            t_f = ctx.translated[rows]
            if ctx.subspaces.null_dim == 0:  # f̃ = f: nothing can flip
                continue
            removed = remove_null(np.asarray(ctx.features[rows], dtype=np.float64), ctx.subspaces)
            before = nearest_prompt(t_f, ctx.class_text)
            after = nearest_prompt(ctx.translate(removed, rows), ctx.class_text)
            changed = before != after
            flips[rows] = changed
            to_own += int(np.count_nonzero(changed & (after == ctx.labels[rows])))
        per_class = {}
        for k in np.unique(ctx.labels):
            mask = ctx.labels == k
            per_class[ctx.class_names[int(k)]] = float(flips[mask].mean())
        summary = {
            "flip_rate": float(flips.mean()) if n else None,
            "flips": int(flips.sum()),
            "n": int(n),
            "to_own_class": to_own,
            "per_class": per_class,
        }
        return ProbeOutput(per_image={"prompt_flip": flips}, summary=summary)
