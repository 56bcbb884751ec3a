"""Which model and weights a ``timm`` backbone's options name, resolved without building
anything: a timm name with its tag, an ``hf-hub:`` name, or a hub-layout folder
(``local-dir:`` or ``weights: <folder>``), checked against what timm knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sing_audit.errors import ConfigError, WeightsError
from sing_audit.weights import (
    ResolvedWeights,
    find_weights_in_folder,
    hub_revision_description,
    resolve_hub_commit,
    resolve_weights,
    split_hub_id,
)

from .pretrained import SOURCE_PREFIXES, check_architecture, check_tag, is_model, read_folder_config

__all__ = ["TimmModelName"]


class TimmModelName:
    """Mixin of :class:`~sing_audit_timm.backbone.TimmBackbone`: reads ``options.model``,
    ``options.weights`` and ``options.base_dir``; caches in ``_resolved`` and ``_folder_cfgs``."""

    options: Any
    _resolved: ResolvedWeights | None
    _hub_commit: str | None = None
    _folder_cfgs: dict[str, tuple[dict[str, Any], str, dict[str, Any]]]

    def _local_dir(self) -> Path | None:
        """The folder of a ``local-dir:`` model name, resolved from the config's folder."""
        name = self.options.model
        if not name.startswith("local-dir:"):
            return None
        raw = name[len("local-dir:"):].strip()
        if not raw:
            raise ConfigError("model 'local-dir:' names no folder; write model: local-dir:<folder with config.json>")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (Path(self.options.base_dir) if self.options.base_dir is not None else Path.cwd()) / path
        return path.resolve()

    def _folder_config(self, folder: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """``(pretrained_cfg, architecture, model_args)`` from a hub-layout folder's ``config.json``."""
        key = str(folder)
        if key not in self._folder_cfgs:
            self._folder_cfgs[key] = read_folder_config(folder)
        return self._folder_cfgs[key]

    def _check_folder_architecture(self, folder: Path) -> None:
        _, folder_arch, _ = self._folder_config(folder)
        arch, _ = self._arch_and_tag()
        folder_base = folder_arch.partition(".")[0]
        if not is_model(folder_base):
            raise WeightsError(f"{folder / 'config.json'} names architecture {folder_arch!r}, which timm does not know")
        if folder_base != arch:
            raise WeightsError(
                f"weights folder {folder} holds a {folder_base!r} (its config.json) but model is {arch!r}; set "
                f"model: {folder_base}, or model: local-dir:{folder}"
            )

    def hub_id(self) -> tuple[str, str | None] | None:
        """``(repository, revision or None)`` of an ``hf-hub:org/name[@revision]`` model name, else ``None``."""
        name = self.options.model
        if not name.startswith(("hf-hub:", "hf_hub:")):
            return None
        repo, revision = split_hub_id(name.split(":", 1)[1])
        if not repo:
            raise ConfigError("model 'hf-hub:' names no repository; write model: hf-hub:org/name[@revision]")
        return repo, revision

    def hub_commit(self) -> str | None:
        """The commit hash of the hub snapshot an ``hf-hub:`` model is built from (``None`` for
        other names): asked of the hub once per backbone, or read from the local cache offline
        (:func:`~sing_audit.weights.resolve_hub_commit`), then kept, so the description that keys
        the cache and the model that is loaded name the same snapshot."""
        hub = self.hub_id()
        if hub is None:
            return None
        if self._hub_commit is None:
            self._hub_commit = resolve_hub_commit(hub[0], hub[1], what=f"timm model {self.options.model!r}")
        return self._hub_commit

    def hub_revision(self) -> dict[str, str] | None:
        """``{"repo", "revision", "commit"}`` of an ``hf-hub:`` model, for ``describe()``."""
        hub = self.hub_id()
        commit = self.hub_commit()
        return None if hub is None or commit is None else hub_revision_description(hub[0], hub[1], commit)

    def pinned_name(self, name: str) -> str:
        """``name`` with an ``hf-hub:`` repository pinned to the resolved commit (``hf-hub:org/name@<commit>``)."""
        hub = self.hub_id()
        if hub is None or not name.startswith(("hf-hub:", "hf_hub:")):
            return name
        return f"hf-hub:{hub[0]}@{self.hub_commit()}"

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            local = self._local_dir()
            if local is not None and self.options.weights.strip().lower() == "pretrained":
                # a local-dir model brings its own weights: the folder's weights file
                self._resolved = ResolvedWeights("file", f"local-dir:{local}", find_weights_in_folder(local), folder=local)
            else:
                self._resolved = resolve_weights(self.options.weights, self.options.base_dir)
        return self._resolved

    def _arch_and_tag(self) -> tuple[str, str | None]:
        name = self.options.model
        local = self._local_dir()
        if local is not None:
            _, arch, _ = self._folder_config(local)
            return arch.partition(".")[0], None
        if name.startswith(("hf-hub:", "hf_hub:")):
            return name, None
        arch, _, tag = name.partition(".")
        return arch, (tag or None)

    def _check_model_name(self) -> None:
        name = self.options.model
        local = self._local_dir()
        if local is not None:
            self._folder_config(local)
            arch, _ = self._arch_and_tag()
            if not is_model(arch):
                raise WeightsError(f"{local / 'config.json'} names architecture {arch!r}, which timm does not know")
            return
        if name.startswith(("hf-hub:", "hf_hub:")):
            self.hub_id()
            return
        arch, tag = self._arch_and_tag()
        check_architecture(arch)
        if tag is not None:
            check_tag(arch, tag)

    def _pretrained_name(self) -> str:
        """The timm name whose pretrained weights ``weights: pretrained`` or ``weights: <tag>`` loads."""
        w = self.resolved_weights
        name = self.options.model
        if w.kind != "tag":
            return name
        if name.startswith(SOURCE_PREFIXES):
            raise WeightsError(
                f"model {name!r} names its weights itself; a tag ({w.value!r}) cannot be combined with it: "
                "use weights: pretrained"
            )
        arch, own_tag = self._arch_and_tag()
        if own_tag is not None and own_tag != w.value:
            raise WeightsError(
                f"model {name!r} already names tag {own_tag!r} but weights asks for {w.value!r}; "
                f"give the tag in one place only"
            )
        check_tag(arch, w.value)
        return f"{arch}.{w.value}"
