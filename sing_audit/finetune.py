"""Fine-tuning with approximate encoder null-space noise as augmentation.

What to do when the audit finds meaning hiding in a ViT's null space: make the model
*less* invariant in the wrong places, or *robustly* invariant in the right ones. The ANF
recipe (Liu et al., "Approximate Nullspace Augmented Finetuning", the NS-ViT line of work)
learns a noise on the patch-embedding output that the classifier barely notices
(:func:`sing_audit.input_space.optimise_encoder_noise`, the ``encoder_null`` probe), then
fine-tunes with that noise added after the patch embedding as an augmentation:

1. fit the noise on a calibration batch (the model in eval mode, its weights frozen);
2. every step, with probability ``noise_prob``, add the noise (a random sign, scaled by
   ``U(min_scale, 1)``) to the patch-embedding output and train on
   ``(1 − noise_weight)·CE(clean) + noise_weight·CE(noised)``; otherwise on ``CE(clean)``;
3. every ``refresh_every`` steps, refit the noise on the current model (its approximate
   null space moves as it trains).

Everything random goes through one ``torch.Generator`` seeded by ``seed``: the same
model, data order and options give the same history and weights. The function leaves
no hook behind and returns a typed :class:`FinetuneHistory`.

Usage (a tiny runnable example is in ``docs/input-space.md``)::

    history = finetune_with_null_noise(model, loader, options=NullNoiseOptions(steps=500, lr=1e-5))
    print(history.steps[-1].loss, history.noise_fits[-1].norm)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .input_space import add_after_patch_embed, optimise_encoder_noise

__all__ = ["FinetuneHistory", "NoiseFit", "NullNoiseOptions", "StepRecord", "finetune_with_null_noise"]


class NullNoiseOptions(BaseModel):
    """Options of :func:`finetune_with_null_noise`."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(100, ge=1, description="optimisation steps (batches drawn from the loader, cycling)")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.05, ge=0)
    noise_prob: float = Field(0.5, ge=0, le=1, description="probability that a step also trains on noised tokens")
    noise_weight: float = Field(0.5, ge=0, le=1, description="weight of the noised loss in a noised step")
    min_scale: float = Field(0.5, ge=0, le=1, description="noise scaled by U(min_scale, 1) each noised step")
    refresh_every: int = Field(0, ge=0, description="refit the noise every this many steps (0: fit once)")
    calibration_images: int = Field(32, ge=1, description="images of the first batches the noise is fitted on")
    # the encoder-null search (see sing_audit.input_space.optimise_encoder_noise)
    tolerance: float = Field(0.05, gt=0, description="mean relative logit change the noise may cause")
    per_token: bool = True
    start_norm: float = Field(1.0, gt=0)
    growth: float = Field(1.5, gt=1)
    max_rounds: int = Field(8, ge=1)
    noise_steps: int = Field(20, ge=1, description="Adam steps per radius of the noise search")
    noise_lr: float = Field(0.1, gt=0)
    seed: int = 0


class NoiseFit(BaseModel):
    """One fit of the encoder null-space noise."""

    step: int
    norm: float
    relative_norm: float | None
    fit_drift: float
    control_drift: float


class StepRecord(BaseModel):
    """One optimisation step. ``noised``: the step trained on noised tokens too."""

    step: int
    loss: float
    clean_loss: float
    noised_loss: float | None
    noised: bool
    #: norm of the noise added in this step (0 for a clean step)
    noise_norm: float


class FinetuneHistory(BaseModel):
    """What :func:`finetune_with_null_noise` did, step by step."""

    options: NullNoiseOptions
    steps: list[StepRecord]
    noise_fits: list[NoiseFit]

    @property
    def noised_steps(self) -> int:
        return sum(s.noised for s in self.steps)


def _cycle(loader: Iterable) -> Iterator:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yielded no batch")


def _split(batch) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        return batch["image"] if "image" in batch else batch["images"], batch["label"] if "label" in batch else batch["labels"]
    x, y = batch[0], batch[1]
    return x, y


