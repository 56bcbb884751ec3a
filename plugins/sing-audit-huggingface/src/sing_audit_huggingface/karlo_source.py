"""Where Karlo's components come from (a :class:`KarloSource`), checked without loading
them, and loading them one subfolder at a time; shared by the ``karlo`` target and the
``unclip`` visualizer.

Where the components come from (a :class:`KarloSource`):

- ``model``: a hub repository id (default Karlo's) or a local folder in the hub's layout
  (``image_encoder/``, ``feature_extractor/``, ``text_encoder/``, ``tokenizer/``, and for
  the visualizer ``decoder/``, ``text_proj/``, ``super_res_first/``, ``super_res_last/``,
  ``decoder_scheduler/``, ``super_res_scheduler/``);
- ``weights``: ``pretrained`` (the weights of ``model``), ``random`` (the architecture of
  ``model`` with seeded random weights), a revision of the hub repository (a branch, tag
  or commit), or a local folder in the hub's layout.

Each component is loaded on its own from its subfolder. With ``HF_HUB_OFFLINE=1`` a hub
repository that is not in the local cache is refused when the options are validated,
with the way to point at a local folder; a hub failure at load time says the same.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sing_audit.errors import WeightsError, exception_summary
from sing_audit.weights import file_digest, hub_cached_file, hub_offline

__all__ = [
    "KARLO_REPO",
    "PIPELINE_PARTS",
    "TARGET_PARTS",
    "KarloSource",
    "load_clip_parts",
    "load_part",
    "local_folder_hint",
    "parts_digest",
    "resolve_karlo_source",
]

KARLO_REPO = "kakaobrain/karlo-v1-alpha-image-variations"

#: subfolders the target reads
TARGET_PARTS: tuple[str, ...] = ("image_encoder", "feature_extractor", "text_encoder", "tokenizer")
#: subfolders the whole image-variation pipeline reads
PIPELINE_PARTS: tuple[str, ...] = TARGET_PARTS + (
    "text_proj", "decoder", "super_res_first", "super_res_last", "decoder_scheduler", "super_res_scheduler",
)

#: the file that marks each subfolder as present (in a folder or the hub cache)
_MARKER = {
    "feature_extractor": "preprocessor_config.json",
    "tokenizer": "tokenizer_config.json",
    "decoder_scheduler": "scheduler_config.json",
    "super_res_scheduler": "scheduler_config.json",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DIGEST_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")


def _marker(part: str) -> str:
    return f"{part}/{_MARKER.get(part, 'config.json')}"


def local_folder_hint(repo: str = KARLO_REPO) -> str:
    """How to use Karlo without the hub (for error messages)."""
    return (
        f"download it on a machine with network access (huggingface-cli download {repo} --local-dir karlo) and "
        "point at the folder: weights: <folder> (or model: <folder>); the folder keeps the hub's layout "
        f"({', '.join(PIPELINE_PARTS)}); for a smoke test, weights: random builds the architecture of model "
        "(a folder, or a cached repository) with seeded random weights (never a silent fallback)"
    )


@dataclass(frozen=True)
class KarloSource:
    """Where a Karlo pipeline's components come from.

    ``kind`` is ``"folder"`` (``location`` an absolute folder) or ``"hub"`` (``location`` a
    repository id, ``revision`` a branch/tag/commit or ``None``); ``random`` keeps only
    the architecture (the configs) and draws the weights from ``seed``.
    """

    kind: str
    location: str
    revision: str | None = None
    random: bool = False
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "location": self.location, "revision": self.revision, "random": self.random}
        if self.random:
            out["seed"] = self.seed
        return out

    def where(self, part: str) -> tuple[str, dict[str, Any]]:
        """``(path_or_repo, from_pretrained keyword arguments)`` of one subfolder."""
        if self.kind == "folder":
            return str(Path(self.location) / part), {}
        kw: dict[str, Any] = {"subfolder": part}
        if self.revision:
            kw["revision"] = self.revision
        return self.location, kw

    def local_part(self, part: str) -> Path | None:
        """The subfolder on this machine (a folder, or the hub cache), or ``None``."""
        if self.kind == "folder":
            path = Path(self.location) / part
            return path if path.is_dir() else None
        found = hub_cached_file(self.location, _marker(part), self.revision)
        return found.parent if found is not None else None

    def check(self, parts: Sequence[str]) -> None:
        """Refuse, before anything is built, a source that cannot provide ``parts``."""
        if self.kind == "folder":
            missing = [p for p in parts if not (Path(self.location) / _marker(p)).is_file()]
            if missing:
                raise WeightsError(
                    f"Karlo folder {self.location} lacks {', '.join(_marker(p) for p in missing)}; a folder in the "
                    f"hub's layout has one subfolder per component ({', '.join(parts)}): "
                    + local_folder_hint()
                )
            return
        if hub_offline():
            missing = [p for p in parts if hub_cached_file(self.location, _marker(p), self.revision) is None]
            if missing:
                rev = f" at revision {self.revision!r}" if self.revision else ""
                raise WeightsError(
                    f"hub repository {self.location!r}{rev} is not in the local cache ({', '.join(missing)} missing) "
                    "and HF_HUB_OFFLINE is set, so it cannot be fetched: " + local_folder_hint(self.location)
                )

    def hub_error(self, part: str, exc: Exception) -> WeightsError:
        where = self.location if self.kind == "folder" else f"hub repository {self.location!r}"
        return WeightsError(
            f"the Karlo component {part!r} could not be loaded from {where} ({exception_summary(exc)}); "
            + local_folder_hint(self.location if self.kind == "hub" else KARLO_REPO)
        )


def _folder(value: str, base_dir: Path | None, hub_ids: bool = True) -> Path | None:
    """``value`` as a folder path when it looks like one (it need not exist), else ``None``.

    ``hub_ids``: ``owner/name`` may be a hub repository id (for ``model``); otherwise only
    a hub revision of the ``refs/...`` form is not a path (for ``weights``).
    """
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
    not_a_path = _HUB_ID.match(value) if hub_ids else value.startswith("refs/")
    looks = value.startswith(("/", ".", "~", "\\")) or (("/" in value or os.sep in value) and not not_a_path)
    try:
        exists = path.is_dir()
    except OSError:
        exists = False
    return path.resolve() if looks or exists else None


def resolve_karlo_source(model: str, weights: str, base_dir: Path | None = None, seed: int = 0) -> KarloSource:
    """Interpret the ``model`` and ``weights`` options (see the module docstring)."""
    model, weights = model.strip(), weights.strip()
    lowered = weights.lower()
    if lowered not in ("pretrained", "random"):
        folder = _folder(weights, base_dir, hub_ids=False)
        if folder is not None:
            if not folder.is_dir():
                raise WeightsError(f"Karlo weights folder not found: {folder}; " + local_folder_hint())
            return KarloSource("folder", str(folder))
    folder = _folder(model, base_dir)
    if folder is not None:
        if not folder.is_dir():
            raise WeightsError(f"Karlo model folder not found: {folder}; " + local_folder_hint())
        if lowered not in ("pretrained", "random"):
            raise WeightsError(
                f"model is a local folder ({folder}), so weights: {weights!r} (a hub revision) cannot apply: "
                "use weights: pretrained, random, or another folder"
            )
        return KarloSource("folder", str(folder), random=lowered == "random", seed=seed)
    if not _HUB_ID.match(model):
        raise WeightsError(
            f"model {model!r} is neither a hub repository id (owner/name, e.g. {KARLO_REPO}) nor an existing folder"
        )
    revision = None if lowered in ("pretrained", "random") else weights
    return KarloSource("hub", model, revision, random=lowered == "random", seed=seed)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _memo_digest(path: Path) -> str:
    """:func:`file_digest`, remembered per (file, size, mtime) for the process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def parts_digest(source: KarloSource, parts: Sequence[str]) -> str | None:
    """``"sha256:<hex>"`` over every weight and config file of ``parts``, or ``None`` when
    a part is not on this machine yet (a hub repository not downloaded).

    Files of a folder are hashed (once per process); files in the hub cache are named by
    their blob, which is already a content hash, so nothing is read.
    """
    h = hashlib.sha256()
    for part in parts:
        folder = source.local_part(part)
        if folder is None:
            return None
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _DIGEST_SUFFIXES):
            real = path.resolve()
            token = f"blob:{real.name}" if source.kind == "hub" and real != path else _memo_digest(real)
            h.update(f"{part}/{path.name}\0{token}\0".encode())
    return f"sha256:{h.hexdigest()}"


