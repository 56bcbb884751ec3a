"""Signed attestations (``sing-audit keygen``, ``attest``, ``verify``) on the demo run,
against the real ``cryptography``: every tampering fails verification with a message
naming what does not hold."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sing_audit.cli import main
from sing_audit.integrations.attest import ATTESTATION_FILE, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE
from sing_audit.integrations.dsse import canonical_json, pae

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthetic"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A copy of examples/synthetic with its audit run into ``run/`` (exit 1 by design)."""
    root = tmp_path_factory.mktemp("attest")
    shutil.copytree(EXAMPLE, root / "synthetic")
    code = main(["-q", "run", str(root / "synthetic" / "audit.yaml"), "-o", f"output={root / 'run'}"])
    assert code == 1
    return root


@pytest.fixture(scope="module")
def keys(demo) -> Path:
    assert main(["keygen", str(demo / "key")]) == 0
    return demo / "key"


@pytest.fixture
def run(demo, keys, tmp_path) -> Path:
    """A fresh copy of the demo run, attested with ``keys``."""
    copy = tmp_path / "run"
    shutil.copytree(demo / "run", copy)
    assert main(["attest", str(copy), "--key", str(keys), "--config-dir", str(demo / "synthetic")]) == 0
    return copy


def _verify(run: Path, pub: Path, config_dir: Path, *extra: str) -> int:
    return main(["verify", str(run), "--pub", str(pub), "--config-dir", str(config_dir), *extra])


def _envelope(run: Path) -> dict:
    return json.loads((run / ATTESTATION_FILE).read_text(encoding="utf-8"))


def _statement(run: Path) -> dict:
    return json.loads(base64.b64decode(_envelope(run)["payload"]))


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_a_private_key_only_its_owner_reads_and_the_public_key_beside_it(keys):
    private, public = keys.read_bytes(), keys.with_name("key.pub").read_bytes()
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(private, password=None)
    assert loaded.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == public


