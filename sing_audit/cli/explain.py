"""``explain``: one image's scores under an audit, and what its probes say about it."""

from __future__ import annotations

from ..terminal import shorten
from .output import one_line, say, say_json

__all__ = ["cmd_explain"]


def cmd_explain(args) -> int:
    from ..host import create_registry
    from ..pipeline.explain import explain_image
    from ..probes import explain_lines

    r = explain_image(
        args.config, args.image, model=args.model, target=args.target, label=args.label, top_k=args.top,
        overrides=args.override,
    )
    if args.json:
        say_json(r.model_dump(mode="json"))
        return 0
    stamp = "  [RANDOM WEIGHTS]" if r.random_weights else ""
    say(f"{one_line(r.image)} ({r.source}) — {r.model} @ {r.target}{stamp}")
    say(f"  class {one_line(shorten(r.class_name))!r} ({r.label_source}); predicted {one_line(shorten(r.predicted_name))!r}; translator: {r.translator}")
    contrast = "n/a" if r.attribute_contrast is None else f"{r.attribute_contrast:+.2f}°"
    say(f"  null energy {r.null_energy:.3f}  IS {r.image_score:.2f}°  AS {r.attribute_score:+.2f}°  AS contrast {contrast}")
    say("  classes most moved by null removal (AS):")
    for c in r.top_classes:
        say(f"    {c.attribute_score:+8.2f}°  {one_line(shorten(c.name))}")
    # each probe's own summary model says what it prints (sing_audit.probes.ProbeSummary.explain_lines)
    for line in explain_lines(create_registry(), r.probes, lambda text: one_line(shorten(text))):
        say(line)
    return 0
