"""A signed attestation that a run's report belongs to the weights it audited:
``sing-audit keygen``, ``sing-audit attest`` and ``sing-audit verify`` (docs/integrations.md).

``attest`` writes an in-toto Statement v1 whose subjects are the SHA-256 digests of the
run's ``results.json`` and of every audited weights file, and whose predicate sums up
the audit (verdict, policy, one line per model), in a DSSE envelope signed with an
Ed25519 key (:mod:`sing_audit.integrations.dsse`). The weights files are found from the
config the run recorded (``provenance.config``: a backbone's ``path`` or ``weights``)
and re-hashed at attest time: a file that no longer matches the digest the audit
recorded (``models[].weights_digest``) is refused, so the attestation never vouches for
other weights than those audited. ``verify`` checks the signature, the key id and the
digests again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sing_audit.commands import Command
from sing_audit.compare import load_result
from sing_audit.errors import BadInputError, WeightsError
from sing_audit.hookspecs import hookimpl
from sing_audit.integrations import dsse
from sing_audit.results import AuditResult, ModelResult
from sing_audit.store import atomic_write_text
from sing_audit.terminal import plain
from sing_audit.weights import file_digest, resolve_weights

__all__ = ["ATTESTATION_FILE", "PAYLOAD_TYPE", "PREDICATE_TYPE", "STATEMENT_TYPE", "build_statement"]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: sing-audit's audit predicate; the last part is its version, raised on an incompatible change
PREDICATE_TYPE = "urn:sing-audit:predicate:audit:v1"
#: where ``attest`` writes and ``verify`` reads, inside the run folder
ATTESTATION_FILE = "attestation.intoto.json"
RESULTS_SUBJECT = "results.json"

_CONFIG_DIR_HELP = (
    "the folder of the audit's config: the recorded config's relative paths are resolved against it, "
    "as the audit resolved them (default: the folder results.json records, provenance.config_dir, else the "
    "current folder)"
)


def _config_dir(given: Path | None, results_json: Path) -> Path:
    """``--config-dir``, else the folder the audit resolved its paths against (recorded in
    results.json's ``provenance.config_dir``, schema 1.2), else the working folder."""
    if given is not None:
        return given
    try:
        recorded = json.loads(results_json.read_text(encoding="utf-8")).get("provenance", {}).get("config_dir")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return Path(recorded) if isinstance(recorded, str) and recorded else Path(".")


class _RefusePassphrase(argparse.Action):
    """``--passphrase``: refused without echoing it (a command line is seen by every user
    of the machine and kept in shell histories and CI logs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            "a passphrase is never taken on the command line: put it in an environment variable "
            "and name the variable with --passphrase-env VAR"
        )


def _add_passphrase_arguments(parser: argparse.ArgumentParser, help: str) -> None:
    parser.allow_abbrev = False  # --passphrase must never be read as --passphrase-env
    parser.add_argument("--passphrase-env", metavar="VAR", help=help)
    parser.add_argument("--passphrase", action=_RefusePassphrase, nargs="?", help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Weights:
    """Where a model's weights came from: ``kind`` is ``file`` (with ``subject``, the
    path as written in the config, and ``path``, where it is now), ``random``,
    ``pretrained``, ``tag``, ``factory`` or ``plugin default``."""

    kind: str
    subject: str | None = None
    path: Path | None = None


def _sha256(digest: str | None) -> str | None:
    return digest.split(":", 1)[1] if digest and digest.startswith("sha256:") else None


def _finite(value: Any) -> Any:
    """JSON numbers only: a NaN or infinity (never expected in a result) becomes null."""
    if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
        return None
    return value


def _backbone_entry(result: AuditResult, model: ModelResult) -> dict[str, Any]:
    for entry in result.provenance.config.get("backbones") or []:
        if isinstance(entry, dict) and entry.get("name") == model.backbone:
            return entry
    return {}


def _model_weights(result: AuditResult, model: ModelResult, config_dir: Path) -> Weights:
    """Where the weights of ``model`` are, from the config its run recorded."""
    if model.random_weights:
        return Weights("random")
    entry = _backbone_entry(result, model)
    spec = entry.get("weights", entry.get("path"))
    if spec is None:
        return Weights("plugin default")
    if not isinstance(spec, str):
        raise BadInputError(f"model {model.name}: the recorded weights {spec!r} are not a path")
    if spec.strip().lower() in {"pretrained", "random", "factory"}:
        return Weights(spec.strip().lower())
    try:
        resolved = resolve_weights(spec, config_dir)
    except WeightsError as exc:
        raise BadInputError(
            f"model {model.name}: {exc}; pass --config-dir DIR, the folder of the audit's config "
            f"(the folder {spec!r} was written relative to)"
        ) from exc
    if resolved.kind != "file" or resolved.path is None:
        return Weights(resolved.kind)
    try:
        subject = resolved.path.relative_to(config_dir.resolve()).as_posix()
    except ValueError:
        subject = resolved.path.as_posix()
    return Weights("file", subject, resolved.path)


def _model_summary(model: ModelResult, weights: Weights) -> dict[str, Any]:
    return {
        "name": model.name,
        "target": model.target,
        "outcome": model.outcome,
        "assessed": model.assessed,
        "random_weights": model.random_weights,
        "null_dim": model.null_dim,
        "is_mean": _finite(model.is_mean),
        "as_abs_mean": _finite(model.as_abs_mean),
        "is_as_ratio": _finite(model.is_as_ratio),
        "is_as_ratio_ci": {"low": _finite(model.is_as_ratio_ci.low), "high": _finite(model.is_as_ratio_ci.high)},
        "flagged": model.n_flagged,
        "judged": model.n_judged,
        "flagged_classes": list(model.flagged_classes),
        "weights": {"kind": weights.kind, "subject": weights.subject, "digest": model.weights_digest},
    }


def build_statement(result: AuditResult, results_json: bytes, config_dir: Path) -> dict[str, Any]:
    """The in-toto Statement of a finished run (``results_json``: its exact bytes).

    Each weights file is hashed again and must match the digest the audit recorded,
    else :class:`BadInputError` naming it."""
    subjects = {RESULTS_SUBJECT: hashlib.sha256(results_json).hexdigest()}
    models = []
    for model in result.models:
        weights = _model_weights(result, model, config_dir)
        if weights.kind == "file":
            recorded = _sha256(model.weights_digest)
            if recorded is None:
                raise BadInputError(
                    f"model {model.name}: the audit recorded no SHA-256 of its weights file {weights.path} "
                    f"(weights_digest {model.weights_digest!r}), so nothing says it is the file audited"
                )
            actual = _sha256(file_digest(weights.path))
            if actual != recorded:
                raise BadInputError(
                    f"model {model.name}: weights file {weights.path} is not the file audited: its digest is "
                    f"sha256:{actual}, the audit recorded sha256:{recorded}; rerun the audit on these weights"
                )
            if subjects.setdefault(weights.subject, actual) != actual:
                raise BadInputError(f"weights file {weights.subject} is recorded with two different digests")
        models.append(_model_summary(model, weights))
    provenance = result.provenance
    predicate = {
        "audit": {
            "name": result.name,
            "schema_version": result.schema_version,
            "started": provenance.started,
            "finished": provenance.finished,
        },
        "verdict": {"outcome": result.outcome, "passed": result.passed, "text": result.verdict},
        "policy": result.policy,
        "models": models,
        "tool": {"name": "sing-audit", "version": provenance.versions.get("sing-audit")},
        "config_digest": provenance.config_digest or None,
        "dataset_digest": (provenance.dataset or {}).get("digest"),
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects.items()],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def _run_folder(run: Path) -> Path:
    if not run.exists():
        raise BadInputError(f"run folder {run} not found")
    return run if run.is_dir() else run.parent


class Keygen(Command):
    help = "make an Ed25519 key pair to sign attestations with (KEYFILE and KEYFILE.pub)"
    description = (
        "Write a new Ed25519 private key to KEYFILE (PEM, PKCS8, mode 0600) and its public key to "
        "KEYFILE.pub. The passphrase that encrypts the private key comes from an environment variable "
        "(--passphrase-env VAR), never from the command line."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("keyfile", type=Path, metavar="KEYFILE", help="the private key to write (KEYFILE.pub beside it)")
        _add_passphrase_arguments(parser, "encrypt the private key with the passphrase in $VAR")
        parser.add_argument("--force", action="store_true", help="overwrite existing key files")

    def run(self, args: argparse.Namespace) -> int:
        private_path: Path = args.keyfile
        public_path = private_path.with_name(private_path.name + ".pub")
        if not private_path.parent.is_dir():
            raise BadInputError(f"folder {private_path.parent} not found: create it first")
        passphrase = dsse.passphrase_from_env(args.passphrase_env)
        if not args.force:
            for path in (private_path, public_path):
                if path.exists():
                    raise BadInputError(f"{path} exists; pass --force to overwrite the key pair")
        private, public, keyid = dsse.create_key_pair(passphrase)
        dsse.write_new_file(private_path, private, mode=0o600, force=args.force)
        dsse.write_new_file(public_path, public, mode=0o644, force=args.force)
        encrypted = f", encrypted with the passphrase in ${args.passphrase_env}" if passphrase else ""
        print(plain(f"wrote private key {private_path} (mode 0600{encrypted}) and public key {public_path}"))
        print(plain(f"key id {keyid}"))
        return 0


class Attest(Command):
    help = "sign an attestation that a run's results belong to the weights it audited"
    description = (
        "Write an in-toto Statement (subjects: the SHA-256 of results.json and of every audited weights "
        "file; predicate: the verdict, the policy and a summary per model) in a DSSE envelope signed with "
        f"an Ed25519 key, to RUN/{ATTESTATION_FILE}. A weights file that no longer matches the digest "
        "the audit recorded is refused (exit 2)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, metavar="RUN", help="the run folder (or its results.json)")
        parser.add_argument("--key", type=Path, required=True, metavar="KEY", help="the private key (sing-audit keygen)")
        _add_passphrase_arguments(parser, "the environment variable holding the key's passphrase")
        parser.add_argument("--config-dir", type=Path, default=None, metavar="DIR", help=_CONFIG_DIR_HELP)
        parser.add_argument("-o", "--output", type=Path, metavar="FILE", help=f"where to write (default: RUN/{ATTESTATION_FILE})")

    def run(self, args: argparse.Namespace) -> int:
        key = dsse.load_private_key(args.key, dsse.passphrase_from_env(args.passphrase_env))
        run_dir = _run_folder(args.run_dir)
        result, _, text = load_result(args.run_dir)
        config_dir = args.config_dir or (Path(result.provenance.config_dir) if result.provenance.config_dir else Path("."))
        statement = build_statement(result, text.encode("utf-8"), config_dir)
        envelope = dsse.sign_envelope(dsse.canonical_json(statement), PAYLOAD_TYPE, key)
        out = args.output or run_dir / ATTESTATION_FILE
        if not out.parent.is_dir():
            raise BadInputError(f"folder {out.parent} not found: create it first")
        atomic_write_text(out, json.dumps(envelope, indent=2) + "\n")
        print(plain(f"wrote {out}: signed by key id {envelope['signatures'][0]['keyid']}"))
        for subject in statement["subject"]:
            print(plain(f"  {subject['name']}  sha256:{subject['digest']['sha256']}"))
        for model in statement["predicate"]["models"]:
            if model["weights"]["subject"] is None:
                print(plain(f"  model {model['name']}: weights {model['weights']['kind']}, not a file (no subject)"))
        return 0


def _weights_subjects(statement: dict[str, Any]) -> dict[str, list[str]]:
    """Each attested weights subject's name → the models it holds the weights of."""
    out: dict[str, list[str]] = {}
    for model in statement["predicate"].get("models", []):
        subject = (model.get("weights") or {}).get("subject")
        if subject is not None:
            out.setdefault(subject, []).append(f"{model.get('name')}@{model.get('target')}")
    return out


