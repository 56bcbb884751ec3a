"""Where the cache shared across audits is, how large it may grow, and why
(:mod:`sing_audit.pipeline.shared_cache` is the cache itself; :mod:`sing_audit.name_lists` keeps its lists in the same folder).

``run.cache_dir`` in the config (a path, relative to the config's folder, or ``false``)
wins; then ``SING_AUDIT_CACHE_DIR`` (a path, or ``off``/``0``/``false``/``none``); then
``platformdirs.user_cache_dir("sing-audit")``. The bound: ``run.cache_max_size``, then
``SING_AUDIT_CACHE_MAX_SIZE``, then :data:`DEFAULT_MAX_SIZE`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["CACHE_DIR_ENV", "CACHE_MAX_SIZE_ENV", "DEFAULT_MAX_SIZE", "NAMES_DIR", "OFF_WORDS", "TAG_NAME", "TAG_TEXT",
           "CacheSetting", "cache_setting", "claim_folder", "folder_from_environment", "is_tagged", "parse_size", "setting_of"]

CACHE_DIR_ENV = "SING_AUDIT_CACHE_DIR"
CACHE_MAX_SIZE_ENV = "SING_AUDIT_CACHE_MAX_SIZE"
#: 10 GiB: the features of about 25 ResNet-50-sized backbones on all 50,000 ImageNet
#: validation images (400 MB each), small beside a user's disk
DEFAULT_MAX_SIZE = 10 * 1024**3
#: values of SING_AUDIT_CACHE_DIR that turn the shared cache off (case-insensitive)
OFF_WORDS = frozenset({"off", "0", "false", "none"})
#: the tag that marks a folder as sing-audit's machine-wide cache (https://bford.info/cachedir/):
#: a non-empty folder without it is never written, pruned or cleared
TAG_NAME = "CACHEDIR.TAG"
TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by sing-audit (its cache shared across audits).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
#: the subfolder of the model libraries' name lists (:mod:`sing_audit.name_lists`): never an entry kind
NAMES_DIR = "names"


@dataclass(frozen=True)
class CacheSetting:
    """Where the shared cache is, and why: ``path`` ``None`` is off; ``source`` is
    ``"config"`` (run.cache_dir), ``"environment"`` (SING_AUDIT_CACHE_DIR) or ``"default"``."""

    path: Path | None
    source: str
    max_size: int
    max_size_source: str

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def why(self) -> str:
        """Where the setting comes from, in words."""
        return {
            "config": "run.cache_dir in the config",
            "environment": f"{CACHE_DIR_ENV} in the environment",
            "option": "--cache-dir",
            "default": "the default: the user's cache folder",
        }[self.source]


def parse_size(text: str, what: str) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        size = int(TypeAdapter(ByteSize).validate_python(text.strip()))
    except ValidationError:
        raise ConfigError(f"{what}={text!r} is not a size (e.g. 20GB, 500MiB, 1e9)") from None
    if size <= 0:
        raise ConfigError(f"{what}={text!r}: the size must be positive (turn the cache off with {CACHE_DIR_ENV}=off)")
    return size


def cache_setting(cache_dir: Path | bool | None = None, max_size: int | None = None,
                  environ: Mapping[str, str] | None = None, source: str = "config") -> CacheSetting:
    """The shared cache's setting. ``cache_dir``: the config's ``run.cache_dir`` already
    resolved against the config's folder (a path), ``False`` (off) or ``None`` (not set:
    the environment, then the default); ``max_size``: the config's ``run.cache_max_size``."""
    env = os.environ if environ is None else environ
    if max_size is not None:
        size, size_source = int(max_size), "config"
    elif env.get(CACHE_MAX_SIZE_ENV, "").strip():
        size, size_source = parse_size(env[CACHE_MAX_SIZE_ENV], CACHE_MAX_SIZE_ENV), "environment"
    else:
        size, size_source = DEFAULT_MAX_SIZE, "default"
    if cache_dir is False:
        return CacheSetting(None, source, size, size_source)
    if cache_dir is not None and cache_dir is not True:
        return CacheSetting(Path(cache_dir).expanduser().absolute(), source, size, size_source)
    path, where = folder_from_environment(env)
    return CacheSetting(path, where, size, size_source)


def is_tagged(root: Path) -> bool:
    """Whether ``root`` carries sing-audit's cache tag (a real file, never a symlink)."""
    tag = Path(root) / TAG_NAME
    if not tag.is_file() or tag.is_symlink():
        return False
    with open(tag, encoding="utf-8", errors="replace") as fh:
        return fh.readline() == TAG_TEXT.splitlines(keepends=True)[0]


def claim_folder(root: Path) -> bool:
    """Make ``root`` sing-audit's cache folder when it is ours already, missing or empty
    (the tag is written); ``False`` when it holds files without the tag (someone else's
    folder: nothing may be written there). Raises ``OSError`` when it cannot be created."""
    from .store import atomic_write_text

    root = Path(root)
    if is_tagged(root):
        return True
    root.mkdir(parents=True, exist_ok=True)
    if any(p.name != TAG_NAME for p in root.iterdir()):
        return False
    atomic_write_text(root / TAG_NAME, TAG_TEXT)
    return True


def folder_from_environment(environ: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """The shared cache's folder when no config names one, and where that comes from:
    ``SING_AUDIT_CACHE_DIR`` (a folder, or an off word: ``None``), else the user's cache
    folder. The one rule for every machine-wide file, the name lists of
    :mod:`sing_audit.name_lists` included."""
    env = os.environ if environ is None else environ
    raw = env.get(CACHE_DIR_ENV, "").strip()
    if raw:
        if raw.lower() in OFF_WORDS:
            return None, "environment"
        return Path(raw).expanduser().absolute(), "environment"
    import platformdirs

    return Path(platformdirs.user_cache_dir("sing-audit")), "default"


def setting_of(cfg) -> CacheSetting:
    """The shared cache's setting for the audit ``cfg`` (an :class:`~sing_audit.config.AuditConfig`)."""
    run = cfg.run
    cache_dir = run.cache_dir
    if cache_dir is not None and cache_dir is not False:
        cache_dir = cfg.resolve_path(cache_dir)
    return cache_setting(cache_dir, None if run.cache_max_size is None else int(run.cache_max_size))