def load_part(source: KarloSource, part: str, cls, *, config_cls=None):
    """Load one component with ``cls.from_pretrained`` from its subfolder.

    For ``source.random`` the architecture comes from the subfolder's config and the
    weights are drawn from a seed derived from ``source.seed`` and the part's name;
    ``config_cls`` builds the config (transformers models), diffusers models use
    ``cls.load_config``. Any failure becomes a :class:`WeightsError` that says what to do.
    """
    import torch

    location, kw = source.where(part)
    try:
        if not source.random or not hasattr(cls, "parameters"):
            return cls.from_pretrained(location, **kw)
        config = config_cls.from_pretrained(location, **kw) if config_cls is not None else cls.load_config(location, **kw)
    except Exception as exc:  # hub, file and format errors alike: say how to fix it
        raise source.hub_error(part, exc) from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed + sum(part.encode()))
        return cls(config) if config_cls is not None else cls.from_config(config)


def load_clip_parts(source: KarloSource) -> dict[str, Any]:
    """Karlo's CLIP side (:data:`TARGET_PARTS`): image and text encoders, tokenizer,
    image processor, keyed by subfolder — what the target uses and the pipeline shares."""
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    return {
        "image_encoder": load_part(source, "image_encoder", CLIPVisionModelWithProjection, config_cls=CLIPVisionConfig),
        "feature_extractor": load_part(source, "feature_extractor", CLIPImageProcessor),
        "text_encoder": load_part(source, "text_encoder", CLIPTextModelWithProjection, config_cls=CLIPTextConfig),
        "tokenizer": load_part(source, "tokenizer", CLIPTokenizer),
    }
