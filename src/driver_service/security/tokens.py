"""Bearer tokens (JWT): validate them into a typed Principal, and issue them for development.

A token names either a driver (`role: "driver"`, `sub` = the driver id), who may act only for
itself, or a service, whose rights are its scopes (`scope: "a b"` or `scp: ["a", "b"]`).
Errors say which check failed and never contain the token.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEFAULT_ISSUER = "driver-service"
DEFAULT_AUDIENCE = "driver-service"
DEFAULT_LEEWAY_S = 30.0
#: A real token is well under 2 KiB; anything far larger is an attack on the parser.
MAX_TOKEN_LENGTH = 8192
#: HS256 needs at least 256 bits of secret (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32

SCOPE_READ = "drivers:read"
SCOPE_WRITE = "drivers:write"
SCOPE_DISPATCH = "dispatch"
#: Operators who create, change and delete zones (ZoneService).
SCOPE_ZONES = "zones"
#: Consumers of the event log (EventService.WatchEvents).
SCOPE_EVENTS = "events"
#: Reading location history (trails, trips): more sensitive than the live position.
SCOPE_HISTORY = "history:read"
#: Erasing everything stored about a driver.
SCOPE_FORGET = "drivers:forget"
#: Operators who register webhook endpoints, see and replay their dead letters.
SCOPE_WEBHOOKS = "webhooks"
ROLE_DRIVER = "driver"
ROLE_SERVICE = "service"

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")


class TokenProblem(enum.Enum):
    """Which check a token failed; the value is the message a caller sees."""

    MISSING = "missing bearer token"
    MALFORMED = "malformed token"
    BAD_SIGNATURE = "token signature is invalid"
    UNKNOWN_KEY = "token is signed with an unknown key"
    ALGORITHM = "token algorithm is not accepted"
    EXPIRED = "token has expired"
    NOT_YET_VALID = "token is not yet valid"
    WRONG_ISSUER = "token has the wrong issuer"
    WRONG_AUDIENCE = "token has the wrong audience"
    MISSING_CLAIM = "token lacks a required claim"
    BAD_CLAIM = "token has an invalid claim"


class InvalidToken(Exception):
    """The token was rejected; `problem` says why, `str()` is safe to send to the caller."""

    def __init__(self, problem: TokenProblem, detail: str = "") -> None:
        self.problem = problem
        self.detail = detail
        super().__init__(f"{problem.value}: {detail}" if detail else problem.value)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a driver acting for itself, or a service with scopes."""

    kind: Literal["driver", "service"]
    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def driver_id(self) -> str | None:
        """The driver this token may act for, or None for a service."""
        return self.subject if self.kind == "driver" else None

    def has_scope(self, scope: str) -> bool:
        return self.kind == "service" and scope in self.scopes


