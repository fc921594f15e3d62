"""Who may call what: every method of every service the server registers, and its rule, in
this one table, so a reviewer sees every authorization decision in one place. A method
without a rule is denied (interceptors/auth.py `admission`); health and reflection are not
here: they are exempt from auth by configuration (`--auth-exempt`), and driver.v1 services
can never be.

| method                                   | service token needs | driver token may call it for   |
|------------------------------------------|---------------------|--------------------------------|
| DriverService/GetDriver                  | drivers:read        | its own driver_id              |
| DriverService/StreamLocation             | drivers:read        | its own driver_id              |
| DriverService/UploadLocations            | drivers:write       | its own id, in every message   |
| DriverService/DriverSession              | drivers:write       | its own id, in every event     |
| DriverBatchService/GetDrivers            | drivers:read        | its own id only                |
| DriverBatchService/LookupDrivers         | drivers:read        | its own id only, every message |
| DriverBatchService/UploadLocationBatches | drivers:write       | its own id only, every update  |
| DispatchService/FindNearbyDrivers        | dispatch            | never                          |
| DispatchService/DescribeDriver           | dispatch            | never                          |
| DispatchService/SendCommand              | dispatch            | never                          |
| DispatchService/GetCommandStatus         | dispatch            | never                          |
| DispatchService/AnswerOffer              | drivers:write       | its own driver_id (and offer)  |
| ZoneService/CreateZone                   | zones               | never                          |
| ZoneService/GetZone                      | zones               | never                          |
| ZoneService/ListZones                    | zones               | never                          |
| ZoneService/UpdateZone                   | zones               | never                          |
| ZoneService/DeleteZone                   | zones               | never                          |
| EventService/WatchEvents                 | events              | its own driver's events only   |
| HistoryService/GetTrail                  | history:read        | its own driver_id              |
| HistoryService/GetTrips                  | history:read        | its own driver_id              |
| HistoryService/GetSummary                | history:read        | its own driver_id              |
| HistoryService/ForgetDriver              | drivers:forget      | never                          |
| WebhookService/* (all seven methods)     | webhooks            | never                          |

Routes of the HTTP front door that mirror no RPC are ruled here too (`HTTP_RULES`, by
"METHOD path"), so the table stays the one place:

| HTTP route                               | service token needs | driver token may call it for   |
|------------------------------------------|---------------------|--------------------------------|
| GET /v1/drivers (the fleet, paged)       | drivers:read        | never                          |
| GET /v1/fleet:stream (the fleet's moves) | drivers:read        | never                          |

A driver may read its own record (the driver app shows it) but never another driver's, and
answers only offers sent to it (the offer book also checks it is the offer's recipient).
A driver watching events may name only itself in `driver_ids`; the servicer then limits the
stream to its own driver whatever the request says.
History is more sensitive than the live position, so a service needs `history:read` for it
(drivers:read is not enough); a driver reads only its own history and never erases
anything; erasure has a scope of its own that no other method accepts.
Malformed ids name no driver: the handler answers them INVALID_ARGUMENT whatever the token.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from driver_service._gen.driver.v1 import (
    batch_pb2,
    dispatch_pb2,
    driver_pb2,
    events_pb2,
    history_pb2,
    webhooks_pb2,
    zones_pb2,
)
from driver_service.interceptors.auth import MethodRule, named_driver_id
from driver_service.security.tokens import (
    SCOPE_DISPATCH,
    SCOPE_EVENTS,
    SCOPE_FORGET,
    SCOPE_HISTORY,
    SCOPE_READ,
    SCOPE_WEBHOOKS,
    SCOPE_WRITE,
    SCOPE_ZONES,
)

DRIVER_SERVICE = driver_pb2.DESCRIPTOR.services_by_name["DriverService"]
BATCH_SERVICE = batch_pb2.DESCRIPTOR.services_by_name["DriverBatchService"]
DISPATCH_SERVICE = dispatch_pb2.DESCRIPTOR.services_by_name["DispatchService"]
ZONE_SERVICE = zones_pb2.DESCRIPTOR.services_by_name["ZoneService"]
EVENT_SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"]
HISTORY_SERVICE = history_pb2.DESCRIPTOR.services_by_name["HistoryService"]
WEBHOOK_SERVICE = webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"]
#: Every service of ours the server may register (DispatchService when dispatch is on).
SERVICES: tuple[ServiceDescriptor, ...] = (
    DRIVER_SERVICE,
    BATCH_SERVICE,
    DISPATCH_SERVICE,
    ZONE_SERVICE,
    EVENT_SERVICE,
    HISTORY_SERVICE,
    WEBHOOK_SERVICE,
)

#: Named by a message that acts for more than one driver: unguessable, so it equals no
#: token's `sub` and a driver token is refused (MethodRule extracts one id per message).
_SEVERAL_DRIVERS = "\x00several-drivers-" + secrets.token_hex(16)


def _field_driver_id(message: Any) -> str | None:
    return named_driver_id(message.driver_id)


def _event_driver_id(event: Any) -> str | None:
    kind = event.WhichOneof("event")
    if kind == "location":
        return named_driver_id(event.location.driver_id)
    if kind == "status_change":
        return named_driver_id(event.status_change.driver_id)
    return None


def _one_driver_id(ids: Iterable[str]) -> str | None:
    """The single driver a message acts for, None if it names none, or a value no driver
    token matches if it names several. Malformed ids name no driver: the handler refuses
    them as invalid, whatever the token. Only ids that differ from the first are validated
    here (a batch usually names one driver throughout)."""
    first: str | None = None
    for driver_id in ids:
        if driver_id == first or named_driver_id(driver_id) is None:
            continue
        if first is not None:
            return _SEVERAL_DRIVERS
        first = driver_id
    return first


def _lookup_driver_id(message: Any) -> str | None:
    return _one_driver_id(message.driver_ids)


def _batch_driver_id(message: Any) -> str | None:
    return _one_driver_id(update.driver_id for update in message.updates)


def method_path(service: ServiceDescriptor, method: str) -> str:
    """The path gRPC calls a method by: `/driver.v1.DriverService/GetDriver`."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


