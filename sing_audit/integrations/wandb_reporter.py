"""``wandb``: a finished audit as one Weights & Biases run (docs/integrations.md,
"Weights & Biases").

A publisher (``publishes = True``): it runs after every other reporter, so it sends the
results.json, report.html and report.pdf the run wrote. The content is the MLflow
reporter's (:func:`sing_audit.integrations.mlflow_reporter.audit_metrics` names the
numbers, ``<model>/<target>/is_mean``, ...):

- summary: every number per model and for the audit, the verdict (``outcome``,
  ``verdict``), ``sing_audit_version``, ``config_digest``, ``random_weights``, per model
  ``<model>/<target>/weights_digest`` (and its ``random_weights`` and ``outcome``);
- config: the resolved config (``result.provenance.config``);
- tags: the user's ``tags``, ``sing-audit`` and the outcome; notes: the verdict;
- an artifact of type ``audit`` with results.json, report.html and report.pdf.

W&B's local files (the run, its log, staged artifact copies and W&B's own cache) stay
under ``dir``, by default the run folder; ``wandb.json`` records the project, the run id,
the mode and the local run folder. Credentials come only from W&B's environment
(``WANDB_API_KEY``): they are no option and are never written or shown.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sing_audit.components import PluginOptions, Reporter
from sing_audit.errors import SingAuditError, exception_summary
from sing_audit.extras import environment, require
from sing_audit.hookspecs import hookimpl
from sing_audit.integrations.mlflow_reporter import audit_metrics, metric_key_prefixes
from sing_audit.store import atomic_write_text

__all__ = ["OfflineRun", "OfflineRunError", "WandbPublishError", "WandbReporter", "audit_summary", "read_offline_run"]

log = logging.getLogger("sing_audit")

ARTIFACT_FORMATS = ("json", "html", "pdf")
MAX_TAG_LENGTH = 64  # W&B refuses a longer tag
# characters W&B refuses in a project or entity name
_BAD_PROJECT_CHAR = re.compile(r"[/\\#?%:]")
_ARTIFACT_CHAR = re.compile(r"[^\w.\-]")


class WandbPublishError(SingAuditError):
    """W&B could not log the run (the audit's verdict stands; exit 2)."""


class WandbOptions(PluginOptions):
    """``report.options.wandb`` in audit.yaml."""

    project: str | None = Field(
        None, min_length=1, max_length=128, description="the W&B project; default: the WANDB_PROJECT environment variable"
    )
    entity: str | None = Field(None, min_length=1, max_length=128, description="team or user; default: W&B's")
    run_name: str | None = Field(None, min_length=1, max_length=128, description="default: the audit's name")
    mode: Literal["online", "offline"] | None = Field(
        None, description="default: W&B's own (the WANDB_MODE environment variable, else online)"
    )
    dir: str | None = Field(
        None, min_length=1, description="where W&B keeps its local files; default: the run folder"
    )
    tags: list[str] = Field(default_factory=list, description="extra tags of the run")
    group: str | None = Field(None, min_length=1, max_length=128, description="the run's group")

    @field_validator("project", "entity")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (_BAD_PROJECT_CHAR.search(v) or v != v.strip()):
            raise ValueError(f"{v[:80]!r}: W&B allows no / \\ # ? % : nor leading or trailing spaces in it")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not tag.strip() or len(tag) > MAX_TAG_LENGTH:
                raise ValueError(f"tag {tag[:80]!r}: a W&B tag has 1 to {MAX_TAG_LENGTH} characters")
        return list(dict.fromkeys(v))


def audit_summary(result) -> dict[str, float | str | bool]:
    """The run's summary: the MLflow reporter's numbers, the verdict, versions and digests."""
    summary: dict[str, float | str | bool] = dict(audit_metrics(result))
    summary.update(
        {
            "outcome": result.outcome,
            "verdict": result.verdict,
            "sing_audit_version": result.provenance.versions.get("sing-audit", "unknown"),
            "config_digest": result.provenance.config_digest or "unknown",
            "random_weights": bool(result.random_weights),
            "schema_version": result.schema_version,
        }
    )
    for m, prefix in zip(result.models, metric_key_prefixes(result.models)):
        if m.weights_digest:
            summary[f"{prefix}/weights_digest"] = m.weights_digest
        summary[f"{prefix}/random_weights"] = bool(m.random_weights)
        summary[f"{prefix}/outcome"] = m.outcome
    return summary


def artifact_name(audit_name: str) -> str:
    """``audit-<name>``, in the characters W&B allows in an artifact's name."""
    return ("audit-" + _ARTIFACT_CHAR.sub("_", audit_name))[:128]


@contextmanager
def wandb_files_under(root: Path) -> Iterator[None]:
    """W&B's staging copies and cache under ``root`` while the block runs (unless the
    user's WANDB_DATA_DIR / WANDB_CACHE_DIR say otherwise); the environment is put back."""
    wanted = {
        "WANDB_DATA_DIR": os.environ.get("WANDB_DATA_DIR") or str(root / "wandb" / "data"),
        "WANDB_CACHE_DIR": os.environ.get("WANDB_CACHE_DIR") or str(root / "wandb" / "cache"),
    }
    with environment(wanted):
        yield


class WandbReporter(Reporter):
    """Logs the audit to W&B as one run (the numbers and verdict in its summary, the config,
    the outcome as a tag, results.json and the reports as an ``audit`` artifact)."""

    formats = ("wandb",)
    publishes = True
    Options = WandbOptions

    def __init__(self, options: WandbOptions | None = None) -> None:
        require("wandb", extra="wandb", feature="the wandb reporter")
        self.options = options or WandbOptions()
        self.project()  # refused before the audit runs

    def project(self) -> str:
        """``project``, else ``WANDB_PROJECT``; a ValueError with neither."""
        if self.options.project:
            return self.options.project
        env = os.environ.get("WANDB_PROJECT", "").strip()
        if not env:
            raise ValueError("no W&B project: set project (report.options.wandb.project) or WANDB_PROJECT")
        return env

    def _check_credentials(self, wandb, settings) -> None:
        """Online, W&B would ask for a key on a terminal that has none configured: refuse
        instead (W&B looks in WANDB_API_KEY, its settings and .netrc; nothing is shown)."""
        mode = (self.options.mode or os.environ.get("WANDB_MODE", "")).strip().lower()
        if mode in ("offline", "dryrun", "disabled"):
            return
        wandb.setup(settings=settings)  # quiet, before login reads the settings
        if not wandb.login(prompt=False, verify=False):
            raise WandbPublishError(
                "no W&B credentials: set WANDB_API_KEY (or run `wandb login`), or log offline "
                "(mode: offline, or WANDB_MODE=offline) and `wandb sync` later"
            )

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        out = Path(output_dir).resolve()
        try:
            project = self.project()
        except ValueError as exc:
            raise WandbPublishError(str(exc)) from None
        wandb = require("wandb", extra="wandb", feature="the wandb reporter")
        opts = self.options
        root = Path(opts.dir).expanduser().resolve() if opts.dir else out
        artifacts = [out / result.files[f] for f in ARTIFACT_FORMATS if f in result.files]
        artifacts = [p for p in artifacts if p.is_file()]
        tags = list(dict.fromkeys([*opts.tags, "sing-audit", result.outcome]))
        settings = wandb.Settings(
            silent=True,
            quiet=True,
            console="off",
            save_code=False,
            disable_git=True,
            disable_code=True,
            disable_job_creation=True,
            x_disable_stats=True,
            x_disable_machine_info=True,
            x_save_requirements=False,
        )
        run_name = opts.run_name or result.name
        with wandb_files_under(root):
            try:
                root.mkdir(parents=True, exist_ok=True)
                self._check_credentials(wandb, settings)
                run = wandb.init(
                    project=project,
                    entity=opts.entity,
                    name=run_name,
                    group=opts.group,
                    tags=tags,
                    notes=result.verdict,
                    config=result.provenance.config,
                    dir=str(root),
                    mode=opts.mode,
                    job_type="audit",
                    settings=settings,
                )
            except WandbPublishError:
                raise
            except Exception as exc:  # noqa: BLE001 - W&B's, the filesystem's or the network's: the output failed
                raise WandbPublishError(f"could not start a W&B run in project {project!r}: {exception_summary(exc)}") from exc
            # read before finish(): a finished run refuses some calls
            offline, local = bool(run.offline), Path(run.settings.sync_dir)
            url = None if offline else run.url
            try:
                run.summary.update(audit_summary(result))
                artifact = wandb.Artifact(artifact_name(result.name), type="audit", description=result.verdict)
                for path in artifacts:
                    artifact.add_file(str(path), name=path.name)
                run.log_artifact(artifact)
            except Exception as exc:  # noqa: BLE001 - the output failed; the run is closed as failed
                try:
                    run.finish(exit_code=1)
                except Exception:  # noqa: BLE001 - the first error is the one to show
                    pass
                raise WandbPublishError(
                    f"could not log the audit to W&B (run {run.id}, project {project!r}): {exception_summary(exc)}"
                ) from exc
            try:
                run.finish()
            except Exception as exc:  # noqa: BLE001
                raise WandbPublishError(f"W&B could not finish run {run.id}: {exception_summary(exc)}") from exc
        record = {
            "project": project,
            "entity": opts.entity,
            "run_id": run.id,
            "run_name": run_name,
            "mode": "offline" if offline else "online",
            "url": url,
            "run_dir": os.path.relpath(local, out) if local.is_relative_to(out) else str(local),
            "artifact": artifact_name(result.name),
            "artifact_files": [p.name for p in artifacts],
            "metric_prefixes": {
                prefix: {"model": m.name, "target": m.target}
                for m, prefix in zip(result.models, metric_key_prefixes(result.models))
            },
        }
        path = out / "wandb.json"
        atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        log.info("wandb: logged run %s in project %r (%s, local files %s)", run.id, project, record["mode"], local)
        return [path]


# W&B's transaction log (``run-<id>.wandb``): a 7-byte header (``:W&B``, magic, version),
# then LevelDB-log records in 32 KiB blocks, each chunk ``crc32 (type+data), length,
# type`` (1 whole, 2 first, 3 middle, 4 last), a protobuf ``Record`` once joined.
_LOG_HEADER = b":W&B"
_BLOCK = 32768
_CHUNK = struct.Struct("<IHB")


class OfflineRunError(SingAuditError):
    """A W&B transaction log that cannot be read (exit 2)."""


@dataclass
class OfflineRun:
    """What an offline run's transaction log holds (:func:`read_offline_run`)."""

    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # name, type, files
    finished: bool = False
    exit_code: int | None = None


def _log_records(data: bytes) -> Iterator[bytes]:
    if data[:4] != _LOG_HEADER:
        raise OfflineRunError("not a W&B transaction log (no :W&B header)")
    pos, parts = 7, b""
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:
            pos += left
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        if len(chunk) != length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise OfflineRunError(f"a damaged record at byte {pos} of the W&B transaction log")
        pos += _CHUNK.size + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            yield parts + chunk
            parts = b""


def read_offline_run(run_dir: Path | str) -> OfflineRun:
    """Read back an offline run (``<dir>/wandb/offline-run-*``, or its ``.wandb`` file):
    its config, summary, tags, notes and artifacts, as ``wandb sync`` would send them."""
    pb = require("wandb.proto.wandb_internal_pb2", extra="wandb", feature="reading a W&B offline run")

    path = Path(run_dir)
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb"))
        if not found:
            raise OfflineRunError(f"{path}: no run-*.wandb transaction log in it")
        path = found[0]
    out = OfflineRun()
    for raw in _log_records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run_id, out.project, out.name, out.group, out.notes = r.run_id, r.project, r.display_name, r.run_group, r.notes
            out.tags = list(r.tags)
            out.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out.config.update({u.key: json.loads(u.value_json) for u in record.config.update if u.key})
        elif kind == "summary":
            out.summary.update({u.key: json.loads(u.value_json) for u in record.summary.update if u.key})
        elif kind == "artifact":
            a = record.artifact
            files = {c.path: {"digest": c.digest, "size": c.size, "local_path": c.local_path} for c in a.manifest.contents}
            out.artifacts.append({"name": a.name, "type": a.type, "files": files})
        elif kind == "exit":
            out.finished, out.exit_code = True, record.exit.exit_code
    out.config.pop("_wandb", None)
    return out


@hookimpl
def register_reporters(register):
    register("wandb", WandbReporter)
