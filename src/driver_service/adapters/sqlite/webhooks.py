"""WebhookStore on the SQLite file of a SqliteRepository (its one writer thread). One process
owns the file, so leases only matter to that process's delivery loop; they are cleared when
the store opens (a crashed process's leases die with it)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from driver_service.adapters.sqlite.repository import SqliteRepository
from driver_service.domain.webhooks import DeadLetter, Endpoint, WebhookExists, WebhookNotFound

_COLUMNS = (
    "endpoint_id, url, types, zone_ids, driver_ids, secret, previous_secret,"
    " previous_until_ns, created_at_ns, paused, cursor, attempts, first_failure_ns,"
    " next_attempt_ns, consecutive_failures, last_error"
)
_SELECT = f"SELECT {_COLUMNS} FROM webhook_endpoints"  # noqa: S608
_PROGRESS = (
    "UPDATE webhook_endpoints SET cursor = ?, attempts = ?, first_failure_ns = ?,"
    " next_attempt_ns = ?, consecutive_failures = ?, last_error = ?, lease_until_ns = ?"
    " WHERE endpoint_id = ? AND lease_owner = ?"
)
_LETTER_COLUMNS = "endpoint_id, event_id, event_type, attempts, last_error, failed_at_ns, replaying"


def _endpoint(row: Any) -> Endpoint:
    (eid, url, types, zones, drivers, secret, prev, prev_until, created, paused, cursor,
     attempts, first_failure, next_attempt, failures, error) = row  # fmt: skip
    return Endpoint(
        eid, url, tuple(json.loads(types)), tuple(json.loads(zones)), tuple(json.loads(drivers)),
        secret, created, prev, prev_until, bool(paused), cursor, attempts, first_failure,
        next_attempt, failures, error,
    )  # fmt: skip


def _letter(row: Any) -> DeadLetter:
    eid, event_id, kind, attempts, error, failed_at, replaying = row
    return DeadLetter(eid, event_id, kind, attempts, error, failed_at, bool(replaying))


def _progress_values(e: Endpoint, owner: str, lease_until_ns: int) -> tuple[object, ...]:
    return (
        e.cursor, e.attempts, e.first_failure_ns, e.next_attempt_ns, e.consecutive_failures,
        e.last_error, lease_until_ns, e.endpoint_id, owner,
    )  # fmt: skip


class SqliteWebhookStore:
    def __init__(self, repository: SqliteRepository) -> None:
        self._repo = repository

    async def open(self) -> SqliteWebhookStore:
        await self._repo.run_transaction(
            lambda con: con.execute("UPDATE webhook_endpoints SET lease_owner = ''")
        )
        return self

    async def add_endpoint(self, endpoint: Endpoint) -> None:
        e = endpoint

        def body(con: sqlite3.Connection) -> None:
            taken = con.execute(
                "SELECT 1 FROM webhook_endpoints WHERE endpoint_id = ?", (e.endpoint_id,)
            ).fetchone()
            if taken is not None:
                raise WebhookExists(e.endpoint_id)
            con.execute(
                f"INSERT INTO webhook_endpoints ({_COLUMNS}) VALUES"  # noqa: S608
                " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    e.endpoint_id, e.url, json.dumps(e.types), json.dumps(e.zone_ids),
                    json.dumps(e.driver_ids), e.secret, e.previous_secret, e.previous_until_ns,
                    e.created_at_ns, int(e.paused), e.cursor, e.attempts, e.first_failure_ns,
                    e.next_attempt_ns, e.consecutive_failures, e.last_error,
                ),
            )  # fmt: skip

        await self._repo.run_transaction(body)

    @staticmethod
    def _get(con: sqlite3.Connection, endpoint_id: str) -> Endpoint:
        row = con.execute(f"{_SELECT} WHERE endpoint_id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise WebhookNotFound(endpoint_id)
        return _endpoint(row)

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return await self._repo.run(lambda con: self._get(con, endpoint_id))

    async def list_endpoints(self) -> list[Endpoint]:
        return await self._repo.run(
            lambda con: [_endpoint(r) for r in con.execute(f"{_SELECT} ORDER BY endpoint_id")]
        )

    async def remove_endpoint(self, endpoint_id: str) -> None:
        def body(con: sqlite3.Connection) -> None:
            self._get(con, endpoint_id)
            con.execute("DELETE FROM webhook_endpoints WHERE endpoint_id = ?", (endpoint_id,))
            con.execute("DELETE FROM webhook_dead_letters WHERE endpoint_id = ?", (endpoint_id,))

        await self._repo.run_transaction(body)

    async def set_secret(
        self, endpoint_id: str, secret: str, previous: str, previous_until_ns: int
    ) -> Endpoint:
        def body(con: sqlite3.Connection) -> Endpoint:
            self._get(con, endpoint_id)
            con.execute(
                "UPDATE webhook_endpoints SET secret = ?, previous_secret = ?,"
                " previous_until_ns = ? WHERE endpoint_id = ?",
                (secret, previous, previous_until_ns, endpoint_id),
            )
            return self._get(con, endpoint_id)

        return await self._repo.run_transaction(body)

    async def set_paused(self, endpoint_id: str, paused: bool) -> Endpoint:
        def body(con: sqlite3.Connection) -> Endpoint:
            self._get(con, endpoint_id)
            con.execute(
                "UPDATE webhook_endpoints SET paused = ?, next_attempt_ns = 0,"
                " consecutive_failures = 0 WHERE endpoint_id = ?",
                (int(paused), endpoint_id),
            )
            return self._get(con, endpoint_id)

        return await self._repo.run_transaction(body)

    async def claim_endpoints(
        self, owner: str, now_ns: int, lease_until_ns: int, head: int, limit: int
    ) -> list[Endpoint]:
        def body(con: sqlite3.Connection) -> list[Endpoint]:
            rows = con.execute(
                f"{_SELECT} WHERE paused = 0 AND next_attempt_ns <= ?"  # noqa: S608
                " AND (lease_owner = '' OR lease_until_ns < ?)"
                " AND (cursor < ? OR EXISTS (SELECT 1 FROM webhook_dead_letters d"
                " WHERE d.endpoint_id = webhook_endpoints.endpoint_id AND d.replaying = 1))"
                " ORDER BY next_attempt_ns LIMIT ?",
                (now_ns, now_ns, head, limit),
            ).fetchall()
            claimed = [_endpoint(r) for r in rows]
            if claimed:  # one writer thread: nothing ran between the read and this write
                self._repo.transaction(
                    lambda c: c.executemany(
                        "UPDATE webhook_endpoints SET lease_owner = ?, lease_until_ns = ?"
                        " WHERE endpoint_id = ?",
                        [(owner, lease_until_ns, e.endpoint_id) for e in claimed],
                    )
                )
            return claimed

        # A read when there is no work (the common case): no write transaction, no fsync.
        return await self._repo.run(body)

    async def save_progress(self, endpoint: Endpoint, owner: str, lease_until_ns: int) -> bool:
        values = _progress_values(endpoint, owner, lease_until_ns)
        return await self._repo.run_transaction(
            lambda con: con.execute(_PROGRESS, values).rowcount == 1
        )

    async def dead_letter(
        self, endpoint: Endpoint, owner: str, letter: DeadLetter, lease_until_ns: int
    ) -> bool:
        values = _progress_values(endpoint, owner, lease_until_ns)
        d = letter

        def body(con: sqlite3.Connection) -> bool:
            if con.execute(_PROGRESS, values).rowcount != 1:
                return False
            con.execute(
                f"INSERT OR REPLACE INTO webhook_dead_letters ({_LETTER_COLUMNS})"  # noqa: S608
                " VALUES (?,?,?,?,?,?,0)",
                (d.endpoint_id, d.event_id, d.event_type, d.attempts, d.last_error,
                 d.failed_at_ns),
            )  # fmt: skip
            return True

        return await self._repo.run_transaction(body)

    async def release(self, endpoint_id: str, owner: str) -> None:
        await self._repo.run_transaction(
            lambda con: con.execute(
                "UPDATE webhook_endpoints SET lease_owner = '', lease_until_ns = 0"
                " WHERE endpoint_id = ? AND lease_owner = ?",
                (endpoint_id, owner),
            )
        )

    async def list_dead_letters(
        self, endpoint_id: str, after_event_id: int, limit: int
    ) -> list[DeadLetter]:
        def query(con: sqlite3.Connection) -> list[DeadLetter]:
            self._get(con, endpoint_id)
            rows = con.execute(
                f"SELECT {_LETTER_COLUMNS} FROM webhook_dead_letters"  # noqa: S608
                " WHERE endpoint_id = ? AND event_id > ? ORDER BY event_id LIMIT ?",
                (endpoint_id, after_event_id, limit),
            )
            return [_letter(r) for r in rows]

        return await self._repo.run(query)

    async def replay_dead_letters(self, endpoint_id: str, event_ids: Sequence[int]) -> int:
        ids = list(event_ids)

        def body(con: sqlite3.Connection) -> int:
            self._get(con, endpoint_id)
            if ids:
                marks = ",".join("?" * len(ids))
                count = con.execute(
                    "UPDATE webhook_dead_letters SET replaying = 1"  # noqa: S608
                    f" WHERE endpoint_id = ? AND event_id IN ({marks})",
                    (endpoint_id, *ids),
                ).rowcount
            else:
                count = con.execute(
                    "UPDATE webhook_dead_letters SET replaying = 1 WHERE endpoint_id = ?",
                    (endpoint_id,),
                ).rowcount
            con.execute(
                "UPDATE webhook_endpoints SET next_attempt_ns = 0, consecutive_failures = 0"
                " WHERE endpoint_id = ?",
                (endpoint_id,),
            )
            return int(count)

        return await self._repo.run_transaction(body)

    async def next_replay(self, endpoint_id: str) -> DeadLetter | None:
        def query(con: sqlite3.Connection) -> DeadLetter | None:
            row = con.execute(
                f"SELECT {_LETTER_COLUMNS} FROM webhook_dead_letters"  # noqa: S608
                " WHERE endpoint_id = ? AND replaying = 1 ORDER BY event_id LIMIT 1",
                (endpoint_id,),
            ).fetchone()
            return None if row is None else _letter(row)

        return await self._repo.run(query)

    async def replayed(
        self, endpoint: Endpoint, owner: str, event_id: int, lease_until_ns: int
    ) -> bool:
        values = _progress_values(endpoint, owner, lease_until_ns)

        def body(con: sqlite3.Connection) -> bool:
            if con.execute(_PROGRESS, values).rowcount != 1:
                return False
            con.execute(
                "DELETE FROM webhook_dead_letters WHERE endpoint_id = ? AND event_id = ?",
                (endpoint.endpoint_id, event_id),
            )
            return True

        return await self._repo.run_transaction(body)

    async def dead_letter_count(self) -> int:
        return await self._repo.run(
            lambda con: int(con.execute("SELECT count(*) FROM webhook_dead_letters").fetchone()[0])
        )
