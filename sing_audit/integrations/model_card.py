"""``sing-audit export model-card RUN``: a model card's section on the audit, from a run folder.

The file is Markdown with the Hugging Face Hub's card metadata as YAML front matter: the
audit's figures as ``model-index`` evaluation results, written by huggingface_hub's own
``ModelCardData``/``EvalResult`` (the ``model-card`` extra), so the Hub and
``huggingface_hub.ModelCard.load`` read them back. The body has the verdict, a table of
the model's figures per target, its flagged classes with their intervals, the method and
the provenance in two sentences each, and a summary without links that stands alone.

A card describes one model: the Hub's ``model-index`` holds one entry per card
(``huggingface_hub`` merges the results of several entries under the last entry's name),
so a run of several models needs ``--model NAME[@TARGET]``; a model audited against
several targets keeps every target, each metric naming its target in ``config``.

Class, model, target and dataset names are the user's text: escaped for Markdown with
:func:`sing_audit.builtins.ci_reporters.md_escape` in the body, and written by the YAML
dumper (quoted where needed) in the front matter.

``sing-audit export`` is a command with a grammar of its own (``EXPORTS``): more exports
join ``model-card`` there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from sing_audit import __version__
from sing_audit.builtins.ci_reporters import fmt_interval, fmt_num, fmt_ratio, md_escape
from sing_audit.commands import Command
from sing_audit.errors import BadInputError
from sing_audit.extras import require
from sing_audit.hookspecs import hookimpl
from sing_audit.store import atomic_write_text
from sing_audit.terminal import plain, suggest

__all__ = ["EXPORTS", "Export", "ModelCardExport", "card_eval_results", "render_model_card", "select_models"]

#: written in every card this command makes: a file without it is not overwritten (unless --force)
MARKER = "<!-- written by sing-audit export model-card; run it again to update this section -->"
TASK = "image-classification"

#: metric type -> (readable name, attribute of the model result, attribute of its interval)
METRICS: dict[str, tuple[str, str, str | None]] = {
    "sing-audit/null-dim": ("Null-space dimension", "null_dim", None),
    "sing-audit/mean-is": ("Mean Image Score (degrees)", "is_mean", "is_ci"),
    "sing-audit/mean-abs-as": ("Mean |Attribute Score| (degrees)", "as_abs_mean", "as_abs_ci"),
    "sing-audit/is-as-ratio": ("IS/AS ratio", "is_as_ratio", "is_as_ratio_ci"),
    "sing-audit/flagged-classes": ("Flagged classes", "n_flagged", None),
    "sing-audit/judged-classes": ("Judged classes", "n_judged", None),
}


def select_models(result, spec: str | None) -> list:
    """The models a card describes: every target of ``NAME``, or ``NAME@TARGET``; with no
    ``spec``, the run's only model (its targets). Unknown or ambiguous: BadInputError."""
    names = list(dict.fromkeys(m.name for m in result.models))
    pairs = [f"{m.name}@{m.target}" for m in result.models]
    if spec is None:
        if len(names) == 1:
            return list(result.models)
        raise BadInputError(
            f"this run audited {len(names)} models ({', '.join(names)}); a model card describes one: "
            "choose it with --model NAME[@TARGET]"
        )
    name, _, target = spec.partition("@")
    chosen = [m for m in result.models if m.name == name and (not target or m.target == target)]
    if not chosen:
        choices = pairs if target else names
        raise BadInputError(f"--model: the run has no model {spec!r}{suggest(spec, choices)}")
    return chosen


def _dataset(result, name: str | None, type_: str | None) -> tuple[str, str]:
    """The card's dataset ``(name, type)``: the options, else what the run recorded."""
    recorded = result.provenance.dataset or {}
    configured = result.provenance.config.get("dataset") if isinstance(result.provenance.config.get("dataset"), dict) else {}
    default = configured.get("name") or (Path(str(recorded["root"])).name if recorded.get("root") else None)
    name, type_ = name or default, type_ or default
    if not name or not type_:
        raise BadInputError(
            "the run records no dataset (its inputs were precomputed): name the audit's data with "
            "--dataset-name NAME --dataset-type TYPE (TYPE: the dataset's Hub id, e.g. imagenet-1k)"
        )
    return str(name), str(type_)


