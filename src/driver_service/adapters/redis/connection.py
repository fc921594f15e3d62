"""One Redis for every Redis adapter: the client that fails fast, the guard they share, and
the key prefix every key and channel starts with."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from driver_service.resilience.guard import DependencyGuard

DEFAULT_PREFIX = "ds:"
#: Bound of one Redis operation (`--redis-timeout`): far above a healthy round trip (well
#: under a millisecond), far below a caller's deadline.
DEFAULT_TIMEOUT_S = 0.5


def create_redis_client(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Redis:
    """A client for the bus and live state whose calls fail fast when Redis is away.

    redis-py's default retries a failed call 10 times with up to 1 s between tries; on the
    ingest path that would stall every commit behind an outage, so retry once, briefly. The
    socket timeouts are a backstop: callers bound whole operations with a `redis_guard`.
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), retries=1),
        health_check_interval=30,
    )


def redis_guard(
    client: Redis, timeout_s: float = DEFAULT_TIMEOUT_S, *, probe_every_s: float = 0.2
) -> DependencyGuard:
    """One guard per Redis, shared by live state, the bus, the index and the command router:
    when one of them finds Redis hung, all of them skip it until a PING answers again.

    Cancelling a redis-py call mid-flight is safe for its pool: the connection is
    disconnected (never handed out again with a reply still pending) and reconnects on its
    next use (tests/integration/test_hung_dependencies.py proves it).
    """
    return DependencyGuard(
        "redis",
        timeout_s,
        client.ping,
        failures=(RedisError, OSError),
        probe_every_s=probe_every_s,
        message="live state is unavailable; retry shortly",
    )
