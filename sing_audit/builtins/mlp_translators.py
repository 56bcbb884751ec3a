"""Nonlinear translators: ``mlp3``, ``mlp4`` and ``residual_mlp`` (torch).

Each maps classifier features to target embeddings with a small network

- ``mlp3``: Linear → LayerNorm → GELU → Dropout, twice, then Linear (3 linear layers);
- ``mlp4``: the same block three times, then Linear (4 linear layers);
- ``residual_mlp``: an input projection, one residual block
  ``h + Linear(Dropout(GELU(LayerNorm(h))))``, then LayerNorm → GELU → Dropout → Linear,

trained with AdamW on ``mse``, ``cosine`` (1 − cos) or ``both``, with early stopping on a
held-out share of the training rows. The module layout (``layers.<i>.*`` for the plain
MLPs; ``input_proj``/``residual``/``output_proj`` for the residual one) is the one the SING
authors' reference code saves, so the ``sing_reference`` translator loads their MLP
checkpoints with the same builder (:func:`sing_audit.mlp.build_network`).

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

import logging
import math
from typing import Any, ClassVar

import numpy as np

from sing_audit.builtins.mlp_options import MLPOptions
from sing_audit.builtins.mlp_state import restore_translator, translator_state
from sing_audit.components import Translator
from sing_audit.errors import ConfigError, DataError
from sing_audit.hookspecs import hookimpl
from sing_audit.progress import progress_is_quiet
from sing_audit.mlp import (
    SMALL_NETWORK,
    CachedTorchForward,
    build_network,
    standardised_module,
    torch_threads,
)

__all__ = [
    "MLP3Translator",
    "MLP4Translator",
    "MLPTranslator",
    "ResidualMLPTranslator",
]

log = logging.getLogger(__name__)

_PREDICT_CHUNK = 8192



# --------------------------------------------------------------------------- translator


class MLPTranslator(CachedTorchForward, Translator):
    """A torch MLP trained with AdamW and early stopping (see the module docstring)."""

    #: ``3layer``, ``4layer`` or ``residual`` (set by the subclasses)
    architecture: ClassVar[str] = ""
    #: registered name, for messages
    plugin_name: ClassVar[str] = ""

    Options = MLPOptions

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
        want = self.options.threads
        return torch_threads(1 if want is None and n_params < SMALL_NETWORK else want)

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
                disable=True if progress_is_quiet() else None if o.progress is None else not o.progress,
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
        return translator_state(self)

    def load_state(self, state) -> MLPTranslator:
        restore_translator(self, state)
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