def finetune_with_null_noise(
    model,
    loader: Iterable,
    *,
    options: NullNoiseOptions | None = None,
    optimizer=None,
    calibration=None,
    **overrides,
) -> FinetuneHistory:
    """Fine-tune a timm ViT with approximate encoder null-space noise as augmentation.

    :param model: a ViT-style module with a ``patch_embed`` submodule (timm
        ``VisionTransformer``), returning logits; trained in place (``train()`` mode during
        steps, restored to its previous mode at the end).
    :param loader: an iterable of ``(images, labels)`` batches (or dicts with ``image`` /
        ``label``): normalised B×C×H×W inputs at the model's resolution, integer labels.
        Cycled until ``options.steps`` batches were used.
    :param options: :class:`NullNoiseOptions`; keyword ``overrides`` replace its fields.
    :param optimizer: an optimiser over the parameters to train (default AdamW over
        every parameter with ``requires_grad``).
    :param calibration: images to fit the noise on (default: the first
        ``calibration_images`` images drawn from the loader, which are then trained on too).
    :returns: :class:`FinetuneHistory` (per-step losses, whether and how much noise was
        added, every noise fit).
    """
    import torch

    o = NullNoiseOptions.model_validate({**(options or NullNoiseOptions()).model_dump(), **overrides})
    if getattr(model, "patch_embed", None) is None:
        raise ValueError(f"{type(model).__name__} has no patch_embed module: null-noise fine-tuning needs a ViT-style model")
    param = next(model.parameters())
    was_training = model.training
    gen = torch.Generator().manual_seed(o.seed)
    batches = _cycle(loader)
    pending: list = []
    if calibration is None:
        got, xs = 0, []
        while got < o.calibration_images:
            b = next(batches)
            pending.append(b)
            x, _ = _split(b)
            xs.append(torch.as_tensor(x))
            got += int(xs[-1].shape[0])
        calibration = torch.cat(xs)[: o.calibration_images]
    calibration = torch.as_tensor(calibration).detach().to(param.device, param.dtype)

    fits: list[NoiseFit] = []

    def fit_noise(step: int) -> torch.Tensor:
        model.eval()
        res = optimise_encoder_noise(
            model, calibration, tolerance=o.tolerance, per_token=o.per_token, start_norm=o.start_norm,
            growth=o.growth, max_rounds=o.max_rounds, steps=o.noise_steps, lr=o.noise_lr, holdout=0.0,
            seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
        )
        fits.append(NoiseFit(
            step=step, norm=res.norm, relative_norm=res.relative_norm if res.relative_norm == res.relative_norm else None,
            fit_drift=res.fit_drift, control_drift=res.control_drift,
        ))
        return torch.as_tensor(res.noise).to(param.device, param.dtype)

    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, weight_decay=o.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    noise = fit_noise(0)
    ref: list = [None]
    records: list[StepRecord] = []
    try:
        with add_after_patch_embed(model, ref):
            for step in range(o.steps):
                if o.refresh_every and step > 0 and step % o.refresh_every == 0:
                    noise = fit_noise(step)
                model.train()
                b = pending.pop(0) if pending else next(batches)
                x, y = _split(b)
                x = torch.as_tensor(x).to(param.device, param.dtype)
                y = torch.as_tensor(y).to(param.device).long()
                # draw every random number of the step, whether used or not: the stream stays aligned
                u = float(torch.rand((), generator=gen))
                sign = 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0
                scale = o.min_scale + (1.0 - o.min_scale) * float(torch.rand((), generator=gen))
                noised = u < o.noise_prob and float(noise.norm()) > 0
                optimizer.zero_grad(set_to_none=True)
                ref[0] = None
                clean = loss_fn(model(x), y)
                if noised:
                    v = sign * scale * noise
                    ref[0] = v
                    noisy = loss_fn(model(x), y)
                    ref[0] = None
                    loss = (1.0 - o.noise_weight) * clean + o.noise_weight * noisy
                else:
                    loss = clean
                loss.backward()
                optimizer.step()
                records.append(StepRecord(
                    step=step, loss=float(loss.detach()), clean_loss=float(clean.detach()),
                    noised_loss=float(noisy.detach()) if noised else None, noised=bool(noised),
                    noise_norm=float(v.norm()) if noised else 0.0,
                ))
    finally:
        ref[0] = None
        model.train(was_training)
    return FinetuneHistory(options=o, steps=records, noise_fits=fits)