#: The table as written: (service, method, rule), one line a method.
ENTRIES: tuple[tuple[ServiceDescriptor, str, MethodRule], ...] = (
    (DRIVER_SERVICE, "GetDriver", MethodRule(SCOPE_READ, _field_driver_id)),
    (DRIVER_SERVICE, "StreamLocation", MethodRule(SCOPE_READ, _field_driver_id)),
    (DRIVER_SERVICE, "UploadLocations", MethodRule(SCOPE_WRITE, _field_driver_id)),
    (DRIVER_SERVICE, "DriverSession", MethodRule(SCOPE_WRITE, _event_driver_id)),
    (BATCH_SERVICE, "GetDrivers", MethodRule(SCOPE_READ, _lookup_driver_id)),
    (BATCH_SERVICE, "LookupDrivers", MethodRule(SCOPE_READ, _lookup_driver_id)),
    (BATCH_SERVICE, "UploadLocationBatches", MethodRule(SCOPE_WRITE, _batch_driver_id)),
    (DISPATCH_SERVICE, "FindNearbyDrivers", MethodRule(SCOPE_DISPATCH)),
    (DISPATCH_SERVICE, "DescribeDriver", MethodRule(SCOPE_DISPATCH)),
    (DISPATCH_SERVICE, "SendCommand", MethodRule(SCOPE_DISPATCH)),
    (DISPATCH_SERVICE, "GetCommandStatus", MethodRule(SCOPE_DISPATCH)),
    (DISPATCH_SERVICE, "AnswerOffer", MethodRule(SCOPE_WRITE, _field_driver_id)),
    (ZONE_SERVICE, "CreateZone", MethodRule(SCOPE_ZONES)),
    (ZONE_SERVICE, "GetZone", MethodRule(SCOPE_ZONES)),
    (ZONE_SERVICE, "ListZones", MethodRule(SCOPE_ZONES)),
    (ZONE_SERVICE, "UpdateZone", MethodRule(SCOPE_ZONES)),
    (ZONE_SERVICE, "DeleteZone", MethodRule(SCOPE_ZONES)),
    (EVENT_SERVICE, "WatchEvents", MethodRule(SCOPE_EVENTS, _lookup_driver_id)),
    (HISTORY_SERVICE, "GetTrail", MethodRule(SCOPE_HISTORY, _field_driver_id)),
    (HISTORY_SERVICE, "GetTrips", MethodRule(SCOPE_HISTORY, _field_driver_id)),
    (HISTORY_SERVICE, "GetSummary", MethodRule(SCOPE_HISTORY, _field_driver_id)),
    (HISTORY_SERVICE, "ForgetDriver", MethodRule(SCOPE_FORGET)),
    (WEBHOOK_SERVICE, "AddWebhook", MethodRule(SCOPE_WEBHOOKS)),
    (WEBHOOK_SERVICE, "ListWebhooks", MethodRule(SCOPE_WEBHOOKS)),
    (WEBHOOK_SERVICE, "RemoveWebhook", MethodRule(SCOPE_WEBHOOKS)),
    (WEBHOOK_SERVICE, "TestWebhook", MethodRule(SCOPE_WEBHOOKS)),
    (WEBHOOK_SERVICE, "ListDeadLetters", MethodRule(SCOPE_WEBHOOKS)),
    (WEBHOOK_SERVICE, "Replay", MethodRule(SCOPE_WEBHOOKS)),
    (WEBHOOK_SERVICE, "RotateSecret", MethodRule(SCOPE_WEBHOOKS)),
)

#: The rules by method path, as the AuthPolicy looks them up.
RULES: Mapping[str, MethodRule] = {
    method_path(service, method): rule for service, method, rule in ENTRIES
}

#: HTTP routes that mirror no RPC (http/app.py), by "METHOD path": the fleet listing and the
#: fleet's live feed show every driver, so a driver token never gets them.
HTTP_ENTRIES: tuple[tuple[str, MethodRule], ...] = (
    ("GET /v1/drivers", MethodRule(SCOPE_READ)),
    ("GET /v1/fleet:stream", MethodRule(SCOPE_READ)),
)
HTTP_RULES: Mapping[str, MethodRule] = dict(HTTP_ENTRIES)
