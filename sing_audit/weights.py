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

Offline use: :func:`hub_offline` says whether the hub is known to be unreachable
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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WeightsError
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

_CHUNK = 1 << 20

_TRUE = {"1", "on", "yes", "true", "y", "t"}


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


# --------------------------------------------------------------------------- offline hub


def hub_offline() -> bool:
    """True when the Hugging Face hub is known to be unreachable (``HF_HUB_OFFLINE``).

    Reads the environment variable (so a value set after ``huggingface_hub`` was imported
    counts) and ``huggingface_hub.constants.HF_HUB_OFFLINE``.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of timm and open_clip
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cached_file(repo_id: str, filenames: str | tuple[str, ...] | list[str], revision: str | None = None) -> Path | None:
    """The first of ``filenames`` of hub repository ``repo_id`` present in the local cache, or ``None``.

    Never touches the network. ``repo_id`` may carry a ``@revision`` suffix (timm's style).
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    if isinstance(filenames, str):
        filenames = (filenames,)
    if "@" in repo_id and revision is None:
        repo_id, _, revision = repo_id.partition("@")
    for name in filenames:
        try:
            found = try_to_load_from_cache(repo_id, name, revision=revision)
        except (ValueError, OSError):  # an invalid repository id or file name: not cached
            found = None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


#: a full git commit hash, as the hub names snapshots
_COMMIT = re.compile(r"[0-9a-f]{40}")


def split_hub_id(repo_id: str) -> tuple[str, str | None]:
    """``("org/name", "v2")`` from ``"org/name@v2"``; ``(repo_id, None)`` without a revision."""
    repo, sep, revision = repo_id.partition("@")
    if sep and not revision.strip():
        raise WeightsError(f"hub id {repo_id!r} ends in '@' but names no revision: write org/name@<branch, tag or commit>")
    return repo.strip(), (revision.strip() if sep else None)


def hub_fetch_hint(repo_id: str, revision: str | None = None) -> str:
    """The command that puts ``repo_id`` at ``revision`` into the local hub cache."""
    rev = f" --revision {revision}" if revision and revision != "main" else ""
    return f"hf download {repo_id}{rev}"


def hub_cached_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit that ``revision`` (``main`` when ``None``) of hub repository ``repo_id`` names in
    the local cache, or ``None``; never touches the network.

    A branch or tag resolves through the cache's ``refs/<revision>`` file; a full commit hash
    names itself. Either way the snapshot folder ``snapshots/<commit>`` must exist.
    """
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # pragma: no cover - a dependency of timm and open_clip
        return None
    rev = revision or "main"
    try:
        folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        ref = folder / "refs" / rev
        if ref.is_file():
            commit = ref.read_text(encoding="utf-8").strip()
        elif _COMMIT.fullmatch(rev):
            commit = rev
        else:
            return None
        return commit if _COMMIT.fullmatch(commit) and (folder / "snapshots" / commit).is_dir() else None
    except (OSError, ValueError):
        return None


def resolve_hub_commit(repo_id: str, revision: str | None = None, *, what: str = "") -> str:
    """The commit hash of the snapshot of ``repo_id`` at ``revision`` (``main`` when ``None``) to load.

    A full commit hash is taken as written (offline, its snapshot must be cached). Otherwise, unless the hub is known to be offline
    (``HF_HUB_OFFLINE``), the hub is asked which commit the revision names now (so a moved
    branch is noticed); when it cannot be asked, the local cache answers. A revision known
    to neither raises :class:`WeightsError` saying how to fetch it. ``what`` names the
    model in that message.
    """
    rev = revision or "main"
    if _COMMIT.fullmatch(rev) and not (hub_offline() and hub_cached_commit(repo_id, rev) is None):
        return rev
    asked = ""
    if not hub_offline():
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo_id, revision=rev).sha
            if sha and _COMMIT.fullmatch(str(sha)):
                return str(sha)
        except Exception as exc:  # unreachable hub, unknown repository or revision: the cache may still know
            asked = f"; the hub could not be asked ({exc.__class__.__name__})"
    commit = hub_cached_commit(repo_id, rev)
    if commit is not None:
        return commit
    try:
        from huggingface_hub import constants

        cache = f" {constants.HF_HUB_CACHE}"
    except ImportError:  # pragma: no cover
        cache = ""
    offline = " and the hub is offline (HF_HUB_OFFLINE is set)" if hub_offline() else asked
    which = f" ({what})" if what else ""
    raise WeightsError(
        f"revision {rev!r} of hub repository {repo_id!r}{which} is not in the local hub cache{cache}{offline}; "
        f"fetch it on a machine with network access with `{hub_fetch_hint(repo_id, rev)}` (and copy the cache "
        "here, or set HF_HOME to it), or write a revision the cache holds (org/name@<branch, tag or commit>)"
    )


def hub_revision_description(repo_id: str, revision: str | None, commit: str) -> dict[str, str]:
    """The hub part of a model plugin's ``describe()``: the repository, the revision as written
    (``main`` by default) and the commit hash of the snapshot used."""
    return {"repo": repo_id, "revision": revision or "main", "commit": commit}


# --------------------------------------------------------------------------- digests


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's bytes, read in chunks."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    return f"sha256:{h.hexdigest()}"


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
