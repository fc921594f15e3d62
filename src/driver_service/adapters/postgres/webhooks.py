"""WebhookStore on PostgreSQL, shared by every replica. An endpoint's delivery is leased to
one replica at a time: `claim_endpoints` locks due rows with FOR UPDATE SKIP LOCKED (replicas
claiming at once take different rows, never wait for each other) and stamps them with the
owner and a lease expiry; a replica that dies stops renewing, and once its lease has expired
another claims the endpoint. Every write of delivery state names the owner, so a replica that
stalled past its lease finds its write refused instead of moving a cursor it lost."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from driver_service.adapters.postgres.repository import PostgresRepository
from driver_service.domain.webhooks import DeadLetter, Endpoint, WebhookExists, WebhookNotFound

_COLUMNS = (
    "endpoint_id, url, types, zone_ids, driver_ids, secret, previous_secret,"
    " previous_until_ns, created_at_ns, paused, cursor, attempts, first_failure_ns,"
    " next_attempt_ns, consecutive_failures, last_error"
)
_SELECT = f"SELECT {_COLUMNS} FROM webhook_endpoints"  # noqa: S608
_PROGRESS = (
    "UPDATE webhook_endpoints SET cursor = $1, attempts = $2, first_failure_ns = $3,"
    " next_attempt_ns = $4, consecutive_failures = $5, last_error = $6, lease_until_ns = $7"
    " WHERE endpoint_id = $8 AND lease_owner = $9"
)
_LETTER_COLUMNS = "endpoint_id, event_id, event_type, attempts, last_error, failed_at_ns, replaying"
_CLAIM = (
    "UPDATE webhook_endpoints SET lease_owner = $1, lease_until_ns = $3"  # noqa: S608
    " WHERE endpoint_id IN ("
    " SELECT endpoint_id FROM webhook_endpoints e WHERE NOT paused AND next_attempt_ns <= $2"
    " AND (lease_owner = '' OR lease_until_ns < $2)"
    " AND (cursor < $4 OR EXISTS (SELECT 1 FROM webhook_dead_letters d"
    " WHERE d.endpoint_id = e.endpoint_id AND d.replaying))"
    " ORDER BY next_attempt_ns LIMIT $5 FOR UPDATE SKIP LOCKED)"
    f" RETURNING {_COLUMNS}"
)


def _endpoint(row: Any) -> Endpoint:
    (eid, url, types, zones, drivers, secret, prev, prev_until, created, paused, cursor,
     attempts, first_failure, next_attempt, failures, error) = tuple(row)  # fmt: skip
    return Endpoint(
        eid, url, tuple(json.loads(types)), tuple(json.loads(zones)), tuple(json.loads(drivers)),
        secret, created, prev, prev_until, bool(paused), cursor, attempts, first_failure,
        next_attempt, failures, error,
    )  # fmt: skip


def _letter(row: Any) -> DeadLetter:
    eid, event_id, kind, attempts, error, failed_at, replaying = tuple(row)
    return DeadLetter(eid, event_id, kind, attempts, error, failed_at, bool(replaying))


def _progress_values(e: Endpoint, owner: str, lease_until_ns: int) -> tuple[object, ...]:
    return (
        e.cursor, e.attempts, e.first_failure_ns, e.next_attempt_ns, e.consecutive_failures,
        e.last_error, lease_until_ns, e.endpoint_id, owner,
    )  # fmt: skip


class PostgresWebhookStore:
    def __init__(self, repository: PostgresRepository) -> None:
        self._pool = repository.pool
        self._guard = repository.guard

    async def open(self) -> PostgresWebhookStore:
        return self

    async def add_endpoint(self, endpoint: Endpoint) -> None:
        e = endpoint
        status = await self._guard.call(
            lambda: self._pool.execute(
                f"INSERT INTO webhook_endpoints ({_COLUMNS}) VALUES"  # noqa: S608
                " ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
                " ON CONFLICT (endpoint_id) DO NOTHING",
                e.endpoint_id,
                e.url,
                json.dumps(e.types),
                json.dumps(e.zone_ids),
                json.dumps(e.driver_ids),
                e.secret,
                e.previous_secret,
                e.previous_until_ns,
                e.created_at_ns,
                e.paused,
                e.cursor,
                e.attempts,
                e.first_failure_ns,
                e.next_attempt_ns,
                e.consecutive_failures,
                e.last_error,
            )
        )
        if status.endswith(" 0"):
            raise WebhookExists(e.endpoint_id)

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        row = await self._guard.call(
            lambda: self._pool.fetchrow(f"{_SELECT} WHERE endpoint_id = $1", endpoint_id)
        )
        if row is None:
            raise WebhookNotFound(endpoint_id)
        return _endpoint(row)

    async def list_endpoints(self) -> list[Endpoint]:
        rows = await self._guard.call(lambda: self._pool.fetch(f"{_SELECT} ORDER BY endpoint_id"))
        return [_endpoint(r) for r in rows]

    async def remove_endpoint(self, endpoint_id: str) -> None:
        async def remove() -> str:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute(
                    "DELETE FROM webhook_dead_letters WHERE endpoint_id = $1", endpoint_id
                )
                status: str = await con.execute(
                    "DELETE FROM webhook_endpoints WHERE endpoint_id = $1", endpoint_id
                )
                return status

        if (await self._guard.call(remove)).endswith(" 0"):
            raise WebhookNotFound(endpoint_id)

    async def _update_returning(self, sql: str, *args: object) -> Endpoint:
        row = await self._guard.call(lambda: self._pool.fetchrow(sql, *args))
        if row is None:
            raise WebhookNotFound(str(args[-1]))
        return _endpoint(row)

    async def set_secret(
        self, endpoint_id: str, secret: str, previous: str, previous_until_ns: int
    ) -> Endpoint:
        return await self._update_returning(
            "UPDATE webhook_endpoints SET secret = $1, previous_secret = $2,"  # noqa: S608
            f" previous_until_ns = $3 WHERE endpoint_id = $4 RETURNING {_COLUMNS}",
            secret, previous, previous_until_ns, endpoint_id,
        )  # fmt: skip

    async def set_paused(self, endpoint_id: str, paused: bool) -> Endpoint:
        return await self._update_returning(
            "UPDATE webhook_endpoints SET paused = $1, next_attempt_ns = 0,"  # noqa: S608
            f" consecutive_failures = 0 WHERE endpoint_id = $2 RETURNING {_COLUMNS}",
            paused, endpoint_id,
        )  # fmt: skip

    async def claim_endpoints(
        self, owner: str, now_ns: int, lease_until_ns: int, head: int, limit: int
    ) -> list[Endpoint]:
        rows = await self._guard.call(
            lambda: self._pool.fetch(_CLAIM, owner, now_ns, lease_until_ns, head, limit)
        )
        return [_endpoint(r) for r in rows]

    async def save_progress(self, endpoint: Endpoint, owner: str, lease_until_ns: int) -> bool:
        values = _progress_values(endpoint, owner, lease_until_ns)
        status = await self._guard.call(lambda: self._pool.execute(_PROGRESS, *values))
        return bool(status.endswith(" 1"))

    async def dead_letter(
        self, endpoint: Endpoint, owner: str, letter: DeadLetter, lease_until_ns: int
    ) -> bool:
        values = _progress_values(endpoint, owner, lease_until_ns)
        d = letter

        async def write() -> bool:
            async with self._pool.acquire() as con, con.transaction():
                if not (await con.execute(_PROGRESS, *values)).endswith(" 1"):
                    return False
                await con.execute(
                    f"INSERT INTO webhook_dead_letters ({_LETTER_COLUMNS})"  # noqa: S608
                    " VALUES ($1,$2,$3,$4,$5,$6,false) ON CONFLICT (endpoint_id, event_id)"
                    " DO UPDATE SET attempts = excluded.attempts,"
                    " last_error = excluded.last_error, failed_at_ns = excluded.failed_at_ns,"
                    " replaying = false",
                    d.endpoint_id, d.event_id, d.event_type, d.attempts, d.last_error,
                    d.failed_at_ns,
                )  # fmt: skip
                return True

        return bool(await self._guard.call(write))

    async def release(self, endpoint_id: str, owner: str) -> None:
        await self._guard.call(
            lambda: self._pool.execute(
                "UPDATE webhook_endpoints SET lease_owner = '', lease_until_ns = 0"
                " WHERE endpoint_id = $1 AND lease_owner = $2",
                endpoint_id,
                owner,
            )
        )

    async def list_dead_letters(
        self, endpoint_id: str, after_event_id: int, limit: int
    ) -> list[DeadLetter]:
        await self.get_endpoint(endpoint_id)
        rows = await self._guard.call(
            lambda: self._pool.fetch(
                f"SELECT {_LETTER_COLUMNS} FROM webhook_dead_letters"  # noqa: S608
                " WHERE endpoint_id = $1 AND event_id > $2 ORDER BY event_id LIMIT $3",
                endpoint_id,
                after_event_id,
                limit,
            )
        )
        return [_letter(r) for r in rows]

    async def replay_dead_letters(self, endpoint_id: str, event_ids: Sequence[int]) -> int:
        ids = list(event_ids)

        async def replay() -> int:
            async with self._pool.acquire() as con, con.transaction():
                found = await con.execute(
                    "UPDATE webhook_endpoints SET next_attempt_ns = 0, consecutive_failures = 0"
                    " WHERE endpoint_id = $1",
                    endpoint_id,
                )
                if found.endswith(" 0"):
                    raise WebhookNotFound(endpoint_id)
                status: str = await con.execute(
                    "UPDATE webhook_dead_letters SET replaying = true WHERE endpoint_id = $1"
                    " AND (cardinality($2::bigint[]) = 0 OR event_id = ANY($2::bigint[]))",
                    endpoint_id,
                    ids,
                )
                return int(status.rsplit(" ", 1)[-1])

        return int(await self._guard.call(replay))

    async def next_replay(self, endpoint_id: str) -> DeadLetter | None:
        row = await self._guard.call(
            lambda: self._pool.fetchrow(
                f"SELECT {_LETTER_COLUMNS} FROM webhook_dead_letters"  # noqa: S608
                " WHERE endpoint_id = $1 AND replaying ORDER BY event_id LIMIT 1",
                endpoint_id,
            )
        )
        return None if row is None else _letter(row)

    async def replayed(
        self, endpoint: Endpoint, owner: str, event_id: int, lease_until_ns: int
    ) -> bool:
        values = _progress_values(endpoint, owner, lease_until_ns)

        async def write() -> bool:
            async with self._pool.acquire() as con, con.transaction():
                if not (await con.execute(_PROGRESS, *values)).endswith(" 1"):
                    return False
                await con.execute(
                    "DELETE FROM webhook_dead_letters WHERE endpoint_id = $1 AND event_id = $2",
                    endpoint.endpoint_id,
                    event_id,
                )
                return True

        return bool(await self._guard.call(write))

    async def dead_letter_count(self) -> int:
        value = await self._guard.call(
            lambda: self._pool.fetchval("SELECT count(*) FROM webhook_dead_letters")
        )
        return int(value or 0)