def test_keygen_refuses_to_overwrite_a_key_pair_without_force(tmp_path, capsys):
    key = tmp_path / "k"
    assert main(["keygen", str(key)]) == 0
    before = key.read_bytes(), key.with_name("k.pub").read_bytes()
    assert main(["keygen", str(key)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (key.read_bytes(), key.with_name("k.pub").read_bytes()) == before
    key.unlink()  # only the public key left: still refused, the private key is not written alone
    assert main(["keygen", str(key)]) == 2
    assert not key.exists()
    assert main(["keygen", str(key), "--force"]) == 0
    assert key.with_name("k.pub").read_bytes() != before[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_keygen_into_a_missing_folder_is_bad_input(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "nowhere" / "k")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["keygen", "attest"])
def test_a_passphrase_is_never_a_command_line_argument(tmp_path, command, capsys):
    args = [str(tmp_path / "k")] if command == "keygen" else [str(tmp_path), "--key", str(tmp_path / "k")]
    with pytest.raises(SystemExit) as exc:
        main([command, *args, "--passphrase", "s3cret"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "never taken on the command line" in err and "s3cret" not in err
    assert not (tmp_path / "k").exists()


def test_an_encrypted_key_signs_only_with_its_passphrase(demo, tmp_path, monkeypatch, capsys):
    key = tmp_path / "enc"
    monkeypatch.delenv("SA_TEST_PASSPHRASE", raising=False)
    assert main(["keygen", str(key), "--passphrase-env", ""]) == 2
    assert "needs the name of an environment variable" in capsys.readouterr().err
    assert main(["keygen", str(key), "--passphrase-env", "SA_TEST_PASSPHRASE"]) == 2
    assert "SA_TEST_PASSPHRASE is not set" in capsys.readouterr().err
    monkeypatch.setenv("SA_TEST_PASSPHRASE", "correct horse battery staple")
    assert main(["keygen", str(key), "--passphrase-env", "SA_TEST_PASSPHRASE"]) == 0
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert b"correct horse" not in key.read_bytes()

    copy = tmp_path / "run"
    shutil.copytree(demo / "run", copy)
    attest = ["attest", str(copy), "--key", str(key), "--config-dir", str(demo / "synthetic")]
    capsys.readouterr()
    assert main(attest) == 2
    assert "is encrypted" in capsys.readouterr().err and not (copy / ATTESTATION_FILE).exists()
    monkeypatch.setenv("SA_WRONG", "not the passphrase")
    assert main([*attest, "--passphrase-env", "SA_WRONG"]) == 2
    assert "passphrase is wrong" in capsys.readouterr().err
    assert main([*attest, "--passphrase-env", "SA_TEST_PASSPHRASE"]) == 0
    assert _verify(copy, tmp_path / "enc.pub", demo / "synthetic") == 0


def test_without_cryptography_the_commands_exit_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)
    assert main(["keygen", str(tmp_path / "k")]) == 2
    assert "pip install 'sing-audit[attest]'" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


# --------------------------------------------------------------------------- attest


def test_the_statement_names_results_json_and_every_audited_weights_file(run, demo, keys):
    statement = _statement(run)
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    data = demo / "synthetic" / "data"
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == {
        "results.json": _sha256(run / "results.json"),
        "data/benign.npz": _sha256(data / "benign.npz"),
        "data/leaky.npz": _sha256(data / "leaky.npz"),
    }
    predicate = statement["predicate"]
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert predicate["verdict"] == {"outcome": "failed", "passed": False, "text": results["verdict"]}
    assert predicate["policy"] == results["policy"]
    assert predicate["config_digest"] == results["provenance"]["config_digest"]
    assert predicate["dataset_digest"] is None  # every input is precomputed: no dataset recorded
    assert predicate["tool"] == {"name": "sing-audit", "version": results["provenance"]["versions"]["sing-audit"]}
    leaky = next(m for m in predicate["models"] if m["name"] == "leaky")
    recorded = next(m for m in results["models"] if m["name"] == "leaky")
    assert leaky["flagged"] == 2 and leaky["judged"] == 10 and leaky["outcome"] == "failed"
    assert sorted(leaky["flagged_classes"]) == ["jellyfish", "sports car"]
    assert leaky["is_as_ratio"] == pytest.approx(recorded["is_as_ratio"], rel=1e-12)
    assert leaky["is_as_ratio_ci"]["low"] == pytest.approx(recorded["is_as_ratio_ci"]["low"], rel=1e-12)
    assert leaky["as_abs_mean"] == pytest.approx(recorded["as_abs_mean"], rel=1e-12)
    assert leaky["weights"] == {"kind": "file", "subject": "data/leaky.npz", "digest": recorded["weights_digest"]}


def test_the_envelope_is_dsse_signed_over_pae_with_a_key_id_from_the_public_key(run, keys):
    envelope = _envelope(run)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    payload = base64.b64decode(envelope["payload"])
    assert payload == canonical_json(json.loads(payload))  # canonical: re-encoding gives the same bytes
    public = serialization.load_pem_public_key(keys.with_name("key.pub").read_bytes())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    [signature] = envelope["signatures"]
    assert signature["keyid"] == hashlib.sha256(raw).hexdigest()
    message = b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)
    public.verify(base64.b64decode(signature["sig"]), message)  # raises if it does not hold


def test_pae_matches_the_dsse_specification():
    assert pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_attest_refuses_weights_changed_since_the_audit(demo, keys, tmp_path, capsys):
    config_dir = tmp_path / "synthetic"
    shutil.copytree(demo / "synthetic", config_dir)
    with open(config_dir / "data" / "leaky.npz", "ab") as fh:
        fh.write(b"\0")
    out = tmp_path / "att.json"
    assert main(["attest", str(demo / "run"), "--key", str(keys), "--config-dir", str(config_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "leaky.npz is not the file audited" in err and "sha256:" in err
    assert not out.exists()


def test_attest_without_the_config_folder_says_where_it_looked(demo, keys, tmp_path, monkeypatch, capsys):
    """The config folder the run records has moved away (or an older results.json has none)."""
    copy = tmp_path / "run"
    shutil.copytree(demo / "run", copy)
    results = json.loads((copy / "results.json").read_text(encoding="utf-8"))
    results["provenance"]["config_dir"] = str(tmp_path / "moved")
    (copy / "results.json").write_text(json.dumps(results), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["attest", str(copy), "--key", str(keys), "-o", "att.json"]) == 2
    err = capsys.readouterr().err
    assert "data/benign.npz" in err and "--config-dir" in err


def test_a_model_with_random_weights_is_listed_without_a_file_subject(demo, keys, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(demo / "run", copy)
    results = json.loads((copy / "results.json").read_text(encoding="utf-8"))
    results["models"][0]["random_weights"] = True
    (copy / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert main(["attest", str(copy), "--key", str(keys), "--config-dir", str(demo / "synthetic")]) == 0
    statement = _statement(copy)
    assert [s["name"] for s in statement["subject"]] == ["results.json", "data/leaky.npz"]
    assert statement["predicate"]["models"][0]["weights"]["kind"] == "random"
    assert statement["predicate"]["models"][0]["weights"]["subject"] is None


def test_attest_with_a_public_key_is_bad_input(demo, keys, capsys, tmp_path):
    assert main(["attest", str(demo / "run"), "--key", str(keys.with_name("key.pub")), "-o", str(tmp_path / "a")]) == 2
    assert "is a public key" in capsys.readouterr().err


# --------------------------------------------------------------------------- verify


def test_verify_holds_on_the_attested_demo(run, demo, keys, capsys):
    capsys.readouterr()
    assert _verify(run, keys.with_name("key.pub"), demo / "synthetic") == 0
    out = capsys.readouterr().out
    assert "signature: valid" in out
    assert "results.json: sha256:" in out and "data/benign.npz: sha256:" in out and "data/leaky.npz: sha256:" in out
    assert "attested verdict: failed" in out


def test_verify_a_tampered_results_json(run, demo, keys, capsys):
    path = run / "results.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"passed": false', '"passed": true', 1), encoding="utf-8")
    assert _verify(run, keys.with_name("key.pub"), demo / "synthetic") == 1
    err = capsys.readouterr().err
    assert "verification failed: results.json" in err and "expected sha256:" in err and "found sha256:" in err


def test_verify_swapped_weights(run, demo, keys, capsys):
    data = demo / "synthetic" / "data"
    pub = keys.with_name("key.pub")
    assert _verify(run, pub, demo / "synthetic", "--weights", str(data / "clip.npz")) == 1
    err = capsys.readouterr().err
    assert "clip.npz is not one of the attested weights" in err and _sha256(data / "clip.npz") in err
    # the leaky weights shipped as if they were benign's
    assert _verify(run, pub, demo / "synthetic", "--weights", f"benign={data / 'leaky.npz'}") == 1
    err = capsys.readouterr().err
    assert "the weights of benign" in err and f"found sha256:{_sha256(data / 'leaky.npz')}" in err


def test_verify_one_given_weights_file_and_say_the_others_were_not_checked(run, demo, keys, capsys):
    data = demo / "synthetic" / "data"
    capsys.readouterr()
    assert _verify(run, keys.with_name("key.pub"), demo / "synthetic", "--weights", f"leaky={data / 'leaky.npz'}") == 0
    out = capsys.readouterr().out
    assert "matches data/leaky.npz (weights of leaky)" in out
    assert "data/benign.npz: not checked" in out


def test_verify_with_another_key_pair(run, demo, tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "other")]) == 0
    assert _verify(run, tmp_path / "other.pub", demo / "synthetic") == 1
    assert "wrong key" in capsys.readouterr().err


def test_verify_a_truncated_envelope(run, demo, keys, capsys):
    path = run / ATTESTATION_FILE
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    assert _verify(run, keys.with_name("key.pub"), demo / "synthetic") == 1
    assert "truncated or damaged" in capsys.readouterr().err


def test_verify_a_payload_edited_after_signing(run, demo, keys, capsys):
    envelope = _envelope(run)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["verdict"]["outcome"] = "passed"
    envelope["payload"] = base64.b64encode(canonical_json(statement)).decode()
    (run / ATTESTATION_FILE).write_text(json.dumps(envelope), encoding="utf-8")
    assert _verify(run, keys.with_name("key.pub"), demo / "synthetic") == 1
    assert "does not verify" in capsys.readouterr().err


def test_verify_an_edited_signature(run, demo, keys, capsys):
    envelope = _envelope(run)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (run / ATTESTATION_FILE).write_text(json.dumps(envelope), encoding="utf-8")
    assert _verify(run, keys.with_name("key.pub"), demo / "synthetic") == 1
    assert "does not verify" in capsys.readouterr().err


def test_verify_when_the_recorded_weights_are_elsewhere(run, keys, tmp_path, capsys):
    pub = keys.with_name("key.pub")
    assert _verify(run, pub, tmp_path) == 2
    err = capsys.readouterr().err
    assert "data/benign.npz not found" in err and "--no-weights" in err
    assert _verify(run, pub, tmp_path, "--no-weights") == 0
    assert "data/benign.npz: not checked (--no-weights)" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["not a key", "private key", "missing"])
def test_verify_with_a_file_that_is_not_a_public_key(run, demo, keys, what, capsys):
    pub = {"not a key": run / "results.json", "private key": keys, "missing": run / "nope.pub"}[what]
    assert _verify(run, pub, demo / "synthetic") == 2
    assert {"not a key": "not a PEM public key", "private key": "is a private key", "missing": "not found"}[what] in capsys.readouterr().err


def test_verify_without_an_attestation_or_run_folder(demo, keys, tmp_path, capsys):
    pub = keys.with_name("key.pub")
    assert _verify(demo / "run", pub, demo / "synthetic", "--attestation", str(tmp_path / "none.json")) == 2
    assert "none.json not found" in capsys.readouterr().err
    assert _verify(tmp_path / "norun", pub, demo / "synthetic") == 2
    assert "run folder" in capsys.readouterr().err


def test_attest_and_verify_find_the_weights_through_the_config_folder_results_json_records(demo, keys, tmp_path, monkeypatch):
    """Without --config-dir both resolve the audit's relative weights paths against
    provenance.config_dir, the folder the audit resolved them against, from any working folder."""
    copy = tmp_path / "run"
    shutil.copytree(demo / "run", copy)
    recorded = json.loads((copy / "results.json").read_text(encoding="utf-8"))["provenance"]["config_dir"]
    assert Path(recorded) == (demo / "synthetic").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["attest", str(copy), "--key", str(keys)]) == 0
    assert main(["verify", str(copy), "--pub", str(keys.with_name("key.pub"))]) == 0
    # a wrong --config-dir still wins over the recorded one, and names the missing file
    assert main(["verify", str(copy), "--pub", str(keys.with_name("key.pub")), "--config-dir", str(elsewhere)]) == 2
