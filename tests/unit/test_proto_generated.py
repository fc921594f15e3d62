"""The wire contract: generated code is exactly what `make proto` produces from proto/, and
driver.proto still is the seed's contract (names, numbers, types, streaming) field by field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from driver_service._gen.driver.v1 import driver_pb2

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "src" / "driver_service" / "_gen"
SEED_PROTO = ROOT / "proto" / "driver" / "v1" / "driver.proto"

F = FieldDescriptor
TS = "google.protobuf.Timestamp"

#: The seed's DriverService: name -> (request, response, client streams, server streams).
SEED_RPCS = {
    "GetDriver": ("GetDriverRequest", "GetDriverResponse", False, False),
    "StreamLocation": ("StreamLocationRequest", "LocationUpdate", False, True),
    "UploadLocations": ("LocationUpdate", "UploadSummary", True, False),
    "DriverSession": ("DriverEvent", "ServerCommand", True, True),
}

#: The seed's messages: message -> [(field, number, type, message type or oneof)].
SEED_MESSAGES: dict[str, list[tuple[str, int, int, str | None]]] = {
    "GetDriverRequest": [("driver_id", 1, F.TYPE_STRING, None)],
    "GetDriverResponse": [
        ("driver_id", 1, F.TYPE_STRING, None),
        ("status", 2, F.TYPE_STRING, None),
        ("latitude", 3, F.TYPE_DOUBLE, None),
        ("longitude", 4, F.TYPE_DOUBLE, None),
        ("last_seen_at", 5, F.TYPE_MESSAGE, TS),
    ],
    "StreamLocationRequest": [("driver_id", 1, F.TYPE_STRING, None)],
    "LocationUpdate": [
        ("driver_id", 1, F.TYPE_STRING, None),
        ("latitude", 2, F.TYPE_DOUBLE, None),
        ("longitude", 3, F.TYPE_DOUBLE, None),
        ("speed_mps", 4, F.TYPE_FLOAT, None),
        ("heading_degrees", 5, F.TYPE_FLOAT, None),
        ("timestamp", 6, F.TYPE_MESSAGE, TS),
    ],
    "UploadSummary": [
        ("received_count", 1, F.TYPE_INT32, None),
        ("persisted_count", 2, F.TYPE_INT32, None),
        ("session_id", 3, F.TYPE_STRING, None),
    ],
    "DriverEvent": [
        ("location", 1, F.TYPE_MESSAGE, "driver.v1.LocationUpdate"),
        ("status_change", 2, F.TYPE_MESSAGE, "driver.v1.DriverStatusChange"),
        ("heartbeat", 3, F.TYPE_MESSAGE, "driver.v1.HeartbeatPing"),
    ],
    "ServerCommand": [
        ("ride_offer", 1, F.TYPE_MESSAGE, "driver.v1.RideOffer"),
        ("navigation", 2, F.TYPE_MESSAGE, "driver.v1.NavigationUpdate"),
        ("pong", 3, F.TYPE_MESSAGE, "driver.v1.PingResponse"),
    ],
    "DriverStatusChange": [
        ("driver_id", 1, F.TYPE_STRING, None),
        ("new_status", 2, F.TYPE_STRING, None),
    ],
    "HeartbeatPing": [("client_ts_ms", 1, F.TYPE_INT64, None)],
    "PingResponse": [("server_ts_ms", 1, F.TYPE_INT64, None)],
    "RideOffer": [
        ("offer_id", 1, F.TYPE_STRING, None),
        ("pickup_address", 2, F.TYPE_STRING, None),
    ],
    "NavigationUpdate": [("polyline", 1, F.TYPE_STRING, None)],
}
#: Oneofs of the seed: message -> (oneof name, its members).
SEED_ONEOFS = {
    "DriverEvent": ("event", ["location", "status_change", "heartbeat"]),
    "ServerCommand": ("command", ["ride_offer", "navigation", "pong"]),
}


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_regenerating_changes_no_committed_file(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    generated = files_under(out)
    committed = files_under(GEN)
    assert sorted(generated) == sorted(committed), "run `make proto` and commit the result"
    stale = [name for name in generated if generated[name] != committed[name]]
    assert stale == [], f"stale generated files {stale}: run `make proto`"
    assert "driver/v1/driver_pb2.py" in generated
    assert "driver/v1/driver_pb2.pyi" in generated


def test_seed_proto_text_declares_the_service_with_four_rpcs() -> None:
    text = SEED_PROTO.read_text()

    assert re.search(r"^package driver\.v1;$", text, re.MULTILINE)
    services = re.findall(r"^service (\w+) \{", text, re.MULTILINE)
    assert services == ["DriverService"]
    rpcs = re.findall(
        r"^\s*rpc (\w+)\((stream )?(\w+)\) returns \((stream )?(\w+)\);", text, re.MULTILINE
    )
    assert {name: (req, resp, bool(cs), bool(ss)) for name, cs, req, ss, resp in rpcs} == SEED_RPCS
    assert len(rpcs) == 4


def test_descriptor_has_the_seed_service_and_rpcs() -> None:
    file = driver_pb2.DESCRIPTOR
    assert file.name == "driver/v1/driver.proto"
    assert file.package == "driver.v1"
    assert list(file.services_by_name) == ["DriverService"]
    service = file.services_by_name["DriverService"]
    assert service.full_name == "driver.v1.DriverService"

    actual = {
        m.name: (
            m.input_type.name,
            m.output_type.name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    }
    assert actual == SEED_RPCS


def describe(message: Descriptor) -> list[tuple[str, int, int, str | None]]:
    return [
        (
            f.name,
            f.number,
            f.type,
            f.message_type.full_name if f.message_type is not None else None,
        )
        for f in message.fields
    ]


def test_descriptor_messages_match_the_seed_field_by_field() -> None:
    messages = driver_pb2.DESCRIPTOR.message_types_by_name
    assert sorted(messages) == sorted(SEED_MESSAGES), "add new messages in a new .proto file"
    for name, fields in SEED_MESSAGES.items():
        assert describe(messages[name]) == fields, name
        for field in messages[name].fields:
            assert not field.is_repeated, f"{name}.{field.name}"


def test_descriptor_oneofs_match_the_seed() -> None:
    messages = driver_pb2.DESCRIPTOR.message_types_by_name
    for name, message in messages.items():
        oneofs = {o.name: [f.name for f in o.fields] for o in message.oneofs}
        if name in SEED_ONEOFS:
            oneof, members = SEED_ONEOFS[name]
            assert oneofs == {oneof: members}
        else:
            assert oneofs == {}, name
