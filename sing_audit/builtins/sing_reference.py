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
import re
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from sing_audit.components import PluginOptions, Translator
from sing_audit.errors import DataError, WeightsError
from sing_audit.hookspecs import hookimpl

__all__ = [
    "KARLO_TARGET",
    "PUBLISHED_BACKBONES",
    "SingReferenceTranslator",
    "read_metadata",
]

log = logging.getLogger(__name__)

#: the target space of every translator the authors published
KARLO_TARGET = "kakao_karlo_v1_alpha_image_variations"

#: names under which a user may declare the Karlo target space (compared after :func:`_norm`)
_TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    KARLO_TARGET: (
        KARLO_TARGET,
        "karlo",
        "kakaobrain/karlo-v1-alpha-image-variations",
        "kakaobrain/karlo-v1-alpha",
        "openai/clip-vit-large-patch14",
        "clip-vit-large-patch14",
        "ViT-L-14/openai",
        "ViT-L-14:openai",
        "open_clip:ViT-L-14:openai",
        "ViT-L/14 openai",
    ),
}

#: the authors' ``model_name`` -> (library, checkpoint, feature dimension), from their
#: ``configs/models.yaml``; timm names without a tag resolve to timm's default tag.
PUBLISHED_BACKBONES: dict[str, tuple[str, str, int]] = {
    "resnet": ("torchvision", "resnet50 (IMAGENET1K_V1)", 2048),
    "dinovit1": ("timm", "vit_large_patch16_224.augreg_in21k_ft_in1k", 1024),
    "bitresnet": ("timm", "resnetv2_50x1_bit.goog_in21k_ft_in1k", 2048),
    "resnext": ("timm", "resnext101_32x8d.fb_wsl_ig1b_ft_in1k", 2048),
    "efficientnet": ("timm", "tf_efficientnet_b0.ns_jft_in1k", 1280),
    "dinov2": ("transformers", "facebook/dinov2-large-imagenet1k-1-layer", 2048),
    "swin_large": ("timm", "swin_large_patch4_window7_224.ms_in22k_ft_in1k", 1536),
    "deit": ("timm", "deit3_large_patch16_224.fb_in1k", 1024),
    "densenet": ("torchvision", "densenet121 (IMAGENET1K_V1)", 1024),
    "eva02_large": ("timm", "eva02_large_patch14_448.mim_in22k_ft_in22k_in1k", 1024),
    "convnext": ("timm", "convnext_base.fb_in22k_ft_in1k", 1024),
    "vgg16": ("torchvision", "vgg16 (IMAGENET1K_V1)", 4096),
    "vgg19": ("torchvision", "vgg19 (IMAGENET1K_V1)", 4096),
}

#: further names of the same checkpoints a user may write in ``expect_backbone``
_BACKBONE_ALIASES: dict[str, tuple[str, ...]] = {
    # timm's ``tv_in1k`` tags are the torchvision IMAGENET1K_V1 weights (a bare "resnet50"
    # is ambiguous: timm's default is a1_in1k, torchvision's DEFAULT is IMAGENET1K_V2)
    "resnet": ("resnet50.tv_in1k", "resnet50.IMAGENET1K_V1"),
    "densenet": ("densenet121.tv_in1k", "densenet121.IMAGENET1K_V1"),
    "vgg16": ("vgg16.tv_in1k", "vgg16.IMAGENET1K_V1"),
    "vgg19": ("vgg19.tv_in1k", "vgg19.IMAGENET1K_V1"),
    # the authors wrote these without a tag; timm resolves them to its default tag
    "dinovit1": ("vit_large_patch16_224",),
    "swin_large": ("swin_large_patch4_window7_224",),
    "deit": ("deit3_large_patch16_224",),
}

_ARCHITECTURES = ("linear", "3layer", "4layer", "residual")
_REQUIRED = (
    "model_name",
    "translator_name",
    "architecture",
    "embedding_backend",
    "in_dim",
    "out_dim",
    "checkpoint_file",
)
_OPTIONAL = ("hidden_dim",)
_NESTED = "translator_state_dict"
_PREFIXES = (
    "timm:",
    "timm/",
    "torchvision:",
    "torchvision/",
    "transformers:",
    "hf-hub:",
    "hf_hub:",
    "hf:",
)