def _read_statement(args: argparse.Namespace, run_dir: Path) -> tuple[dict[str, Any], str]:
    """The signed statement of the run's attestation, and the id of the key that signed it."""
    public_key = dsse.load_public_key(args.pub)
    path = args.attestation or run_dir / ATTESTATION_FILE
    if not path.is_file():
        raise BadInputError(f"attestation {path} not found (sing-audit attest writes it; --attestation FILE names another)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read attestation {path}: {exc}") from exc
    try:
        payload = dsse.open_envelope(text, public_key, PAYLOAD_TYPE)
        statement = json.loads(payload)
    except dsse.VerificationError as exc:
        raise dsse.VerificationError(f"attestation {path}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise dsse.VerificationError(f"attestation {path}: its signed payload is not JSON ({exc})") from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise dsse.VerificationError(f"attestation {path}: its payload is not an in-toto Statement v1")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise dsse.VerificationError(
            f"attestation {path}: predicate type {statement.get('predicateType')!r}, expected {PREDICATE_TYPE}"
        )
    return statement, dsse.key_id(public_key)


def _check(name: str, path: Path, expected: str) -> str:
    actual = _sha256(file_digest(path))
    if actual != expected:
        raise dsse.VerificationError(
            f"{name} ({path}) does not match the attestation: expected sha256:{expected}, found sha256:{actual}"
        )
    return actual


