"""The options of the torch MLP translators (``mlp3``, ``mlp4``, ``residual_mlp``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from sing_audit.components import PluginOptions

__all__ = ["MLPOptions"]


class MLPOptions(PluginOptions):
    """Architecture width, training loss and schedule, early stopping, device and threads."""

    hidden_dim: int | None = Field(
        None,
        ge=1,
        description="width of the hidden layers (default: the larger of the input and output dimensions, at most 1024)",
    )
    dropout: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="dropout probability after each hidden layer",
    )
    loss: Literal["mse", "cosine", "both"] = Field(
        "mse",
        description="training loss: mse (standardised targets), cosine (1 − cos to the raw target), or both (their sum)",
    )
    cosine_weight: float = Field(
        1.0, ge=0.0, description="weight of the cosine term when loss is 'both'"
    )
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-2, ge=0.0, description="AdamW weight decay")
    epochs: int = Field(
        200, ge=1, description="maximum number of passes over the training rows"
    )
    batch_size: int = Field(256, ge=1, description="rows per optimisation step")
    patience: int = Field(
        10,
        ge=1,
        description="stop after this many epochs without a better validation loss",
    )
    min_delta: float = Field(
        0.0,
        ge=0.0,
        description="smallest decrease of the validation loss that counts as better",
    )
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="share of the training rows held out for early stopping (0: no early stopping, train all epochs)",
    )
    normalize_targets: bool = Field(
        False, description="fit unit-normalised target embeddings"
    )
    seed: int = Field(
        0,
        description="seed of initialisation, dropout, validation split and batch order",
    )
    device: str = Field(
        "cpu", description="torch device to train on: cpu, cuda, cuda:N or mps"
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads while fitting and predicting (default: 1 for small networks, where "
        "thread start-up costs more than it saves, else torch's own setting)",
    )
    progress: bool | None = Field(
        None, description="show a progress bar (default: only on a terminal)"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {v!r}")
        return v