def _norm(name: str) -> str:
    """Compare names ignoring case and punctuation."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _norm_backbone(name: str) -> str:
    n = name.strip().lower()
    stripped = True
    while stripped:
        stripped = False
        for p in _PREFIXES:
            if n.startswith(p):
                n, stripped = n[len(p) :], True
    return _norm(n)


def backbone_names(model_name: str) -> set[str]:
    """Every normalised name that denotes the backbone checkpoint of ``model_name``."""
    names = {_norm_backbone(model_name)}
    pub = PUBLISHED_BACKBONES.get(model_name.lower())
    if pub is not None:
        names.add(_norm_backbone(pub[1]))
    for alias in _BACKBONE_ALIASES.get(model_name.lower(), ()):
        names.add(_norm_backbone(alias))
    return names


def target_names(backend: str) -> set[str]:
    """Every normalised name that denotes the target space ``backend``."""
    names = {_norm(backend)}
    for key, aliases in _TARGET_ALIASES.items():
        if _norm(key) == _norm(backend):
            names |= {_norm(a) for a in aliases}
    return names


def read_metadata(path: Path) -> dict[str, Any]:
    """Read and check ``metadata.yaml``; raise :class:`WeightsError` saying what is wrong."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(
            f"no metadata.yaml in {path.parent}: a SING reference translator folder holds metadata.yaml and best.pt "
            "(translators/<model>/<name>/ in the authors' repository)"
        ) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WeightsError(
            f"cannot read {path}: {exc.__class__.__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise WeightsError(
            f"{path} must be a mapping of metadata fields, got {type(data).__name__}"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise WeightsError(
            f"{path} lacks the field(s) {', '.join(missing)}; the SING reference format needs {', '.join(_REQUIRED)}"
        )
    extra = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if extra:
        log.warning(
            "%s has fields the SING reference format does not define: %s (ignored)",
            path,
            ", ".join(map(str, extra)),
        )
    out: dict[str, Any] = {}
    for key in (
        "model_name",
        "translator_name",
        "architecture",
        "embedding_backend",
        "checkpoint_file",
    ):
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise WeightsError(
                f"{path}: field {key!r} must be a non-empty string, got {value!r}"
            )
        out[key] = value.strip()
    out["architecture"] = out["architecture"].lower()
    if out["architecture"] not in _ARCHITECTURES:
        raise WeightsError(
            f"{path}: architecture {out['architecture']!r} is not one of {', '.join(_ARCHITECTURES)}"
        )
    for key in ("in_dim", "out_dim"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise WeightsError(
                f"{path}: field {key!r} must be a positive integer, got {value!r}"
            )
        out[key] = value
    hidden = data.get("hidden_dim", out["in_dim"])
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
        raise WeightsError(
            f"{path}: field 'hidden_dim' must be a positive integer, got {hidden!r}"
        )
    out["hidden_dim"] = hidden
    ckpt = PurePath(out["checkpoint_file"])
    if ckpt.is_absolute() or ".." in ckpt.parts:
        raise WeightsError(
            f"{path}: checkpoint_file must be a path inside the translator folder, got {out['checkpoint_file']!r}"
        )
    return out


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict in ``path``, read without unpickling anything but tensors."""
    import torch

    from sing_audit import weights

    try:
        return weights.load_state_dict(path)
    except WeightsError as exc:
        # the authors' loader also accepts {"translator_state_dict": {...}}; read it again
        # weights-only, with the same refusal of code (the file may have changed meanwhile)
        if _NESTED not in str(exc):
            raise
        obj = weights.torch_load_weights_only(path)
        inner = obj.get(_NESTED) if isinstance(obj, dict) else None
        if (
            not isinstance(inner, dict)
            or not inner
            or not all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            raise
        sd = {str(k): v for k, v in inner.items()}
        if all(k.startswith("_orig_mod.") for k in sd):
            sd = {k[len("_orig_mod.") :]: v for k, v in sd.items()}
        return sd


class SingReferenceTranslator(Translator):
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
        self._load(_read_checkpoint(self.checkpoint_path))

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
        if o.expect_backbone is not None and _norm_backbone(
            o.expect_backbone
        ) not in backbone_names(meta["model_name"]):
            hint = ""
            if meta["model_name"].lower() == "dinovit1":
                hint = (
                    " Note: the authors' 'dinovit1' was fitted on timm's supervised vit_large_patch16_224 "
                    "(augreg_in21k_ft_in1k), not on a DINO checkpoint."
                )
            raise WeightsError(
                f"translator {self.folder} maps {self._identity()}, but the audit expects backbone "
                f"{o.expect_backbone!r}. {tied}{hint}"
            )
        if o.expect_target is not None and _norm(o.expect_target) not in target_names(
            meta["embedding_backend"]
        ):
            extra = ""
            if _norm(meta["embedding_backend"]) == _norm(KARLO_TARGET):
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

        from sing_audit.builtins.mlp_translators import build_network
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
            raise DataError(
                f"SING reference translator {self.folder} takes {m}-dimensional features ({self._identity()}), but the "
                f"audit's {what} have shape {x.shape}"
            )

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.net_ is None:
            return x @ self.weight_.T + self.bias_
        import torch

        with torch.no_grad():
            return self.net_(torch.as_tensor(x, dtype=torch.float64)).numpy()

    def fit(self, features, targets, groups=None) -> SingReferenceTranslator:
        from sing_audit.scores import unit_rows

        x = np.asarray(features, dtype=np.float64)
        z = np.asarray(targets, dtype=np.float64)
        m, n = self.metadata["in_dim"], self.metadata["out_dim"]
        if (
            x.ndim != 2
            or z.ndim != 2
            or x.shape[1] != m
            or z.shape[1] != n
            or x.shape[0] != z.shape[0]
        ):
            raise DataError(
                f"SING reference translator {self.folder} maps {m}-dimensional features to {n}-dimensional embeddings "
                f"({self._identity()}), but the audit gives features of shape {x.shape} and target embeddings of shape "
                f"{z.shape}; use the translator published for this backbone and target"
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

    def torch_forward(self, x):
        """Differentiable ``T`` on a torch tensor (float64): ``predict`` for autograd (steering)."""
        import torch

        cache = getattr(self, "_torch_cache", None)
        if cache is None or cache[0] is not self._torch_source():
            cache = (self._torch_source(), self.torch_module(torch.float64))
            self._torch_cache = cache
        return cache[1](x.to(torch.float64))

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
