"""Times are naive UTC everywhere: an aware time is converted, a naive one is taken as UTC already."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from webapp.domain.time import as_naive_utc, iso, utcnow


def test_an_aware_time_is_converted_to_naive_utc():
    paris_summer = datetime(2030, 7, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))

    assert as_naive_utc(paris_summer) == datetime(2030, 7, 1, 12, 30)
    assert as_naive_utc(paris_summer).tzinfo is None


def test_a_naive_time_is_taken_as_utc_and_left_alone():
    naive = datetime(2030, 7, 1, 14, 30)

    assert as_naive_utc(naive) is naive


def test_now_is_naive_utc():
    before = datetime.now(UTC).replace(tzinfo=None)
    now = utcnow()

    assert now.tzinfo is None
    assert before <= now <= datetime.now(UTC).replace(tzinfo=None)


def test_timestamps_leave_as_iso_8601_in_utc_ending_in_z():
    paris_summer = datetime(2030, 7, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))

    assert iso(paris_summer) == "2030-07-01T12:30:00Z"
    assert iso(datetime(2030, 7, 1, 14, 30, 5)) == "2030-07-01T14:30:05Z"
    assert iso(None) is None