class Verify(Command):
    help = "check a run's signed attestation against its results.json and the weights"
    description = (
        "Check the attestation's signature and key id with the public key, then recompute the SHA-256 of "
        "RUN/results.json and of the weights: the files given with --weights (each one of the attested "
        "weights), or else every attested weights file at its recorded path (resolved against --config-dir). "
        "Exit 0 when all hold, 1 at the first that does not, 2 for unusable input."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, metavar="RUN", help="the run folder")
        parser.add_argument("--pub", type=Path, required=True, metavar="KEY", help="the public key (KEYFILE.pub of keygen)")
        parser.add_argument(
            "--weights", action="append", default=[], metavar="[MODEL=]FILE",
            help="a weights file to check (repeatable); MODEL=FILE: it must be that model's attested weights",
        )
        parser.add_argument("--no-weights", action="store_true", help="check the signature and results.json only")
        parser.add_argument("--config-dir", type=Path, default=None, metavar="DIR", help=_CONFIG_DIR_HELP)
        parser.add_argument("--attestation", type=Path, metavar="FILE", help=f"the attestation (default: RUN/{ATTESTATION_FILE})")

    def run(self, args: argparse.Namespace) -> int:
        try:
            lines = self._verify(args)
        except dsse.VerificationError as exc:
            print(plain(f"sing-audit: verification failed: {exc}"), file=sys.stderr)
            return 1
        for line in lines:
            print(plain(line))
        return 0

    def _verify(self, args: argparse.Namespace) -> list[str]:
        if args.weights and args.no_weights:
            raise BadInputError("--weights and --no-weights exclude each other")
        if not args.run_dir.is_dir():
            raise BadInputError(f"run folder {args.run_dir} not found" if not args.run_dir.exists() else f"{args.run_dir} is not a folder")
        statement, keyid = _read_statement(args, args.run_dir)
        subjects = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in statement.get("subject", [])}
        predicate = statement["predicate"]
        lines = [f"signature: valid, key id {keyid}"]
        results = args.run_dir / RESULTS_SUBJECT
        if RESULTS_SUBJECT not in subjects:
            raise dsse.VerificationError("the attestation has no results.json subject")
        if not results.is_file():
            raise BadInputError(f"{results} not found")
        lines.append(f"{RESULTS_SUBJECT}: sha256:{_check(RESULTS_SUBJECT, results, subjects[RESULTS_SUBJECT])} matches")
        lines += self._verify_weights(args, subjects, _weights_subjects(statement))
        verdict = predicate.get("verdict") or {}
        lines.append(f"attested verdict: {verdict.get('outcome')}: {verdict.get('text')}")
        return lines

    def _verify_weights(self, args, subjects: dict, weights: dict[str, list[str]]) -> list[str]:
        models = {m: name for name, ms in weights.items() for m in ms}
        models.update({m.split("@", 1)[0]: name for name, ms in weights.items() for m in ms})
        if args.no_weights:
            return [f"{name}: not checked (--no-weights)" for name in weights]
        if not args.weights:
            config_dir = _config_dir(args.config_dir, args.run_dir / RESULTS_SUBJECT)
            checks = [(name, _resolve_subject(name, config_dir)) for name in weights]
            return [f"{name}: sha256:{_check(name, path, subjects[name])} matches (weights of {', '.join(weights[name])})"
                    for name, path in checks]
        lines, checked = [], set()
        for given in args.weights:
            model, _, file = given.partition("=") if "=" in given and given.split("=", 1)[0] in models else ("", "", given)
            path = Path(file)
            if not path.is_file():
                raise BadInputError(f"--weights {given}: {path} not found")
            if model:
                name = models[model]
                lines.append(f"{path}: sha256:{_check(f'the weights of {model}', path, subjects[name])} matches {name} (weights of {model})")
            else:
                actual = _sha256(file_digest(path))
                name = next((n for n in weights if subjects.get(n) == actual), None)
                if name is None:
                    expected = "; ".join(f"{n} sha256:{subjects.get(n)}" for n in weights) or "none (no weights file is attested)"
                    raise dsse.VerificationError(
                        f"{path} is not one of the attested weights: found sha256:{actual}, expected one of: {expected}"
                    )
                lines.append(f"{path}: sha256:{actual} matches {name} (weights of {', '.join(weights[name])})")
            checked.add(name)
        lines += [f"{name}: not checked (not given with --weights)" for name in weights if name not in checked]
        return lines


def _resolve_subject(name: str, config_dir: Path) -> Path:
    path = Path(name) if Path(name).is_absolute() else config_dir / name
    if not path.is_file():
        raise BadInputError(
            f"attested weights file {name} not found at {path}: pass --config-dir DIR (the folder of the audit's "
            "config), give the file with --weights FILE, or --no-weights to check results.json only"
        )
    return path


@hookimpl
def register_commands(register):
    register("keygen", Keygen)
    register("attest", Attest)
    register("verify", Verify)
