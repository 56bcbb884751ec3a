"""Where an open_clip model comes from when its name says so: ``hf-hub:org/repo[@revision]``
(the snapshot of the commit the revision names, resolved once) or ``local-dir:<folder>``
(resolved from the config file's folder), both handed to open_clip as ``local-dir:`` of the
folder that holds ``open_clip_config.json`` and the weights. A mixin of
:class:`~sing_audit_open_clip.target.OpenClipTarget`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sing_audit.errors import ConfigError, WeightsError, exception_summary
from sing_audit.weights import file_digest, hub_fetch_hint, resolve_hub_commit, split_hub_id

from .pretrained import HUB_CONFIG, HUB_WEIGHTS, folder_weights

__all__ = ["OpenClipSource"]


class OpenClipSource:
    """Reads ``options.model``, ``options.base_dir`` and ``resolved_weights``; keeps the resolved
    commit in ``_hub_commit``, the snapshot folder in ``_snapshot``, digests in ``_folder_digests``."""

    options: Any
    resolved_weights: Any
    _hub_commit: str | None
    _snapshot: Path | None
    _folder_digests: dict[str, str] | None

    def hub_id(self) -> tuple[str, str | None] | None:
        """``(repository, revision or None)`` of an ``hf-hub:org/repo[@revision]`` model, else ``None``."""
        if not self.options.model.startswith("hf-hub:"):
            return None
        repo, revision = split_hub_id(self.options.model[len("hf-hub:"):])
        if not repo:
            raise ConfigError("model 'hf-hub:' names no repository; write model: hf-hub:org/repo[@revision]",
                              field="model")
        return repo, revision

    def hub_commit(self) -> str | None:
        """The commit of the hub snapshot an ``hf-hub:`` model is built from, resolved once (so the
        description that keys the cache and the model loaded name the same snapshot)."""
        hub = self.hub_id()
        if hub is None:
            return None
        if self._hub_commit is None:
            try:
                self._hub_commit = resolve_hub_commit(hub[0], hub[1], what=f"open_clip model {self.options.model!r}")
            except WeightsError as exc:
                raise WeightsError(str(exc), field="model") from exc
        return self._hub_commit

    def local_dir(self) -> Path | None:
        """The folder of a ``local-dir:`` model, resolved from the config file's folder."""
        if not self.options.model.startswith("local-dir:"):
            return None
        raw = self.options.model[len("local-dir:"):].strip()
        if not raw:
            raise ConfigError("model 'local-dir:' names no folder; write model: local-dir:<folder with "
                              f"{HUB_CONFIG}>", field="model")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (Path(self.options.base_dir) if self.options.base_dir is not None else Path.cwd()) / path
        return path.resolve()

    def _check_local_dir(self, folder: Path, *, weights: bool) -> None:
        if not (folder / HUB_CONFIG).is_file():
            where = f"folder not found: {folder}" if not folder.is_dir() else f"folder {folder} has no {HUB_CONFIG}"
            raise WeightsError(
                f"model {self.options.model!r}: {where}; "
                f"a local open_clip model is a folder with {HUB_CONFIG} and its weights "
                f"({' or '.join(HUB_WEIGHTS)}), as open_clip's push_to_hf_hub writes them", field="model")
        if weights and folder_weights(folder) is None:
            raise WeightsError(
                f"model folder {folder} holds {HUB_CONFIG} but no weights ({' or '.join(HUB_WEIGHTS)}): save them "
                "beside it, point weights at a weights file, or set weights: random (never a silent fallback)",
                field="weights")

    def _snapshot_folder(self, *, weights: bool) -> Path:
        """The cache folder of the resolved hub snapshot, with its config (and weights) downloaded at that commit."""
        from huggingface_hub import hf_hub_download

        repo, _ = self.hub_id()  # type: ignore[misc]
        commit = self.hub_commit()
        needed = [(HUB_CONFIG,)] + ([HUB_WEIGHTS] if weights else [])
        folder: Path | None = None
        for names in needed:
            errors = []
            for name in names:
                try:
                    folder = Path(hf_hub_download(repo, name, revision=commit)).parent
                    break
                except Exception as exc:  # not in that snapshot, or the hub unreachable
                    errors.append(f"{name}: {exception_summary(exc)}")
            else:
                raise WeightsError(
                    f"{' or '.join(names)} of hub repository {repo!r} at commit {commit} could not be fetched "
                    f"({'; '.join(errors)}); on a machine with network access run "
                    f"`{hub_fetch_hint(repo, commit)}` and copy the hub cache here, or set weights: <local file>",
                    field="model")
        assert folder is not None
        return folder

    def _source_name(self, *, weights: bool) -> str:
        """The name handed to open_clip: a hub snapshot or a local folder as ``local-dir:``."""
        local = self.local_dir()
        if local is not None:
            self._check_local_dir(local, weights=weights)
            return f"local-dir:{local}"
        if self.hub_id() is not None:
            if self._snapshot is None or weights:
                self._snapshot = self._snapshot_folder(weights=weights)
            return f"local-dir:{self._snapshot}"
        return self.options.model

    def _local_digests(self, folder: Path) -> dict[str, str]:
        """Digests of a ``local-dir:`` folder's config and weights: the cache key before load."""
        if self._folder_digests is None:
            out: dict[str, str] = {}
            files = [folder / HUB_CONFIG]
            if self.resolved_weights.kind in ("pretrained", "tag"):
                found = folder_weights(folder)
                files += [found] if found is not None else []
            for f in files:
                if f.is_file():
                    out[f.name] = file_digest(f)
            self._folder_digests = out
        return self._folder_digests
