"""A range holding rows that break the payload rules is compared around them: the ranges
verify compares instead cover every other id of it, both ends of bigint included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pubctl.verify import LARGEST_ID, SMALLEST_ID, around

ids = st.integers(SMALLEST_ID, LARGEST_ID)


def covers(ranges: list[tuple[int | None, int | None]], x: int) -> bool:
    return any((lo is None or x > lo) and (hi is None or x <= hi) for lo, hi in ranges)


def test_both_ends_of_bigint() -> None:
    assert around({SMALLEST_ID}, None, None) == [(SMALLEST_ID, None)]
    assert around({LARGEST_ID}, None, None) == [(None, LARGEST_ID - 1)]
    assert around({SMALLEST_ID, LARGEST_ID}, None, None) == [(SMALLEST_ID, LARGEST_ID - 1)]
    assert around({5, 6}, 4, 6) == []
    assert around({5}, None, 5) == [(None, 4)]


@given(
    bounds=st.tuples(st.none() | ids, st.none() | ids),
    picked=st.lists(ids, max_size=6),
    probes=st.lists(ids, max_size=20),
)
def test_the_ranges_around_bad_rows_cover_every_other_id(
    bounds: tuple[int | None, int | None], picked: list[int], probes: list[int]
) -> None:
    lo, hi = bounds
    inside = {x for x in picked if (lo is None or x > lo) and (hi is None or x <= hi)}
    ranges = around(inside, lo, hi)
    for a, b in ranges:  # every bound fits a bigint, and no range is empty
        assert a is None or SMALLEST_ID <= a <= LARGEST_ID
        assert b is None or SMALLEST_ID <= b <= LARGEST_ID
        assert a is None or b is None or a < b
    edges = [SMALLEST_ID, LARGEST_ID, *(x + d for x in inside for d in (-1, 0, 1))]
    for x in [*probes, *picked, *edges]:
        if not SMALLEST_ID <= x <= LARGEST_ID:
            continue
        wanted = (lo is None or x > lo) and (hi is None or x <= hi) and x not in inside
        assert covers(ranges, x) == wanted, (x, ranges)
