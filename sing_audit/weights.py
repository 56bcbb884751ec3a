"""Resolving, reading, fingerprinting and loading model weights.

Every model plugin takes a ``weights:`` option:

- ``pretrained`` (default): the weights named by, or implied by, the model name
  (fetched by the model library from its hub or its local cache);
- ``random``: random initialisation (explicitly asked for, never a fallback);
- a local file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``, or anything that looks like
  a path): resolved relative to the config file's folder and read without pickle;
- a local folder in the Hugging Face hub's layout (``config.json`` next to
  ``model.safetensors`` or ``pytorch_model.bin``, as ``huggingface-cli download`` or timm's
  ``save_for_hf`` write it): the weights file is found with :func:`find_weights_in_folder`
  (the same preference order as timm's ``local-dir:`` loader) and read like any file;
  ``ResolvedWeights.folder`` keeps the folder, so a plugin can read ``config.json``;
- anything else: a hub tag of the model (e.g. ``a1_in1k`` for timm, ``openai`` for open_clip).

Files are read with :func:`load_state_dict` (safetensors, or ``torch.load`` with
``weights_only=True``; from :mod:`sing_audit.weight_files`, re-exported here), fingerprinted with :func:`file_digest`, and loaded strictly with
:func:`load_into`, whose errors list what does not match.

Offline use (from :mod:`sing_audit.hub_cache`, re-exported here): :func:`hub_offline` says whether the hub is known to be unreachable
(``HF_HUB_OFFLINE``), and :func:`hub_cached_file` looks a file up in the local hub cache
without any network access, so a plugin can refuse an uncached pretrained tag when its
options are validated rather than when the model is built.

Hub revisions: a hub model id may carry a revision (``org/name@v2``, timm's style);
:func:`split_hub_id` parts it, and :func:`resolve_hub_commit` turns the revision (a branch,
a tag, or nothing for ``main``) into the commit hash of the snapshot to use — from the hub
when it is reachable, else from the local cache (``refs/<revision>``), with a
:class:`WeightsError` saying how to fetch it when it is in neither. Plugins record that
commit in ``describe()`` (:func:`hub_revision_description`), so results name the snapshot
actually used and a different snapshot never reuses cached features, and they load that
exact commit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WeightsError
from .store import file_sha256
from .hub_cache import (
    hub_cached_commit,
    hub_cached_file,
    hub_fetch_hint,
    hub_offline,
    hub_revision_description,
    resolve_hub_commit,
    split_hub_id,
)
from .weight_files import load_state_dict, torch_load_weights_only

__all__ = [
    "HUB_WEIGHT_FILES",
    "WEIGHT_FILE_SUFFIXES",
    "ResolvedWeights",
    "file_digest",
    "find_weights_in_folder",
    "hub_cached_commit",
    "hub_cached_file",
    "hub_fetch_hint",
    "hub_offline",
    "hub_revision_description",
    "load_into",
    "load_state_dict",
    "local_weights_hint",
    "resolve_hub_commit",
    "resolve_weights",
    "split_hub_id",
    "state_dict_digest",
    "torch_load_weights_only",
]

#: suffixes that mark a ``weights:`` value as a local file
WEIGHT_FILE_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin")

#: weight files of a hub-layout folder, in the order timm's ``local-dir:`` loader prefers them
HUB_WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)



def local_weights_hint(what: str = "the model") -> str:
    """How to point a model at weights on this machine (for error messages)."""
    return (
        f"download the weights of {what} on a machine with network access and point weights: at them here: "
        "weights: <local file> (.safetensors preferred, or a .pt/.pth state dict), or a folder in the hub's "
        "layout (config.json + model.safetensors or pytorch_model.bin); or set weights: random for a smoke "
        "test (never a silent fallback)"
    )


@dataclass(frozen=True)
class ResolvedWeights:
    """What a ``weights:`` option means.

    ``kind`` is ``"pretrained"``, ``"tag"``, ``"file"`` or ``"random"``; ``value`` is the
    option as written (the tag for ``"tag"``); ``path`` is the absolute file for ``"file"``.
    """

    kind: str
    value: str
    path: Path | None = None
    folder: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, for ``describe()`` (``folder`` only for hub-layout folders)."""
        out: dict[str, Any] = {"kind": self.kind, "value": self.value, "path": None if self.path is None else str(self.path)}
        if self.folder is not None:
            out["folder"] = str(self.folder)
        return out


