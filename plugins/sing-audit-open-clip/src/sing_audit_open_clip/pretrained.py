"""What open_clip lists (model names, pretrained tags; read without importing it) and where
it would find a model's pretrained weights on this machine, looked up without a network
(for the pre-flight when the hub is offline)."""

from __future__ import annotations

import os
from pathlib import Path

from sing_audit.errors import WeightsError
from sing_audit.name_lists import library_value
from sing_audit.weights import hub_cached_file, hub_fetch_hint, split_hub_id

__all__ = ["HUB_CONFIG", "HUB_WEIGHTS", "cached_weights", "check_cached", "folder_weights", "list_models",
           "list_pretrained_tags"]

#: open_clip's config file in a hub repository or a local-dir folder (open_clip.constants.HF_CONFIG_NAME)
HUB_CONFIG = "open_clip_config.json"
#: open_clip's default hub file names (open_clip.constants), safetensors first as it tries them
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def folder_weights(folder: Path) -> Path | None:
    """The weights file open_clip's ``local-dir:`` loader would pick in ``folder`` (its preference
    order: open_clip's names, then the hub's, safetensors first), or ``None``."""
    for name in (*HUB_WEIGHTS, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.pth",
                 "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    return found[0] if found else None


def _hub_names(filename: str) -> tuple[str, ...]:
    if not filename or filename == HUB_WEIGHTS[1]:
        return HUB_WEIGHTS
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def cached_weights(model: str, tag: str | None) -> tuple[Path | None, str, str]:
    """``(path or None, what was looked for, how to fetch it)``: the file ``create_model(model, pretrained=tag)``
    would read, mirroring open_clip 3's ``download_pretrained`` (a ``file`` wins; else the
    hub repository, preferred; else the URL in ``~/.cache/clip``). ``tag`` is ``None`` for
    an ``hf-hub:org/repo[@revision]`` model, which names its repository itself."""
    import open_clip

    if model.startswith("hf-hub:"):
        repo, revision = split_hub_id(model[len("hf-hub:"):])
        where = f"hub repository {repo}" + (f" at {revision}" if revision else "")
        fetch = hub_fetch_hint(repo, revision)
        if hub_cached_file(repo, HUB_CONFIG, revision=revision) is None:
            return None, f"{HUB_CONFIG} of {where}", fetch
        return hub_cached_file(repo, HUB_WEIGHTS, revision=revision), f"{' or '.join(HUB_WEIGHTS)} of {where}", fetch
    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    if cfg.get("file"):
        path = Path(cfg["file"])
        return (path if path.is_file() else None), str(path), f"copy it to {path}"
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" or "org/repo/file.bin", as open_clip reads it
        names = _hub_names(filename)
        return (hub_cached_file(repo, names), f"{' or '.join(names)} of hub repository {repo}",
                f"{hub_fetch_hint(repo)} {names[-1]}")
    if cfg.get("url"):
        path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        return (path if path.is_file() else None), str(path), f"download {cfg['url']}"
    return None, "a weights source", "find its weights"


def check_cached(model: str, tag: str | None) -> None:
    """A :class:`WeightsError` (about ``weights``) when the pretrained weights are not on
    this machine, saying where they were looked for and how to do without the hub."""
    import open_clip

    found, looked, fetch = cached_weights(model, tag)
    if found is not None:
        return
    try:
        from huggingface_hub import constants

        cache = f" (hub cache: {constants.HF_HUB_CACHE})"
    except ImportError:  # pragma: no cover - a dependency of open_clip
        cache = ""
    which = f"open_clip model {model!r}" + (f" (tag {tag!r})" if tag else "")
    quick = tag is not None and (open_clip.get_pretrained_cfg(model, tag) or {}).get("quick_gelu", False) \
        and not (open_clip.get_model_config(model) or {}).get("quick_gelu", False)
    arch = f" and model: {model}-quickgelu (these weights were trained with QuickGELU)" if quick else ""
    raise WeightsError(
        f"the pretrained weights of {which} are not on this machine and the hub is offline (HF_HUB_OFFLINE is set): "
        f"looked for {looked}{cache}; on a machine with network access, {fetch}, and set weights: <that file>{arch}; "
        "or copy that machine's hub cache here; or set weights: random for a smoke test (never a silent fallback)",
        field="weights",
    )


def _str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def list_models() -> list[str]:
    """``open_clip.list_models()``, read from the name list of the installed open_clip version
    (:mod:`sing_audit.name_lists`), so that checking a model name does not import open_clip."""

    def build() -> list[str]:
        import open_clip

        return list(open_clip.list_models())

    return library_value("open_clip_torch", "models", build, module="open_clip", valid=_str_list)


def list_pretrained_tags(model: str) -> list[str]:
    """``open_clip.list_pretrained_tags_by_model(model)``, in open_clip's order, from the
    installed version's list of ``(model, tag)`` pairs (no import)."""

    def build() -> list[list[str]]:
        import open_clip

        return [[m, t] for m, t in open_clip.list_pretrained()]

    def valid(v) -> bool:
        return isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and _str_list(p) for p in v)

    pairs = library_value("open_clip_torch", "pretrained", build, module="open_clip", valid=valid)
    return [t for m, t in pairs if m == model]
