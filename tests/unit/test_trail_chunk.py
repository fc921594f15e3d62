"""TrailChunk written in its wire encoding (api/history_servicer.trail_chunk): the message,
and so the bytes on the wire, equal the TrailChunk built field by field."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from driver_service._gen.driver.v1 import history_pb2 as hpb
from driver_service.api.history_servicer import trail_chunk
from driver_service.ports import HistoryRow
from driver_service.wire import ns_to_timestamp

DAY = 1_796_428_800_000_000_000


def reference(rows: list[HistoryRow]) -> hpb.TrailChunk:
    return hpb.TrailChunk(
        points=[
            hpb.TrailPoint(
                latitude=lat,
                longitude=lon,
                speed_mps=speed,
                heading_degrees=heading,
                recorded_at=ns_to_timestamp(at),
            )
            for lat, lon, speed, heading, at in rows
        ]
    )


rows_strategy = st.lists(
    st.tuples(
        st.floats(-90, 90),
        st.floats(-180, 180),
        st.floats(0, 1e6) | st.just(0.0) | st.just(-0.0),
        st.floats(0, 360, exclude_max=True),
        st.integers(1, 2**62)
        | st.integers(DAY, DAY + 86_400 * 10**9).map(lambda x: x // 10**9 * 10**9),
    ),
    max_size=50,
)


@given(rows_strategy)
@example([])
@example([(0.0, 0.0, 0.0, 0.0, 1)])
@example([(52.5, 13.4, 10.0, 90.0, DAY), (52.5, 13.4, 0.0, 0.0, DAY + 1)])
@example([(1.0, 2.0, 3.4e39, 0.0, DAY)])  # beyond float32: protobuf's conversion
def test_the_wire_encoding_is_protobufs_own(rows: list[HistoryRow]) -> None:
    chunk = trail_chunk(rows)
    assert chunk.SerializeToString() == reference(rows).SerializeToString()
    assert len(chunk.points) == len(rows)


def test_a_driver_day_of_whole_seconds() -> None:
    rows: list[HistoryRow] = [
        (
            52.52 + i * 1e-5,
            13.405 - i * 1e-5,
            10.0 if i % 60 < 50 else 0.0,
            i % 360,
            DAY + i * 10**9,
        )
        for i in range(1000)
    ]
    assert trail_chunk(rows) == reference(rows)
