"""When schedules fire (service.domain.schedules): cron in a time zone across DST changes, fixed
intervals, and the catch-up policies for fire times missed while nothing ran."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.schedules import (
    CATCHUP_CAP,
    ON_TIME_GRACE,
    InvalidSchedule,
    Timing,
    fire_key,
    plan_firing,
    schedule_timing,
)

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 4, 11, 0, 0, 250_000, tzinfo=UTC)


def local(t: datetime, tz: ZoneInfo = PARIS) -> str:
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M%z")


def fires(timing: Timing, after: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        after = timing.next_after(after)
        out.append(after)
    return out


def test_a_daily_cron_keeps_its_local_time_across_both_dst_changes() -> None:
    nine = schedule_timing("0 9 * * *", None, "Europe/Paris", now=NOW)
    spring = fires(nine, datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert [local(t) for t in spring] == [
        "2026-03-28 09:00+0100",
        "2026-03-29 09:00+0200",
        "2026-03-30 09:00+0200",
    ]
    assert spring[1] - spring[0] == timedelta(hours=23)  # the short day
    autumn = fires(nine, datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert [local(t) for t in autumn] == ["2026-10-25 09:00+0100", "2026-10-26 09:00+0100"]
    assert autumn[0] - datetime(2026, 10, 24, 7, tzinfo=UTC) == timedelta(hours=25)  # the long day


def test_a_time_skipped_by_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    half_past_two = schedule_timing("30 2 * * *", None, "Europe/Paris", now=NOW)
    got = fires(half_past_two, datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert [local(t) for t in got] == [
        "2026-03-28 02:30+0100",
        "2026-03-29 03:00+0200",  # 02:30 does not exist that night
        "2026-03-30 02:30+0200",
    ]


def test_a_time_repeated_by_fall_back_fires_once_but_hourly_fires_every_elapsed_hour() -> None:
    half_past_two = schedule_timing("30 2 * * *", None, "Europe/Paris", now=NOW)
    got = fires(half_past_two, datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert [local(t) for t in got] == ["2026-10-25 02:30+0200", "2026-10-26 02:30+0100"]
    window = (datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 10, 27, tzinfo=UTC))
    daily, more = half_past_two.latest(*window, 100)
    assert len(daily) == 7 and not more  # one per day, also on the day 02:30 happened twice

    hourly = schedule_timing("0 * * * *", None, "Europe/Paris", now=NOW)
    got = fires(hourly, datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 4)
    assert [local(t) for t in got] == [
        "2026-10-25 02:00+0200",
        "2026-10-25 02:00+0100",  # 02:00 again, one hour later
        "2026-10-25 03:00+0100",
        "2026-10-25 04:00+0100",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(got))


def test_every_is_elapsed_time_aligned_to_the_epoch() -> None:
    every = schedule_timing(None, "5m", "Europe/Paris", now=NOW)
    assert fires(every, NOW, 2) == [
        datetime(2026, 12, 4, 11, 5, tzinfo=UTC),
        datetime(2026, 12, 4, 11, 10, tzinfo=UTC),
    ]
    exact = datetime(2026, 12, 4, 11, 5, tzinfo=UTC)
    assert every.next_after(exact) == datetime(2026, 12, 4, 11, 10, tzinfo=UTC)  # strictly after


@pytest.mark.parametrize(
    ("cron", "every", "tz", "says"),
    [
        (None, None, "UTC", "exactly one of cron"),
        ("* * * * *", "30s", "UTC", "not both"),
        ("* * * *", None, "UTC", "it needs 5"),
        ("* * * * * *", None, "UTC", "it needs 5"),
        ("@hourly", None, "UTC", "it needs 5"),
        ("61 * * * *", None, "UTC", "not a valid cron expression"),
        ("*/0 * * * *", None, "UTC", "not a valid cron expression"),
        ("0 0 30 2 *", None, "UTC", "never fires"),
        (None, "5x", "UTC", "not an interval"),
        (None, "0s", "UTC", "at least 1s"),
        (None, "400d", "UTC", "longer than 365d"),
        (None, "1.5h", "UTC", "not an interval"),
        ("* * * * *", None, "Mars/Olympus", "not an IANA time zone"),
        ("* * * * *", None, "", "not an IANA time zone"),
        ("* * * * *", None, "../../etc/passwd", "not an IANA time zone"),
    ],
)
def test_bad_timings_are_refused_with_what_is_wrong(
    cron: str | None, every: str | None, tz: str, says: str
) -> None:
    with pytest.raises(InvalidSchedule, match=says):
        schedule_timing(cron, every, tz, now=NOW)


def test_catchup_policies() -> None:
    every = schedule_timing(None, "1m", "UTC", now=NOW)
    down_since = NOW - timedelta(minutes=10, seconds=30)  # the schedule was due then
    due = [datetime(2026, 12, 4, 10, 51, tzinfo=UTC) + timedelta(minutes=i) for i in range(10)]

    plan = plan_firing(every, due[0], NOW, "all")
    assert plan.starts == due and plan.skipped == 0
    assert plan.next_fire_at == datetime(2026, 12, 4, 11, 1, tzinfo=UTC)

    plan = plan_firing(every, due[0], NOW, "latest")
    assert plan.starts == [due[-1]] and plan.skipped == 9

    plan = plan_firing(every, due[0], NOW, "none")  # the latest is 0.25 s late: on time
    assert plan.starts == [due[-1]] and plan.skipped == 9

    hourly = schedule_timing("0 * * * *", None, "UTC", now=NOW)
    plan = plan_firing(hourly, datetime(2026, 12, 4, 8, tzinfo=UTC), NOW + timedelta(minutes=5), "none")
    assert plan.starts == [] and plan.skipped >= 1  # 11:00 is 5 minutes late: missed
    assert plan.next_fire_at == datetime(2026, 12, 4, 12, tzinfo=UTC)
    plan = plan_firing(hourly, datetime(2026, 12, 4, 8, tzinfo=UTC), NOW + timedelta(minutes=5), "latest")
    assert plan.starts == [datetime(2026, 12, 4, 11, tzinfo=UTC)]
    assert down_since < due[0]


def test_catchup_all_is_capped() -> None:
    every = schedule_timing(None, "1s", "UTC", now=NOW)
    plan = plan_firing(every, NOW - timedelta(hours=1), NOW, "all")
    assert len(plan.starts) == CATCHUP_CAP and plan.skipped >= 1
    assert plan.starts[-1] == NOW.replace(microsecond=0)
    assert plan.starts == sorted(plan.starts)


def test_fire_keys_name_the_schedule_and_the_utc_second() -> None:
    fire = datetime(2026, 3, 29, 3, 0, tzinfo=PARIS)
    assert fire_key("s1", fire) == "schedule:s1:2026-03-29T01:00:00Z"


ZONES = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
CRONS = st.sampled_from(
    ["*/5 * * * *", "0 9 * * *", "30 2 * * *", "0 * * * *", "15 1,2,3 * * *", "0 0 * * 1-5", "45 23 31 * *"]
)
INSTANTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@given(cron=CRONS, tz=ZONES, start=INSTANTS)
def test_cron_fire_times_increase_and_the_window_agrees_with_next(
    cron: str, tz: str, start: datetime
) -> None:
    timing = schedule_timing(cron, None, tz, now=start)
    got = fires(timing, start, 6)
    assert got[0] > start
    assert all(a < b for a, b in itertools.pairwise(got))
    assert all(t.second == 0 and t.microsecond == 0 and t.tzinfo is UTC for t in got)
    window, more = timing.latest(got[0], got[-1], 100)
    assert window == got and not more  # no fire time between two consecutive next_after
    # a named hour never fires twice on one local day (DST repeats it at most once more)
    if cron.split()[1] != "*" and cron.split()[0].isdigit():
        days = [t.astimezone(ZoneInfo(tz)).date() for t in got]
        per_hour = len(cron.split()[1].split(","))
        assert all(days.count(d) <= per_hour for d in days)


@given(seconds=st.integers(1, 86400 * 3), start=INSTANTS, gap=st.integers(0, 10_000))
def test_every_windows_are_exact(seconds: int, start: datetime, gap: int) -> None:
    timing = Timing(None, seconds, "UTC")
    end = start + timedelta(seconds=gap)
    window, more = timing.latest(start, end, 10**6)
    assert not more
    assert all(start <= t <= end for t in window)
    assert all(int(t.timestamp()) % seconds == 0 for t in window)
    if window:
        assert timing.next_after(window[-1]) > end
        assert timing.next_after(start - timedelta(microseconds=1)) == window[0]
    else:
        assert timing.next_after(start - timedelta(microseconds=1)) > end


@given(
    seconds=st.sampled_from([1, 7, 60, 3600]),
    late=st.integers(0, 500_000),
    catchup=st.sampled_from(["none", "latest", "all"]),
)
def test_a_plan_never_starts_a_time_twice_nor_one_in_the_future(
    seconds: int, late: int, catchup: str
) -> None:
    timing = Timing(None, seconds, "UTC")
    due_at = timing.next_after(NOW - timedelta(seconds=late))
    plan = plan_firing(timing, due_at, NOW, catchup)  # type: ignore[arg-type]
    assert len(set(plan.starts)) == len(plan.starts) and plan.starts == sorted(plan.starts)
    assert all(due_at <= t <= NOW for t in plan.starts)
    assert plan.next_fire_at > NOW
    assert len(plan.starts) <= (CATCHUP_CAP if catchup == "all" else 1)
    if catchup == "none" and plan.starts:
        assert NOW - plan.starts[-1] <= ON_TIME_GRACE
    # whatever was started or skipped, the next plan (seen a moment later) never repeats a start
    again = plan_firing(timing, plan.next_fire_at, plan.next_fire_at, catchup)  # type: ignore[arg-type]
    assert not set(again.starts) & set(plan.starts)


@given(seconds=st.integers(1, 86400 * 365), k=st.integers(0, 2**33))
def test_every_is_exact_to_the_microsecond_at_its_fire_times(seconds: int, k: int) -> None:
    timing = Timing(None, seconds, "UTC")
    fire = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=(k % (10**11 // seconds)) * seconds)
    assert timing.next_after(fire - timedelta(microseconds=1)) == fire
    assert timing.next_after(fire) == fire + timedelta(seconds=seconds)
    assert timing.latest(fire, fire, 1) == ([fire], False)
