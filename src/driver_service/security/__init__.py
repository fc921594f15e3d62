"""Security building blocks: bearer-token validation, mTLS credentials, dev certificates."""

from driver_service.security.tls import (
    ENFORCED_MIN_TLS_VERSION,
    CertificateReloader,
    ServerTlsFiles,
    TlsConfigError,
    channel_credentials,
    server_credentials,
)
from driver_service.security.tokens import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    DEFAULT_LEEWAY_S,
    SCOPE_DISPATCH,
    SCOPE_FORGET,
    SCOPE_HISTORY,
    SCOPE_READ,
    SCOPE_WRITE,
    InvalidToken,
    Principal,
    TokenIssuer,
    TokenProblem,
    TokenValidator,
)

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "DEFAULT_LEEWAY_S",
    "ENFORCED_MIN_TLS_VERSION",
    "SCOPE_DISPATCH",
    "SCOPE_FORGET",
    "SCOPE_HISTORY",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "CertificateReloader",
    "InvalidToken",
    "Principal",
    "ServerTlsFiles",
    "TlsConfigError",
    "TokenIssuer",
    "TokenProblem",
    "TokenValidator",
    "channel_credentials",
    "server_credentials",
]
