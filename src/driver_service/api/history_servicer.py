"""driver.v1.HistoryService over grpc.aio: decode, call LocationHistory, encode, map errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service._gen.driver.v1 import history_pb2_grpc as hpb_grpc
from driver_service.api.errors import AbortOnDomainError
from driver_service.app.history import LocationHistory
from driver_service.domain import Location
from driver_service.domain.trips import DEFAULT_THRESHOLDS, Stop, Trip, TripThresholds
from driver_service.interceptors import current_principal
from driver_service.wire import ns_to_timestamp, timestamp_to_ns

SERVICE_NAME = hpb.DESCRIPTOR.services_by_name["HistoryService"].full_name


def _duration(ns: int) -> Duration:
    value = Duration()
    value.FromNanoseconds(ns)
    return value


def _range(request: Any) -> tuple[int, int]:
    """(since, until) in ns; a missing timestamp is 0 (LocationHistory refuses it)."""
    since = timestamp_to_ns(request.since) if request.HasField("since") else 0
    until = timestamp_to_ns(request.until) if request.HasField("until") else 0
    return since, until


def thresholds_from(msg: hpb.TripThresholds) -> TripThresholds:
    """Each unset field takes its default (domain/trips.py); nonsense raises InvalidInput."""
    d = DEFAULT_THRESHOLDS
    return TripThresholds(
        min_stop_duration_ns=msg.min_stop_duration.ToNanoseconds()
        if msg.HasField("min_stop_duration")
        else d.min_stop_duration_ns,
        stop_speed_mps=msg.stop_speed_mps if msg.HasField("stop_speed_mps") else d.stop_speed_mps,
        max_gap_ns=msg.max_gap.ToNanoseconds() if msg.HasField("max_gap") else d.max_gap_ns,
        min_trip_distance_m=msg.min_trip_distance_m
        if msg.HasField("min_trip_distance_m")
        else d.min_trip_distance_m,
        min_trip_duration_ns=msg.min_trip_duration.ToNanoseconds()
        if msg.HasField("min_trip_duration")
        else d.min_trip_duration_ns,
    )


def _point(x: Location) -> hpb.TrailPoint:
    return hpb.TrailPoint(
        latitude=x.latitude,
        longitude=x.longitude,
        speed_mps=x.speed_mps,
        heading_degrees=x.heading_degrees,
        recorded_at=ns_to_timestamp(x.recorded_at_ns),
    )


def _trip(t: Trip) -> hpb.Trip:
    return hpb.Trip(
        start_time=ns_to_timestamp(t.start.recorded_at_ns),
        end_time=ns_to_timestamp(t.end.recorded_at_ns),
        start=hpb.GeoPoint(latitude=t.start.latitude, longitude=t.start.longitude),
        end=hpb.GeoPoint(latitude=t.end.latitude, longitude=t.end.longitude),
        duration=_duration(t.duration_ns),
        distance_m=t.distance_m,
        average_speed_mps=t.average_speed_mps,
        max_speed_mps=t.max_speed_mps,
    )


def _stop(s: Stop) -> hpb.Stop:
    return hpb.Stop(
        start_time=ns_to_timestamp(s.start.recorded_at_ns),
        end_time=ns_to_timestamp(s.end.recorded_at_ns),
        position=hpb.GeoPoint(latitude=s.start.latitude, longitude=s.start.longitude),
        duration=_duration(s.duration_ns),
    )


class HistoryServicer(hpb_grpc.HistoryServiceServicer):
    """The history RPCs; every rule lives in LocationHistory and api/rules.py, not here."""

    def __init__(self, history: LocationHistory) -> None:
        self._history = history

    async def GetTrail(  # noqa: N802 - generated method name
        self, request: hpb.GetTrailRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[hpb.TrailChunk]:
        since, until = _range(request)
        async with AbortOnDomainError(context):
            chunks = self._history.trail(
                request.driver_id,
                since,
                until,
                request.simplify_tolerance_m,
                request.max_points or None,
            )
            async for chunk in chunks:
                yield hpb.TrailChunk(points=[_point(x) for x in chunk])

    async def GetTrips(  # noqa: N802
        self, request: hpb.GetTripsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> hpb.GetTripsResponse:
        since, until = _range(request)
        async with AbortOnDomainError(context):
            found = await self._history.trips(
                request.driver_id, since, until, thresholds_from(request.thresholds)
            )
        return hpb.GetTripsResponse(
            trips=[_trip(t) for t in found.trips], stops=[_stop(s) for s in found.stops]
        )

    async def GetSummary(  # noqa: N802
        self, request: hpb.GetSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> hpb.GetSummaryResponse:
        since, until = _range(request)
        async with AbortOnDomainError(context):
            summary = await self._history.summary(
                request.driver_id, since, until, thresholds_from(request.thresholds)
            )
        return hpb.GetSummaryResponse(
            distance_m=summary.distance_m,
            driving_time=_duration(summary.driving_ns),
            stop_time=_duration(summary.stopped_ns),
            trip_count=summary.trip_count,
            stop_count=summary.stop_count,
            max_speed_mps=summary.max_speed_mps,
        )

    async def ForgetDriver(  # noqa: N802
        self, request: hpb.ForgetDriverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> hpb.ForgetDriverResponse:
        principal = current_principal()
        by = "anonymous (auth off)" if principal is None else principal.subject
        async with AbortOnDomainError(context):
            erasure = await self._history.forget(request.driver_id, by=by)
        return hpb.ForgetDriverResponse(
            history_fixes=erasure.history_fixes,
            driver_records=erasure.driver_records,
            queued_commands=erasure.queued_commands,
            live_entries=erasure.live_entries,
            tracker_states=erasure.tracker_states,
            events=erasure.events,
        )
