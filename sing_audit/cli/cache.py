"""``cache info|prune|clear``: the cache shared across audits
(:mod:`sing_audit.pipeline.shared_cache`). Exit 0 on success, 2 on bad input (a size
that is not one, a folder that is not a sing-audit cache, ``clear`` without ``--yes``
where nobody can confirm)."""

from __future__ import annotations

import sys
import time

from .exit_codes import EXIT_BAD_INPUT
from .output import say, table, warn

__all__ = ["cmd_cache"]


def _size(n: int) -> str:
    from pydantic import ByteSize

    return ByteSize(int(n)).human_readable()


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


def _setting(args):
    from ..cache_setting import cache_setting

    if args.cache_dir is not None:
        return cache_setting(args.cache_dir, None, source="option")
    return cache_setting()


def cmd_cache(args) -> int:
    from ..errors import ConfigError
    from ..pipeline.shared_cache import CACHE_DIR_ENV, open_shared_cache

    from ..pipeline.shared_cache import parse_size

    # a bad --max-size is an error whatever the cache holds (even when there is none yet)
    bound = None if getattr(args, "max_size", None) is None else parse_size(args.max_size, "--max-size")
    setting = _setting(args)
    if not setting.enabled:
        if args.action == "info":
            say(f"shared cache: off ({setting.why()}); set {CACHE_DIR_ENV} to a folder, or pass --cache-dir, to use one")
            return 0
        raise ConfigError(f"the shared cache is off ({setting.why()}); pass --cache-dir PATH to {args.action} a folder")
    root = setting.path.resolve()
    if not root.exists():
        say(f"shared cache: {root} ({setting.why()}): not created yet (the first audit that stores an entry creates it)")
        return 0
    cache = open_shared_cache(setting, create=False)
    if args.action == "info":
        return _info(cache, setting)
    if args.action == "prune":
        bound = cache.max_size if bound is None else bound
        removed = cache.prune(bound)
        for e in removed:
            say(f"removed {e.kind}/{e.key} ({_size(e.size)}, last used {_when(e.used)})")
        left = sum(e.size for e in cache.entries())
        say(f"pruned {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}; {_size(left)} left in {root} "
            f"(bound {_size(bound)})")
        return 0
    entries = cache.entries()
    total = sum(e.size for e in entries)
    if not args.yes:
        if not sys.stdin.isatty():
            warn(f"sing-audit: error: refusing to clear the shared cache {root} ({len(entries)} entries, {_size(total)}) "
                 "without --yes: there is no terminal to confirm on")
            return EXIT_BAD_INPUT
        answer = input(f"remove every entry of the shared cache {root} ({len(entries)} entries, {_size(total)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            say("nothing removed")
            return 0
    removed = cache.clear()
    say(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({_size(sum(e.size for e in removed))}) "
        f"from {root}")
    return 0


def _info(cache, setting) -> int:
    entries = cache.entries()
    say(f"shared cache: {cache.root}")
    say(f"enabled: yes ({setting.why()})")
    kinds: dict[str, list] = {}
    for e in entries:
        kinds.setdefault(e.kind, []).append(e)
    rows = [[kind, f"{len(es)} entr{'y' if len(es) == 1 else 'ies'}", _size(sum(e.size for e in es))]
            for kind, es in sorted(kinds.items())]
    if rows:
        for line in table(["kind", "entries", "size"], rows):
            say(line)
    total = sum(e.size for e in entries)
    say(f"total: {_size(total)} in {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}; "
        f"bound {_size(cache.max_size)} ({setting.max_size_source})")
    if entries:
        say(f"oldest use {_when(entries[0].used)}, newest use {_when(entries[-1].used)}")
    return 0
