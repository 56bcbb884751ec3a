"""The local Hugging Face hub cache, read without a network, and hub revisions.

:func:`hub_offline` says whether the hub is known to be unreachable (``HF_HUB_OFFLINE``);
:func:`hub_cached_file` finds a file of a repository in the cache; :func:`split_hub_id`
parts ``org/name@revision``; :func:`resolve_hub_commit` turns a revision into the commit
of the snapshot to load (asked of the hub when it is reachable, else read from the cache's
``refs/<revision>``), raising a :class:`~sing_audit.errors.WeightsError` with the
``hf download`` command when neither knows it. Re-exported by :mod:`sing_audit.weights`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import WeightsError

__all__ = [
    "hub_cached_commit",
    "hub_cached_file",
    "hub_fetch_hint",
    "hub_offline",
    "hub_revision_description",
    "resolve_hub_commit",
    "split_hub_id",
]

_TRUE = {"1", "on", "yes", "true", "y", "t"}


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
