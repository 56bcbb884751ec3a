"""The ``sing_reference`` translator: translators published with the SING authors' code.

The reference code (github.com/harel314/SING-analyzing-semantic-invariants-classifiers)
keeps one folder per translator, ``translators/<model>/<name>/``, holding

``metadata.yaml``
    ``model_name``, ``translator_name``, ``architecture`` (``linear``, ``3layer``,
    ``4layer`` or ``residual``), ``embedding_backend`` (the target space; theirs is always
    ``kakao_karlo_v1_alpha_image_variations``), ``in_dim``, ``out_dim``, optional
    ``hidden_dim`` (defaults to ``in_dim``; ignored by ``linear``) and
    ``checkpoint_file`` (relative, normally ``best.pt``);
``best.pt``
    a ``torch.save``\\ d state dict: ``weight`` (out_dim × in_dim) and ``bias`` (out_dim)
    for ``linear``, the MLP's parameters otherwise (``layers.<i>.*``, or
    ``input_proj.*``/``residual.*``/``output_proj.*``), possibly nested under
    ``state_dict``, ``model_state_dict``, ``translator_state_dict`` or ``model``.

The map is applied to the raw classifier input features (no normalisation) and predicts
the raw (unnormalised) image embedding of Karlo's image encoder, which is OpenAI's CLIP
ViT-L/14 (``openai/clip-vit-large-patch14``, 768-d ``image_embeds``).

The metadata does not name the backbone checkpoint; the authors' ``configs/models.yaml``
does, and :data:`PUBLISHED_BACKBONES` copies it. A translator is tied to the backbone
checkpoint and target space it was fitted for: the same architecture with other weights
has another feature space. Note that the authors' ``dinovit1`` is timm's *supervised*
``vit_large_patch16_224`` (ImageNet-21k → 1k), not a DINO checkpoint.

``fit`` trains nothing: it checks the dimensions against the audit's data, measures the
published map's cosine on that data (``min_cosine`` can refuse a poor fit), and returns
``self``. ``best.pt`` is read with ``torch.load(weights_only=True)``; a pickle holding
anything but tensors is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from sing_audit.builtins.sing_reference_ids import backbone_mismatch
from sing_audit.builtins.sing_reference_folder import (
    KARLO_TARGET,
    PUBLISHED_BACKBONES,
    normalise_name,
    read_checkpoint,
    read_metadata,
    target_names,
)
from sing_audit.components import PluginOptions, Translator
from sing_audit.errors import DataError, WeightsError
from sing_audit.hookspecs import hookimpl
from sing_audit.mlp import CachedTorchForward, build_network

__all__ = ["SingReferenceTranslator"]

log = logging.getLogger(__name__)

class SingReferenceTranslator(CachedTorchForward, Translator):
    """A translator published with the SING authors' code (translators/<model>/<name>: metadata.yaml + best.pt)."""

    class Options(PluginOptions):
        path: Path = Field(
            description="folder holding metadata.yaml and best.pt (translators/<model>/<name>), relative to the config's folder"
        )
        expect_backbone: str | None = Field(
            None,
            description="the backbone checkpoint the audit uses (e.g. timm/vit_large_patch16_224.augreg_in21k_ft_in1k, "
            "or the authors' model name); refused when the translator was fitted on another one",
        )
        expect_target: str | None = Field(
            None,
            description="the target space the audit uses (e.g. openai/clip-vit-large-patch14, ViT-L-14/openai, karlo); "
            "refused when the translator maps into another one",
        )
        min_cosine: float | None = Field(
            None,
            ge=-1.0,
            le=1.0,
            description="refuse the translator when its mean cosine on the audit's own data is below this",
        )
        base_dir: Path | None = Field(
            None, description="folder a relative path starts from (set by the host)"
        )

        @field_validator("expect_backbone", "expect_target")
        @classmethod
        def _strip(cls, v: str | None) -> str | None:
            if v is None:
                return None
            v = v.strip()
            if not v:
                raise ValueError("must not be empty (leave it out to skip the check)")
            return v

    def __init__(self, options: SingReferenceTranslator.Options):
        self.options = options
        folder = Path(options.path).expanduser()
        if not folder.is_absolute():
            folder = (
                Path(options.base_dir) if options.base_dir is not None else Path.cwd()
            ) / folder
        self.folder = folder.resolve()
        if not self.folder.is_dir():
            raise WeightsError(
                f"SING reference translator folder not found: {self.folder} (the folder holding metadata.yaml and best.pt; "
                "relative paths start at the config's folder)"
            )
        self.metadata = read_metadata(self.folder / "metadata.yaml")
        meta = self.metadata
        for key, name in (
            ("model_name", self.folder.parent.name),
            ("translator_name", self.folder.name),
        ):
            if meta[key] != name:
                log.warning(
                    "%s: metadata %s is %r but the folder is named %r",
                    self.folder,
                    key,
                    meta[key],
                    name,
                )
        self._check_expectations()
        self.checkpoint_path = self.folder / meta["checkpoint_file"]
        if not self.checkpoint_path.is_file():
            raise WeightsError(
                f"translator checkpoint not found: {self.checkpoint_path} (named by checkpoint_file in metadata.yaml)"
            )
        from sing_audit.weights import file_digest

        self.checkpoint_digest = file_digest(self.checkpoint_path)
        self._load(read_checkpoint(self.checkpoint_path))

    # ------------------------------------------------------------------ loading

    def _identity(self) -> str:
        meta = self.metadata
        pub = PUBLISHED_BACKBONES.get(meta["model_name"].lower())
        backbone = f"{meta['model_name']!r}" + (f" = {pub[0]} {pub[1]}" if pub else "")
        return f"features of {backbone} into the {meta['embedding_backend']!r} image-embedding space"

    def _check_expectations(self) -> None:
        o, meta = self.options, self.metadata
        tied = (
            "A translator is tied to the backbone checkpoint and target space it was fitted for: other weights, even of the "
            "same architecture, give another feature space, and another target has another embedding space, so its numbers "
            "would mean nothing. Use the translator published for your backbone and target, or fit one on your own data "
            "(translator: linear)."
        )
        why = None if o.expect_backbone is None else backbone_mismatch(meta["model_name"], o.expect_backbone)
        if why is not None:
            hint = ""
            if meta["model_name"].lower() == "dinovit1":
                hint = (
                    " Note: the authors' 'dinovit1' was fitted on timm's supervised vit_large_patch16_224 "
                    "(augreg_in21k_ft_in1k), not on a DINO checkpoint."
                )
            raise WeightsError(
                f"translator {self.folder} maps {self._identity()}, but the audit expects backbone "
                f"{o.expect_backbone!r}: {why}. {tied}{hint}"
            )
        if o.expect_target is not None and normalise_name(o.expect_target) not in target_names(
            meta["embedding_backend"]
        ):
            extra = ""
            if normalise_name(meta["embedding_backend"]) == normalise_name(KARLO_TARGET):
                extra = (
                    " (Karlo's image encoder is OpenAI's CLIP ViT-L/14: write openai/clip-vit-large-patch14 or "
                    "ViT-L-14/openai)"
                )
            raise WeightsError(
                f"translator {self.folder} maps {self._identity()}{extra}, but the audit expects target "
                f"{o.expect_target!r}. {tied}"
            )

    def _load(self, sd: dict[str, Any]) -> None:
        import torch

        from sing_audit.weights import load_into

        meta = self.metadata
        arch, m, n = meta["architecture"], meta["in_dim"], meta["out_dim"]
        if arch == "linear":
            if set(sd) != {"weight", "bias"}:
                raise WeightsError(
                    f"{self.checkpoint_path} should hold a linear translator ('weight' and 'bias', as metadata.yaml says "
                    f"architecture: linear), but its keys are {sorted(sd)[:8]}"
                )
            w, b = sd["weight"], sd["bias"]
            if tuple(w.shape) != (n, m) or tuple(b.shape) != (n,):
                raise WeightsError(
                    f"{self.checkpoint_path}: weight {tuple(w.shape)} and bias {tuple(b.shape)} do not match metadata.yaml "
                    f"(in_dim {m}, out_dim {n}: weight must be ({n}, {m}), bias ({n},))"
                )
            if not (torch.is_floating_point(w) and torch.is_floating_point(b)):
                raise WeightsError(
                    f"{self.checkpoint_path}: weight and bias must be floating point, got {w.dtype} and {b.dtype}"
                )
            self.weight_ = w.detach().to(torch.float64).numpy().copy()
            self.bias_ = b.detach().to(torch.float64).numpy().copy()
            if not (
                np.all(np.isfinite(self.weight_)) and np.all(np.isfinite(self.bias_))
            ):
                raise WeightsError(
                    f"{self.checkpoint_path}: weight or bias contains NaN or infinite values"
                )
            self.net_ = None
            return
        net = build_network(arch, m, meta["hidden_dim"], n, dropout=0.1)
        load_into(
            net,
            sd,
            what=f"SING reference translator {self.folder} (architecture {arch}, in_dim {m}, "
            f"hidden_dim {meta['hidden_dim']}, out_dim {n})",
        )
        self.net_ = net.to(torch.float64).eval()
        self.weight_ = self.bias_ = None

    # ------------------------------------------------------------------ translator API

    @property
    def normalized_targets(self) -> bool:
        return False

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(
                "SingReferenceTranslator is not fitted yet: call fit(features, targets) first (it trains nothing, "
                "but checks the published map against the audit's data)"
            )

    def _check_features(self, x: np.ndarray, what: str = "features") -> None:
        m = self.metadata["in_dim"]
        if x.ndim != 2 or x.shape[1] != m:
            got = f"are {x.shape[1]}-dimensional" if x.ndim == 2 else f"are not a matrix (shape {x.shape})"
            raise DataError(
                f"SING reference translator {self.folder} takes {m}-dimensional features (in_dim {m}: "
                f"{self._identity()}), but the audit's {what} {got}; {self.input_hint()}"
            )

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.net_ is None:
            return x @ self.weight_.T + self.bias_
        import torch

        with torch.no_grad():
            return self.net_(torch.as_tensor(x, dtype=torch.float64)).numpy()

    def input_dim(self) -> int:
        """``in_dim`` of ``metadata.yaml``: the width of the backbone's features it was fitted on."""
        return int(self.metadata["in_dim"])

    def input_hint(self) -> str:
        pub = PUBLISHED_BACKBONES.get(self.metadata["model_name"].lower())
        fitted = f"{pub[0]} {pub[1]}" if pub else repr(self.metadata["model_name"])
        return (
            f"this translator ({self.folder}) was fitted on the features of {fitted}: audit that backbone with it, "
            "use the translator published for your backbone, or fit one on the audit's data (translator: linear)"
        )

    def fit(self, features, targets, groups=None) -> SingReferenceTranslator:
        from sing_audit.scores import unit_rows

        x = np.asarray(features, dtype=np.float64)
        z = np.asarray(targets, dtype=np.float64)
        m, n = self.metadata["in_dim"], self.metadata["out_dim"]
        if x.ndim != 2 or z.ndim != 2:
            raise DataError(
                f"SING reference translator {self.folder}: features and target embeddings must be matrices, got "
                f"shapes {x.shape} and {z.shape}"
            )
        problems = []
        if x.shape[1] != m:  # the width is the backbone's, whichever rows (fold) this fit sees
            problems.append(f"the backbone's features are {x.shape[1]}-dimensional, not in_dim {m}")
        if z.shape[1] != n:
            problems.append(f"the target's embeddings are {z.shape[1]}-dimensional, not out_dim {n}")
        if x.shape[0] != z.shape[0]:
            problems.append(f"{x.shape[0]} feature rows come with {z.shape[0]} embedding rows")
        if problems:
            fix = (self.input_hint() if x.shape[1] != m else
                   "use the translator published for this backbone and target")
            raise DataError(
                f"SING reference translator {self.folder} maps {m}-dimensional features to {n}-dimensional embeddings "
                f"({self._identity()}), but {'; '.join(problems)}; {fix}"
            )
        pred = self._apply(x)
        cos = (
            float(np.mean(np.einsum("ij,ij->i", unit_rows(pred), unit_rows(z))))
            if x.shape[0]
            else float("nan")
        )
        if self.options.min_cosine is not None and not cos >= self.options.min_cosine:
            raise DataError(
                f"SING reference translator {self.folder} reaches a mean cosine of {cos:.3f} on the audit's data, below "
                f"min_cosine {self.options.min_cosine}: it does not fit these features and embeddings (another backbone "
                "checkpoint, preprocessing or target space?)"
            )
        self.fit_cosine_ = cos
        self.n_fit_ = int(x.shape[0])
        self.fitted_ = True
        return self

    def predict(self, features) -> np.ndarray:
        self._check_fitted()
        x = np.asarray(features, dtype=np.float64)
        self._check_features(x)
        return np.asarray(self._apply(x), dtype=np.float64)

    def linear_map(self):
        self._check_fitted()
        if self.net_ is not None:
            return None
        return self.weight_, self.bias_

    def _torch_source(self):
        self._check_fitted()
        return self.net_ if self.net_ is not None else self.weight_

    def torch_module(self, dtype=None):
        """``T`` as a differentiable ``torch.nn.Module`` (a copy, eval mode; float64 by default)."""
        import copy

        import torch

        self._check_fitted()
        dtype = dtype or torch.float64
        if self.net_ is not None:
            return copy.deepcopy(self.net_).to(dtype).eval()
        lin = torch.nn.Linear(self.metadata["in_dim"], self.metadata["out_dim"]).to(
            dtype
        )
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(self.weight_))
            lin.bias.copy_(torch.as_tensor(self.bias_))
        return lin.eval()

    def state(self) -> dict[str, np.ndarray]:
        """Only what ``fit`` found; the parameters stay in best.pt (checked by digest on reload)."""
        self._check_fitted()
        digest = bytes.fromhex(self.checkpoint_digest.split(":", 1)[1])
        return {
            "checkpoint_sha256": np.frombuffer(digest, dtype=np.uint8).copy(),
            "fit": np.array([self.fit_cosine_, self.n_fit_], dtype=np.float64),
        }

    def load_state(self, state) -> SingReferenceTranslator:
        digest = bytes(
            np.asarray(state["checkpoint_sha256"], dtype=np.uint8).tobytes()
        ).hex()
        if f"sha256:{digest}" != self.checkpoint_digest:
            raise ValueError(
                f"saved state belongs to another version of {self.checkpoint_path}"
            )
        fit = np.asarray(state["fit"], dtype=np.float64).reshape(-1)
        self.fit_cosine_, self.n_fit_ = float(fit[0]), int(fit[1])
        self.fitted_ = True
        return self

    def info(self) -> dict[str, Any]:
        meta = self.metadata
        pub = PUBLISHED_BACKBONES.get(meta["model_name"].lower())
        return {
            "model_name": meta["model_name"],
            "translator_name": meta["translator_name"],
            "architecture": meta["architecture"],
            "embedding_backend": meta["embedding_backend"],
            "backbone_checkpoint": f"{pub[0]}:{pub[1]}" if pub else None,
            "checkpoint_sha256": self.checkpoint_digest,
            "fit_cosine": getattr(self, "fit_cosine_", None),
        }


@hookimpl
def register_translators(register):
    register("sing_reference", SingReferenceTranslator)
