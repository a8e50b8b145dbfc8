"""The signing keys (models/signing.py): what they are named, what the JWKS shows, what is refused."""
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import config
from models import signing

PRODUCTION = {"APP_ENV": "production"}


def _settings(tmp_path, **env):
    return config.load({**PRODUCTION, **{k: str(v) for k, v in env.items()}})


def _public_pem(private_path, to):
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    to.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    return to


def test_the_kid_is_the_keys_thumbprint_whoever_reads_it(tmp_path):
    kid = signing.generate(tmp_path / "a.pem")
    public = _public_pem(tmp_path / "a.pem", tmp_path / "a.pub")
    other = signing.generate(tmp_path / "b.pem")
    ring = signing.load(_settings(tmp_path, JWT_SIGNING_KEY_FILE=tmp_path / "b.pem",
                                  JWT_VERIFICATION_KEY_FILES=public))
    assert ring.signing.kid == other != kid
    assert set(ring.verifying) == {kid, other}
    assert ring.verifying[kid].private is None  # a verification key never signs
    # RFC 7638: 32 bytes of SHA-256, base64url without padding.
    assert len(kid) == 43 and "=" not in kid


def test_the_jwks_shows_public_halves_only(tmp_path):
    signing.generate(tmp_path / "a.pem")
    ring = signing.load(_settings(tmp_path, JWT_SIGNING_KEY_FILE=tmp_path / "a.pem"))
    (jwk,) = ring.jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")


def test_development_makes_its_key_once_production_never(tmp_path):
    development = config.load({"APP_ENV": "development", "DATA_DIR": str(tmp_path / "data")})
    first = signing.load(development).signing.kid
    path = tmp_path / "data" / "jwt_signing_key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert signing.load(development).signing.kid == first  # kept across restarts
    with pytest.raises(config.ConfigError, match="JWT_SIGNING_KEY_FILE.*cannot read"):
        signing.load(_settings(tmp_path, JWT_SIGNING_KEY_FILE=tmp_path / "missing.pem"))
    assert not (tmp_path / "missing.pem").exists()


def test_generate_never_overwrites(tmp_path):
    signing.generate(tmp_path / "a.pem")
    before = (tmp_path / "a.pem").read_bytes()
    with pytest.raises(FileExistsError):
        signing.generate(tmp_path / "a.pem")
    assert (tmp_path / "a.pem").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pem"]  # no temporary file left


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("content, variable, message", [
    (b"an HS256 secret of old", "JWT_SIGNING_KEY_FILE", "not an unencrypted PEM private key"),
    ("rsa", "JWT_SIGNING_KEY_FILE", "not a P-256"),
    ("p384", "JWT_SIGNING_KEY_FILE", "not a P-256"),
    ("public", "JWT_SIGNING_KEY_FILE", "not an unencrypted PEM private key"),
    (b"garbage", "JWT_VERIFICATION_KEY_FILES", "not a PEM key"),
    ("rsa", "JWT_VERIFICATION_KEY_FILES", "not a P-256"),
])
def test_unsuitable_key_files_refuse_to_start_naming_the_variable(tmp_path, content, variable, message):
    good = tmp_path / "good.pem"
    signing.generate(good)
    if content == "rsa":
        content = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif content == "p384":
        content = _pem(ec.generate_private_key(ec.SECP384R1()))
    elif content == "public":
        content = _public_pem(good, tmp_path / "good.pub").read_bytes()
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    env = ({"JWT_SIGNING_KEY_FILE": bad} if variable == "JWT_SIGNING_KEY_FILE"
           else {"JWT_SIGNING_KEY_FILE": good, "JWT_VERIFICATION_KEY_FILES": bad})
    with pytest.raises(config.ConfigError, match=f"{variable}.*{message}"):
        signing.load(_settings(tmp_path, **env))
