"""Which keys sign and verify manifests when the caller passes none: the environment.

- ``CLOUDCKPT_SIGNING_KEY``: an HMAC-SHA256 shared secret (text, at least 16 bytes); every
  save signs with it and every read requires a valid signature. ``CLOUDCKPT_SIGNING_KEY_ID``
  names the key (default ``hmac``).
- ``CLOUDCKPT_ED25519_PRIVATE_KEY``: 64 hex digits (a raw Ed25519 private key); saves sign
  with it (key id from ``CLOUDCKPT_SIGNING_KEY_ID``, default ``ed25519``).
- ``CLOUDCKPT_ED25519_PUBLIC_KEYS``: ``id=hex[,id=hex...]``; reads require a valid
  signature by one of these keys.

An explicit ``signer``/``verifier`` argument wins over the environment. Any thread may call
these functions; they read the environment on each call (no cached global state).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cloudckpt.errors import InvalidArgument
from cloudckpt.format.signing import Ed25519Signer, Ed25519Verifier, HmacKey, Signer, Verifier

__all__ = ["AnyVerifier", "resolve_signer", "resolve_verifier"]


@dataclass(frozen=True)
class AnyVerifier:
    """Accepts a signature any of ``verifiers`` accepts."""

    verifiers: tuple[Verifier, ...]

    def verify(self, alg: str, key_id: str, message: bytes, signature: bytes) -> bool:
        return any(v.verify(alg, key_id, message, signature) for v in self.verifiers)


def _hex(name: str, value: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise InvalidArgument(f"{name} must be {2 * size} hex digits")
    return raw


def resolve_signer(signer: Signer | None, env: Mapping[str, str] | None = None) -> Signer | None:
    """``signer``, else the signing key configured in the environment, else ``None``.

    Raises:
        InvalidArgument: a malformed key in the environment.
    """
    if signer is not None:
        return signer
    env = os.environ if env is None else env
    key_id = env.get("CLOUDCKPT_SIGNING_KEY_ID")
    if env.get("CLOUDCKPT_ED25519_PRIVATE_KEY"):
        raw = _hex("CLOUDCKPT_ED25519_PRIVATE_KEY", env["CLOUDCKPT_ED25519_PRIVATE_KEY"], 32)
        return Ed25519Signer(raw, key_id or "ed25519")
    if env.get("CLOUDCKPT_SIGNING_KEY"):
        return HmacKey(env["CLOUDCKPT_SIGNING_KEY"].encode(), key_id or "hmac")
    return None


def resolve_verifier(verifier: Verifier | None,
                     env: Mapping[str, str] | None = None) -> Verifier | None:
    """``verifier``, else the verification keys configured in the environment, else ``None``
    (signatures are then reported but not required).

    Raises:
        InvalidArgument: a malformed key in the environment.
    """
    if verifier is not None:
        return verifier
    env = os.environ if env is None else env
    found: list[Verifier] = []
    if env.get("CLOUDCKPT_SIGNING_KEY"):
        found.append(HmacKey(env["CLOUDCKPT_SIGNING_KEY"].encode(),
                             env.get("CLOUDCKPT_SIGNING_KEY_ID") or "hmac"))
    if env.get("CLOUDCKPT_ED25519_PUBLIC_KEYS"):
        keys: dict[str, bytes] = {}
        for item in env["CLOUDCKPT_ED25519_PUBLIC_KEYS"].split(","):
            kid, sep, value = item.strip().partition("=")
            if not sep or not kid:
                raise InvalidArgument("CLOUDCKPT_ED25519_PUBLIC_KEYS must be id=hex[,id=hex...]")
            keys[kid] = _hex("an Ed25519 public key", value, 32)
        found.append(Ed25519Verifier(keys))
    if not found:
        return None
    return found[0] if len(found) == 1 else AnyVerifier(tuple(found))
