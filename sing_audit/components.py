"""The interfaces every plugin component implements.

A plugin registers a *factory* under a name: a callable with an ``Options`` attribute, a
pydantic model of its own options (``extra="forbid"``, see :mod:`sing_audit.options`).
The host validates the user's options with it and calls ``factory(options)`` to build
the component.

Kinds and what the runner asks of them:

- datasets: :class:`ImageDataset` — the list of images, their labels, how to open them
  (defined in :mod:`sing_audit.datasets`).
- backbones: :class:`ImageBackbone` (runs on images) or :class:`FeatureBackbone`
  (precomputed features); both give a :class:`LinearHead`.
- targets: :class:`ImageTarget` (a vision-language model) or :class:`EmbeddingTarget`
  (precomputed embeddings, no text encoder).
- translators: :class:`Translator` — ``fit(F, Z)`` / ``predict(F)``.
- probes: :class:`~sing_audit.probes.Probe` — measurements on one model's features.
- reporters: :class:`Reporter` — write files from the typed result alone.

Any component may implement ``check()``: the pre-flight that ``sing-audit validate`` and
``run`` call on every built component before anything loads. It must be cheap (no
weights, no network, no model built) and raises :class:`~sing_audit.errors.ConfigError`,
``DataError`` or ``WeightsError`` with ``field=`` the option at fault, so the message names
the config field (``audit.yaml: dataset.root: ...``). The default checks nothing. A
backbone that can tell its head's classes without weights implements
``declared_classes()``, and the pre-flight maps the dataset's labels to them.

Every public name of :mod:`sing_audit.options` and :mod:`sing_audit.datasets` is
importable from here too, the one place plugins import their base classes from.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .datasets import ImageDataset, ImageRecord, open_image
from .errors import DataError
from .options import DEFAULT_TEMPLATES, ModelOptions, PluginOptions, TextTargetOptions

__all__ = [
    "PluginOptions",
    "ModelOptions",
    "ImageRecord",
    "ImageDataset",
    "open_image",
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

    def check(self) -> None:
        """The pre-flight: raise if the options name something that does not exist (model
        name, file, cached weights), without building the model. Default: nothing."""

    def declared_classes(self) -> tuple[int, list[str] | None, list[str] | None] | None:
        """``(number of classes, class names, class keys)`` of the head, as the model's
        published config declares them (no weights read), so the pre-flight can map the
        dataset's labels before anything loads; ``None`` when only loading can tell."""
        return None

    def declared_feature_dim(self) -> int | None:
        """The width of the features, told without reading weights or running images (the
        architecture built on the ``meta`` device, a file's header), so ``validate`` can
        refuse a translator fitted for another width; ``None`` when only a forward pass can
        tell (the pre-flight then leaves the check to the run, which names the same
        mismatch). Must not raise for a model that would load: an answer it cannot give is
        ``None``, never a guess."""
        return None

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
    #: a file of class prompt embeddings to use instead of encoding ``templates`` (see
    #: :func:`sing_audit.authors_files.read_class_prompt_embeddings`); None: encode them
    class_prompts: Path | None = None

    def check(self) -> None:
        """The pre-flight, as :meth:`Backbone.check`. Default: nothing."""

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

    def input_dim(self) -> int | None:
        """The feature width ``m`` this translator takes before any fit (one published for a
        given backbone), or ``None`` when it fits to whatever the audit gives. The pre-flight
        compares it with each backbone's :meth:`Backbone.declared_feature_dim`."""
        return None

    def input_hint(self) -> str:
        """What to do when :meth:`input_dim` does not match a backbone (for the pre-flight's message)."""
        return "use a translator made for that backbone's features, or one fitted on the audit's data (translator: linear)"

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
    #: a publisher sends the run's outputs elsewhere (an experiment tracker): it runs after
    #: every other reporter and after the final results.json, and its ``result.files``
    #: names everything they wrote. Its options come from ``report.options.<format>``
    #: (an ``Options`` model on the class, like every other component's).
    publishes: ClassVar[bool] = False

    @abc.abstractmethod
    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        """Write the files for ``fmt`` into ``output_dir``; return their paths."""
