"""Trips, stops and their summary from one driver's fixes, with the meaning Traccar gives them.

Semantics (Traccar's legacy `MotionProcessor` and `report.trip.*` settings, read in
traccar/traccar `session/state/MotionProcessor.java`, `reports/common/ReportUtils.java`,
`reports/common/TripsConfig.java` and `config/Keys.java`):

- A fix is *moving* when its speed is above `stop_speed_mps` (Traccar
  `event.motion.speedThreshold`). The speed is the one the fix reports. The wire cannot
  say "unknown", so 0 is read as "not reported" until the device has reported a speed
  above 0 in this range (from then on its 0 means standing still); an unreported speed is
  derived from the leg from the previous fix. GPS noise makes derived speeds noisy: the
  decisions below hold against it, but a trip's max_speed_mps is then an overestimate and
  its ends may shift by a few tens of seconds.
- A *stop* is a stay at or below that speed for at least `min_stop_duration_ns` (Traccar
  `minimalParkingDuration`), or a gap in reporting longer than `max_gap_ns` (Traccar
  `minimalNoDataDuration`): the trip ends at the last fix before the silence.
- A *trip* is the movement between two stops. A movement shorter than both
  `min_trip_distance_m` and `min_trip_duration_ns` (Traccar `minimalTripDistance`,
  `minimalTripDuration`) is not a trip: it belongs to the stop around it, so parking
  manoeuvres do not split a stop.
- Trips and stops alternate, each starting where the previous one ended, as Traccar's
  report rows do. A stop starts at the first fix reporting a speed at or below the
  threshold, or, for a device that reports none, where the driver came within
  `stop_radius_m` of where they stayed; a trip starts at the last fix at rest.

Where a phone's GPS would fool those rules, three filters (Traccar has counterparts, off
by default) keep the figures honest:

- *Impossible jumps*: a fix whose leg implies more than `max_speed_mps` (default 300 km/h,
  above any road vehicle, below the km-per-second of a GPS glitch) is dropped (Traccar
  `filter.maxSpeed`). Two fixes that agree with each other but not with the track before
  them mean the track itself was wrong (its first fix was a glitch): it continues from
  them, without counting the jump.
- *Jitter*: only a moving fix adds distance, counted from an anchor that moves only when a
  fix lies more than `jitter_m` from it (Traccar `coordinates.minError` compares
  consecutive fixes instead; at 1 Hz that would drop slow driving). A parked phone's
  wander adds nothing.
- *Stray fixes at a stay*: a stay is left only after `departure_fixes` consecutive moving
  fixes beyond `stop_radius_m` of where it began. One multipath fix in a street canyon,
  however fast its derived speed, neither ends a stop nor starts a trip; a movement that
  lasted min_trip_duration but never left stop_radius_m is not a trip either. A tunnel (a
  gap shorter than `max_gap_ns` while moving) is a leg of the trip, never a stop.

One pass, constant memory besides the output: the detector holds a handful of fixes, so a
driver-day (86,400 fixes at 1 Hz) streams through it in a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from driver_service.domain.errors import InvalidInput
from driver_service.domain.geo import haversine_m, short_distance_m
from driver_service.domain.model import Location

NANOS = 10**9
_MAX_DURATION_NS = 7 * 86_400 * NANOS
_MAX_SPEED_MPS = 1_000.0
_MAX_DISTANCE_M = 1_000_000.0


@dataclass(frozen=True, slots=True)
class TripThresholds:
    """Request-time thresholds; the defaults are what an unset field of
    `driver.v1.TripThresholds` means. Nonsense raises InvalidInput naming the field."""

    #: A stay this long at or below stop_speed_mps is a stop (Traccar: 300 s).
    min_stop_duration_ns: int = 300 * NANOS
    #: At or below this a fix is not moving. 1 m/s: parked phones report 0-1 m/s of noise.
    stop_speed_mps: float = 1.0
    #: Silence longer than this is a stop. Traccar uses 1 h for trackers that report every
    #: few minutes when parked; driver apps report about once a second while on duty.
    max_gap_ns: int = 600 * NANOS
    #: A movement is a trip if it covers this distance ... (Traccar: 500 m)
    min_trip_distance_m: float = 500.0
    #: ... or lasts this long (Traccar: 300 s).
    min_trip_duration_ns: int = 300 * NANOS
    #: A stay is left only beyond this distance from where it began.
    stop_radius_m: float = 50.0
    #: ... and only after this many consecutive moving fixes out there.
    departure_fixes: int = 3
    #: Moves within this distance of the last counted point are GPS noise, not distance.
    jitter_m: float = 10.0
    #: A leg implying more than this is an impossible jump (300 km/h).
    max_speed_mps: float = 300 / 3.6

    def __post_init__(self) -> None:
        _duration("min_stop_duration", self.min_stop_duration_ns, allow_zero=False)
        _duration("max_gap", self.max_gap_ns, allow_zero=False)
        _duration("min_trip_duration", self.min_trip_duration_ns, allow_zero=True)
        _bounded("stop_speed_mps", self.stop_speed_mps, _MAX_SPEED_MPS)
        _bounded("max_speed_mps", self.max_speed_mps, _MAX_SPEED_MPS)
        _bounded("min_trip_distance_m", self.min_trip_distance_m, _MAX_DISTANCE_M)
        _bounded("stop_radius_m", self.stop_radius_m, _MAX_DISTANCE_M)
        _bounded("jitter_m", self.jitter_m, _MAX_DISTANCE_M)
        if self.max_speed_mps <= self.stop_speed_mps:
            raise InvalidInput("max_speed_mps must be above stop_speed_mps")
        if self.stop_radius_m < self.jitter_m:
            raise InvalidInput("stop_radius_m must be at least jitter_m")
        if isinstance(self.departure_fixes, bool) or not 1 <= self.departure_fixes <= 100:
            raise InvalidInput("departure_fixes must be between 1 and 100")


def _duration(name: str, value_ns: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value_ns, bool) or not isinstance(value_ns, int):
        raise InvalidInput(f"{name} must be a whole number of nanoseconds")
    if not low <= value_ns <= _MAX_DURATION_NS:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInput(f"{name} must be {bound} and at most 7 days")


def _bounded(name: str, value: float, upper: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= upper):
        raise InvalidInput(f"{name} must be a finite number between 0 and {upper:g}")


DEFAULT_THRESHOLDS = TripThresholds()


@dataclass(frozen=True, slots=True)
class Trip:
    """Movement from `start` to `end` (fixes of the history)."""

    start: Location
    end: Location
    distance_m: float
    max_speed_mps: float

    @property
    def duration_ns(self) -> int:
        return self.end.recorded_at_ns - self.start.recorded_at_ns

    @property
    def average_speed_mps(self) -> float:
        duration_ns = self.duration_ns
        return self.distance_m * NANOS / duration_ns if duration_ns > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Stop:
    """A stay from `start` (its position is the stop's) until `end`, where the next trip
    starts or the range ends."""

    start: Location
    end: Location

    @property
    def duration_ns(self) -> int:
        return self.end.recorded_at_ns - self.start.recorded_at_ns


@dataclass(frozen=True, slots=True)
class TripsAndStops:
    """Trips and stops in time order, alternating; `jumps_dropped` counts the impossible
    jumps left out (a glitching device shows there)."""

    trips: list[Trip] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    jumps_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """Totals over a range: how far and how long a driver drove, how long they stood."""

    distance_m: float
    driving_ns: int
    stopped_ns: int
    trip_count: int
    stop_count: int
    max_speed_mps: float


def summarize(result: TripsAndStops) -> Summary:
    """The distance is that of the trips: moves too short to be a trip and noise at stops
    are not driving."""
    return Summary(
        distance_m=math.fsum(t.distance_m for t in result.trips),
        driving_ns=sum(t.duration_ns for t in result.trips),
        stopped_ns=sum(s.duration_ns for s in result.stops),
        trip_count=len(result.trips),
        stop_count=len(result.stops),
        max_speed_mps=max((t.max_speed_mps for t in result.trips), default=0.0),
    )


def detect_trips(
    fixes: Iterable[Location], thresholds: TripThresholds = DEFAULT_THRESHOLDS
) -> TripsAndStops:
    """Trips and stops of fixes given in fix-time order (one driver)."""
    detector = TripDetector(thresholds)
    detector.add_all(fixes)
    return detector.finish()


class TripDetector:
    """The streaming form of detect_trips: feed fixes chunk by chunk as a store yields them
    (`add_all`), then `finish`. Fixes must come in fix-time order; one with the time of the
    previous one is a duplicate and ignored (history keeps the first fix of a timestamp)."""

    __slots__ = (
        "_anchor",
        "_finished",
        "_jumps",
        "_moving",
        "_outside",
        "_place",
        "_place_distance",
        "_place_max",
        "_prev",
        "_rejected",
        "_reports_speed",
        "_rest",
        "_rest_distance",
        "_rest_max",
        "_stop_start",
        "_stops",
        "_t",
        "_trip_distance",
        "_trip_max",
        "_trip_start",
        "_trips",
    )

    def __init__(self, thresholds: TripThresholds = DEFAULT_THRESHOLDS) -> None:
        self._t = thresholds
        self._trips: list[Trip] = []
        self._stops: list[Stop] = []
        self._jumps = 0
        self._finished = False
        self._prev: Location | None = None
        self._rejected: Location | None = None
        self._anchor: Location | None = None  # the last point distance was counted to
        self._reports_speed = False  # once a fix reports a speed, 0 means standing still
        self._moving = True
        self._outside = 0  # consecutive moving fixes beyond stop_radius_m of place
        # Driving: the open trip; `place` is where a stay would have begun (restarted each
        # time the driver drives on), `rest` its first fix at rest (reported speeds only),
        # each with the trip's distance and max speed up to it.
        # Stopped: `place` is where the stop began or the driver reappeared, `rest` the
        # last fix at rest, where the next trip would start, with distance and max since.
        self._trip_start: Location | None = None
        self._trip_distance = 0.0
        self._trip_max = 0.0
        self._place: Location | None = None
        self._place_distance = 0.0
        self._place_max = 0.0
        self._rest: Location | None = None
        self._rest_distance = 0.0
        self._rest_max = 0.0
        self._stop_start: Location | None = None

    def add_all(self, fixes: Iterable[Location]) -> None:
        add = self.add
        for fix in fixes:
            add(fix)

    def add(self, fix: Location) -> None:
        prev = self._prev
        if prev is None:
            if self._finished:
                raise RuntimeError("TripDetector.add after finish")
            self._begin(fix)
            return
        dt_ns = fix.recorded_at_ns - prev.recorded_at_ns
        if dt_ns <= 0:
            if dt_ns < 0:
                raise ValueError("fixes must come in fix-time order")
            return
        t = self._t
        leg = short_distance_m(prev.latitude, prev.longitude, fix.latitude, fix.longitude)
        if leg > t.jitter_m and leg * NANOS > t.max_speed_mps * dt_ns:
            if not self._recovered(fix):
                return
            prev = self._prev
            assert prev is not None
            dt_ns = fix.recorded_at_ns - prev.recorded_at_ns
            leg = short_distance_m(prev.latitude, prev.longitude, fix.latitude, fix.longitude)
        self._rejected = None
        self._prev = fix
        if fix.speed_mps > 0.0:
            self._reports_speed = True
            speed = fix.speed_mps
        else:
            speed = 0.0 if self._reports_speed else leg * NANOS / dt_ns
        moving = speed > t.stop_speed_mps
        gap = dt_ns > t.max_gap_ns
        moved = self._moved(fix, gap, moving)
        if self._moving:
            self._drive(prev, fix, moved, speed, moving, gap)
        else:
            self._stand(fix, moved, speed, moving, gap)

    def finish(self) -> TripsAndStops:
        """Close the segment open at the end of the range: a trip ends at the last fix (a
        stay shorter than min_stop_duration is still part of it), a stop likewise."""
        last = self._prev
        if last is not None and not self._finished:
            if self._moving:
                self._close_trip(last, self._trip_distance, self._trip_max, at_end=True)
            else:
                assert self._stop_start is not None
                self._stops.append(Stop(self._stop_start, last))
        self._finished = True
        self._prev = None
        return TripsAndStops(self._trips, self._stops, self._jumps)

    def _moved(self, fix: Location, gap: bool, moving: bool) -> float:
        """The distance `fix` adds: only a moving fix adds any, and only once it lies more
        than jitter_m from the last counted point (the anchor); nothing across a gap in
        reporting, whose route is unknown."""
        anchor = self._anchor
        assert anchor is not None
        if gap:
            self._anchor = fix
            return 0.0
        if not moving:
            return 0.0
        if (
            short_distance_m(anchor.latitude, anchor.longitude, fix.latitude, fix.longitude)
            <= self._t.jitter_m
        ):
            return 0.0
        self._anchor = fix
        return haversine_m(anchor.latitude, anchor.longitude, fix.latitude, fix.longitude)

    def _beyond(self, fix: Location) -> bool:
        place = self._place
        assert place is not None
        return (
            short_distance_m(place.latitude, place.longitude, fix.latitude, fix.longitude)
            > self._t.stop_radius_m
        )

    # -- the two states ------------------------------------------------------------------

    def _begin(self, fix: Location) -> None:
        self._prev = fix
        self._anchor = fix
        self._reports_speed = fix.speed_mps > 0.0
        self._moving = True
        self._trip_start = fix
        self._trip_distance = 0.0
        self._trip_max = fix.speed_mps
        self._stay_from(fix)

    def _stay_from(self, fix: Location) -> None:
        """While driving: a stay, if one follows, begins at `fix`."""
        self._place = fix
        self._place_distance = self._trip_distance
        self._place_max = self._trip_max
        self._rest = None
        self._outside = 0

    def _drive(
        self, prev: Location, fix: Location, moved: float, speed: float, moving: bool, gap: bool
    ) -> None:
        t = self._t
        if gap:
            # Silence while driving is a stop: the trip ended where the driver came to rest
            # before it, or at the last fix.
            if self._rest is not None:
                self._close_trip(self._rest, self._rest_distance, self._rest_max, at_end=False)
            else:
                self._close_trip(prev, self._trip_distance, self._trip_max, at_end=False)
            self._stop_at(fix, fix)
            return
        self._trip_distance += moved
        self._trip_max = max(self._trip_max, speed)
        if moving and self._beyond(fix):
            self._outside += 1
            if self._outside >= t.departure_fixes:
                self._stay_from(fix)  # driving on: any stay begins from here
            return
        self._outside = 0
        if not moving and self._rest is None and self._reports_speed:
            self._rest = fix
            self._rest_distance = self._trip_distance
            self._rest_max = self._trip_max
        if self._rest is not None:
            start, distance, top = self._rest, self._rest_distance, self._rest_max
        else:
            place = self._place
            assert place is not None
            start, distance, top = place, self._place_distance, self._place_max
        if fix.recorded_at_ns - start.recorded_at_ns >= t.min_stop_duration_ns:
            self._close_trip(start, distance, top, at_end=False)
            self._stop_at(start, fix)

    def _stand(self, fix: Location, moved: float, speed: float, moving: bool, gap: bool) -> None:
        t = self._t
        if gap:
            # Silence while stopped: still the stop; a departure counts from where the
            # driver reappears, and the trip cannot start before that.
            self._stop_at(fix, fix)
            return
        beyond = moving and self._beyond(fix)
        # At rest: a reported speed says so; a derived one is GPS noise within the radius.
        if not moving or (not beyond and not self._reports_speed):
            self._at_rest(fix)
            return
        self._rest_distance += moved
        self._rest_max = max(self._rest_max, speed)
        if not beyond:
            self._outside = 0
            return
        self._outside += 1
        if self._outside < t.departure_fixes:
            return
        # Departure: the stop ends, and a trip starts, at the last fix at rest.
        start = self._rest
        assert start is not None
        assert self._stop_start is not None
        self._stops.append(Stop(self._stop_start, start))
        self._moving = True
        self._trip_start = start
        self._trip_distance = self._rest_distance
        self._trip_max = self._rest_max
        self._stay_from(fix)

    def _stop_at(self, place: Location, at_rest: Location) -> None:
        """Enter (or stay in) the stopped state: a departure is measured from `place`."""
        self._moving = False
        self._place = place
        self._at_rest(at_rest)

    def _at_rest(self, fix: Location) -> None:
        self._rest = fix
        self._rest_distance = 0.0
        self._rest_max = 0.0
        self._outside = 0

    def _close_trip(
        self, end: Location, distance_m: float, max_speed: float, *, at_end: bool
    ) -> None:
        """End the open trip at `end`. A movement too short to be a trip is folded into the
        stop before it (which then goes on), or, with none, into the stop that follows."""
        start = self._trip_start
        assert start is not None
        t = self._t
        trip = Trip(start, end, distance_m, max_speed)
        if distance_m >= t.min_trip_distance_m or (
            trip.duration_ns >= t.min_trip_duration_ns
            and haversine_m(start.latitude, start.longitude, end.latitude, end.longitude)
            > t.stop_radius_m
        ):
            self._trips.append(trip)
            self._stop_start = end
        elif self._stops:
            self._stop_start = self._stops.pop().start
        else:
            self._stop_start = start
        if at_end and self._stop_start is not end:
            # The range ends within a merged stay: the stop lasts until its last fix.
            self._stops.append(Stop(self._stop_start, end))

    def _recovered(self, fix: Location) -> bool:
        """`fix` is an impossible jump from the track. Keep it aside; if the one before it
        was set aside too and `fix` agrees with it, the track was what jumped: continue
        from that fix (the jump not counted) and take `fix`."""
        rejected = self._rejected
        t = self._t
        if rejected is not None:
            dt_s = (fix.recorded_at_ns - rejected.recorded_at_ns) / NANOS
            leg = haversine_m(rejected.latitude, rejected.longitude, fix.latitude, fix.longitude)
            if dt_s > 0 and (leg <= t.jitter_m or leg <= t.max_speed_mps * dt_s):
                if not self._moving:
                    self._stop_at(rejected, rejected)
                else:
                    if self._trip_start is self._prev and self._trip_distance == 0:
                        self._trip_start = rejected  # the range began with a glitch
                    self._stay_from(rejected)
                self._prev = rejected
                self._anchor = rejected
                return True
        self._rejected = fix
        self._jumps += 1
        return False
