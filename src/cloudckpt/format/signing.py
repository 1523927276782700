"""Manifest signatures: who may have written a checkpoint. Pure; keys come from callers.

A manifest's SHA-256 header is a checksum, not a signature: anyone who can write the bucket
can forge a checkpoint whose checksums all match. With a signing key, the writer signs the
manifest body (which covers every record, chunk checksum and the tree) and stores the signature
in the header line; a reader given a verification key refuses a manifest that is unsigned,
signed with a key it does not know, or whose signature does not match
(:class:`~cloudckpt.errors.UntrustedCheckpoint`).

Two schemes: HMAC-SHA256 with a shared secret (:class:`HmacKey`, signs and verifies) and
Ed25519 (:class:`Ed25519Signer` with the private key on trainers, :class:`Ed25519Verifier`
with public keys anywhere; needs ``cryptography``). Extension point: any object with the
:class:`Signer` / :class:`Verifier` shape.

Not covered: where a validly signed manifest sits. Someone with write access can copy an older
signed checkpoint over a newer step (a rollback) or delete checkpoints; signatures prove who
wrote a checkpoint's content, not that it is the newest.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudckpt.errors import InvalidArgument

__all__ = ["DOMAIN", "Ed25519Signer", "Ed25519Verifier", "HmacKey", "Signer", "Verifier"]

#: Prefix of every signed message, so a signature cannot be replayed for another purpose.
DOMAIN = b"cloudckpt-manifest-signature/1\n"
MIN_HMAC_KEY_BYTES = 16


class Signer(Protocol):
    """Signs manifest bodies. ``alg`` and ``key_id`` are recorded beside the signature."""

    @property
    def alg(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes:
        """The signature of ``message``."""


class Verifier(Protocol):
    """Checks manifest signatures."""

    def verify(self, alg: str, key_id: str, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``message`` by the key ``key_id``
        under ``alg``; False for unknown algorithms or keys. Never raises for bad input."""


@dataclass(frozen=True)
class HmacKey:
    """A shared secret (at least 16 bytes) for HMAC-SHA256: signs and verifies."""

    secret: bytes = field(repr=False)
    key_id: str = "hmac"
    alg: str = "hmac-sha256"

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_HMAC_KEY_BYTES:
            raise InvalidArgument(f"an HMAC signing key needs at least {MIN_HMAC_KEY_BYTES} bytes")

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def verify(self, alg: str, key_id: str, message: bytes, signature: bytes) -> bool:
        return (alg == self.alg and key_id == self.key_id
                and hmac.compare_digest(self.sign(message), signature))


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - cryptography ships with the extras
        raise ImportError("Ed25519 signatures need the 'cryptography' package") from e
    return ed25519


@dataclass(frozen=True)
class Ed25519Signer:
    """Signs with an Ed25519 private key (32 raw bytes)."""

    private_key: bytes = field(repr=False)
    key_id: str = "ed25519"
    alg: str = "ed25519"

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise InvalidArgument("an Ed25519 private key is 32 raw bytes")

    def sign(self, message: bytes) -> bytes:
        key = _crypto().Ed25519PrivateKey.from_private_bytes(self.private_key)
        return bytes(key.sign(message))

    def public_key(self) -> bytes:
        """The matching 32-byte public key, for :class:`Ed25519Verifier`."""
        from cryptography.hazmat.primitives import serialization

        key = _crypto().Ed25519PrivateKey.from_private_bytes(self.private_key)
        return bytes(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class Ed25519Verifier:
    """Verifies with Ed25519 public keys (32 raw bytes each), by key id."""

    public_keys: Mapping[str, bytes]

    def verify(self, alg: str, key_id: str, message: bytes, signature: bytes) -> bool:
        raw = self.public_keys.get(key_id)
        if alg != "ed25519" or raw is None or len(raw) != 32:
            return False
        ed = _crypto()
        from cryptography.exceptions import InvalidSignature

        try:
            ed.Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True