def card_eval_results(models, dataset_name: str, dataset_type: str) -> list:
    """huggingface_hub ``EvalResult``s of ``models`` (one model's targets): one per figure
    and target, the target in ``metric_config`` and a 95% interval in ``metric_args``."""
    hub = require("huggingface_hub", extra="model-card", feature="sing-audit export model-card")
    out = []
    for m in models:
        for metric, (label, attr, ci_attr) in METRICS.items():
            value = getattr(m, attr)
            if value is None:
                continue  # an undefined figure (IS/AS without a null space) is left out, never 0
            ci = getattr(m, ci_attr) if ci_attr else None
            args = {"ci95": [ci.low, ci.high]} if ci is not None and ci.low is not None and ci.high is not None else None
            out.append(hub.EvalResult(
                task_type=TASK, dataset_type=dataset_type, dataset_name=dataset_name,
                metric_type=metric, metric_name=f"{label}, target {m.target}", metric_value=value,
                metric_config=m.target, metric_args=args,
            ))
    return out


def _verdict(models, result) -> tuple[str, str]:
    if any(not m.assessed for m in models):
        reasons = "; ".join(r for m in models for r in m.not_assessed_reasons)
        return "NOT ASSESSED", f"nothing about this model could be judged: {reasons}"
    failures = [f for m in models for f in m.policy_failures]
    if failures:
        return "FAIL", "; ".join(failures)
    return "PASS", "no class is flagged beyond what the policy allows"


def _random_stamp(models) -> str | None:
    if not any(m.random_weights for m in models):
        return None
    parts = sorted({p for m in models for p in m.random_weights_parts}) or [m.name for m in models if m.random_weights]
    return ("RANDOM WEIGHTS: this audit ran with random-initialised weights (" + ", ".join(parts)
            + "); it checks the pipeline and is not a verdict on a trained model.")


def _summary(models, result, dataset_name: str, verdict: str) -> str:
    m0 = models[0]
    targets = ", ".join(m.target for m in models)
    flagged = [c.name for m in models for c in m.classes if c.flagged and not c.waived]
    text = (
        f"{m0.name} was audited with sing-audit {__version__} for class meaning hidden in the null space of its "
        f"classification head, on {m0.n_images} images of {dataset_name} with {targets} as the vision-language "
        f"target. Verdict: {verdict}. "
    )
    for m in models:
        text += (f"Against {m.target}, {m.n_flagged} of {m.n_judged} judged classes are flagged, with a mean |AS| "
                 f"of {fmt_num(m.as_abs_mean, unit='°')} and an IS/AS ratio of {fmt_ratio(m)}. ")
    if flagged:
        text += "Flagged: " + ", ".join(dict.fromkeys(flagged)) + "."
    stamp = _random_stamp(models)
    return (text.strip() + (" " + stamp if stamp else "")).strip()


