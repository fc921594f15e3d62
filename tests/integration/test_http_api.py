"""The HTTP front door over real HTTPS with real tokens: every resource, the error mapping,
the limits, and authorization identical to gRPC's for each mirrored method."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import json_format

from driver_service._gen.driver.v1 import dispatch_pb2 as dpb
from driver_service._gen.driver.v1 import dispatch_pb2_grpc as dpb_grpc
from driver_service._gen.driver.v1 import driver_pb2 as pb
from driver_service._gen.driver.v1 import driver_pb2_grpc as pb_grpc
from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service._gen.driver.v1 import zones_pb2 as zpb
from driver_service._gen.driver.v1 import zones_pb2_grpc as zpb_grpc
from driver_service.http.openapi import document
from driver_service.security.tokens import SCOPE_READ
from tests.helpers.http_server import HttpFixture, http_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[HttpFixture]:
    async with http_server(tmp_path) as fixture:
        yield fixture


def loc(driver_id: str = "", lat: float = 52.52, lon: float = 13.405, **more: Any) -> dict:
    return {"driverId": driver_id, "latitude": lat, "longitude": lon, **more} if driver_id else {
        "latitude": lat, "longitude": lon, **more}  # fmt: skip


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    assert body["code"] == response.status_code
    return response.status_code, body["status"], body["message"]


async def test_get_driver_matches_grpc_field_for_field(door: HttpFixture) -> None:
    token = door.token()
    async with door.client(token) as http:
        r = await http.post("/v1/drivers/drv-1:uploadLocations", json={"locations": [loc()]})
        assert r.status_code == 200, r.text
        assert r.json()["receivedCount"] == 1
        assert r.json()["persistedCount"] == 1
        r = await http.get("/v1/drivers/drv-1")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-request-id"]
    async with door.channel() as channel:
        reply = await pb_grpc.DriverServiceStub(channel).GetDriver(
            pb.GetDriverRequest(driver_id="drv-1"), metadata=door.metadata(token)
        )
    expected = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)
    assert r.json() == expected
    assert set(expected) == {"driverId", "status", "latitude", "longitude", "lastSeenAt"}


async def test_a_kept_alive_connection_answers_without_the_delayed_ack_stall(
    door: HttpFixture,
) -> None:
    """The HTTP door's connections have TCP_NODELAY: without it a response written in two
    pieces waits for the client's delayed ACK, ~40 ms a request on Linux (it did, once)."""
    async with door.client(door.token()) as http:
        r = await http.post("/v1/drivers/drv-nd:uploadLocations", json={"locations": [loc()]})
        assert r.status_code == 200, r.text
        took = []
        for _ in range(21):
            t0 = time.monotonic()
            assert (await http.get("/v1/drivers/drv-nd")).status_code == 200
            took.append(time.monotonic() - t0)
    assert sorted(took)[10] < 0.025, sorted(took)


async def test_errors_carry_the_grpc_code_its_http_status_and_the_same_message(
    door: HttpFixture,
) -> None:
    token = door.token()
    async with door.client(token) as http, door.channel() as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        for driver_id, status in (("nobody", 404), ("bad id!", 400)):
            r = await http.get(f"/v1/drivers/{driver_id}")
            with pytest.raises(grpc.aio.AioRpcError) as grpc_error:
                await stub.GetDriver(
                    pb.GetDriverRequest(driver_id=driver_id), metadata=door.metadata(token)
                )
            code = grpc_error.value.code()
            assert error_of(r) == (status, code.name, grpc_error.value.details())


async def test_tokens_are_required_and_checked(door: HttpFixture) -> None:
    async with door.client() as http:
        r = await http.get("/v1/drivers/drv-1")
        assert error_of(r)[:2] == (401, "UNAUTHENTICATED")
        assert r.headers["www-authenticate"] == "Bearer"
        r = await http.get("/v1/drivers/drv-1", headers={"authorization": "Bearer nonsense"})
        assert error_of(r)[:2] == (401, "UNAUTHENTICATED")
        r = await http.get("/v1/drivers/drv-1", headers={"authorization": "Basic eDp5"})
        assert error_of(r)[:2] == (401, "UNAUTHENTICATED")