class _Keys:
    """Where verification keys come from: one key, or a JWKS chosen by the token's `kid`."""

    def __init__(
        self,
        algorithms: tuple[str, ...],
        key: Any = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self.algorithms = algorithms
        self._key = key
        self._jwks = dict(jwks or {})

    def key_for(self, header: Mapping[str, Any]) -> Any:
        if self._key is not None:
            return self._key
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self._jwks:
            return self._jwks[kid]
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        raise InvalidToken(TokenProblem.UNKNOWN_KEY)


_PYJWT_ERRORS: tuple[tuple[type[Exception], TokenProblem], ...] = (
    # Order matters: subclasses before their bases.
    (jwt.ExpiredSignatureError, TokenProblem.EXPIRED),
    (jwt.ImmatureSignatureError, TokenProblem.NOT_YET_VALID),
    (jwt.InvalidIssuedAtError, TokenProblem.NOT_YET_VALID),
    (jwt.InvalidIssuerError, TokenProblem.WRONG_ISSUER),
    (jwt.InvalidAudienceError, TokenProblem.WRONG_AUDIENCE),
    (jwt.MissingRequiredClaimError, TokenProblem.MISSING_CLAIM),
    (jwt.InvalidSignatureError, TokenProblem.BAD_SIGNATURE),
    (jwt.InvalidAlgorithmError, TokenProblem.ALGORITHM),
    (jwt.DecodeError, TokenProblem.MALFORMED),
    (jwt.InvalidTokenError, TokenProblem.BAD_CLAIM),
)


#: Verified tokens remembered (per process), and for how long at most.
CACHE_ENTRIES = 10_000
CACHE_SECONDS = 300.0


class TokenValidator:
    """Checks signature, `exp`, `nbf`, `iss`, `aud` (with a small clock skew) and turns the
    claims into a Principal. Build it once at start; `validate` is cheap and thread-safe."""

    def __init__(
        self,
        keys: _Keys,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        leeway_s: float = DEFAULT_LEEWAY_S,
    ) -> None:
        if leeway_s < 0 or leeway_s > 300:
            raise ValueError("token leeway must be within 0..300 seconds")
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        # Verified tokens -> (principal, usable until, wall clock): a client sends the same
        # token on every call, and a signature check costs more than the RPC itself.
        self._verified: dict[str, tuple[Principal, float]] = {}

    @classmethod
    def from_secret(cls, secret: bytes, **options: Any) -> TokenValidator:
        """HS256 with a shared secret (at least 32 bytes)."""
        return cls(_Keys(("HS256",), key=_check_secret(secret)), **options)

    @classmethod
    def from_secret_file(cls, path: str | Path, **options: Any) -> TokenValidator:
        return cls.from_secret(read_secret_file(path), **options)

    @classmethod
    def from_public_key_file(cls, path: str | Path, **options: Any) -> TokenValidator:
        """RS256 or ES256 (by key type) with one PEM public key (or certificate)."""
        key, algorithm = _load_public_key(Path(path).read_bytes())
        return cls(_Keys((algorithm,), key=key), **options)

    @classmethod
    def from_jwks_file(cls, path: str | Path, **options: Any) -> TokenValidator:
        """RS256/ES256 keys from a JWKS document; a token picks its key by `kid`."""
        try:
            document = json.loads(Path(path).read_text())
            keyset = jwt.PyJWKSet.from_dict(document)
        except (ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
            raise ValueError(f"{path}: not a usable JWKS document: {exc}") from None
        keys: dict[str, Any] = {}
        for index, jwk in enumerate(keyset.keys):
            if jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS:
                continue
            keys[jwk.key_id or f"#{index}"] = jwk.key
        if not keys:
            raise ValueError(f"{path}: JWKS has no RS256 or ES256 key")
        return cls(_Keys(ASYMMETRIC_ALGORITHMS, jwks=keys), **options)

    def validate_authorization(self, value: str | None) -> Principal:
        """Validate an `authorization` metadata value of the form `Bearer <token>`."""
        return self.authorization_principal(value)[0]

    def authorization_principal(self, value: str | None) -> tuple[Principal, float]:
        """`validate_authorization`, and the wall-clock time until which its answer stands
        for the same value (the cached verification's): a caller may reuse it until then."""
        if value is None or not value.strip():
            raise InvalidToken(TokenProblem.MISSING)
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken(TokenProblem.MALFORMED, "expected 'Bearer <token>'")
        return self._principal_until(token.strip())

    def validate(self, token: str) -> Principal:
        """The token's principal. A token verified before is answered from a bounded cache
        until its `exp` (plus leeway) or for at most CACHE_SECONDS; nothing else is cached."""
        return self._principal_until(token)[0]

    def _principal_until(self, token: str) -> tuple[Principal, float]:
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                return cached
            del self._verified[token]
        principal, expires_at = self._verify(token)
        if len(self._verified) >= CACHE_ENTRIES:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        verified = self._verified[token] = (
            principal,
            min(expires_at + self.leeway_s, time.time() + CACHE_SECONDS),
        )
        return verified

    def _verify(self, token: str) -> tuple[Principal, float]:
        if not token:
            raise InvalidToken(TokenProblem.MISSING)
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(TokenProblem.MALFORMED, "token is too long")
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.key_for(header)
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._keys.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except InvalidToken:
            raise
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(TokenProblem.MISSING_CLAIM, exc.claim) from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(_problem_of(exc)) from None
        return principal_from_claims(claims), float(claims["exp"])


def _problem_of(exc: jwt.InvalidTokenError) -> TokenProblem:
    for error_type, problem in _PYJWT_ERRORS:
        if isinstance(exc, error_type):
            return problem
    return TokenProblem.BAD_CLAIM  # pragma: no cover - every InvalidTokenError is listed


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """`role: "driver"` makes a driver principal (scopes ignored); anything else a service."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken(TokenProblem.BAD_CLAIM, "sub")
    role = claims.get("role", ROLE_SERVICE)
    if role == ROLE_DRIVER:
        return Principal("driver", subject)
    if role != ROLE_SERVICE:
        raise InvalidToken(TokenProblem.BAD_CLAIM, "role")
    return Principal("service", subject, _scopes(claims))


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scopes: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        scopes.update(scope.split())
    elif scope is not None:
        raise InvalidToken(TokenProblem.BAD_CLAIM, "scope")
    scp = claims.get("scp")
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        scopes.update(scp)
    elif isinstance(scp, str):
        scopes.update(scp.split())
    elif scp is not None:
        raise InvalidToken(TokenProblem.BAD_CLAIM, "scp")
    return frozenset(scopes)


def _check_secret(secret: bytes) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def read_secret_file(path: str | Path) -> bytes:
    """The secret is the file's bytes without a trailing newline (as `echo > file` leaves)."""
    return _check_secret(Path(path).read_bytes().rstrip(b"\r\n"))


def _load_public_key(pem: bytes) -> tuple[Any, str]:
    if b"CERTIFICATE" in pem:
        from cryptography import x509

        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    return key, _algorithm_for(key)


def _algorithm_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("ES256 needs a P-256 key")  # noqa: TRY004 - a bad key, not a bad type
        return "ES256"
    raise ValueError("only RSA (RS256) and P-256 EC (ES256) keys are supported")


class TokenIssuer:
    """Signs tokens for development and tests; production tokens come from an identity
    provider, which is why this lives beside the validator but is never used by the server."""

    def __init__(
        self,
        key: Any,
        algorithm: str,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        key_id: str | None = None,
    ) -> None:
        self._key = key
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.key_id = key_id

    @classmethod
    def from_secret(cls, secret: bytes, **options: Any) -> TokenIssuer:
        return cls(_check_secret(secret), "HS256", **options)

    @classmethod
    def from_private_key_file(cls, path: str | Path, **options: Any) -> TokenIssuer:
        """RS256 or ES256 (by key type) from an unencrypted PEM private key."""
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        return cls(key, _algorithm_for(key), **options)

    def issue(
        self,
        subject: str,
        *,
        role: str = ROLE_SERVICE,
        scopes: Iterable[str] = (),
        ttl_s: float = 3600.0,
        not_before_s: float = 0.0,
        now: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        issued = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "role": role,
            "iat": int(issued),
            "nbf": int(issued + not_before_s),
            "exp": int(issued + ttl_s),
            "jti": uuid.uuid4().hex,
        }
        scope_list = sorted(set(scopes))
        if scope_list:
            claims["scope"] = " ".join(scope_list)
        if extra:
            claims.update(extra)
        headers = {"kid": self.key_id} if self.key_id else None
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def issue_driver(self, driver_id: str, *, ttl_s: float = 3600.0) -> str:
        return self.issue(driver_id, role=ROLE_DRIVER, ttl_s=ttl_s)

    def issue_service(
        self, scopes: Iterable[str], *, subject: str = "dev-service", ttl_s: float = 3600.0
    ) -> str:
        return self.issue(subject, role=ROLE_SERVICE, scopes=scopes, ttl_s=ttl_s)


def parse_ttl(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `7d` -> seconds (positive)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    multiplier = 1
    if value and value[-1] in units:
        multiplier = units[value[-1]]
        value = value[:-1]
    try:
        seconds = float(value) * multiplier
    except ValueError:
        raise ValueError(f"ttl {text!r} is not a duration like 90s, 15m, 1h or 7d") from None
    if not 0 < seconds <= 366 * 86400:
        raise ValueError(f"ttl {text!r} must be positive and at most a year")
    return seconds
