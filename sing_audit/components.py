"""The interfaces every plugin component implements.

A plugin registers a *factory* under a name: a callable with an ``Options`` attribute, a
pydantic model of its own options (``extra="forbid"``). The host validates the user's
options with it and calls ``factory(options)`` to build the component.

Kinds and what the runner asks of them:

- datasets: :class:`ImageDataset` — the list of images, their labels, how to open them.
- backbones: :class:`ImageBackbone` (runs on images) or :class:`FeatureBackbone`
  (precomputed features); both give a :class:`LinearHead`.
- targets: :class:`ImageTarget` (a vision-language model) or :class:`EmbeddingTarget`
  (precomputed embeddings, no text encoder).
- translators: :class:`Translator` — ``fit(F, Z)`` / ``predict(F)``.
- probes: :class:`Probe` — measurements on one model's features.
- reporters: :class:`Reporter` — write files from the typed result alone.
"""

from __future__ import annotations

import abc
import logging
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import DataError

__all__ = [
    "PluginOptions",
    "ModelOptions",
    "ImageRecord",
    "ImageDataset",
    "LinearHead",
    "Backbone",
    "ImageBackbone",
    "FeatureTable",
    "FeatureBackbone",
    "Target",
    "ImageTarget",
    "EmbeddingTable",
    "EmbeddingTarget",
    "Translator",
    "Reporter",
    "DEFAULT_TEMPLATES",
    "TextTargetOptions",
    "template_ensemble",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("an image of a {}",)

log = logging.getLogger("sing_audit")


class PluginOptions(BaseModel):
    """Base of every plugin's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelOptions(PluginOptions):
    """Options every model plugin shares: which model, which weights, how to seed them."""

    model: str = Field(min_length=1, description="the library's model name")
    weights: str = Field("pretrained", description="pretrained | random | <hub tag> | <local file>")
    seed: int = Field(0, description="seed for weights: random")
    base_dir: Path | None = Field(None, description="folder relative weight paths start from (set by the host)")

    @field_validator("model", "weights")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v


class TextTargetOptions(ModelOptions):
    """Model options of a target with a text encoder: plus the class prompt templates."""

    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES))

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, v: list[str]) -> list[str]:
        from .concepts import check_templates

        return check_templates(v)


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    ``image_id`` is stable across runs (a path relative to the dataset root);
    ``label`` is the dataset's own class key (a folder name, a CSV label) or ``None``.
    """

    image_id: str
    path: Path
    label: str | None


class ImageDataset(abc.ABC):
    """A list of images with optional labels.

    ``class_map`` (dataset label -> head index) and ``class_names`` (dataset label ->
    readable name) are optional explicit mappings from the user's config; when absent
    the runner maps labels through the backbone's own class list (ImageNet synsets, or
    readable names that match).
    """

    on_bad_image: str = "fail"  # "fail" or "skip"
    #: largest image (width × height) :meth:`open` decodes; larger ones are bad data (a
    #: decompression bomb would exhaust memory). ``None``: Pillow's own limit, twice
    #: ``PIL.Image.MAX_IMAGE_PIXELS`` (178,956,970 pixels by default)
    max_image_pixels: int | None = None
    #: Pillow format names :meth:`open` reads (``None``: any format Pillow knows)
    image_formats: tuple[str, ...] | None = None

    @abc.abstractmethod
    def records(self) -> list[ImageRecord]:
        """Every image, in a deterministic order."""

    def class_map(self) -> dict[str, int] | None:
        return None

    def class_names(self) -> dict[str, str] | None:
        return None

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the images are, for cache keys and provenance (root, digests, options)."""

    def open(self, record: ImageRecord):
        """Open one image as an RGB ``PIL.Image``; raise :class:`DataError` if unreadable
        (see :func:`open_image`), reading only the formats in :attr:`image_formats`."""
        return open_image(record, max_image_pixels=self.max_image_pixels, formats=self.image_formats)


def open_image(record: ImageRecord, *, max_image_pixels: int | None = None, formats: Sequence[str] | None = None):
    """Open one image file as an RGB ``PIL.Image``; raise :class:`DataError` if unreadable.

    Unreadable means missing, corrupt, truncated (always, whatever another library did
    to Pillow's process-wide settings: see :func:`_refuse_truncated_images`), larger than
    ``max_image_pixels`` (a possible decompression bomb), of a format outside ``formats``
    (Pillow names such as ``"JPEG"``; ``None``: any — Pillow picks the format from the
    content, so a ``.jpg`` holding EPS would otherwise start Ghostscript), or anything else
    Pillow's format plugins raise on a malformed file.
    """
    from PIL import Image, UnidentifiedImageError

    _refuse_truncated_images()
    limit = max_image_pixels
    if limit is not None:
        _let_pillow_decode(limit)
    try:
        with Image.open(record.path, formats=list(formats) if formats is not None else None) as img:
            if limit is not None and img.width * img.height > limit:
                raise DataError(_too_large(record, img.width * img.height, limit, "the dataset's max_image_pixels", img.size))
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"image {record.image_id!r} is missing: {record.path}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(_pillow_bomb(record, exc, limit)) from exc
    except UnidentifiedImageError as exc:
        allowed = f" (only {', '.join(sorted(formats))} are read, the formats of the dataset's extensions)" if formats else ""
        raise DataError(
            f"image {record.image_id!r} is not an image file of a known format{allowed}; "
            "fix or remove it, or set on_bad_image: skip"
        ) from exc
    except _UNREADABLE_IMAGE_ERRORS as exc:
        raise DataError(
            f"image {record.image_id!r} cannot be read ({exc.__class__.__name__}: {exc}); "
            "fix or remove it, or set on_bad_image: skip"
        ) from exc


#: what Pillow and its format plugins raise on a malformed or hostile file: besides the
#: OSError/SyntaxError/ValueError they raise on purpose, struct.error, IndexError,
#: KeyError... escape from parsing short or inconsistent headers. All are bad data.
_UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    NotImplementedError,
)

def _too_large(record: ImageRecord, pixels: int, limit: int, whose: str, size: tuple[int, int] | None = None) -> str:
    """The message for an image with more pixels than a limit allows, and the ways out."""
    dims = f"{size[0]}×{size[1]} = " if size else ""
    return (
        f"image {record.image_id!r} is {dims}{pixels:,} pixels, more than {whose} of {limit:,} (it could be a "
        "decompression bomb, which would exhaust memory); remove or downscale it, set on_bad_image: skip to "
        f"audit without it, or, if the image is genuine, set the dataset's max_image_pixels above {pixels:,}"
    )


def _pillow_bomb(record: ImageRecord, exc: Exception, limit: int | None) -> str:
    """The message for an image Pillow refused as a possible decompression bomb.

    Pillow refuses before the image object exists, so its message gives the pixel count
    (and its limit: twice ``MAX_IMAGE_PIXELS``; above ``MAX_IMAGE_PIXELS`` it only warns,
    and a warning gets here only when warnings are errors in this process). With the
    dataset's own ``limit`` set, that is the limit to name.
    """
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if found is None:  # pragma: no cover - a Pillow that words it differently
        return (
            f"image {record.image_id!r} is too large to decode ({exc}); remove or downscale it, set "
            "on_bad_image: skip to audit without it, or, if the image is genuine, raise the dataset's max_image_pixels"
        )
    pixels, pillow_limit = int(found.group(1)), int(found.group(2))
    if limit is not None:
        return _too_large(record, pixels, limit, "the dataset's max_image_pixels")
    if isinstance(exc, Warning):
        return _too_large(record, pixels, pillow_limit, "the limit above which Pillow warns (warnings are errors here)")
    return _too_large(record, pixels, pillow_limit, "the limit Pillow decodes")


def _let_pillow_decode(pixels: int) -> None:
    """Raise Pillow's process-wide ``MAX_IMAGE_PIXELS`` to ``pixels`` if it is lower (never
    lower it), so that Pillow neither refuses nor warns about the images a dataset's
    ``max_image_pixels`` admits; the dataset's own check then enforces that limit."""
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < pixels:
        Image.MAX_IMAGE_PIXELS = pixels
        log.info("raised PIL.Image.MAX_IMAGE_PIXELS from %d to %d for a dataset's max_image_pixels", current, pixels)


def _refuse_truncated_images() -> None:
    """Switch ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` back off if a library switched it on.

    The flag is process-wide: weasyprint sets it on import, and with it Pillow decodes a
    truncated file without complaint (the missing part filled in), so the image would be
    audited as if whole and ``on_bad_image`` never consulted. Checked before every
    decode, so the order of imports does not matter; no lock is needed (a flag that
    only ever gets cleared here), and the warning is logged each time the flag is found
    switched on, which is once per library that does so.
    """
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        log.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on by a library loaded in this process "
            "(weasyprint does so when imported); sing-audit switched it back off so that a truncated image "
            "is bad data (on_bad_image) rather than decoded with its missing part filled in and audited"
        )


