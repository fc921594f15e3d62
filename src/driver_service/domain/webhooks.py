"""Webhook endpoints and the rules of delivering events to them (pure: no I/O).

An endpoint names an HTTPS URL, the events it wants (type globs, zones, drivers) and a secret.
Each event is POSTed as JSON signed by the Standard Webhooks scheme: headers `webhook-id`
(the event id, the same on every retry: receivers deduplicate by it), `webhook-timestamp`
(Unix seconds of this attempt) and `webhook-signature`, `v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` keyed by the base64-decoded part of `whsec_<base64>`; while a
rotated-out secret is still in its overlap, a second space-separated `v1,` signature made
with it is sent too, so receivers can switch secrets without dropping a delivery.

Delivery keeps each endpoint's order: one event in flight per endpoint, the endpoint's
cursor (the last event id done with) moves only after a 2xx, or after the event is set aside
as a dead letter once it has been failing for `max_age_s`. Retries wait an exponential
backoff with jitter; after `circuit_threshold` failures in a row the endpoint's circuit
opens: it is tried again only after `circuit_cooldown_s` (one probe; a success closes it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from driver_service.domain.errors import DomainError, InvalidInput
from driver_service.domain.events import EventType, LoggedEvent, parse_type_filter
from driver_service.domain.validation import validate_driver_id
from driver_service.domain.zones import validate_zone_id

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
#: Bytes of a generated secret; a given one must have at least MIN_SECRET_BYTES.
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_URL_LENGTH = 2048
MAX_FILTERS = 256
#: A test delivery's `webhook-id` (it is not an event of the log).
TEST_EVENT_TYPE = "webhook.test"


class WebhookNotFound(DomainError):
    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"no webhook {endpoint_id!r}")
        self.endpoint_id = endpoint_id


class WebhookExists(DomainError):
    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"webhook {endpoint_id!r} exists already")
        self.endpoint_id = endpoint_id


class ForbiddenTarget(InvalidInput):
    """A URL the server refuses to call (scheme, or an address that is not public)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered webhook and its delivery state (one row of the store)."""

    endpoint_id: str
    url: str
    types: tuple[str, ...]
    zone_ids: tuple[str, ...]
    driver_ids: tuple[str, ...]
    secret: str
    created_at_ns: int
    #: The rotated-out secret, still signed with until `previous_until_ns`; "" if none.
    previous_secret: str = ""
    previous_until_ns: int = 0
    paused: bool = False
    #: The last event id this endpoint is done with (delivered, skipped or dead-lettered).
    cursor: int = 0
    #: Failed attempts at the item at the head of the queue, and when the first one failed.
    attempts: int = 0
    first_failure_ns: int = 0
    next_attempt_ns: int = 0
    #: Failed attempts in a row, whatever the event: the circuit opens at the threshold.
    consecutive_failures: int = 0
    last_error: str = ""

    def matches(self, logged: LoggedEvent) -> bool:
        e = logged.event
        return (
            e.type in parse_type_filter(self.types)
            and (not self.zone_ids or e.zone_id in self.zone_ids)
            and (not self.driver_ids or e.driver_id in self.driver_ids)
        )

    def signing_secrets(self, now_ns: int) -> tuple[str, ...]:
        if self.previous_secret and now_ns < self.previous_until_ns:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    @property
    def secret_hint(self) -> str:
        return mask_secret(self.secret)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    endpoint_id: str
    event_id: int
    event_type: str
    attempts: int
    last_error: str
    failed_at_ns: int
    #: Queued for another delivery by an operator (Replay), ahead of the endpoint's cursor.
    replaying: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    timeout_s: float = 10.0
    max_age_s: float = 24 * 3600.0
    base_s: float = 1.0
    cap_s: float = 600.0
    circuit_threshold: int = 5
    circuit_cooldown_s: float = 60.0

    def backoff_s(self, attempts: int, rng: random.Random | None = None) -> float:
        """Wait before attempt `attempts + 1`: base * 2^(attempts-1), capped, with jitter
        (uniform in its upper half, so retries of many endpoints spread out)."""
        raw = min(self.cap_s, self.base_s * 2 ** max(0, min(attempts - 1, 40)))
        return float(raw * (0.5 + 0.5 * (rng or random).random()))


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; InvalidInput for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidInput(f"a webhook secret starts with {SECRET_PREFIX} (then base64)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("a webhook secret is whsec_ then standard base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise InvalidInput(f"a webhook secret needs at least {MIN_SECRET_BYTES} bytes of key")
    return key


def mask_secret(secret: str) -> str:
    """What the API shows of a secret: enough to tell two apart, never enough to sign."""
    return f"{SECRET_PREFIX}…{hashlib.sha256(secret.encode()).hexdigest()[:8]}"


def sign(secrets_: tuple[str, ...], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets_
    )


def delivery_headers(
    secrets_: tuple[str, ...], msg_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": sign(secrets_, msg_id, timestamp_s, body),
    }


def _rfc3339(ns: int) -> str:
    return (
        datetime.fromtimestamp(ns / 1e9, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def event_payload(logged: LoggedEvent) -> bytes:
    """The JSON body: `type`, `timestamp` (when logged) and `data`, the event as WatchEvents
    gives it in protobuf's JSON mapping (docs/events.md)."""
    e = logged.event
    data: dict[str, Any] = {
        "id": str(logged.event_id),
        "type": e.type.value,
        "driverId": e.driver_id,
        "time": _rfc3339(e.at_ns),
        "recordedAt": _rfc3339(logged.recorded_at_ns),
    }
    if e.zone_id:
        data["zoneId"] = e.zone_id
    if e.location is not None:
        loc = e.location
        data["location"] = {
            "latitude": loc.latitude,
            "longitude": loc.longitude,
            "speedMps": loc.speed_mps,
            "headingDegrees": loc.heading_degrees,
        }
    if e.old_status is not None:
        data["oldStatus"] = e.old_status.value
    if e.new_status is not None:
        data["newStatus"] = e.new_status.value
    if e.zone_deleted:
        data["zoneDeleted"] = True
    if e.zone_version:
        data["zoneVersion"] = str(e.zone_version)
    doc = {"type": e.type.value, "timestamp": data["recordedAt"], "data": data}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_payload(endpoint_id: str, now_ns: int) -> bytes:
    doc = {
        "type": TEST_EVENT_TYPE,
        "timestamp": _rfc3339(now_ns),
        "data": {"webhookId": endpoint_id},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def validate_url(url: str, allow_http: bool) -> str:
    """An absolute https:// URL (http:// only if allowed) with a host, no user info."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"webhook url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"webhook url {url!r} is malformed: {exc}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        hint = "" if allow_http else " (http:// only with the server's --webhook-allow-http)"
        raise ForbiddenTarget(f"webhook url must start with https://{hint}")
    if not parts.hostname:
        raise InvalidInput("webhook url has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("webhook url must not carry user info (user:password@)")
    if port == 0:
        raise InvalidInput("webhook url has port 0")
    return url


def refused_address(address: str) -> str | None:
    """Why an address is not a public one we may call (None: it is): loopback, link-local,
    private, unspecified, multicast and reserved ranges, IPv4-mapped IPv6 included."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(ip, f"is_{name}"):
            return f"{ip} is a {name.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def validate_filters(
    types: tuple[str, ...], zone_ids: tuple[str, ...], driver_ids: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    if max(len(types), len(zone_ids), len(driver_ids)) > MAX_FILTERS:
        raise InvalidInput(f"at most {MAX_FILTERS} types, zones and drivers each")
    parse_type_filter(types)  # InvalidInput for a pattern that matches no type
    return (
        tuple(types),
        tuple(validate_zone_id(z) for z in zone_ids),
        tuple(validate_driver_id(d) for d in driver_ids),
    )


__all__ = [
    "SECRET_PREFIX",
    "DeadLetter",
    "Endpoint",
    "EventType",
    "ForbiddenTarget",
    "RetryPolicy",
    "WebhookExists",
    "WebhookNotFound",
    "delivery_headers",
    "event_payload",
    "mask_secret",
    "new_secret",
    "refused_address",
    "secret_key",
    "sign",
    "test_payload",
    "validate_filters",
    "validate_url",
]