# (name, HTTP call, gRPC call) for each mirrored method: both must answer the same code.
async def _http_call(http: Any, name: str) -> int:
    calls = {
        "GetDriver": lambda: http.get("/v1/drivers/drv-a"),
        "FindNearbyDrivers": lambda: http.get(
            "/v1/drivers:nearby", params={"latitude": 52.5, "longitude": 13.4, "radius_m": 1000}
        ),
        "UploadLocations": lambda: http.post(
            "/v1/drivers/drv-a:uploadLocations", json={"locations": [loc()]}
        ),
        "SetStatus": lambda: http.post("/v1/drivers/drv-a:setStatus", json={"newStatus": "BUSY"}),
        "GetTrail": lambda: http.get(
            "/v1/drivers/drv-a/trail",
            params={"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"},
        ),
        "ListZones": lambda: http.get("/v1/zones"),
    }
    r = await calls[name]()
    return r.status_code


async def _grpc_call(channel: grpc.aio.Channel, md: Any, name: str) -> grpc.StatusCode:
    stub = pb_grpc.DriverServiceStub(channel)

    async def upload() -> Any:
        async def one() -> AsyncIterator[pb.LocationUpdate]:
            yield pb.LocationUpdate(driver_id="drv-a", latitude=52.52, longitude=13.405)

        return await stub.UploadLocations(one(), metadata=md)

    async def status() -> Any:
        async def events() -> AsyncIterator[pb.DriverEvent]:
            yield pb.DriverEvent(
                status_change=pb.DriverStatusChange(driver_id="drv-a", new_status="BUSY")
            )

        async for _ in stub.DriverSession(events(), metadata=md):
            pass

    trail = hpb.GetTrailRequest(driver_id="drv-a")
    trail.since.FromJsonString("2026-01-01T00:00:00Z")
    trail.until.FromJsonString("2026-01-02T00:00:00Z")

    async def get_trail() -> Any:
        async for _ in hpb_grpc.HistoryServiceStub(channel).GetTrail(trail, metadata=md):
            pass

    calls = {
        "GetDriver": lambda: stub.GetDriver(pb.GetDriverRequest(driver_id="drv-a"), metadata=md),
        "FindNearbyDrivers": lambda: dpb_grpc.DispatchServiceStub(channel).FindNearbyDrivers(
            dpb.FindNearbyDriversRequest(latitude=52.5, longitude=13.4, radius_m=1000),
            metadata=md,
        ),
        "UploadLocations": upload,
        "SetStatus": status,
        "GetTrail": get_trail,
        "ListZones": lambda: zpb_grpc.ZoneServiceStub(channel).ListZones(
            zpb.ListZonesRequest(), metadata=md
        ),
    }
    try:
        await calls[name]()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_authorization_is_identical_to_grpc_for_every_mirrored_method(
    door: HttpFixture,
) -> None:
    from driver_service.http.errors import HTTP_STATUS

    tokens = {
        "all scopes": door.token(),
        "drivers:read only": door.token([SCOPE_READ]),
        "no scope": door.token([]),
        "driver itself": door.driver_token("drv-a"),
        "another driver": door.driver_token("drv-b"),
    }
    async with door.client(door.token()) as http:  # drv-a exists
        await http.post("/v1/drivers/drv-a:uploadLocations", json={"locations": [loc()]})
    methods = ("GetDriver", "FindNearbyDrivers", "UploadLocations", "SetStatus", "GetTrail",
               "ListZones")  # fmt: skip
    seen_codes = set()
    async with door.channel() as channel:
        for who, token in tokens.items():
            async with door.client(token) as http:
                for method in methods:
                    code = await _grpc_call(channel, door.metadata(token), method)
                    status = await _http_call(http, method)
                    seen_codes.add(code)
                    assert status == HTTP_STATUS[code], (who, method, status, code)
    assert {grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED} <= seen_codes


