"""DINO and DINOv2 ViTs with the linear heads of each project's linear evaluation.

The self-supervised checkpoints in timm have no classifier. Each project trained linear
classifiers on frozen features it builds in its own way, and published them; this
backbone rebuilds those features exactly and loads the published head file.

Layouts, how each project builds the classifier input from the final-normed tokens, are
in :mod:`sing_audit_timm.dino_layouts`.

Position embeddings are interpolated as the original models do at run time (timm's own
resampling differs): bicubic with the ``+0.1`` scale-factor offset and no antialiasing
for DINO and DINOv2, bicubic to the exact size with antialiasing for DINOv2 with
registers (``interpolate_offset=0.0, interpolate_antialias=True`` in
``dinov2/hub/classifiers.py``). Preprocessing is both projects' evaluation transform:
resize the short side to ``img_size·256/224`` (bicubic), centre crop ``img_size``,
ImageNet mean and std.

Head files: DINO's ``*_linearweights.pth`` (``{"state_dict": {"module.linear.weight",
"module.linear.bias"}, …}``), DINOv2's ``*_linear_head.pth`` / ``*_linear4_head.pth``
(``{"weight", "bias"}``), a DINOv2 ``eval/linear.py`` checkpoint with ``head_key`` naming
one classifier, or the same tensors as ``.safetensors``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import ConfigError, WeightsError, exception_summary
from sing_audit.hookspecs import hookimpl
from sing_audit.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sing_audit.transforms import resize_crop_transform
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    hub_offline,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
)

from .classes import imagenet_class_info
from .dino_forward import block_outputs, check_vit_structure, layout_features, native_grid_side
from .dino_layouts import (
    LAYOUTS,
    Layout,
    LayoutName,
    check_pretrained_is_dino,
    choose_layout,
    find_head_file,
    linear_from_head,
    random_linear,
    read_linear_head,
)
from .pretrained import SOURCE_PREFIXES, check_architecture, check_cached, check_tag

__all__ = ["DinoViTBackbone"]

class DinoViTBackbone(ImageBackbone):
    """A DINO/DINOv2 ViT from timm + the linear head of its project's linear evaluation."""

    class Options(ModelOptions):
        model: str = Field(
            min_length=1,
            description="timm name: vit_small_patch16_224.dino, vit_base_patch8_224.dino, "
            "vit_large_patch14_dinov2.lvd142m, vit_small_patch14_reg4_dinov2.lvd142m, …",
        )
        head: str = Field(
            min_length=1,
            description="the linear head file (DINO *_linearweights.pth, DINOv2 *_linear_head.pth / "
            "*_linear4_head.pth, or .safetensors), or random (pipeline checks only)",
        )
        layout: LayoutName | None = Field(
            None,
            description="how features are built: dino_last4_cls | dino_cls_avgpool | dinov2_linear | "
            "dinov2_linear4 (default: inferred from the model name and the head file)",
        )
        head_key: str | None = Field(None, description="prefix of weight/bias in a head file holding several classifiers")
        img_size: int = Field(224, ge=8, description="centre-crop size (resize: img_size·256/224)")
        num_classes: int = Field(1000, ge=1, description="classes of a random head (head: random only)")

        @field_validator("head")
        @classmethod
        def _strip_head(cls, v: str) -> str:
            v = v.strip()
            if not v:
                raise ValueError("must not be empty")
            return v

    plugin_name = "dino_vit"

    def __init__(self, options: DinoViTBackbone.Options | dict[str, Any]) -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.model = None
        self.linear = None
        self.device = "cpu"
        self.weights_digest: str | None = None
        self._resolved: ResolvedWeights | None = None
        self._head_path: Path | None = None
        self._head_digest: str | None = None
        self._head_tensors = None
        self._meta_model = None
        self._layout: tuple[str, str] | None = None
        self.random_head = options.head.lower() == "random"
        self.random_backbone = options.weights.strip().lower() == "random"
        self.random_weights = self.random_head or self.random_backbone
        self.validate()

    def validate(self) -> None:
        """Check the options without building the model (no network): errors at validation time.

        The model name and tag, the weights and head files, the layout (from the option, the
        model name or the head's shape: see :meth:`_resolve_layout`), and that pretrained
        weights are DINO's and — when the hub is known to be offline — in the local cache.
        Called by the constructor.
        """
        self._check_model_name()
        w = self.resolved_weights
        _ = self.head_path
        self._resolve_layout()
        if w.kind in ("pretrained", "tag"):
            name = self._pretrained_name()
            check_pretrained_is_dino(name, self.layout().family)
            if hub_offline():
                check_cached(name)

    def _pretrained_name(self) -> str:
        arch, tag = self._arch_and_tag()
        return f"{arch}.{tag}" if tag else arch

    # ------------------------------------------------------------------ names

    def _arch_and_tag(self) -> tuple[str, str | None]:
        arch, _, tag = self.options.model.partition(".")
        w = self.resolved_weights
        if w.kind == "tag":
            if tag and tag != w.value:
                raise WeightsError(
                    f"model {self.options.model!r} already names tag {tag!r} but weights asks for {w.value!r}; "
                    "give the tag in one place only"
                )
            tag = w.value
        return arch, (tag or None)

    def _check_model_name(self) -> None:
        arch, tag = self._arch_and_tag()
        if self.options.model.startswith(SOURCE_PREFIXES):
            raise ConfigError(
                "dino_vit takes a timm architecture name (e.g. vit_small_patch14_dinov2.lvd142m); "
                "for weights in a local file set weights: <file>"
            )
        check_architecture(arch, "vit_*")
        if tag is not None:
            check_tag(arch, tag)

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            self._resolved = resolve_weights(self.options.weights, self.options.base_dir)
        return self._resolved

    @property
    def head_path(self) -> Path | None:
        if self.random_head:
            return None
        if self._head_path is None:
            self._head_path = find_head_file(self.options.head, self.options.base_dir)
        return self._head_path

    def _head(self):
        if self._head_tensors is None and not self.random_head:
            self._head_tensors = read_linear_head(self.head_path, self.options.head_key)
        return self._head_tensors

    # ------------------------------------------------------------------ model structure

    def _create_kwargs(self) -> dict[str, Any]:
        return {"num_classes": 0}

    def _meta(self):
        """The architecture without weights (meta device): embed dim, patch size, prefix tokens."""
        if self._meta_model is None:
            self._check_model_name()
            arch, _ = self._arch_and_tag()
            self._meta_model = self._create_meta(arch, **self._create_kwargs())
            check_vit_structure(self._meta_model, self.options.model)
        return self._meta_model

    @staticmethod
    def _create_skip_init(arch: str, **kwargs: Any):
        """The architecture with timm's (slow) initialisation skipped, global RNG untouched."""
        import timm
        import torch

        with torch.random.fork_rng(devices=[]):
            try:
                return timm.create_model(arch, pretrained=False, weight_init="skip", **kwargs)
            except TypeError:
                return timm.create_model(arch, pretrained=False, **kwargs)

    def _create_meta(self, arch: str, **kwargs: Any):
        import torch

        with torch.device("meta"):
            return self._create_skip_init(arch, **kwargs)

    def _family_from_name(self) -> str | None:
        arch, tag = self._arch_and_tag()
        if "dinov2" in arch:
            return "dinov2"
        if tag is not None and tag.split("_")[0] == "dino":
            return "dino"
        return None

    def layout(self) -> Layout:
        return LAYOUTS[self._resolve_layout()[0]]

    def _resolve_layout(self) -> tuple[str, str]:
        """``(layout name, how it was chosen)``: :func:`~sing_audit_timm.dino_layouts.choose_layout`."""
        if self._layout is None:
            head = self._head()
            arch, _ = self._arch_and_tag()
            self._layout = choose_layout(self.options, self._meta(), head, self._family_from_name(), arch, self.head_path)
        return self._layout

    def pos_embed_mode(self) -> str:
        """``"size"`` for DINOv2 with registers, ``"offset"`` otherwise (see the module doc)."""
        return "size" if int(getattr(self._meta(), "num_reg_tokens", 0) or 0) > 0 else "offset"

    # ------------------------------------------------------------------ loading

    def load(self, device: str = "cpu") -> None:
        import timm
        import torch

        self._check_model_name()
        self._resolve_layout()
        arch, _tag = self._arch_and_tag()
        w = self.resolved_weights
        kwargs = self._create_kwargs()
        if w.kind in ("pretrained", "tag"):
            name = self._pretrained_name()
            check_pretrained_is_dino(name, self.layout().family)
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:
                raise WeightsError(
                    f"the pretrained weights of timm model {name!r} could not be fetched or loaded "
                    f"({exception_summary(exc)}); without network access, download them elsewhere and "
                    "set weights: <local file>, or set weights: random for a smoke test (never a silent fallback)"
                ) from exc
        elif w.kind == "file":
            sd = load_state_dict(w.path)
            meta = self._meta()
            original = "mask_token" in sd or "register_tokens" in sd  # Meta's dinov2_vit*14*_pretrain.pth
            side = native_grid_side(sd, meta, prefix_with_pos=1 if original else None)
            if side is not None and (side, side) != tuple(meta.patch_embed.grid_size):
                # build at the file's grid so that its position embedding is used untouched
                kwargs["img_size"] = side * int(meta.patch_embed.patch_size[0])
                meta = self._create_meta(arch, **kwargs)
            if original:  # timm's own conversion of the original DINOv2 layout
                from timm.models.vision_transformer import checkpoint_filter_fn

                if "mask_token" not in sd:
                    sd = {**sd, "mask_token": torch.zeros(1)}
                sd = checkpoint_filter_fn(dict(sd), meta)
            model = self._create_skip_init(arch, **kwargs)  # every parameter comes from the file
            load_into(model, sd, what=f"timm model {arch!r} from {w.path}")
        else:  # random, explicitly asked for
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                model = timm.create_model(arch, pretrained=False, **kwargs)
        check_vit_structure(model, self.options.model)
        model.eval().to(device)
        self.model = model
        self.device = device
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)
        if self.random_head:
            linear = random_linear(int(model.embed_dim) * self.layout().multiple, self.options.num_classes, self.options.seed + 1)
        else:
            linear = linear_from_head(*self._head()[:2])
        self.linear = linear.eval().to(device)

    def _require_model(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.model

    # ------------------------------------------------------------------ preprocessing

    def resize_size(self) -> int:
        return int(self.options.img_size * 256 / 224)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "resize": self.resize_size(),
            "interpolation": "bicubic",
            "crop": self.options.img_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }

    def transform(self) -> Callable[[Any], Any]:
        return resize_crop_transform(self.resize_size(), self.options.img_size, IMAGENET_MEAN, IMAGENET_STD, "bicubic")

    # ------------------------------------------------------------------ forward

    def block_outputs(self, images, n: int):
        """Outputs of the last ``n`` blocks (before the final norm), tokens ``[cls, registers…, patches…]``."""
        model = self._require_model()
        return block_outputs(model, images.to(self.device), n, self.pos_embed_mode(), self.options.model)

    def features(self, images):
        layout = self.layout()
        return layout_features(self._require_model(), self.block_outputs(images, layout.n_blocks), layout)

    def logits(self, images):
        import torch

        self._require_model()
        with torch.no_grad():
            f = self.features(images)
            return self.linear(f.to(self.linear.weight.dtype))

    def declared_feature_dim(self) -> int | None:
        """The layout's width: the ViT's ``embed_dim`` (architecture built on the ``meta``
        device, no weights) times the layout's multiple (class tokens + mean patch token).
        ``None`` when the architecture does not build here (the run then checks)."""
        try:
            embed = int(self._meta().embed_dim)
            return embed * self.layout().multiple
        except Exception:  # noqa: BLE001 - the run reports what is wrong with the model
            return None

    # ------------------------------------------------------------------ head

    def head(self) -> LinearHead:
        import torch

        self._require_model()
        weight = self.linear.weight.detach()
        bias = self.linear.bias.detach() if self.linear.bias is not None else None
        eps = float(torch.finfo(weight.dtype).eps)
        w64 = weight.to("cpu", torch.float64).numpy().copy()
        b64 = None if bias is None else bias.to("cpu", torch.float64).numpy().copy()
        info = imagenet_class_info(w64.shape[0])
        keys, names = (list(info[0]), list(info[1])) if info is not None else (None, None)
        return LinearHead(weight=w64, bias=b64, weight_eps=eps, class_names=names, class_keys=keys)

    # ------------------------------------------------------------------ provenance

    def describe(self) -> dict[str, Any]:
        w = self.resolved_weights
        name, how = self._resolve_layout()
        layout = LAYOUTS[name]
        if self.random_head:
            head: dict[str, Any] = {"random": True, "num_classes": self.options.num_classes, "seed": self.options.seed + 1}
        else:
            if self._head_digest is None:
                self._head_digest = file_digest(self.head_path)
            head = {
                "path": str(self.head_path),
                "digest": self._head_digest,
                "key": self._head()[2],
                "shape": list(self._head()[0].shape),
            }
        mode = self.pos_embed_mode()
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            "layout": name,
            "layout_source": how,
            "layout_summary": layout.summary,
            "weights": w.as_dict(),
            "weights_digest": self.weights_digest if self.weights_digest else (
                file_digest(w.path) if w.kind == "file" else None
            ),
            "random_weights": self.random_backbone or self.random_head,
            "random_backbone": self.random_backbone,
            "head": head,
            "img_size": self.options.img_size,
            "preprocessing": self.preprocessing(),
            "pos_embed_interpolation": (
                "bicubic, scale factor (n+0.1)/N, no antialias" if mode == "offset" else "bicubic to size, antialias"
            ),
            "timm_version": metadata.version("timm"),
        }
        if self.random_backbone:
            out["seed"] = self.options.seed
        return out


@hookimpl
def register_backbones(register):
    register("dino_vit", DinoViTBackbone)