# --------------------------------------------------------------------------- backbones


@dataclass
class LinearHead:
    """The classifier head as one affine map: ``logits = weight @ f + bias``.

    ``weight`` is c×m, ``bias`` c (zeros when the head has none), both float64 copies of
    the stored parameters. ``weight_eps`` is the machine epsilon of the dtype the weights
    were stored in (it sets the rank tolerance). ``class_names`` are readable names per
    head index, when the backbone knows them; ``class_keys`` are machine keys per index
    (e.g. ImageNet synsets) used to map dataset labels.
    """

    weight: np.ndarray
    bias: np.ndarray
    weight_eps: float
    class_names: list[str] | None = None
    class_keys: list[str] | None = None

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float64)
        if self.weight.ndim != 2:
            raise DataError(f"head weight must be 2-D (classes × features), got shape {self.weight.shape}")
        c = self.weight.shape[0]
        self.bias = np.zeros(c) if self.bias is None else np.asarray(self.bias, dtype=np.float64).reshape(-1)
        if self.bias.shape != (c,):
            raise DataError(f"head bias has shape {self.bias.shape}, expected ({c},) to match weight {self.weight.shape}")
        for attr in ("class_names", "class_keys"):
            names = getattr(self, attr)
            if names is not None and len(names) != c:
                raise DataError(f"head has {c} classes but {len(names)} {attr.replace('_', ' ')}")

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[1])


