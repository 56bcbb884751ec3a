"""``mlflow``: a finished audit as one MLflow run (docs/integrations.md, "MLflow").

A publisher (``publishes = True``): it runs after every other reporter, so it sends the
results.json, report.html and report.pdf the run wrote. What it logs:

- metrics, per model under ``<model>/<target>/`` (``@`` is not a character MLflow allows
  in a key; any character it does not allow becomes ``_``): ``is_mean``, ``as_abs_mean``,
  ``is_as_ratio`` with ``is_as_ratio_low``/``_high`` (its 95% interval), ``n_flagged``,
  ``n_judged``, ``n_not_judged``, ``n_waived``, ``fidelity_cosine``, ``fidelity_r2``,
  ``null_dim``, ``null_energy`` (an undefined number, ``null`` in results.json, is left
  out, never logged as 0 or NaN); for the audit ``models``, ``models_flagged``,
  ``models_failed``, ``models_not_assessed``;
- params: the resolved config (``result.provenance.config``) as dotted keys; a value over
  MLflow's 6000 characters is cut, ending in ``...[truncated: N chars]`` (the whole config
  is in the results.json artifact);
- tags: ``sing_audit.outcome``, ``sing_audit.version``, ``sing_audit.config_digest``,
  ``sing_audit.random_weights``, per model ``<model>/<target>/weights_digest`` (and its
  ``random_weights`` and ``outcome``), the verdict as the run's description, and the
  user's ``tags``;
- artifacts: the run's results.json, report.html and report.pdf, those it wrote.

It writes ``mlflow.json`` into the run folder (the tracking URI, experiment and run id) so
the run can be found. Credentials come only from MLflow's own environment variables
(``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``): a tracking URI that carries
them is refused, and no URI is written or shown with any. HTTP retries and timeouts are
bounded for our calls, so a tracker that cannot be reached fails the output in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from sing_audit.components import PluginOptions, Reporter
from sing_audit.errors import SingAuditError, exception_summary
from sing_audit.extras import environment, require
from sing_audit.hookspecs import hookimpl
from sing_audit.store import atomic_write_text

__all__ = ["MlflowReporter", "MlflowPublishError", "flatten_config", "metric_key_prefixes", "public_uri"]

log = logging.getLogger("sing_audit")

# MLflow's limits (mlflow.utils.validation): key length, value lengths, batch sizes
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
PARAMS_TAGS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# characters MLflow allows in a metric, param or tag key (no colon: Windows refuses it)
_KEY_CHAR = re.compile(r"[^\w.\- /]")
#: bounded HTTP for our calls, unless the user's environment or options say otherwise
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
ARTIFACT_FORMATS = ("json", "html", "pdf")


class MlflowPublishError(SingAuditError):
    """MLflow could not be reached or refused the run (the audit's verdict stands; exit 2)."""


class MlflowOptions(PluginOptions):
    """``report.options.mlflow`` in audit.yaml."""

    tracking_uri: str | None = Field(
        None,
        description="where MLflow tracks runs (http(s)://host, sqlite:///file.db, databricks, ...); "
        "default: the MLFLOW_TRACKING_URI environment variable. Never with credentials in it",
    )
    experiment: str | None = Field(None, min_length=1, max_length=500, description="default: the audit's name")
    run_name: str | None = Field(None, min_length=1, max_length=250, description="default: the audit's name")
    artifact_location: str | None = Field(
        None, min_length=1, description="where a new experiment keeps its artifacts (used only when it is created)"
    )
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags of the run")
    http_timeout: int | None = Field(None, gt=0, description="seconds per HTTP request (default 20)")
    http_retries: int | None = Field(None, ge=0, le=10, description="retries of a failed HTTP request (default 2)")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v:
            raise ValueError("must not be empty (leave it out to use MLFLOW_TRACKING_URI)")
        check_no_credentials(v, "tracking_uri")
        return v

    @field_validator("tags")
    @classmethod
    def _tag_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key or _KEY_CHAR.search(key) or len(key) > MAX_KEY_LENGTH or _path_like(key):
                raise ValueError(
                    f"tag {key[:80]!r}: MLflow allows in a tag's name only letters, digits, _ - . / and spaces "
                    f"(at most {MAX_KEY_LENGTH} characters, not a path such as '../x')"
                )
            if key.startswith("sing_audit.") or key == "mlflow.runName":
                raise ValueError(f"tag {key!r} is set by the reporter itself (use run_name for the run's name)")
        return v


def check_no_credentials(uri: str, where: str) -> None:
    """A ValueError when ``uri`` carries a user or password (``https://user:pw@host``)."""
    try:
        parts = urlsplit(uri)
        has = bool(parts.username or parts.password)
    except ValueError:
        has = "@" in uri.split("?", 1)[0]
    if has:
        raise ValueError(
            f"{where} must not carry credentials (user:password@ in the URI; not shown here): give MLflow "
            "them through its environment variables MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(or MLFLOW_TRACKING_TOKEN) instead"
        )


def public_uri(uri: str) -> str:
    """``uri`` without anything that could be secret: no user, password, query or fragment
    (``sqlite:////abs/path.db`` keeps its empty host)."""
    uri = uri.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _path_like(key: str) -> bool:
    norm = posixpath.normpath(key)
    return norm != key or key.startswith("/") or norm == "." or norm.startswith("..")


def _key_part(text: str, limit: int = 100) -> str:
    """``text`` as one segment of an MLflow key: disallowed characters (``@``, ``/``,
    ``:``, ...) become ``_``, a segment of dots or nothing gets a leading ``_``."""
    part = _KEY_CHAR.sub("_", str(text)).replace("/", "_").strip()[:limit]
    return part if part.strip(".") else "_" + part


def _fit_key(key: str) -> str:
    """``key`` within MLflow's key length: a long one is cut and ends in a digest of it."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return key[: MAX_KEY_LENGTH - 9] + "_" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _fit_value(value: str, limit: int) -> tuple[str, bool]:
    """``value`` within ``limit`` characters; a longer one is cut, ending in a marker."""
    if len(value) <= limit:
        return value, False
    marker = f"...[truncated: {len(value)} chars]"
    return value[: limit - len(marker)] + marker, True


def metric_key_prefixes(models) -> list[str]:
    """One key prefix per model, ``<model>/<target>``, unique (``_2``, ... on a clash)."""
    seen: set[str] = set()
    out = []
    for m in models:
        base = f"{_key_part(m.name)}/{_key_part(m.target)}"
        prefix, i = base, 1
        while prefix in seen:
            i += 1
            prefix = f"{base}_{i}"
        seen.add(prefix)
        out.append(prefix)
    return out


def flatten_config(config: dict) -> dict[str, str]:
    """The config as dotted keys: mappings by key, lists of mappings by index, other
    lists and every scalar as JSON text (a string as itself)."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{_key_part(k)}" if key else _key_part(k))
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        else:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            k = _fit_key(key or "config")
            while k in out:
                k = _fit_key(k + "_")
            out[k] = text

    walk(config, "")
    return out


