"""The keys access tokens are signed with (ES256) and the public keys anyone may verify them with.

One private key signs (``JWT_SIGNING_KEY_FILE``); further keys only verify
(``JWT_VERIFICATION_KEY_FILES``): the previous key while its tokens live out a rotation, or the
next one, published before it signs. Each key's ``kid`` is its RFC 7638 thumbprint, so every
worker and instance that reads the same file names it the same way, with nothing to configure.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from config import ConfigError, Settings

ALGORITHM = "ES256"  # ECDSA on P-256 with SHA-256: what every JOSE library verifies


@dataclass(frozen=True)
class Key:
    kid: str
    public: ec.EllipticCurvePublicKey
    private: ec.EllipticCurvePrivateKey | None = None

    def jwk(self) -> dict:
        """The public JWK (RFC 7517) that the JWKS serves: never the private part."""
        return {**ECAlgorithm.to_jwk(self.public, as_dict=True), "kid": self.kid, "use": "sig",
                "alg": ALGORITHM}


@dataclass(frozen=True)
class Keyring:
    """The key that signs and every key that verifies (it included), by ``kid``."""

    signing: Key
    verifying: dict[str, Key]

    def jwks(self) -> dict:
        return {"keys": [key.jwk() for key in self.verifying.values()]}


def kid_of(public: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, without whitespace."""
    jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    members = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                         sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()


def load(settings: Settings) -> Keyring:
    """The keys the settings name; in development a missing signing key is generated first.

    Any unreadable or unsuitable file refuses the start with a ``ConfigError`` naming its variable.
    """
    path = settings.jwt_signing_key_file
    if path is None:
        raise ConfigError("JWT_SIGNING_KEY_FILE must name a PEM private key (clinic-api generate-key writes one)")
    if settings.is_development and not path.exists():
        try:
            generate(path)
        except FileExistsError:  # another worker made it first
            pass
    signing = _read(path, "JWT_SIGNING_KEY_FILE", private=True)
    verifying = {signing.kid: signing}
    for extra in settings.jwt_verification_key_files:
        key = _read(Path(extra), "JWT_VERIFICATION_KEY_FILES", private=False)
        verifying.setdefault(key.kid, key)
    return Keyring(signing=signing, verifying=verifying)


def _read(path: Path, variable: str, *, private: bool) -> Key:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
    try:
        secret = serialization.load_pem_private_key(data, password=None)
        public = secret.public_key()
    except (ValueError, TypeError) as exc:
        if private:
            raise ConfigError(f"{variable}: {path} is not an unencrypted PEM private key") from exc
        secret = None
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as exc2:
            raise ConfigError(f"{variable}: {path} is not a PEM key") from exc2
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ConfigError(f"{variable}: {path} is not a P-256 (ES256) key")
    # A verification key is kept as its public half only: it must never sign.
    return Key(kid=kid_of(public), public=public, private=secret if private else None)


def generate(path: Path) -> str:
    """Write a new P-256 private key to ``path`` (mode 0600) and return its kid.

    The file appears whole or not at all (a hard link of a finished temporary file), so workers
    starting together never read half a key; an existing file is never overwritten
    (``FileExistsError``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        os.fchmod(handle, 0o600)
        os.write(handle, pem)
        os.close(handle)
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return kid_of(key.public_key())