async def test_nearby_upload_counts_and_status(door: HttpFixture) -> None:
    async with door.client(door.token()) as http:
        now = time.time()
        r = await http.post(
            "/v1/locations:batchUpload",
            json={
                "locations": [
                    loc("drv-n1", 52.52, 13.405),
                    loc("drv-n2", 52.53, 13.41),
                    loc("drv-n3", 95.0, 13.41),  # invalid latitude: received, not persisted
                    loc("drv-n1", 52.521, 13.406, timestamp=_rfc3339(now + 1)),
                ]
            },
        )
        assert r.status_code == 200, r.text
        summary = r.json()
        assert (summary["receivedCount"], summary["persistedCount"]) == (4, 3)
        assert summary["sessionId"].startswith("upl-")
        r = await http.get(
            "/v1/drivers:nearby",
            params={"latitude": 52.52, "longitude": 13.405, "radiusM": 5000, "limit": 10},
        )
        assert r.status_code == 200, r.text
        found = r.json()["drivers"]
        assert [d["driverId"] for d in found] == ["drv-n1", "drv-n2"]
        assert found[0]["distanceM"] < found[1]["distanceM"]
        r = await http.post("/v1/drivers/drv-n2:setStatus", json={"newStatus": "BUSY"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "BUSY"
        assert (await http.get("/v1/drivers/drv-n2")).json()["status"] == "BUSY"
        r = await http.post("/v1/drivers/drv-n2:setStatus", json={"newStatus": "NAPPING"})
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
        r = await http.get("/v1/drivers:nearby", params={"latitude": 52.5, "longitude": 13.4})
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")  # radius_m is required
        r = await http.get("/v1/drivers:nearby", params={"latitude": "north", "radius_m": 5})
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
        r = await http.get("/v1/drivers:nearby", params={"colour": "red"})
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


async def test_a_driver_token_uploads_for_itself_only_and_a_refused_batch_stores_nothing(
    door: HttpFixture,
) -> None:
    async with door.client(door.driver_token("drv-self")) as http:
        r = await http.post(
            "/v1/locations:batchUpload",
            json={"locations": [loc("drv-self"), loc("drv-other")]},
        )
        assert error_of(r)[:2] == (403, "PERMISSION_DENIED")
        r = await http.post("/v1/drivers/drv-self:uploadLocations", json={"locations": [loc()]})
        assert r.status_code == 200
        r = await http.post(
            "/v1/drivers/drv-self:uploadLocations", json={"locations": [loc("drv-other")]}
        )
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
    async with door.client(door.token()) as http:
        assert (await http.get("/v1/drivers/drv-other")).status_code == 404


async def test_bodies_bad_json_wrong_type_too_large_unknown_fields(door: HttpFixture) -> None:
    async with door.client(door.token()) as http:
        url = "/v1/drivers/drv-1:uploadLocations"
        r = await http.post(url, content=b'{"locations": [', headers=_JSON)
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
        assert "not valid JSON" in error_of(r)[2]
        r = await http.post(url, content=b"locations=1", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
        r = await http.post(url, content=b"{}")
        assert r.status_code == 415  # no content type at all
        for other in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                      "application/jsonx", "text/json"):  # fmt: skip
            r = await http.post(url, content=b"{}", headers={"content-type": other})
            assert r.status_code == 415, other  # a form post from another site never counts
            assert r.headers["content-type"] == "application/json"
        r = await http.post(url, json={"locations": []}, headers={
            "content-type": "Application/JSON; charset=utf-8"})  # fmt: skip
        assert r.status_code == 200, r.text
        big = json.dumps({"locations": [loc()] * 30_000}).encode()
        assert len(big) > 1024 * 1024
        r = await http.post(url, content=big, headers=_JSON)
        assert error_of(r)[:2] == (413, "RESOURCE_EXHAUSTED")

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as read
            for _ in range(40):
                yield b" " * 32 * 1024

        r = await http.post(url, content=chunks(), headers=_JSON)
        assert r.status_code == 413
        r = await http.post(url, json={"locations": [{"latitude": 1, "colour": "red"}]})
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
        assert "colour" in error_of(r)[2]
        r = await http.post(url, json=[1, 2])
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
        r = await http.post("/v1/drivers/drv-1:teleport", json={})
        assert error_of(r)[:2] == (404, "NOT_FOUND")
        r = await http.get("/v1/nothing-here")
        assert error_of(r)[:2] == (404, "NOT_FOUND")
        r = await http.delete("/v1/drivers/drv-1")
        assert r.status_code == 405
        assert r.json()["error"]["status"] == "UNIMPLEMENTED"
        for response in (r,):
            assert "Traceback" not in response.text


_JSON = {"content-type": "application/json"}


async def test_zones_crud_with_optimistic_versions(door: HttpFixture) -> None:
    async with door.client(door.token()) as http:
        zone = {"id": "z-depot", "name": "Depot", "labels": ["ops"],
                "circle": {"latitude": 52.52, "longitude": 13.405, "radiusM": 300}}  # fmt: skip
        r = await http.post("/v1/zones", json=zone)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "1"
        assert error_of(await http.post("/v1/zones", json=zone))[:2] == (409, "ALREADY_EXISTS")
        r = await http.get("/v1/zones/z-depot")
        assert r.json()["name"] == "Depot"
        r = await http.patch(
            "/v1/zones/z-depot", params={"expected_version": 7}, json={**zone, "name": "X"}
        )
        assert error_of(r)[:2] == (400, "FAILED_PRECONDITION")
        r = await http.patch(
            "/v1/zones/z-depot", params={"expectedVersion": 1}, json={**zone, "name": "Yard"}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["version"]) == ("Yard", "2")
        r = await http.get("/v1/zones", params={"labels": "ops"})
        assert [z["id"] for z in r.json()["zones"]] == ["z-depot"]
        bad = {"name": "bad", "geojson": '{"type": "Point", "coordinates": [1, 2]}'}
        assert error_of(await http.post("/v1/zones", json=bad))[:2] == (400, "INVALID_ARGUMENT")
        r = await http.delete("/v1/zones/z-depot", params={"expected_version": 2})
        assert r.status_code == 200
        assert r.json() == {}
        assert error_of(await http.get("/v1/zones/z-depot"))[:2] == (404, "NOT_FOUND")
    async with door.client(door.token([SCOPE_READ])) as http:
        assert error_of(await http.get("/v1/zones"))[:2] == (403, "PERMISSION_DENIED")


async def test_history_trail_trips_and_summary(door: HttpFixture) -> None:
    start = time.time() - 600
    points = [
        loc(lat=52.50 + i * 0.0005, lon=13.40, timestamp=_rfc3339(start + i * 5), speedMps=10)
        for i in range(60)
    ]
    window = {"since": _rfc3339(start - 1), "until": _rfc3339(time.time())}
    async with door.client(door.token()) as http:
        r = await http.post("/v1/drivers/drv-h:uploadLocations", json={"locations": points})
        assert r.json()["persistedCount"] == 60
        r = await http.get("/v1/drivers/drv-h/trail", params=window)
        assert r.status_code == 200, r.text
        assert len(r.json()["points"]) == 60
        r = await http.get("/v1/drivers/drv-h/trail", params={**window, "simplify_tolerance_m": 5})
        assert len(r.json()["points"]) == 2  # a straight line
        r = await http.get("/v1/drivers/drv-h/trips", params=window)
        assert r.status_code == 200, r.text
        assert "trips" in r.json()
        r = await http.get("/v1/drivers/drv-h/summary", params=window)
        assert r.status_code == 200, r.text
        assert r.json()["distanceM"] > 3000
        r = await http.get("/v1/drivers/drv-h/trail")
        assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
    async with door.client(door.driver_token("drv-x")) as http:
        r = await http.get("/v1/drivers/drv-h/trail", params=window)
        assert error_of(r)[:2] == (403, "PERMISSION_DENIED")


async def test_openapi_served_equals_the_checked_in_document(door: HttpFixture) -> None:
    async with door.client() as http:
        served = (await http.get("/openapi.json")).json()
    checked_in = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == checked_in == json.loads(json.dumps(document()))
    get_driver = served["components"]["schemas"]["GetDriverResponse"]["properties"]
    assert set(get_driver) == {"driverId", "status", "latitude", "longitude", "lastSeenAt"}


async def test_security_headers_cors_closed_metrics_and_request_ids(door: HttpFixture) -> None:
    async with door.client() as http:
        r = await http.get("/", headers={"origin": "https://evil.example", "x-request-id": "r-1"})
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["x-request-id"] == "r-1"
        assert "<script src=" in r.text
        assert "<script>" not in r.text
        r = await http.options(
            "/v1/drivers/x",
            headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
        )
        assert "access-control-allow-origin" not in r.headers
        r = await http.get("/static/vendor/leaflet/leaflet.js")
        assert r.status_code == 200
    text = door.metrics.render()[0].decode()
    assert 'driver_service_http_requests_total{method="GET",route="index",status="200"} 1.0' in text


async def test_cors_allowlist(tmp_path: Path) -> None:
    async with (
        http_server(tmp_path, http_cors_origin=("https://ops.example",)) as door,
        door.client() as http,
    ):
        r = await http.options(
            "/v1/drivers/x",
            headers={
                "origin": "https://ops.example",
                "access-control-request-method": "GET",
                "access-control-request-headers": "authorization",
            },
        )
        assert r.headers["access-control-allow-origin"] == "https://ops.example"
        r = await http.get("/v1/drivers/x", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_a_slow_client_holds_up_no_one(door: HttpFixture) -> None:
    """A client that sends half a body and stalls, one that stalls in its headers, and ones
    that never read their (large) answers, do not delay other callers."""
    ctx = ssl.create_default_context(cafile=str(door.certs.ca_cert))
    port = door.running.http.port if door.running.http else 0
    async with door.client(door.token()) as http:
        fleet = [loc(f"drv-s{i:04d}") for i in range(1000)]
        r = await http.post("/v1/locations:batchUpload", json={"locations": fleet})
        assert r.json()["persistedCount"] == 1000
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.write(
        b"POST /v1/locations:batchUpload HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
        b'\r\ncontent-length: 1000\r\n\r\n{"locations": ['
    )
    await writer.drain()
    _, half_headers = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    half_headers.write(b"GET /v1/drivers HTTP/1.1\r\nhost: x\r\nauthoriz")
    await half_headers.drain()
    non_readers = []
    for _ in range(4):  # each asks for ~150 KB and never reads a byte of it
        _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(
            f"GET /v1/drivers?page_size=1000 HTTP/1.1\r\nhost: x\r\n"
            f"authorization: Bearer {door.token()}\r\n\r\n".encode()
        )
        await w.drain()
        non_readers.append(w)
    async with door.client(door.token()) as http:
        started = time.monotonic()
        for _ in range(20):
            assert (await http.get("/v1/drivers/nobody")).status_code == 404
        # Generous: other tests share the machine's cores; a held-up server would take the
        # client's 10 s timeout on the first request.
        assert time.monotonic() - started < 8
    for w in (writer, half_headers, *non_readers):
        w.close()


# Valid ids (letters, digits and . _ : @ -, up to 128): `:` anywhere, even a verb's name.
VALID_IDS = ("drv:1", "a:setStatus", "a:b:uploadLocations", "x@fleet.example-1_2",
             "M" * 127 + ":")  # fmt: skip
# Invalid ids must be refused as gRPC refuses them, never routed elsewhere: an encoded `/`
# (even one that spells another route), unicode, one character too long, a space, a `%`.
INVALID_IDS = ("a/b", "x/trail", "é", "émile", "M" * 129, "a b", "100%", "%2F")


def _encodings(driver_id: str) -> set[str]:
    """The id as clients send it: `:` and `@` as they are, or everything percent-encoded
    (JavaScript's encodeURIComponent leaves `@` alone too; Python's quote does not)."""
    from urllib.parse import quote

    return {quote(driver_id, safe=":@"), quote(driver_id, safe="")}


async def test_every_route_takes_any_valid_driver_id_however_it_is_encoded(
    door: HttpFixture,
) -> None:
    base = time.time() - 30  # every fix in a window fixed now: a slow run cannot leave it
    window = {"since": _rfc3339(base - 60), "until": _rfc3339(base + 1)}
    async with door.client(door.token()) as http:
        for driver_id in VALID_IDS:
            for i, enc in enumerate(sorted(_encodings(driver_id))):
                path = f"/v1/drivers/{enc}"
                fix = loc(lat=52.5 + i / 100, timestamp=_rfc3339(base - i))
                r = await http.post(f"{path}:uploadLocations", json={"locations": [fix]})
                assert (r.status_code, r.json().get("persistedCount")) == (200, 1), (enc, r.text)
                r = await http.post(f"{path}:setStatus", json={"newStatus": "BUSY"})
                assert (r.status_code, r.json().get("driverId")) == (200, driver_id), enc
                r = await http.get(path)
                assert (r.status_code, r.json().get("driverId")) == (200, driver_id), enc
                r = await http.get(f"{path}/trail", params=window)
                assert r.status_code == 200, (enc, r.text)
                assert len(r.json()["points"]) == i + 1
                for sub in ("trips", "summary"):
                    assert (await http.get(f"{path}/{sub}", params=window)).status_code == 200
                async with http.stream("GET", f"{path}/locations:stream") as r:
                    assert r.status_code == 200, enc
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            assert json.loads(line[6:])["driverId"] == driver_id
                            break
        listed = (await http.get("/v1/drivers")).json()["drivers"]
        assert sorted(d["driverId"] for d in listed) == sorted(VALID_IDS)
        # Only a literal `:` starts a custom method: an encoded one is part of the id.
        r = await http.post("/v1/drivers/a%3AsetStatus", json={"newStatus": "BUSY"})
        assert error_of(r)[:2] == (404, "NOT_FOUND")


async def test_an_invalid_driver_id_is_refused_as_grpc_refuses_it_on_every_route(
    door: HttpFixture,
) -> None:
    token = door.token()
    async with door.client(token) as http, door.channel() as channel:
        stub = pb_grpc.DriverServiceStub(channel)
        for driver_id in INVALID_IDS:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetDriver(
                    pb.GetDriverRequest(driver_id=driver_id), metadata=door.metadata(token)
                )
            expected = (400, refused.value.code().name, refused.value.details())
            for enc in _encodings(driver_id):
                path = f"/v1/drivers/{enc}"
                for r in (
                    await http.get(path),
                    await http.get(f"{path}/trail", params={"since": "2026-01-01T00:00:00Z"}),
                    await http.post(f"{path}:setStatus", json={"newStatus": "BUSY"}),
                ):
                    assert error_of(r) == expected, (driver_id, enc, r.request.url)
                r = await http.post(f"{path}:uploadLocations", json={"locations": [loc()]})
                # As over gRPC: received and counted, not stored (the honest counts).
                assert (r.status_code, r.json()["persistedCount"]) == (200, 0), (enc, r.text)
        r = await http.get("/v1/drivers")
        assert r.json()["drivers"] == []


class _BrokenZones:
    """A zone backend with a bug: what a request gets must be INTERNAL, never the bug."""

    async def list(self, *_: Any) -> Any:
        raise RuntimeError("secret detail /etc/driver-service/token.secret line 3")


async def test_unavailable_unimplemented_and_internal_over_https(door: HttpFixture) -> None:
    """The rest of the mapping reachable from outside: UNAVAILABLE 503 as gRPC says it while
    the server stops; UNIMPLEMENTED 501 where a service does not run here; INTERNAL 500 for a
    bug, with no detail of it in the answer."""
    from driver_service.app.zones import ZoneAdmin
    from driver_service.http.app import Backends, FrontDoor
    from driver_service.http.server import start_http

    tracking = door.running.tracking
    assert door.running.services is not None
    bare = FrontDoor(Backends(tracking, zones=cast(ZoneAdmin, _BrokenZones())), auth=None)
    tls = (door.certs.server_cert, door.certs.server_key)
    other = await start_http(bare, "127.0.0.1", 0, tls=tls)
    try:
        async with door.client(base_url=f"https://127.0.0.1:{other.port}") as http:
            for path in ("/v1/drivers/drv-1/trail", "/v1/events:stream", "/v1/drivers:nearby"):
                assert error_of(await http.get(path))[:2] == (501, "UNIMPLEMENTED"), path
            r = await http.get("/v1/zones")
            assert error_of(r) == (500, "INTERNAL", "internal error")
            assert "secret" not in r.text
            assert "Traceback" not in r.text
    finally:
        await other.stop(0)

    token = door.token()
    tracking.begin_shutdown()  # what SIGTERM does first: live streams end, new ones refused
    async with door.client(token) as http, door.channel() as channel:
        stream = pb_grpc.DriverServiceStub(channel).StreamLocation(
            pb.StreamLocationRequest(driver_id="drv-1"), metadata=door.metadata(token)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        expected = (503, refused.value.code().name, refused.value.details())
        assert error_of(await http.get("/v1/drivers/drv-1/locations:stream")) == expected
        r = await http.get("/v1/fleet:stream")
        assert error_of(r)[:2] == (503, "UNAVAILABLE")