class Backbone(abc.ABC):
    """A classifier split into features and a linear head."""

    #: True when the weights are random (asked for explicitly with ``weights: random``).
    random_weights: bool = False

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything the features depend on (plugin, model, weights digest, preprocessing)."""

    @abc.abstractmethod
    def head(self) -> LinearHead:
        """The head as an affine map; raise :class:`~sing_audit.errors.HeadError` if it is not one."""


class ImageBackbone(Backbone):
    """A backbone that runs on images."""

    @abc.abstractmethod
    def load(self, device: str) -> None:
        """Build the model and load its weights onto ``device``."""

    @abc.abstractmethod
    def transform(self) -> Callable[[Any], Any]:
        """PIL image -> C×H×W float tensor, the model's own preprocessing."""

    @abc.abstractmethod
    def features(self, images):
        """B×C×H×W tensor -> B×m tensor: the exact input of the linear head."""

    @abc.abstractmethod
    def logits(self, images):
        """B×C×H×W tensor -> B×c tensor: the model's own output, to check features and head."""


@dataclass
class FeatureTable:
    """Precomputed features with their labels (head indices) and ids."""

    features: np.ndarray  # N×m
    labels: np.ndarray | None  # N int head indices, or None
    image_ids: list[str] | None


class FeatureBackbone(Backbone):
    """A backbone whose features were computed elsewhere."""

    @abc.abstractmethod
    def load_features(self) -> FeatureTable:
        """Read the features (may memory-map)."""


# --------------------------------------------------------------------------- targets


