"""Saving and restoring a fitted MLP translator (``state()`` / ``load_state()``): every
parameter, the input/target normalisation and the training record, as numpy arrays."""

from __future__ import annotations

import numpy as np

from sing_audit.mlp import ARCHITECTURES, build_network
from sing_audit.weights import load_into

__all__ = ["restore_translator", "translator_state"]


def translator_state(translator) -> dict[str, np.ndarray]:
    """Every parameter of a fitted MLP translator, its normalisation and training record, and
    a small architecture record ``arch = [code, in, hidden, out]``."""
    translator._check_fitted()
    out: dict[str, np.ndarray] = {
        "arch": np.array(
            [
                ARCHITECTURES[translator.architecture],
                translator.n_features_in_,
                translator.hidden_dim_,
                translator.n_targets_,
            ],
            dtype=np.int64,
        ),
        "input_mean": translator.input_mean_,
        "input_scale": translator.input_scale_,
        "target_mean": translator.target_mean_,
        "target_scale": np.array([translator.target_scale_], dtype=np.float64),
        "train_loss": translator.train_loss_,
        "val_loss": translator.val_loss_,
        "fit_info": np.array(
            [
                translator.epochs_run_,
                translator.best_epoch_,
                np.nan if translator.best_val_loss_ is None else translator.best_val_loss_,
                float(translator.stopped_early_),
                translator.n_train_,
                translator.n_val_,
            ],
            dtype=np.float64,
        ),
    }
    for k, v in translator.net_.state_dict().items():
        out[f"net.{k}"] = v.detach().cpu().numpy().copy()
    return out


def restore_translator(translator, state) -> None:
    """Set a (fresh) MLP translator to what :func:`translator_state` saved; a state of
    another architecture is a ``ValueError``."""
    import torch

    from sing_audit.weights import load_into

    arch = np.asarray(state["arch"]).astype(np.int64).reshape(-1)
    code = ARCHITECTURES[translator.architecture]
    if arch.shape != (4,) or int(arch[0]) != code:
        names = {v: k for k, v in ARCHITECTURES.items()}
        found = names.get(int(arch[0]), "unknown") if arch.size else "unknown"
        raise ValueError(
            f"saved state is a {found!r} translator, not {translator.architecture!r} ({translator._name()})"
        )
    in_dim, hidden, out_dim = (int(a) for a in arch[1:])
    net = build_network(
        translator.architecture, in_dim, hidden, out_dim, translator.options.dropout
    )
    params = {
        k[len("net.") :]: torch.as_tensor(np.asarray(v))
        for k, v in state.items()
        if k.startswith("net.")
    }
    load_into(net, params, what=f"{translator._name()} translator state")
    net.eval()
    info = np.asarray(state["fit_info"], dtype=np.float64).reshape(-1)
    translator.net_ = net
    translator.input_mean_ = np.asarray(state["input_mean"], dtype=np.float64)
    translator.input_scale_ = np.asarray(state["input_scale"], dtype=np.float64)
    translator.target_mean_ = np.asarray(state["target_mean"], dtype=np.float64)
    translator.target_scale_ = float(np.asarray(state["target_scale"]).reshape(-1)[0])
    translator.n_features_in_, translator.n_targets_, translator.hidden_dim_ = in_dim, out_dim, hidden
    translator.train_loss_ = np.asarray(
        state.get("train_loss", np.zeros(0)), dtype=np.float64
    )
    translator.val_loss_ = np.asarray(
        state.get("val_loss", np.zeros(0)), dtype=np.float64
    )
    translator.epochs_run_ = int(info[0])
    translator.best_epoch_ = int(info[1])
    translator.best_val_loss_ = None if np.isnan(info[2]) else float(info[2])
    translator.stopped_early_ = bool(info[3])
    translator.n_train_, translator.n_val_ = int(info[4]), int(info[5])
