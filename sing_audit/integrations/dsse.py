"""Ed25519 keys and DSSE envelopes: the signing half of ``sing-audit attest``.

A DSSE envelope (github.com/secure-systems-lab/dsse) carries a payload, its type and
signatures; each signature is over the *pre-authentication encoding*

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

(``LEN`` the byte length in ASCII decimal), so a payload can never be read as another
type than the one signed. A key's id is the SHA-256 of its 32 raw public bytes, so the
verifier checks that the envelope names the key it is given.

The keys come from ``cryptography`` (the ``attest`` extra), imported where first needed
through :func:`sing_audit.extras.require`. A failed check raises
:class:`VerificationError` (the command exits 1); a file that is not a key raises
:class:`~sing_audit.errors.BadInputError` (exit 2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sing_audit.errors import BadInputError
from sing_audit.extras import require
from sing_audit.store import fsync_dir

__all__ = [
    "VerificationError",
    "canonical_json",
    "create_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "open_envelope",
    "pae",
    "passphrase_from_env",
    "sign_envelope",
    "write_new_file",
]


class VerificationError(Exception):
    """A signature, key id or digest that does not hold (the command exits 1)."""


def _crypto(feature: str):
    """The ``cryptography`` modules the keys need, or exit 2 naming the ``attest`` extra."""
    require("cryptography.hazmat.primitives.asymmetric.ed25519", extra="attest", feature=feature)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def canonical_json(data: Any) -> bytes:
    """``data`` as UTF-8 JSON with sorted keys, no insignificant spaces and no NaN or
    infinity (Python's shortest round-trip float form), so the same statement always
    gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding of ``body`` of type ``payload_type``."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def key_id(public_key) -> str:
    """The hex SHA-256 of an Ed25519 public key's 32 raw bytes."""
    serialization, _ = _crypto("the key id")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def passphrase_from_env(variable: str | None) -> bytes | None:
    """The passphrase held by environment variable ``variable`` (``None``: no passphrase).

    A passphrase is never a command-line argument (other users see those in the process
    list); an unset or empty variable is the user's mistake, not an unencrypted key."""
    if variable is None:
        return None
    if not variable.strip():
        raise BadInputError("--passphrase-env needs the name of an environment variable (VAR), not an empty word")
    value = os.environ.get(variable)
    if not value:
        raise BadInputError(
            f"--passphrase-env {variable}: the environment variable {variable} is "
            f"{'empty' if value == '' else 'not set'}; export the passphrase in it first"
        )
    return value.encode("utf-8")


def create_key_pair(passphrase: bytes | None) -> tuple[bytes, bytes, str]:
    """A new Ed25519 key pair: ``(private PEM (PKCS8, encrypted when a passphrase is
    given), public PEM (SubjectPublicKeyInfo), key id)``."""
    serialization, ed25519 = _crypto("sing-audit keygen")
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public, key_id(key.public_key())


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise BadInputError(f"{what} {path} not found" if not path.exists() else f"{what} {path} is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc}") from exc


def load_private_key(path: Path, passphrase: bytes | None):
    """The Ed25519 private key in PEM file ``path``; anything else is a BadInputError."""
    serialization, ed25519 = _crypto("sing-audit attest")
    data = _read_key_file(path, "private key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise BadInputError(f"{path} is a public key; attest signs with the private key (keygen wrote it beside, without .pub)")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:  # cryptography: encrypted without a password, or the reverse
        if passphrase is None:
            raise BadInputError(
                f"private key {path} is encrypted: name the environment variable holding its passphrase "
                "with --passphrase-env VAR"
            ) from exc
        raise BadInputError(f"private key {path} is not encrypted: leave out --passphrase-env") from exc
    except ValueError as exc:
        hint = " (or the passphrase is wrong)" if passphrase is not None else ""
        raise BadInputError(f"{path} is not a PEM private key that can be read{hint}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - cryptography's unsupported-algorithm and friends
        raise BadInputError(f"{path} is not a private key that can be read: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BadInputError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key (make one with sing-audit keygen)")
    return key


def load_public_key(path: Path):
    """The Ed25519 public key in PEM file ``path``; anything else is a BadInputError."""
    serialization, ed25519 = _crypto("sing-audit verify")
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise BadInputError(f"{path} is a private key; verify takes the public key ({path}.pub, which keygen wrote beside it)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:  # noqa: BLE001 - ValueError, unsupported algorithm: not a usable key
        raise BadInputError(f"{path} is not a PEM public key that can be read: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BadInputError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 key (make one with sing-audit keygen)")
    return key


def sign_envelope(payload: bytes, payload_type: str, private_key) -> dict[str, Any]:
    """The DSSE envelope of ``payload``, signed over its PAE by ``private_key``."""
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(f"the envelope's {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"the envelope's {what} is not valid base64 ({exc})") from exc


def open_envelope(text: str, public_key, payload_type: str) -> bytes:
    """The payload of DSSE envelope ``text`` once a signature by ``public_key`` over its
    PAE holds; :class:`VerificationError` saying what does not hold otherwise."""
    from cryptography.exceptions import InvalidSignature

    try:
        envelope = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VerificationError(
            f"it is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): truncated or damaged"
        ) from exc
    if not isinstance(envelope, dict) or not {"payloadType", "payload", "signatures"} <= envelope.keys():
        raise VerificationError("it is not a DSSE envelope (payloadType, payload and signatures expected)")
    if envelope["payloadType"] != payload_type:
        raise VerificationError(f"its payloadType is {envelope['payloadType']!r}, expected {payload_type!r}")
    payload = _b64(envelope["payload"], "payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures or not all(isinstance(s, dict) for s in signatures):
        raise VerificationError("it carries no signature")
    wanted = key_id(public_key)
    mine = [s for s in signatures if s.get("keyid") == wanted]
    if not mine:
        found = ", ".join(str(s.get("keyid"))[:16] for s in signatures)
        raise VerificationError(
            f"it is signed by key id {found}…, not by the given public key (key id {wanted[:16]}…): wrong key"
        )
    message = pae(payload_type, payload)
    for signature in mine:
        try:
            public_key.verify(_b64(signature.get("sig"), "signature"), message)
            return payload
        except InvalidSignature:
            continue
    raise VerificationError(
        f"the signature of key id {wanted[:16]}… does not verify: the payload or the signature was changed after signing"
    )


def write_new_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode`` from the start.

    The bytes go to a temporary file created with ``mode`` in the same folder; without
    ``force`` it is then hard-linked into place, which fails when ``path`` exists (no
    window in which another file could be overwritten), with ``force`` it replaces it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise BadInputError(f"{path} exists; pass --force to overwrite it") from exc
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise BadInputError(f"{path} exists; pass --force to overwrite it") from None
                os.replace(tmp, path)
            Path(tmp).unlink(missing_ok=True)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
