"""``validate``, ``schema`` and ``plugins``: what a config builds and what is installed,
without running anything."""

from __future__ import annotations

from ..terminal import first_sentence
from .output import one_line, say, say_json

__all__ = ["cmd_validate", "cmd_schema", "cmd_plugins"]


def cmd_validate(args) -> int:
    from ..config import load_config
    from ..host import create_registry
    from ..pipeline import build_plan

    cfg = load_config(args.config, args.override)
    plan = build_plan(cfg, create_registry(), str(args.config))
    say(
        f"{args.config}: valid — {len(plan.backbones)} backbone(s), {len(plan.targets)} target(s), "
        f"probes {', '.join(p.plugin for p in plan.probes)}; output {cfg.output_dir}"
    )
    return 0


def cmd_schema(args) -> int:
    from ..host import create_registry
    from ..schema import config_schema

    say_json(config_schema(create_registry()))
    return 0


def cmd_plugins(args) -> int:
    from ..host import create_registry

    rows = [
        {"kind": r.kind, "name": r.name, "package": r.package, "module": r.plugin, "doc": first_sentence(r.factory.__doc__ or getattr(r.factory, "help", None))}
        for r in create_registry().all()
    ]
    if args.json:
        say_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    current = None
    for r in rows:
        if r["kind"] != current:
            current = r["kind"]
            say(f"{current}s:")
        say(f"  {r['name']:<{width}}  {r['package']}  — {one_line(r['doc'])}")
    return 0
