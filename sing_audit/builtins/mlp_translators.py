"""Nonlinear translators: ``mlp3``, ``mlp4`` and ``residual_mlp`` (torch).

Each maps classifier features to target embeddings with a small network

- ``mlp3``: Linear → LayerNorm → GELU → Dropout, twice, then Linear (3 linear layers);
- ``mlp4``: the same block three times, then Linear (4 linear layers);
- ``residual_mlp``: an input projection, one residual block
  ``h + Linear(Dropout(GELU(LayerNorm(h))))``, then LayerNorm → GELU → Dropout → Linear,

trained with AdamW on ``mse``, ``cosine`` (1 − cos) or ``both``, with early stopping on a
held-out share of the training rows. The module layout (``layers.<i>.*`` for the plain
MLPs; ``input_proj``/``residual``/``output_proj`` for the residual one) is the one the SING
authors' reference code saves, so :mod:`sing_audit.builtins.sing_reference` reuses
:func:`build_network` to load their MLP checkpoints.

Inputs are standardised per dimension; targets are centred per dimension and divided by
one overall scale (so the MSE stays proportional to the raw MSE and the cosine is taken
in the raw target space). The statistics are part of :meth:`MLPTranslator.state`, with
every parameter and a small architecture record, so a reloaded translator predicts
exactly what the fitted one did. Training runs in float32; ``predict`` and
``torch_forward`` (the differentiable version, for steering by autograd) evaluate the same
parameters in float64.

Training never touches the global torch RNG: initialisation and dropout run inside
``torch.random.fork_rng`` seeded with ``seed``; the validation split and the batch order
come from a private ``torch.Generator``. The same seed, data and thread count give the
same translator.

Equivalent features of a nonlinear translator (``f − Π_n f``) lie off the data it was
fitted on, so its held-out fidelity says little about them: these translators are a
comparison next to the linear one, not the basis of a verdict.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from sing_audit.components import PluginOptions, Translator
from sing_audit.errors import ConfigError, DataError
from sing_audit.hookspecs import hookimpl

__all__ = [
    "ARCHITECTURES",
    "MLP3Translator",
    "MLP4Translator",
    "MLPTranslator",
    "ResidualMLPTranslator",
    "build_network",
]

log = logging.getLogger(__name__)

#: architecture name (the SING authors' spelling) -> code stored in ``state()["arch"]``
ARCHITECTURES: dict[str, int] = {"3layer": 3, "4layer": 4, "residual": 5}

_PREDICT_CHUNK = 8192

#: networks with fewer parameters run on one CPU thread unless ``threads`` says otherwise
_SMALL_NETWORK = 200_000


# --------------------------------------------------------------------------- networks


@functools.cache
def _network_classes():
    """The torch module classes, defined on first use so importing the plugin stays light."""
    import torch
    from torch import nn

    class PlainMLP(nn.Module):
        """``depth`` linear layers; LayerNorm, GELU and dropout between them."""

        def __init__(
            self, in_dim: int, hidden_dim: int, out_dim: int, depth: int, dropout: float
        ) -> None:
            super().__init__()
            mods: list[nn.Module] = []
            width = in_dim
            for _ in range(depth - 1):
                mods += [
                    nn.Linear(width, hidden_dim),
                    nn.LayerNorm(hidden_dim),
                    nn.GELU(),
                    nn.Dropout(dropout),
                ]
                width = hidden_dim
            mods.append(nn.Linear(width, out_dim))
            self.layers = nn.Sequential(*mods)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    class ResidualMLP(nn.Module):
        """Input projection, one pre-norm residual block, normalised output projection."""

        def __init__(
            self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float
        ) -> None:
            super().__init__()
            self.input_proj = nn.Linear(in_dim, hidden_dim)
            self.residual = nn.Sequential(
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, hidden_dim),
            )
            self.output_proj = nn.Sequential(
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, out_dim),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.input_proj(x)
            h = h + self.residual(h)
            return self.output_proj(h)

    class Standardised(nn.Module):
        """``T(f) = net((f − μ_f) / σ_f) · s_z + μ_z`` as one differentiable module."""

        def __init__(
            self, net: nn.Module, in_mean, in_scale, out_mean, out_scale
        ) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("in_mean", torch.as_tensor(in_mean))
            self.register_buffer("in_scale", torch.as_tensor(in_scale))
            self.register_buffer("out_mean", torch.as_tensor(out_mean))
            self.register_buffer("out_scale", torch.as_tensor(out_scale))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (
                self.net((x - self.in_mean) / self.in_scale) * self.out_scale
                + self.out_mean
            )

    return PlainMLP, ResidualMLP, Standardised


def build_network(
    architecture: str, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.1
):
    """A fresh ``torch.nn.Module`` of ``architecture`` (``3layer``, ``4layer`` or ``residual``).

    Parameters are initialised from the global torch RNG; callers that need determinism
    wrap the call in ``torch.random.fork_rng`` and seed it.
    """
    plain, residual, _ = _network_classes()
    if architecture == "3layer":
        return plain(in_dim, hidden_dim, out_dim, 3, dropout)
    if architecture == "4layer":
        return plain(in_dim, hidden_dim, out_dim, 4, dropout)
    if architecture == "residual":
        return residual(in_dim, hidden_dim, out_dim, dropout)
    raise ValueError(
        f"unknown translator architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
    )


def standardised_module(net, in_mean, in_scale, out_mean, out_scale):
    """Wrap ``net`` with input standardisation and output de-standardisation."""
    _, _, wrapper = _network_classes()
    return wrapper(net, in_mean, in_scale, out_mean, out_scale)


# --------------------------------------------------------------------------- translator


class MLPTranslator(Translator):
    """A torch MLP trained with AdamW and early stopping (see the module docstring)."""

    #: ``3layer``, ``4layer`` or ``residual`` (set by the subclasses)
    architecture: ClassVar[str] = ""
    #: registered name, for messages
    plugin_name: ClassVar[str] = ""

    class Options(PluginOptions):
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

    def __init__(self, options: MLPTranslator.Options | None = None):
        self.options = options if options is not None else self.Options()

    # ------------------------------------------------------------------ helpers

    @property
    def normalized_targets(self) -> bool:
        return self.options.normalize_targets

    def _name(self) -> str:
        return self.plugin_name or type(self).__name__

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise RuntimeError(
                f"{self._name()} translator is not fitted yet: call fit(features, targets) first"
            )

    def _device(self):
        import torch

        dev = torch.device(self.options.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"translator {self._name()}: device {self.options.device!r} asked for, but CUDA is not available"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(
                f"translator {self._name()}: device 'mps' asked for, but MPS is not available"
            )
        return dev

    def _threads(self, n_params: int):
        """Context manager: run torch on the configured number of CPU threads, then restore."""
        import contextlib

        import torch

        want = self.options.threads
        if want is None and n_params < _SMALL_NETWORK:
            want = 1

        @contextlib.contextmanager
        def scope():
            before = torch.get_num_threads()
            if want is None or want == before:
                yield
                return
            torch.set_num_threads(want)
            try:
                yield
            finally:
                torch.set_num_threads(before)

        return scope()

    @staticmethod
    def _as_matrix(x, what: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2:
            raise DataError(
                f"{what} must be a 2-D array (rows × dimensions), got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{what} contain NaN or infinite values")
        return arr

    # ------------------------------------------------------------------ fit

    def fit(self, features, targets, groups=None) -> MLPTranslator:
        import torch
        from tqdm.auto import tqdm

        from sing_audit.scores import unit_rows

        o = self.options
        x = self._as_matrix(features, "features")
        z = self._as_matrix(targets, "target embeddings")
        if x.shape[0] != z.shape[0]:
            raise DataError(
                f"features have {x.shape[0]} rows but target embeddings {z.shape[0]}"
            )
        n = x.shape[0]
        if n < 2:
            raise DataError(
                f"{self._name()} translator needs at least 2 rows to fit, got {n}"
            )
        if o.normalize_targets:
            z = unit_rows(z)

        in_mean = x.mean(axis=0)
        in_scale = x.std(axis=0)
        in_scale[~(in_scale > 1e-12)] = 1.0
        out_mean = z.mean(axis=0)
        out_scale = float(np.sqrt(np.mean(z.var(axis=0))))
        if not out_scale > 1e-12:
            out_scale = 1.0

        device = self._device()
        gen = torch.Generator().manual_seed(int(o.seed))
        order = torch.randperm(n, generator=gen)
        n_val = 0
        if o.validation_fraction > 0:
            n_val = min(max(1, round(o.validation_fraction * n)), n - 1)
        val_idx, train_idx = order[:n_val], order[n_val:]

        xs = torch.as_tensor((x - in_mean) / in_scale, dtype=torch.float32)
        zs = torch.as_tensor((z - out_mean) / out_scale, dtype=torch.float32)
        zraw = torch.as_tensor(z, dtype=torch.float32)
        x_tr, z_tr, r_tr = (
            xs[train_idx].to(device),
            zs[train_idx].to(device),
            zraw[train_idx].to(device),
        )
        x_va, z_va, r_va = (
            xs[val_idx].to(device),
            zs[val_idx].to(device),
            zraw[val_idx].to(device),
        )
        mean_t = torch.as_tensor(out_mean, dtype=torch.float32, device=device)

        def loss_fn(out, z_std, z_raw):
            terms = []
            if o.loss in ("mse", "both"):
                terms.append(torch.mean((out - z_std) ** 2))
            if o.loss in ("cosine", "both"):
                pred = out * out_scale + mean_t
                cos = torch.nn.functional.cosine_similarity(
                    pred, z_raw, dim=-1, eps=1e-12
                )
                weight = o.cosine_weight if o.loss == "both" else 1.0
                terms.append(weight * torch.mean(1.0 - cos))
            return sum(terms)

        hidden = o.hidden_dim or min(1024, max(x.shape[1], z.shape[1]))
        n_train = int(train_idx.numel())
        history: dict[str, Any] = {
            "train": [],
            "val": [],
            "best_val": math.inf,
            "best_epoch": 0,
            "best_state": None,
            "stopped_early": False,
        }
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(int(o.seed))
            net = build_network(
                self.architecture, x.shape[1], hidden, z.shape[1], o.dropout
            ).to(device)
            opt = torch.optim.AdamW(
                net.parameters(), lr=o.lr, weight_decay=o.weight_decay, foreach=True
            )
            bar = tqdm(
                range(o.epochs),
                desc=f"fit {self._name()}",
                unit="epoch",
                leave=False,
                disable=None if o.progress is None else not o.progress,
            )
            try:
                with self._threads(sum(p.numel() for p in net.parameters())):
                    for epoch in bar:
                        net.train()
                        perm = torch.randperm(n_train, generator=gen).to(device)
                        total = 0.0
                        for start in range(0, n_train, o.batch_size):
                            b = perm[start : start + o.batch_size]
                            opt.zero_grad(set_to_none=True)
                            loss = loss_fn(net(x_tr[b]), z_tr[b], r_tr[b])
                            loss.backward()
                            opt.step()
                            total += float(loss.detach()) * int(b.numel())
                        history["train"].append(total / n_train)
                        if n_val and self._validate(
                            net, loss_fn, (x_va, z_va, r_va), epoch, history, bar
                        ):
                            break
                        if not n_val:
                            bar.set_postfix(train=f"{history['train'][-1]:.4g}")
            finally:
                bar.close()
        if history["best_state"] is not None:
            net.load_state_dict(history["best_state"])
        best_epoch = history["best_epoch"] if n_val else len(history["train"])
        train_hist, val_hist = history["train"], history["val"]
        best_val, stopped_early = history["best_val"], history["stopped_early"]
        net = net.to("cpu").eval()

        self.net_ = net
        self.input_mean_, self.input_scale_ = in_mean, in_scale
        self.target_mean_, self.target_scale_ = out_mean, out_scale
        self.n_features_in_, self.n_targets_ = int(x.shape[1]), int(z.shape[1])
        self.hidden_dim_ = int(hidden)
        self.train_loss_ = np.asarray(train_hist, dtype=np.float64)
        self.val_loss_ = np.asarray(val_hist, dtype=np.float64)
        self.epochs_run_ = len(train_hist)
        self.best_epoch_ = int(best_epoch)
        self.best_val_loss_ = float(best_val) if n_val else None
        self.stopped_early_ = bool(stopped_early)
        self.n_train_, self.n_val_ = n - n_val, n_val
        return self

    def _validate(
        self, net, loss_fn, val, epoch: int, history: dict[str, Any], bar
    ) -> bool:
        """Score the validation rows after ``epoch``; keep the best weights; True = stop."""
        import torch

        o = self.options
        net.eval()
        with torch.no_grad():
            loss = float(loss_fn(net(val[0]), val[1], val[2]))
        history["val"].append(loss)
        if loss < history["best_val"] - o.min_delta:
            history["best_val"], history["best_epoch"] = loss, epoch + 1
            history["best_state"] = {
                k: v.detach().clone() for k, v in net.state_dict().items()
            }
        bar.set_postfix(
            train=f"{history['train'][-1]:.4g}",
            val=f"{loss:.4g}",
            best=f"{history['best_val']:.4g}",
        )
        if epoch + 1 - history["best_epoch"] >= o.patience:
            history["stopped_early"] = epoch + 1 < o.epochs
            return True
        return False

    # ------------------------------------------------------------------ predict

    def predict(self, features) -> np.ndarray:
        import torch

        self._check_fitted()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise DataError(
                f"{self._name()} translator was fitted on {self.n_features_in_} feature dimensions, got shape {x.shape}"
            )
        out = np.empty((x.shape[0], self.n_targets_), dtype=np.float64)
        with (
            torch.no_grad(),
            self._threads(sum(p.numel() for p in self.net_.parameters())),
        ):
            for start in range(0, x.shape[0], _PREDICT_CHUNK):
                chunk = torch.as_tensor(
                    x[start : start + _PREDICT_CHUNK], dtype=torch.float64
                )
                out[start : start + _PREDICT_CHUNK] = self.torch_forward(chunk).numpy()
        return out

    def linear_map(self):
        return None

    def _torch_source(self):
        self._check_fitted()
        return self.net_

    def torch_forward(self, x):
        """Differentiable ``T`` on a torch tensor (float64): ``predict`` for autograd (steering)."""
        import torch

        cache = getattr(self, "_torch_cache", None)
        if cache is None or cache[0] is not self._torch_source():
            cache = (self._torch_source(), self.torch_module(torch.float64))
            self._torch_cache = cache
        return cache[1](x.to(torch.float64))

    def torch_module(self, dtype=None):
        """``T`` as a differentiable ``torch.nn.Module`` (eval mode, a copy), normalisation
        included: for autograd (e.g. steering gradients). ``dtype`` defaults to float64."""
        import copy

        import torch

        self._check_fitted()
        dtype = dtype or torch.float64
        net = copy.deepcopy(self.net_).to(dtype).eval()
        mod = standardised_module(
            net,
            self.input_mean_,
            self.input_scale_,
            self.target_mean_,
            np.array(self.target_scale_),
        )
        return mod.to(dtype).eval()

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        out: dict[str, np.ndarray] = {
            "arch": np.array(
                [
                    ARCHITECTURES[self.architecture],
                    self.n_features_in_,
                    self.hidden_dim_,
                    self.n_targets_,
                ],
                dtype=np.int64,
            ),
            "input_mean": self.input_mean_,
            "input_scale": self.input_scale_,
            "target_mean": self.target_mean_,
            "target_scale": np.array([self.target_scale_], dtype=np.float64),
            "train_loss": self.train_loss_,
            "val_loss": self.val_loss_,
            "fit_info": np.array(
                [
                    self.epochs_run_,
                    self.best_epoch_,
                    np.nan if self.best_val_loss_ is None else self.best_val_loss_,
                    float(self.stopped_early_),
                    self.n_train_,
                    self.n_val_,
                ],
                dtype=np.float64,
            ),
        }
        for k, v in self.net_.state_dict().items():
            out[f"net.{k}"] = v.detach().cpu().numpy().copy()
        return out

    def load_state(self, state) -> MLPTranslator:
        import torch

        from sing_audit.weights import load_into

        arch = np.asarray(state["arch"]).astype(np.int64).reshape(-1)
        code = ARCHITECTURES[self.architecture]
        if arch.shape != (4,) or int(arch[0]) != code:
            names = {v: k for k, v in ARCHITECTURES.items()}
            found = names.get(int(arch[0]), "unknown") if arch.size else "unknown"
            raise ValueError(
                f"saved state is a {found!r} translator, not {self.architecture!r} ({self._name()})"
            )
        in_dim, hidden, out_dim = (int(a) for a in arch[1:])
        net = build_network(
            self.architecture, in_dim, hidden, out_dim, self.options.dropout
        )
        params = {
            k[len("net.") :]: torch.as_tensor(np.asarray(v))
            for k, v in state.items()
            if k.startswith("net.")
        }
        load_into(net, params, what=f"{self._name()} translator state")
        net.eval()
        info = np.asarray(state["fit_info"], dtype=np.float64).reshape(-1)
        self.net_ = net
        self.input_mean_ = np.asarray(state["input_mean"], dtype=np.float64)
        self.input_scale_ = np.asarray(state["input_scale"], dtype=np.float64)
        self.target_mean_ = np.asarray(state["target_mean"], dtype=np.float64)
        self.target_scale_ = float(np.asarray(state["target_scale"]).reshape(-1)[0])
        self.n_features_in_, self.n_targets_, self.hidden_dim_ = in_dim, out_dim, hidden
        self.train_loss_ = np.asarray(
            state.get("train_loss", np.zeros(0)), dtype=np.float64
        )
        self.val_loss_ = np.asarray(
            state.get("val_loss", np.zeros(0)), dtype=np.float64
        )
        self.epochs_run_ = int(info[0])
        self.best_epoch_ = int(info[1])
        self.best_val_loss_ = None if np.isnan(info[2]) else float(info[2])
        self.stopped_early_ = bool(info[3])
        self.n_train_, self.n_val_ = int(info[4]), int(info[5])
        return self

    def info(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "architecture": self.architecture,
            "hidden_dim": self.hidden_dim_,
            "loss": self.options.loss,
            "epochs_run": self.epochs_run_,
            "best_epoch": self.best_epoch_,
            "best_val_loss": self.best_val_loss_,
            "stopped_early": self.stopped_early_,
            "n_train": self.n_train_,
            "n_val": self.n_val_,
            "normalize_targets": self.options.normalize_targets,
        }


class MLP3Translator(MLPTranslator):
    """3-layer MLP (two hidden layers with LayerNorm, GELU and dropout)."""

    architecture = "3layer"
    plugin_name = "mlp3"


class MLP4Translator(MLPTranslator):
    """4-layer MLP (three hidden layers with LayerNorm, GELU and dropout)."""

    architecture = "4layer"
    plugin_name = "mlp4"


class ResidualMLPTranslator(MLPTranslator):
    """Residual MLP: input projection, one residual block, output projection."""

    architecture = "residual"
    plugin_name = "residual_mlp"


@hookimpl
def register_translators(register):
    register("mlp3", MLP3Translator)
    register("mlp4", MLP4Translator)
    register("residual_mlp", ResidualMLPTranslator)