def _model_metrics(m, prefix: str) -> dict[str, float]:
    fid = m.fidelity
    values = {
        "is_mean": m.is_mean,
        "as_abs_mean": m.as_abs_mean,
        "is_as_ratio": m.is_as_ratio,
        "is_as_ratio_low": m.is_as_ratio_ci.low,
        "is_as_ratio_high": m.is_as_ratio_ci.high,
        "n_flagged": m.n_flagged,
        "n_judged": m.n_judged,
        "n_not_judged": len(m.classes) - m.n_judged,
        "n_waived": m.n_waived,
        "fidelity_cosine": fid.cosine,
        "fidelity_r2": fid.r2,
        "null_dim": m.null_dim,
        "null_energy": m.null_energy,
    }
    return {
        _fit_key(f"{prefix}/{k}"): float(v)
        for k, v in values.items()
        if v is not None and math.isfinite(float(v))
    }


def audit_metrics(result) -> dict[str, float]:
    """Every metric the run gets: per model under its prefix, and the audit's counts."""
    metrics: dict[str, float] = {
        "models": float(len(result.models)),
        "models_flagged": float(sum(1 for m in result.models if m.n_flagged)),
        "models_failed": float(sum(1 for m in result.models if m.outcome == "failed")),
        "models_not_assessed": float(sum(1 for m in result.models if not m.assessed)),
    }
    for m, prefix in zip(result.models, metric_key_prefixes(result.models)):
        metrics.update(_model_metrics(m, prefix))
    return metrics


def audit_tags(result, extra: dict[str, str]) -> dict[str, str]:
    """The run's tags: the user's, then the verdict, versions and digests (ours win)."""
    tags = dict(extra)
    tags.update(
        {
            "sing_audit.outcome": result.outcome,
            "sing_audit.version": result.provenance.versions.get("sing-audit", "unknown"),
            "sing_audit.config_digest": result.provenance.config_digest or "unknown",
            "sing_audit.random_weights": str(result.random_weights).lower(),
            "sing_audit.schema_version": result.schema_version,
            "mlflow.note.content": result.verdict,
        }
    )
    for m, prefix in zip(result.models, metric_key_prefixes(result.models)):
        if m.weights_digest:
            tags[_fit_key(f"{prefix}/weights_digest")] = m.weights_digest
        tags[_fit_key(f"{prefix}/random_weights")] = str(m.random_weights).lower()
        tags[_fit_key(f"{prefix}/outcome")] = m.outcome
    return {k: _fit_value(v, MAX_TAG_VALUE_LENGTH)[0] for k, v in tags.items()}


