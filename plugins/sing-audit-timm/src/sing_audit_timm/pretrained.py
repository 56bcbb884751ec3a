"""What timm knows without building a model: architecture names, pretrained tags, and
where the pretrained weights of a name would come from on this machine (no network).
Shared by the ``timm`` and ``dino_vit`` backbones."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from sing_audit.errors import ConfigError, WeightsError
from sing_audit.name_lists import library_value
from sing_audit.weights import hub_cached_file, local_weights_hint
from sing_audit.terminal import close_matches

__all__ = [
    "SOURCE_PREFIXES",
    "arch_data_config",
    "arch_pretrained_cfg",
    "is_model",
    "list_models",
    "list_pretrained",
    "cached_weights",
    "check_architecture",
    "check_cached",
    "check_has_weights",
    "check_tag",
    "classifier_keys",
    "read_folder_config",
]

#: model names that say where the model comes from instead of naming a timm architecture
SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def read_folder_config(folder: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """``(pretrained_cfg, architecture, model_args)`` from a hub-layout folder's ``config.json``
    (as timm's ``save_for_hf`` writes it); a :class:`WeightsError` says what is missing."""
    from timm.models._hub import load_model_config_from_path

    cfg_file = folder / "config.json"
    if not folder.is_dir():
        raise WeightsError(f"model folder not found: {folder}")
    if not cfg_file.is_file():
        raise WeightsError(
            f"folder {folder} has no config.json: a folder in the hub's layout holds config.json and "
            "model.safetensors (or pytorch_model.bin); point weights at the weights file itself instead, "
            "with model: <timm architecture>"
        )
    try:
        pcfg, arch, model_args = load_model_config_from_path(folder)
    except Exception as exc:
        raise WeightsError(
            f"{cfg_file} is not a timm model config ({exc.__class__.__name__}: {exc}); it needs at least "
            "'architecture' (as timm's save_for_hf writes it)"
        ) from exc
    return dict(pcfg), str(arch), dict(model_args or {})


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def list_models(pattern: str = "") -> list[str]:
    """``timm.list_models(pattern)``: the architectures timm lists (not the deprecated
    aliases it still builds), in timm's order, read from the name list of the installed timm
    version (:mod:`sing_audit.name_lists`) so that no check imports timm."""

    def build() -> list[str]:
        import timm

        return list(timm.list_models())

    names = library_value("timm", "models", build, module="timm", valid=_str_list)
    return fnmatch.filter(names, pattern) if pattern else names


def list_pretrained(arch: str) -> list[str]:
    """``timm.list_pretrained(f"{arch}.*")``: ``arch.tag`` of every pretrained weights timm has for ``arch``."""

    def build() -> list[str]:
        import timm

        return list(timm.list_pretrained())

    return fnmatch.filter(library_value("timm", "pretrained", build, module="timm", valid=_str_list), f"{arch}.*")


def is_model(name: str) -> bool:
    """``timm.is_model(name)``: timm builds the architecture of ``name`` (any tag ignored),
    deprecated aliases included."""

    def build() -> list[str]:
        import timm

        return sorted(timm.models.get_deprecated_models())

    arch = name.split(".", 1)[0]
    return arch in list_models() or arch in library_value("timm", "deprecated_models", build, module="timm", valid=_str_list)


def arch_pretrained_cfg(model_name: str) -> dict[str, Any] | None:
    """``timm.models.get_pretrained_cfg(model_name).to_dict()`` with ``has_weights`` added
    (``None`` for an architecture without pretrained configs), remembered per timm version;
    a tag the architecture does not have raises timm's ``RuntimeError``, as timm does."""

    def build() -> dict[str, Any]:
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(model_name)
        except RuntimeError as exc:
            return {"error": str(exc)}
        return {"cfg": None if cfg is None else {**cfg.to_dict(), "has_weights": bool(cfg.has_weights)}}

    def valid(v: Any) -> bool:
        return isinstance(v, dict) and (isinstance(v.get("error"), str) or isinstance(v.get("cfg", 0), (dict, type(None))))

    answer = library_value("timm", f"pretrained_cfg/{model_name}", build, module="timm", valid=valid)
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return answer["cfg"]


def arch_data_config(model_name: str) -> dict[str, Any]:
    """timm's ``resolve_data_config(pretrained_cfg=...)`` of ``model_name``'s pretrained config
    (timm's defaults for a name without one, an unknown tag included), remembered per timm version.
    JSON data: sequences come back as lists."""

    def build() -> dict[str, Any]:
        from timm.data import resolve_data_config

        try:
            cfg = arch_pretrained_cfg(model_name)
        except RuntimeError:  # an unknown tag: no config
            cfg = None
        cfg = {k: v for k, v in (cfg or {}).items() if k != "has_weights"}
        return dict(resolve_data_config(pretrained_cfg=cfg))

    return library_value("timm", f"data_config/{model_name}", build, module="timm",
                         valid=lambda v: isinstance(v, dict))


def check_architecture(arch: str, pattern: str = "") -> None:
    """A :class:`ConfigError` unless timm knows architecture ``arch``, with close names
    (among ``timm.list_models(pattern)`` when a pattern is given)."""
    if is_model(arch):
        return
    close = close_matches(arch, list_models(pattern), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"timm has no model named {arch!r}{hint}")


def check_tag(arch: str, tag: str) -> None:
    """A :class:`WeightsError` unless timm has pretrained weights ``arch.tag``, with the close tags."""
    tags = [n.partition(".")[2] for n in list_pretrained(arch)]
    if tag not in tags:
        close = close_matches(tag, tags, n=5, cutoff=0.5)
        listing = ", ".join(close or tags[:10]) or "none"
        raise WeightsError(
            f"timm model {arch!r} has no pretrained tag {tag!r} (known tags: {listing}); "
            "use one of them, weights: pretrained, a local weights file, or weights: random"
        )


def check_has_weights(model_name: str) -> None:
    """A :class:`WeightsError` when timm has no pretrained weights for ``model_name``."""
    if model_name.startswith(SOURCE_PREFIXES):
        return
    cfg = arch_pretrained_cfg(model_name)
    if cfg is None or not cfg.get("has_weights"):
        raise WeightsError(
            f"timm has no pretrained weights for {model_name!r}; set weights to a local weights file, "
            "or to random for a smoke test"
        )


def cached_weights(model_name: str) -> tuple[Path | None, str]:
    """Where timm would find ``model_name``'s pretrained weights on this machine, without a network.

    Mirrors timm 1.0's ``_resolve_pretrained_source``: a ``file`` wins; else the hub
    repository (``hf_hub_id``, file ``hf_hub_filename`` or ``pytorch_model.bin``, with
    its safetensors alternative tried first); else the ``url`` in timm's torch-hub cache.
    Returns ``(path or None, what was looked for)``.
    """
    import timm
    import torch
    from timm.models import _builder

    if model_name.startswith(("hf-hub:", "hf_hub:")):
        repo = model_name.split(":", 1)[1]
        names = ("model.safetensors", "pytorch_model.bin")
        if hub_cached_file(repo, "config.json") is None:
            return None, f"config.json of hub repository {repo}"
        return hub_cached_file(repo, names), f"{' or '.join(names)} of hub repository {repo}"
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None, f"a pretrained config for {model_name!r}"
    if cfg.file:
        path = Path(cfg.file)
        return (path if path.is_file() else None), str(path)
    # timm's torch-hub cache (timm.models._hub.get_cache_dir, which would create the folder)
    url_dir = Path(torch.hub.get_dir()) / "checkpoints"
    url_file = url_dir / Path(str(cfg.url).split("?")[0]).name if cfg.url else None
    url_cached = url_file if url_file is not None and url_file.is_file() else None
    if url_cached is not None and (not cfg.hf_hub_id or getattr(_builder, "_USE_OLD_CACHE", False)):
        return url_cached, str(url_file)
    if cfg.hf_hub_id:
        filename = cfg.hf_hub_filename or "pytorch_model.bin"
        names = [filename]
        if filename == "pytorch_model.bin":
            names.insert(0, "model.safetensors")
        elif filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        elif filename.endswith(".bin"):
            names.insert(0, filename[: -len(".bin")] + ".safetensors")
        return hub_cached_file(cfg.hf_hub_id, tuple(names)), f"{' or '.join(names)} of hub repository {cfg.hf_hub_id}"
    if url_file is not None:
        return None, str(url_file)
    return None, "a weights source"


def check_cached(model_name: str) -> None:
    """A :class:`WeightsError` when the pretrained weights of ``model_name`` are not on this
    machine (for an offline hub: ``HF_HUB_OFFLINE``), saying where they were looked for."""
    found, looked = cached_weights(model_name)
    if found is not None:
        return
    try:
        from huggingface_hub import constants

        cache = f" (hub cache: {constants.HF_HUB_CACHE})"
    except ImportError:  # pragma: no cover
        cache = ""
    raise WeightsError(
        f"the pretrained weights of timm model {model_name!r} are not on this machine and the hub is offline "
        f"(HF_HUB_OFFLINE is set): looked for {looked}{cache}; {local_weights_hint(repr(model_name))}"
    )


def classifier_keys(model_name: str) -> list[str]:
    """The classifier's parameter prefixes in timm's pretrained config of ``model_name`` (none when unknown)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # hf-hub names, unknown tags: no local config to read
        cfg = None
    classifier = getattr(cfg, "classifier", None) if cfg is not None else None
    if classifier is None:
        return []
    if isinstance(classifier, str):
        return [classifier]
    return [str(c) for c in classifier]
