"""Token validation: each failed check is named, tokens never echoed, principals typed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from driver_service.security.tokens import (
    InvalidToken,
    Principal,
    TokenIssuer,
    TokenProblem,
    TokenValidator,
    parse_ttl,
)

SECRET = b"unit-test-secret-that-is-32-bytes+"


def problem(validator: TokenValidator, token: str) -> TokenProblem:
    with pytest.raises(InvalidToken) as info:
        validator.validate(token)
    assert token not in str(info.value)
    return info.value.problem


def test_driver_and_service_principals() -> None:
    issuer, validator = TokenIssuer.from_secret(SECRET), TokenValidator.from_secret(SECRET)
    assert validator.validate(issuer.issue_driver("d-1")) == Principal("driver", "d-1")
    service = validator.validate(issuer.issue_service(["drivers:read", "dispatch"]))
    assert service.kind == "service"
    assert service.has_scope("dispatch")
    assert service.driver_id is None
    scp = jwt.encode(
        {
            "iss": "driver-service",
            "aud": "driver-service",
            "sub": "s",
            "exp": time.time() + 60,
            "scp": ["drivers:write"],
        },
        SECRET,
        algorithm="HS256",
    )
    assert validator.validate(scp).scopes == frozenset({"drivers:write"})


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (TokenIssuer.from_secret(b"y" * 32).issue_driver("d"), TokenProblem.BAD_SIGNATURE),
        (TokenIssuer.from_secret(SECRET).issue_driver("d", ttl_s=-100), TokenProblem.EXPIRED),
        (TokenIssuer.from_secret(SECRET).issue("d", not_before_s=600), TokenProblem.NOT_YET_VALID),
        (TokenIssuer.from_secret(SECRET, issuer="x").issue_driver("d"), TokenProblem.WRONG_ISSUER),
        (
            TokenIssuer.from_secret(SECRET, audience="x").issue_driver("d"),
            TokenProblem.WRONG_AUDIENCE,
        ),
        ("garbage", TokenProblem.MALFORMED),
        ("a" * 9000, TokenProblem.MALFORMED),
        (
            jwt.encode({"sub": "d", "iss": "driver-service", "aud": "driver-service"}, SECRET),
            TokenProblem.MISSING_CLAIM,
        ),
        (
            jwt.encode({"sub": "d"}, None, algorithm="none"),
            TokenProblem.ALGORITHM,
        ),
    ],
)
def test_each_problem_is_named(token: str, expected: TokenProblem) -> None:
    assert problem(TokenValidator.from_secret(SECRET), token) == expected


def test_leeway_accepts_small_clock_skew_only() -> None:
    issuer = TokenIssuer.from_secret(SECRET)
    validator = TokenValidator.from_secret(SECRET, leeway_s=30)
    validator.validate(issuer.issue_driver("d", ttl_s=-10))
    assert problem(validator, issuer.issue_driver("d", ttl_s=-60)) == TokenProblem.EXPIRED


def test_missing_and_non_bearer_authorization() -> None:
    validator = TokenValidator.from_secret(SECRET)
    for value, expected in [
        (None, TokenProblem.MISSING),
        ("", TokenProblem.MISSING),
        ("Basic abc", TokenProblem.MALFORMED),
    ]:
        with pytest.raises(InvalidToken) as info:
            validator.validate_authorization(value)
        assert info.value.problem == expected


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenValidator.from_secret(b"short")


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_public_key_file(tmp_path: Path, kind: str) -> None:
    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    _write_key(tmp_path / "k.pem", key)
    issuer = TokenIssuer.from_private_key_file(tmp_path / "k.pem")
    assert issuer.algorithm == ("RS256" if kind == "rsa" else "ES256")
    validator = TokenValidator.from_public_key_file(tmp_path / "k.pub")
    assert validator.validate(issuer.issue_driver("d")).subject == "d"
    # An HS256 token made with the public key as secret (algorithm confusion) is refused.
    forged = jwt.encode({"sub": "d"}, "x" * 32, algorithm="HS256")
    assert problem(validator, forged) == TokenProblem.ALGORITHM


def test_jwks_picks_key_by_kid(tmp_path: Path) -> None:
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("a", "b")}
    jwks = {
        "keys": [
            {
                **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())),
                "kid": kid,
                "alg": "ES256",
            }
            for kid, k in keys.items()
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    validator = TokenValidator.from_jwks_file(tmp_path / "jwks.json")
    for kid, key in keys.items():
        token = TokenIssuer(key, "ES256", key_id=kid).issue_driver("d")
        assert validator.validate(token).subject == "d"
    unknown = TokenIssuer(
        ec.generate_private_key(ec.SECP256R1()), "ES256", key_id="c"
    ).issue_driver("d")
    assert problem(validator, unknown) == TokenProblem.UNKNOWN_KEY
    wrong = TokenIssuer(keys["a"], "ES256", key_id="b").issue_driver("d")
    assert problem(validator, wrong) == TokenProblem.BAD_SIGNATURE


def test_parse_ttl() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "15m", "1h", "2d")] == [90, 90, 900, 3600, 172800]
    with pytest.raises(ValueError, match="not a duration"):
        parse_ttl("soon")
    with pytest.raises(ValueError, match="positive"):
        parse_ttl("-1h")


def test_a_verified_token_is_remembered_only_until_it_expires() -> None:
    validator = TokenValidator.from_secret(SECRET, leeway_s=0)
    issuer = TokenIssuer.from_secret(SECRET)
    token = issuer.issue_driver("d1", ttl_s=1.2)
    assert validator.validate(token).driver_id == "d1"
    assert validator.validate(token).driver_id == "d1"  # from the cache
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert problem(validator, forged) is TokenProblem.BAD_SIGNATURE  # never from the cache
    time.sleep(1.3)
    assert problem(validator, token) is TokenProblem.EXPIRED


def test_a_cached_token_is_still_refused_without_its_scheme() -> None:
    """A token answered from the cache is so only behind `Bearer `: the bare token, or
    another scheme, stays malformed however often the header was accepted."""
    issuer = TokenIssuer.from_secret(SECRET_FOR_CACHE)
    validator = TokenValidator.from_secret(SECRET_FOR_CACHE)
    token = issuer.issue_service(["drivers:read"])
    first = validator.validate_authorization(f"Bearer {token}")
    assert validator.validate_authorization(f"Bearer {token}") is first
    with pytest.raises(InvalidToken):
        validator.validate_authorization(token)
    with pytest.raises(InvalidToken):
        validator.validate_authorization(f"Basic {token}")


SECRET_FOR_CACHE = b"header-cache-test-secret-of-32-bytes!"