@contextmanager
def bounded_http(options: MlflowOptions) -> Iterator[None]:
    """MLflow's HTTP retries and timeout bounded while the block runs (the user's own
    environment variables stand, options win over both); the environment is put back."""
    wanted = {k: os.environ.get(k, v) for k, v in HTTP_DEFAULTS.items()}
    if options.http_retries is not None:
        wanted["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(options.http_retries)
    if options.http_timeout is not None:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(options.http_timeout)
    with environment(wanted):
        yield


@contextmanager
def mlflow_logs_to_the_run_log() -> Iterator[None]:
    """MLflow's loggers print to the terminal through handlers of their own (``Creating
    initial MLflow database tables...``); while the block runs their records go to the
    root logger instead, where the run log keeps them and the terminal does not show them."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = []
        lg.propagate = True
    try:
        yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowReporter(Reporter):
    """Logs the audit to MLflow as one run (metrics per model, the config as params, the
    verdict and digests as tags, results.json and the reports as artifacts)."""

    formats = ("mlflow",)
    publishes = True
    Options = MlflowOptions

    def __init__(self, options: MlflowOptions | None = None) -> None:
        require("mlflow", extra="mlflow", feature="the mlflow reporter")
        self.options = options or MlflowOptions()
        self.tracking_uri()  # refused before the audit runs

    def tracking_uri(self) -> str:
        """``tracking_uri``, else ``MLFLOW_TRACKING_URI``; never MLflow's default, a
        folder or database in the working directory."""
        if self.options.tracking_uri:
            return self.options.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if not env:
            raise ValueError(
                "no MLflow tracking URI: set tracking_uri (e.g. http://mlflow.example:5000 or "
                "sqlite:///mlflow.db) or the MLFLOW_TRACKING_URI environment variable"
            )
        check_no_credentials(env, "MLFLOW_TRACKING_URI")
        return env

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        out = Path(output_dir)
        try:
            uri = self.tracking_uri()
        except ValueError as exc:
            raise MlflowPublishError(str(exc)) from None
        mlflow = require("mlflow", extra="mlflow", feature="the mlflow reporter")
        experiment = self.options.experiment or result.name
        params = flatten_config(result.provenance.config)
        truncated = []
        for key, value in params.items():
            params[key], cut = _fit_value(value, MAX_PARAM_VALUE_LENGTH)
            if cut:
                truncated.append(key)
        metrics = audit_metrics(result)
        tags = audit_tags(result, self.options.tags)
        if truncated:
            tags["sing_audit.truncated_params"] = _fit_value(", ".join(truncated), MAX_TAG_VALUE_LENGTH)[0]
        artifacts = [out / result.files[f] for f in ARTIFACT_FORMATS if f in result.files]
        artifacts = [p for p in artifacts if p.is_file()]
        where = public_uri(uri)
        run_id = None
        with bounded_http(self.options), mlflow_logs_to_the_run_log():
            try:
                client = mlflow.MlflowClient(tracking_uri=uri)
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    experiment_id = client.create_experiment(experiment, artifact_location=self.options.artifact_location)
                else:
                    experiment_id = found.experiment_id
                run = client.create_run(experiment_id, run_name=self.options.run_name or result.name)
                run_id = run.info.run_id
                self._log(client, run_id, metrics, params, tags, artifacts)
                client.set_terminated(run_id, "FINISHED")
            except Exception as exc:  # noqa: BLE001 - MLflow's, the store's or the network's: the output failed
                if run_id is not None:
                    try:
                        client.set_terminated(run_id, "FAILED")
                    except Exception:  # noqa: BLE001 - the tracker is already failing; the first error is the one to show
                        pass
                in_run = f" (run {run_id} is marked FAILED)" if run_id else ""
                raise MlflowPublishError(
                    f"could not log the audit to MLflow at {where}{in_run}: {exception_summary(exc)}"
                ) from exc
        record = {
            "tracking_uri": where,
            "experiment": experiment,
            "experiment_id": experiment_id,
            "run_id": run_id,
            "run_name": self.options.run_name or result.name,
            "artifacts": [p.name for p in artifacts],
            "metric_prefixes": {
                prefix: {"model": m.name, "target": m.target}
                for m, prefix in zip(result.models, metric_key_prefixes(result.models))
            },
            "truncated_params": truncated,
        }
        path = out / "mlflow.json"
        atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        log.info("mlflow: logged run %s in experiment %r (id %s) at %s", run_id, experiment, experiment_id, where)
        return [path]

    @staticmethod
    def _log(client, run_id: str, metrics, params, tags, artifacts) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        for batch in _chunks([Metric(k, v, now, 0) for k, v in metrics.items()], METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=batch)
        for batch in _chunks([Param(k, v) for k, v in params.items()], PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=batch)
        for batch in _chunks([RunTag(k, v) for k, v in tags.items()], PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=batch)
        for path in artifacts:
            client.log_artifact(run_id, str(path))


@hookimpl
def register_reporters(register):
    register("mlflow", MlflowReporter)
