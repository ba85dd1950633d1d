"""When schedules fire: the timing of a schedule (a 5-field cron expression in an IANA time zone,
or a fixed interval) and, given the time a schedule was due and the time it is now, which fire
times start a run under its catch-up policy. Pure: every instant is passed in, none is read.

Rules (docs/workflows.md, "Schedules"):

- ``cron``: read by ``croniter`` in the schedule's time zone (``zoneinfo``), so 9:00 stays 9:00
  local time across DST changes. A wall-clock time skipped when clocks go forward fires once,
  at the end of the gap (02:30 on the spring-forward day fires at 03:00); a wall-clock time that
  happens twice when clocks go back fires once, at its first occurrence, unless the hour field is
  ``*`` (an hourly job fires every elapsed hour).
- ``every``: ``<n>s|m|h|d``, a fixed interval of elapsed time aligned to the Unix epoch (``5m``
  fires at :00, :05, ... UTC; the time zone plays no part).
- catch-up, for the fire times from the one a schedule was due at up to now: ``all`` starts each
  of them (the latest ``CATCHUP_CAP`` when more were missed), ``latest`` only the most recent,
  ``none`` only the most recent and only when it is at most ``ON_TIME_GRACE`` late (otherwise
  it was missed, e.g. while no instance was running, and is skipped).

Every instant returned is timezone-aware UTC, whole seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

Catchup = Literal["none", "latest", "all"]
Overlap = Literal["skip", "allow"]

CATCHUP_CAP: Final = 100
"""``catchup: all`` starts at most this many missed fire times at once (the latest ones)."""
ON_TIME_GRACE: Final = timedelta(seconds=60)
"""A fire time started at most this late counts as on time (``catchup: none`` still starts it)."""
MAX_EVERY: Final = timedelta(days=365)

_EVERY = re.compile(r"^([0-9]+)([smhd])$")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TINY: Final = timedelta(microseconds=1)
_MAX_STEPS: Final = 10_000


class InvalidSchedule(ValueError):
    """The schedule cannot be used as given; the message says what is wrong and how to write it."""


def parse_every(text: str) -> int:
    """``30s``, ``5m``, ``1h``, ``2d`` -> seconds."""
    match = _EVERY.match(text.strip())
    if not match:
        raise InvalidSchedule(
            f"every {text!r} is not an interval: write a whole number and a unit, e.g. 30s, 5m, 1h or 1d"
        )
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise InvalidSchedule(f"every {text!r} must be at least 1s")
    if seconds > MAX_EVERY.total_seconds():
        raise InvalidSchedule(
            f"every {text!r} is longer than {MAX_EVERY.days}d; use cron for rarer schedules"
        )
    return seconds


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Paris``, ``UTC``)."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise InvalidSchedule(
            f"timezone {name!r} is not an IANA time zone name (e.g. UTC, Europe/Paris, America/New_York)"
        ) from None


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: ``cron`` (in ``timezone``) or every ``every_s`` seconds."""

    cron: str | None
    every_s: int | None
    timezone: str

    def next_after(self, t: datetime) -> datetime:
        """The first fire time strictly after ``t``."""
        if self.every_s is not None:
            step = timedelta(seconds=self.every_s)
            return _EPOCH + ((t - _EPOCH) // step + 1) * step  # integer arithmetic: exact
        assert self.cron is not None
        tz = zone(self.timezone)
        cursor = t
        for _ in range(_MAX_STEPS):
            fire = _utc(croniter(self.cron, cursor.astimezone(tz)).get_next(datetime))
            if fire <= cursor:  # croniter stepped back around a DST change: step past it
                cursor += timedelta(seconds=1)
            elif fire > t and not self._repeated_wall_time(fire, tz):
                return fire
            else:
                cursor = fire
        raise CroniterBadDateError(f"no fire time of {self.cron!r} found after {t.isoformat()}")

    def latest(self, start: datetime, end: datetime, limit: int) -> tuple[list[datetime], bool]:
        """The last ``limit`` fire times in ``[start, end]``, oldest first, and whether there were more."""
        if end < start:
            return [], False
        if self.every_s is not None:
            step = self.every_s
            first = self.next_after(start - _TINY)
            if first > end:
                return [], False
            count = (end - first) // timedelta(seconds=step) + 1
            last = first + timedelta(seconds=(count - 1) * step)
            taken = min(count, limit)
            return [last - timedelta(seconds=i * step) for i in reversed(range(taken))], count > limit
        assert self.cron is not None
        tz = zone(self.timezone)
        found: list[datetime] = []
        cursor = end + _TINY
        while len(found) <= limit:
            try:
                fire = _utc(croniter(self.cron, cursor.astimezone(tz)).get_prev(datetime))
            except CroniterBadDateError:
                break
            if fire >= cursor:  # croniter around a DST change: never step forward
                cursor -= timedelta(seconds=1)
                continue
            if fire < start:
                break
            cursor = fire
            if fire <= end and not self._repeated_wall_time(fire, tz) and fire not in found:
                found.append(fire)
        more = len(found) > limit
        return list(reversed(found[:limit])), more

    def _repeated_wall_time(self, fire: datetime, tz: ZoneInfo) -> bool:
        """``fire`` is the second occurrence of its wall-clock time (clocks went back) and the
        cron names its hours: it already fired at the first one."""
        assert self.cron is not None
        if self.cron.split()[1] == "*":
            return False
        wall = fire.astimezone(tz).replace(tzinfo=None)
        first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        return first < fire


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def schedule_timing(cron: str | None, every: str | None, timezone: str, *, now: datetime) -> Timing:
    """Check a schedule's timing as a client gave it; raises ``InvalidSchedule`` saying what is wrong."""
    if (cron is None) == (every is None):
        raise InvalidSchedule(
            'give exactly one of cron (5 fields, e.g. "*/5 * * * *") or every (e.g. "30s", "5m", "1h")'
            + (", not both" if cron is not None else "")
        )
    zone(timezone)
    if every is not None:
        return Timing(None, parse_every(every), timezone)
    assert cron is not None
    fields = cron.split()
    if len(fields) != 5:
        raise InvalidSchedule(
            f"cron {cron!r} has {len(fields)} field(s); it needs 5: minute hour day-of-month month "
            'day-of-week, e.g. "*/5 * * * *" or "0 9 * * 1-5"'
        )
    expr = " ".join(fields)
    try:
        croniter(expr, now)
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise InvalidSchedule(
            f"cron {cron!r} is not a valid cron expression: {exc} "
            "(fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12, day-of-week 0-6)"
        ) from None
    timing = Timing(expr, None, timezone)
    try:
        timing.next_after(now)
    except CroniterBadDateError:
        raise InvalidSchedule(f"cron {cron!r} never fires (no such date)") from None
    return timing


@dataclass(frozen=True)
class Firing:
    """What to do with a schedule that is due."""

    starts: list[datetime]
    """The fire times to start a run for, oldest first."""
    skipped: int
    """Due fire times not started (missed, or beyond ``CATCHUP_CAP``); at least this many."""
    next_fire_at: datetime
    """The first fire time after ``now``."""


def plan_firing(timing: Timing, due_at: datetime, now: datetime, catchup: Catchup) -> Firing:
    """The runs to start for a schedule that was due at ``due_at`` (its stored next fire time),
    seen at ``now``: the fire times in ``[due_at, now]`` under ``catchup``."""
    due, more = timing.latest(due_at, now, CATCHUP_CAP)
    starts = due if catchup == "all" else due[-1:]
    if catchup == "none" and starts and now - starts[-1] > ON_TIME_GRACE:
        starts = []
    skipped = len(due) - len(starts) + (1 if more else 0)
    return Firing(starts, skipped, timing.next_after(now))


def fire_key(schedule_id: object, fire: datetime) -> str:
    """The idempotency key of the run a schedule starts for ``fire``: one run per fire time, however
    many instances try."""
    return f"schedule:{schedule_id}:{fire.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"