def find_weights_in_folder(folder: str | os.PathLike) -> Path:
    """The weights file of a hub-layout folder.

    The first of :data:`HUB_WEIGHT_FILES` present wins (timm's order); otherwise the
    folder must hold exactly one ``.safetensors``, else one ``.pth``, else one ``.bin``
    file. Anything else raises :class:`WeightsError` saying what was found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"weights folder not found: {folder}")
    for name in HUB_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    for ext in (".safetensors", ".pth", ".pt", ".bin"):
        found = sorted(p for p in folder.glob(f"*{ext}") if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:6])
            raise WeightsError(
                f"weights folder {folder} holds several {ext} files ({names}) and none of the standard names "
                f"({', '.join(HUB_WEIGHT_FILES[:2])}); point weights at the file to use"
            )
    listing = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    raise WeightsError(
        f"weights folder {folder} holds no weights file (it has: {listing}); a folder in the hub's layout holds "
        "config.json and model.safetensors (or pytorch_model.bin): point weights at such a folder or at a "
        ".safetensors/.pt/.pth file"
    )


def _looks_like_path(spec: str, candidate: Path) -> bool:
    if spec.lower().endswith(WEIGHT_FILE_SUFFIXES):
        return True
    if "/" in spec or "\\" in spec or os.sep in spec or (os.altsep and os.altsep in spec):
        return True
    if spec.startswith(("~", ".")):
        return True
    try:
        return candidate.is_file() or candidate.is_dir()
    except OSError:
        return False


def resolve_weights(spec: str | os.PathLike | None, base_dir: Path | None = None) -> ResolvedWeights:
    """Interpret a ``weights:`` option.

    ``base_dir`` is the folder of the config file: relative file paths are resolved from
    it (from the current directory when it is ``None``). A value that looks like a path
    but names no file raises :class:`WeightsError` naming the path tried. A folder
    resolves to its weights file (:func:`find_weights_in_folder`), with ``folder`` set.
    """
    if spec is None:
        spec = "pretrained"
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise WeightsError(
            f"weights must be 'pretrained', 'random', a hub tag or a file path, got {spec!r} ({type(spec).__name__})"
        )
    value = spec.strip()
    if not value:
        raise WeightsError("weights is empty: write 'pretrained', 'random', a hub tag or a path to a weights file")
    lowered = value.lower()
    if lowered == "pretrained":
        return ResolvedWeights("pretrained", "pretrained")
    if lowered == "random":
        return ResolvedWeights("random", "random")

    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = (Path(base_dir) if base_dir is not None else Path.cwd()) / candidate
    if _looks_like_path(value, candidate):
        path = candidate.resolve()
        if not path.exists():
            where = f" (relative paths are taken from {Path(base_dir).resolve()})" if base_dir is not None else ""
            hint = ""
            if lowered.startswith(("hf-hub:", "hf_hub:")):
                hint = "; a hub repository belongs in the model name (model: hf-hub:org/repo), not in weights"
            raise WeightsError(f"weights file not found: {path}{where}{hint}")
        if path.is_dir():
            return ResolvedWeights("file", value, find_weights_in_folder(path), folder=path)
        return ResolvedWeights("file", value, path)
    return ResolvedWeights("tag", value)


# --------------------------------------------------------------------------- digests


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in chunks."""
    path = Path(path)
    try:
        return f"sha256:{file_sha256(path)}"
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc


def state_dict_digest(module_or_state_dict: Any) -> str:
    """``"sha256:<hex>"`` over sorted parameter names, dtypes, shapes and raw bytes.

    Accepts an ``nn.Module`` (its ``state_dict()``) or a mapping of tensors, so weights
    that come from no file (random, hub) get a fingerprint too.
    """
    import torch

    if isinstance(module_or_state_dict, torch.nn.Module):
        sd = module_or_state_dict.state_dict()
    elif isinstance(module_or_state_dict, Mapping):
        sd = module_or_state_dict
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(module_or_state_dict).__name__}")
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        h.update(f"{name}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().data)
    return f"sha256:{h.hexdigest()}"


# --------------------------------------------------------------------------- loading


def _common_prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """Spot a prefix added to (or missing from) every key of the file."""
    if not missing or not unexpected:
        return ""
    first = unexpected[0]
    if "." in first:
        prefix = first.split(".", 1)[0] + "."
        if all(k.startswith(prefix) for k in unexpected):
            stripped = {k[len(prefix):] for k in unexpected}
            if stripped & set(missing):
                return f" The file's keys all start with {prefix!r}: strip that prefix when saving."
    first = missing[0]
    if "." in first:
        prefix = first.split(".", 1)[0] + "."
        if all(k.startswith(prefix) for k in missing) and {prefix + k for k in unexpected} & set(missing):
            return f" The model's keys start with {prefix!r} but the file's do not: it may hold only a sub-module."
    return ""


def load_into(model: Any, state_dict: Mapping[str, Any], *, what: str) -> None:
    """Load ``state_dict`` into ``model`` strictly.

    On any missing key, unexpected key or shape mismatch raise :class:`WeightsError`
    listing a few of each and saying what to do. ``what`` names the model in messages
    (e.g. ``"timm model 'resnet18' from /path/w.safetensors"``).
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            more = f", … {len(keys) - 5} more" if len(keys) > 5 else ""
            return ", ".join(keys[:5]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({few(unexpected)})")
        if shapes:
            shown = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in shapes[:5]]
            more = f", … {len(shapes) - 5} more" if len(shapes) > 5 else ""
            parts.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shown)}{more})")
        hint = _common_prefix_hint(missing, unexpected)
        raise WeightsError(
            f"weights for {what} do not match the architecture: {'; '.join(parts)}. "
            "Check that the file was saved from the same model name and settings (number of classes, "
            f"input size), or set the model option to the architecture the file was saved from.{hint}"
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights for {what} could not be loaded: {exc}") from exc


def weights_description(resolved: ResolvedWeights, digest: str | None, seed: int) -> dict[str, Any]:
    """The weights part of a model plugin's ``describe()``, for cache keys and provenance.

    Before ``load`` only a file's digest is known (hub and random weights get theirs from
    the built model); random weights record the seed that makes them reproducible.
    """
    out: dict[str, Any] = {
        "weights": resolved.as_dict(),
        "weights_digest": digest or (file_digest(resolved.path) if resolved.kind == "file" else None),
        "random_weights": resolved.kind == "random",
    }
    if resolved.kind == "random":
        out["seed"] = seed
    return out