class Target(abc.ABC):
    """A vision-language space: image embeddings and (usually) a text encoder."""

    random_weights: bool = False
    templates: Sequence[str] = DEFAULT_TEMPLATES

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything the embeddings depend on."""

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        """K prompts -> K×n float64 embeddings (raw, not normalised)."""
        raise DataError(
            f"target {type(self).__name__} has no text encoder, so it cannot embed new text "
            f"(asked for {len(prompts)} prompt(s), e.g. {list(prompts)[:1]!r}); use a target with "
            "a text encoder (open_clip) or supply the embeddings precomputed"
        )

    def class_text_embeddings(self, class_names: Sequence[str]) -> np.ndarray:
        """One unit embedding per class: the template ensemble (mean of normalised
        template embeddings, renormalised; see :func:`template_ensemble`). c×n float64."""
        templates = list(self.templates)
        prompts = [t.format(name) for name in class_names for t in templates]
        return template_ensemble(self.encode_text(prompts), len(templates))


def template_ensemble(raw: np.ndarray, n_templates: int) -> np.ndarray:
    """The template ensemble of k names from their (k·t)×n raw prompt embeddings, in the
    order ``[template.format(name) for name in names for template in templates]``: per
    name the mean of its t normalised template embeddings, renormalised. k×n float64.

    Each name's row depends on its own prompts only, so names can be encoded in chunks
    (the runner's resumable text stage) and the rows joined: the same result."""
    raw = np.asarray(raw, dtype=np.float64)
    emb = raw.reshape(raw.shape[0] // n_templates, n_templates, raw.shape[-1])
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    mean = emb.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


class ImageTarget(Target):
    """A target with an image encoder."""

    @abc.abstractmethod
    def load(self, device: str) -> None:
        """Build the model and load its weights onto ``device``."""

    @abc.abstractmethod
    def transform(self) -> Callable[[Any], Any]:
        """PIL image -> C×H×W float tensor."""

    @abc.abstractmethod
    def encode_images(self, images):
        """B×C×H×W tensor -> B×n tensor of raw image embeddings."""

    def encode_pixels(self, pixels):
        """B×3×H×W float tensor of pixels in [0, 1] (any H×W) -> B×n tensor of raw image embeddings.

        The target's own preprocessing (resize, crop, normalisation), applied to float
        tensors: no 8-bit quantisation, no clamping, so an image that differs from another
        by a tiny float perturbation is embedded with that perturbation intact. The
        input-space probes use it to score equivalent images with the target's real image
        encoder. Call :meth:`load` first.

        The default raises :class:`~sing_audit.errors.DataError`: a target that can embed
        float pixels overrides it.
        """
        raise DataError(
            f"target {type(self).__name__} cannot embed float pixel tensors (it does not implement "
            "ImageTarget.encode_pixels), so equivalent images cannot be scored with its image encoder; "
            "use a target that does (open_clip), or leave the equivalent-image semantics out"
        )


@dataclass
class EmbeddingTable:
    """Precomputed target embeddings."""

    image_embeddings: np.ndarray  # N×n
    image_ids: list[str] | None
    text_embeddings: np.ndarray | None  # c×n, one per class prompt (head order)
    concept_names: list[str] | None = None
    concept_embeddings: np.ndarray | None = None


class EmbeddingTarget(Target):
    """A target whose embeddings were computed elsewhere; it has no text encoder."""

    @abc.abstractmethod
    def load_embeddings(self) -> EmbeddingTable:
        """Read the embeddings."""


# --------------------------------------------------------------------------- translators


class Translator(abc.ABC):
    """Maps classifier features (N×m) to target embeddings (N×n).

    scikit-learn conventions: ``__init__`` stores options, ``fit`` returns ``self``,
    learned attributes end in ``_``, ``predict`` before ``fit`` raises ``RuntimeError``.
    """

    @abc.abstractmethod
    def fit(self, features: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None) -> "Translator":
        """Fit on N×m features and N×n targets (``groups``: class labels, for inner CV folds)."""

    @abc.abstractmethod
    def predict(self, features: np.ndarray) -> np.ndarray:
        """N×m -> N×n (float64)."""

    def fit_folds(self, features: np.ndarray, targets: np.ndarray, folds: np.ndarray,
                  groups: np.ndarray | None = None) -> list[Translator] | None:
        """Optional: one fitted translator per fold k (trained on the rows with ``folds != k``),
        all at once, when the family can share work between folds. ``None``: the runner
        fits fold by fold with :meth:`fit`."""
        return None

    def linear_map(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(A, c)`` with ``T(f) = A f + c`` (A is n×m), or ``None`` when not affine."""
        return None

    def state(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save (safetensors)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> "Translator":
        """Inverse of :meth:`state`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be reloaded from saved state")

    def info(self) -> dict[str, Any]:
        """Fitted hyperparameters worth reporting (e.g. the chosen alpha)."""
        return {}


# --------------------------------------------------------------------------- reporters


class Reporter(abc.ABC):
    """Writes one output format from the typed result alone."""

    #: format names this reporter answers to in ``report.formats``
    formats: ClassVar[tuple[str, ...]] = ()
    #: the run's plugin registry, set by the runner (``None``: a fresh one where needed),
    #: so components registered in-process (``run_audit(registry=...)``) are seen
    registry: Any = None

    @abc.abstractmethod
    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        """Write the files for ``fmt`` into ``output_dir``; return their paths."""