def render_model_card(result, models, eval_results, dataset_name: str, dataset_type: str) -> str:
    """The card's text: YAML front matter (``model-index``) and the Markdown section."""
    hub = require("huggingface_hub", extra="model-card", feature="sing-audit export model-card")
    tags = ["sing-audit", "null-space-audit"] + (["random-weights"] if any(m.random_weights for m in models) else [])
    data = hub.ModelCardData(model_name=models[0].name, eval_results=eval_results, tags=tags)
    verdict, why = _verdict(models, result)
    e = md_escape
    lines = ["## Null-space audit (sing-audit)", "", MARKER, ""]
    stamp = _random_stamp(models)
    if stamp:
        lines += [f"> **{e(stamp)}**", ""]
    lines += [f"**Verdict: {verdict}** — {e(why)}", "", "### Summary", "", e(_summary(models, result, dataset_name, verdict)), ""]
    lines += [
        "### Results",
        "",
        "| Target | Null dim | Mean IS | Mean \\|AS\\| [95% CI] | IS/AS [95% CI] | Flagged of judged |",
        "| --- | ---: | ---: | --- | --- | ---: |",
    ]
    for m in models:
        waived = f" (+{m.n_waived} waived)" if m.n_waived else ""
        lines.append(
            f"| {e(m.target)} | {m.null_dim} ({e(m.rank_rule_label)}) | {fmt_num(m.is_mean, unit='°')} | "
            f"{fmt_num(m.as_abs_mean, unit='°')} [{fmt_interval(m.as_abs_ci, unit='°')}] | {fmt_ratio(m)} | "
            f"{m.n_flagged} of {m.n_judged}{waived} |"
        )
    flagged = [(m, c) for m in models for c in m.classes if c.flagged]
    lines += ["", "### Flagged classes", ""]
    if flagged:
        lines += ["| Target | Index | Class | Mean \\|AS\\| | 95% CI | Images | Status |", "| --- | ---: | --- | ---: | --- | ---: | --- |"]
        for m, c in sorted(flagged, key=lambda mc: -(mc[1].as_abs_mean or 0.0)):
            status = "flagged"
            if c.waived:
                status = "waived: " + e(c.waiver_reason or "no reason given") + (f" (until {e(c.waiver_expires)})" if c.waiver_expires else "")
            lines.append(
                f"| {e(m.target)} | {c.index} | {e(c.name)} | {fmt_num(c.as_abs_mean, unit='°')} | "
                f"{fmt_interval(c.as_abs_ci, unit='°')} | {c.n} | {status} |"
            )
    else:
        lines.append("None: no class's mean \\|AS\\| is above the threshold with 95% confidence.")
    policy = result.policy
    threshold = policy.get("as_threshold")
    lines += [
        "",
        "### Method",
        "",
        "sing-audit maps the classifier's features into a vision-language space with a cross-fitted linear translator, "
        "removes their component in the null space of the classification head (which changes no logit), and measures "
        "how far the meaning moves: the Image Score (IS) is the angle between the translated feature before and after, "
        "the Attribute Score (AS) the change of its angle to the class's text prompt. "
        f"A class with at least {policy.get('min_images', 'n/a')} images is flagged when the lower 95% bootstrap bound "
        f"of its mean |AS| is above {'n/a' if threshold is None else f'{threshold:g}'}°, and the model fails when more than "
        f"{policy.get('max_flagged', 'n/a')} classes are flagged after waivers.",
        "",
        "### Provenance",
        "",
        e(_provenance(result, models, dataset_name, dataset_type)),
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def _provenance(result, models, dataset_name: str, dataset_type: str) -> str:
    p = result.provenance
    when = p.finished or p.started or "an unrecorded date"
    digests = "; ".join(f"{m.target}: weights {m.weights_digest}" for m in models if m.weights_digest) or "no weights digest recorded"
    return (
        f"The audit {result.name} ran on {when} with sing-audit {p.versions.get('sing-audit', __version__)} "
        f"(config digest {p.config_digest or 'n/a'}, seed {p.seed}), on {models[0].n_images} images of {dataset_name} "
        f"({dataset_type}). The figures are those of its results.json (schema {result.schema_version}); {digests}."
    )


class ModelCardExport:
    """``model-card``: the audit as a section of a model card, with ``model-index`` metadata."""

    help = "a model card section (Markdown, with Hugging Face model-index metadata) for one model of a run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN", type=Path, help="the run folder (or its results.json)")
        parser.add_argument("-o", "--output", type=Path, help="the card to write (default: RUN/model-card.md)")
        parser.add_argument("--model", metavar="NAME[@TARGET]", help="the model the card describes (required when the run has several)")
        parser.add_argument("--dataset-name", help="the audit data's readable name (default: what the run recorded)")
        parser.add_argument("--dataset-type", help="the audit data's Hub dataset id (default: what the run recorded)")
        parser.add_argument("--force", action="store_true", help="overwrite an existing file that this command did not write")

    def run(self, args: argparse.Namespace) -> int:
        from sing_audit.compare import load_result

        require("huggingface_hub", extra="model-card", feature="sing-audit export model-card")
        result, path, _ = load_result(args.run_dir)
        models = select_models(result, args.model)
        dataset_name, dataset_type = _dataset(result, args.dataset_name, args.dataset_type)
        output = args.output or path.parent / "model-card.md"
        if output.is_dir():
            raise BadInputError(f"--output {output} is a folder; name the card's file")
        if output.exists() and not args.force and not _is_ours(output):
            raise BadInputError(f"{output} exists and was not written by sing-audit export model-card; "
                                "choose another --output, or overwrite it with --force")
        if not output.parent.is_dir():
            raise BadInputError(f"--output: folder {output.parent} not found")
        text = render_model_card(result, models, card_eval_results(models, dataset_name, dataset_type), dataset_name, dataset_type)
        atomic_write_text(output, text)
        print(plain(f"model card: {output} ({', '.join(f'{m.name}@{m.target}' for m in models)}: {_verdict(models, result)[0]})"))
        return 0


def _is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc}") from exc


#: export name -> its class (``help``, ``add_arguments(parser)``, ``run(args)``)
EXPORTS: dict[str, type] = {"model-card": ModelCardExport}


class Export(Command):
    """``sing-audit export KIND RUN ...``: a finished run in another tool's format."""

    help = "export a finished run in another tool's format (model-card)"
    description = "Export a finished run in another tool's format: " + ", ".join(EXPORTS) + "."
    exports: ClassVar[dict[str, type]] = EXPORTS

    def __init__(self) -> None:
        self._exports = {name: cls() for name, cls in self.exports.items()}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="export", metavar="KIND", required=True)
        for name, export in self._exports.items():
            p = sub.add_parser(name, help=export.help, description=export.help)
            export.add_arguments(p)
            # the flags every command takes, after the export's name too (never resetting earlier ones)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for every error")
            p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output")

    def run(self, args: argparse.Namespace) -> int:
        return self._exports[args.export].run(args)


@hookimpl
def register_commands(register):
    register("export", Export)
