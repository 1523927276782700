"""Manifest signatures: with a verification key, unsigned or forged checkpoints are refused."""

from __future__ import annotations

import os

import pytest
import torch

import cloudckpt
from cloudckpt.engine.trust import resolve_signer, resolve_verifier
from cloudckpt.engine.verify import verify
from cloudckpt.errors import CorruptCheckpoint, InvalidArgument, UntrustedCheckpoint
from cloudckpt.format.keys import MANIFEST_KEY
from cloudckpt.format.manifest import decode_manifest, encode_manifest
from cloudckpt.format.signing import Ed25519Signer, Ed25519Verifier, HmacKey
from cloudckpt.storage import open_store

KEY = HmacKey(b"k" * 32, "team-a")
OTHER = HmacKey(b"o" * 32, "team-a")


def _state() -> dict:
    return {"w": torch.arange(10.0), "step": 3}


def test_hmac_signed_checkpoint_loads_and_reports_verified(tmp_path) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "c")
    cloudckpt.save(_state(), uri, signer=KEY)
    assert cloudckpt.load(uri, verifier=KEY)["step"] == 3
    m = cloudckpt.inspect(uri, verifier=KEY)
    assert m.signature == ("hmac-sha256", "team-a") and m.signature_verified
    assert verify(uri, verifier=KEY).signature == "verified (hmac-sha256, team-a)"
    # without a verification key the signature is reported, not required
    assert verify(uri).signature == "signed (hmac-sha256, team-a), not checked"


def test_unsigned_or_forged_checkpoints_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    unsigned = str(tmp_path / "u")
    cloudckpt.save(_state(), unsigned)
    assert verify(unsigned).signature == "unsigned"
    with pytest.raises(UntrustedCheckpoint, match="not signed"):
        cloudckpt.load(unsigned, verifier=KEY)
    forged = str(tmp_path / "f")
    cloudckpt.save(_state(), forged, signer=OTHER)  # same key id, another secret
    with pytest.raises(UntrustedCheckpoint, match="does not verify"):
        cloudckpt.load(forged, verifier=KEY)
    with pytest.raises(UntrustedCheckpoint):
        verify(forged, verifier=KEY)
    # an attacker who rewrites the body keeps the old signature: it no longer matches
    store = open_store(str(tmp_path / "t"))
    cloudckpt.save(_state(), store, signer=KEY)
    raw = store.get(MANIFEST_KEY)
    m = decode_manifest(raw)
    head = raw.partition(b"\n")[0]
    body = encode_manifest(type(m)(**{**m.__dict__, "metadata": {"evil": 1}})).partition(b"\n")[2]
    import hashlib
    import json

    h = json.loads(head)
    h["body_length"], h["body_sha256"] = len(body), hashlib.sha256(body).hexdigest()
    store.put(MANIFEST_KEY, json.dumps(h).encode() + b"\n" + body)
    with pytest.raises(UntrustedCheckpoint):
        cloudckpt.load(store, verifier=KEY)
    assert isinstance(UntrustedCheckpoint("x"), CorruptCheckpoint)  # fallbacks treat it as damage


def test_ed25519_signatures(tmp_path) -> None:  # type: ignore[no-untyped-def]
    signer = Ed25519Signer(os.urandom(32), "trainer-1")
    good = Ed25519Verifier({"trainer-1": signer.public_key()})
    bad = Ed25519Verifier({"trainer-1": Ed25519Signer(os.urandom(32)).public_key()})
    uri = str(tmp_path / "c")
    cloudckpt.save(_state(), uri, signer=signer)
    assert cloudckpt.load(uri, verifier=good)["step"] == 3
    with pytest.raises(UntrustedCheckpoint):
        cloudckpt.load(uri, verifier=bad)
    with pytest.raises(UntrustedCheckpoint):  # an HMAC key does not accept Ed25519 signatures
        cloudckpt.load(uri, verifier=KEY)


def test_keys_from_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    unsigned = str(tmp_path / "u")
    cloudckpt.save(_state(), unsigned)
    monkeypatch.setenv("CLOUDCKPT_SIGNING_KEY", "s" * 20)
    uri = str(tmp_path / "c")
    cloudckpt.save(_state(), uri)  # signed with the environment's key
    assert cloudckpt.inspect(uri).signature_verified
    with pytest.raises(UntrustedCheckpoint):
        cloudckpt.load(unsigned)  # the environment's key is required on every read
    signer = Ed25519Signer(os.urandom(32), "e")
    env = {"CLOUDCKPT_ED25519_PRIVATE_KEY": signer.private_key.hex(),
           "CLOUDCKPT_SIGNING_KEY_ID": "e",
           "CLOUDCKPT_ED25519_PUBLIC_KEYS": f"e={signer.public_key().hex()}"}
    s, v = resolve_signer(None, env), resolve_verifier(None, env)
    assert s is not None and v is not None
    assert v.verify(s.alg, s.key_id, b"m", s.sign(b"m"))
    assert resolve_signer(None, {}) is None and resolve_verifier(None, {}) is None
    with pytest.raises(InvalidArgument):
        resolve_verifier(None, {"CLOUDCKPT_ED25519_PUBLIC_KEYS": "e=zz"})
    with pytest.raises(InvalidArgument):
        HmacKey(b"short")


def test_restore_latest_falls_back_past_a_forged_checkpoint(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uri = str(tmp_path / "run")
    monkeypatch.setenv("CLOUDCKPT_SIGNING_KEY", "trainer-secret-0123456789")
    mgr = cloudckpt.CheckpointManager(uri)
    m = torch.nn.Linear(3, 3)
    mgr.save(10, model=m)
    # an attacker without the key writes a newer, unsigned checkpoint straight into the run
    monkeypatch.delenv("CLOUDCKPT_SIGNING_KEY")
    forged = torch.nn.Linear(3, 3)
    cloudckpt.CheckpointManager(uri).save(20, model=forged)
    monkeypatch.setenv("CLOUDCKPT_SIGNING_KEY", "trainer-secret-0123456789")
    fresh = cloudckpt.CheckpointManager(uri)
    assert fresh.steps() == [10]  # the unsigned one is skipped (with a WARNING)
    target = torch.nn.Linear(3, 3)
    st = fresh.restore(model=target)
    assert st is not None and st.step == 10
    assert torch.equal(target.weight, m.weight)
