"""The zones and events contract: the services, their streaming shape and the fields that
clients and the event log depend on (ids, the shape oneof, replay's optional after_id)."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from driver_service._gen.driver.v1 import events_pb2, zones_pb2

F = FieldDescriptor


def test_zone_service_has_crud_rpcs_all_unary() -> None:
    service = zones_pb2.DESCRIPTOR.services_by_name["ZoneService"]
    rpcs = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert rpcs == dict.fromkeys(
        ["CreateZone", "GetZone", "ListZones", "UpdateZone", "DeleteZone"], (False, False)
    )


def test_zone_shape_is_geojson_or_circle() -> None:
    zone = zones_pb2.Zone(id="z", geojson='{"type": "Polygon"}')
    assert zone.WhichOneof("shape") == "geojson"
    zone.circle.radius_m = 100.0
    assert zone.WhichOneof("shape") == "circle"
    assert not zone.geojson


def test_watch_events_streams_events_and_after_id_is_optional() -> None:
    method = events_pb2.DESCRIPTOR.services_by_name["EventService"].methods_by_name["WatchEvents"]
    assert (method.client_streaming, method.server_streaming) == (False, True)
    assert method.output_type.full_name == "driver.v1.Event"
    request = events_pb2.WatchEventsRequest()
    assert not request.HasField("after_id")  # live only
    request.after_id = 0  # replay the whole retained log
    assert request.HasField("after_id")


def test_event_id_is_unsigned_64_bit() -> None:
    fields = events_pb2.Event.DESCRIPTOR.fields_by_name
    assert fields["id"].type == F.TYPE_UINT64
    assert fields["time"].message_type.full_name == "google.protobuf.Timestamp"
    assert fields["recorded_at"].message_type.full_name == "google.protobuf.Timestamp"
