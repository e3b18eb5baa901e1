"""When a deployment runs: cron, interval and RRULE schedules.

A schedule is a small frozen value that answers one question, "which instants
come after (or before) this one?". ``Cron`` and ``RRule`` describe wall-clock
times in a timezone, so both walk candidate *local* times (croniter and
dateutil on naive datetimes, free of their own DST guesses) and then map each
one onto the time line with a single rule: a local time that happens twice
(fall back) means its first occurrence, and a local time that does not exist
(spring forward) means the instant the clock jumps, as Vixie cron does. That
mapping never decreases, so the instants come out sorted, and several
candidates landing on one instant collapse into one run. ``Interval`` follows
Prefect: an interval of whole days steps the local calendar (a daily run at
09:00 stays at 09:00 across DST), the rest is exact elapsed time (an hourly
run fires every 60 real minutes, twice at "01:00" on the fall-back night).

Every instant is computed and compared in UTC, because Python compares and
subtracts two datetimes of the *same* zone by wall clock, ignoring ``fold``;
results are returned in the schedule's zone for display. Compare them with
``.astimezone(datetime.UTC)`` or ``.timestamp()``: across zones, a local time
that happens twice never even equals its own UTC instant (PEP 495).
"""

from __future__ import annotations

import abc
import difflib
import itertools
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from croniter import CroniterBadDateError, CroniterError, croniter
from dateutil.rrule import rrule as _DateutilRRule
from dateutil.rrule import rrulebase, rrulestr

from daskflow.exceptions import ScheduleError

__all__ = [
    "Cron", "Interval", "RRule", "Schedule",
    "construct_schedule", "data_interval", "schedule_from_dict",
]  # fmt: skip

# The anchor of an Interval, or the DTSTART of an RRULE, when none is given.
# Prefect uses "now", which moves every time a process restarts; a fixed local
# midnight keeps a daily run at midnight and an hourly one on the hour.
_DEFAULT_ANCHOR = datetime(2020, 1, 1)

_CRON_FIELDS = (
    ("minute", "0-59"), ("hour", "0-23"), ("day-of-month", "1-31 or L"),
    ("month", "1-12 or JAN-DEC"), ("day-of-week", "0-6 (0 is Sunday) or SUN-SAT"),
    ("second", "0-59"), ("year", "1970-2099"),  # croniter's optional sixth and seventh
)  # fmt: skip
_CRON_HELP = """A cron expression has five fields, "minute hour day-of-month month \
day-of-week", for example '0 6 * * *' (every day at 06:00) or '*/15 9-17 * * MON-FRI'."""
_RRULE_HELP = (
    "Write an RFC 5545 rule such as 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=9', optionally "
    "after a line 'DTSTART;TZID=Europe/Berlin:20260105T090000'."
)
# croniter's random ("R") and hashed ("H") fields give different times to
# different processes, which a scheduler and a backfill must agree on.
_NONDETERMINISTIC_FIELD = re.compile(r"^[HR](\(|/|$)", re.IGNORECASE)
_DTSTART = re.compile(
    r"^DTSTART(?P<params>(;[^:]*)?):(?P<date>\d{8})(T(?P<time>\d{6})(?P<z>Z?))?$",
    re.IGNORECASE,
)
# Fixed-length frequencies whose DTSTART can jump forward by whole periods
# without changing the occurrences (see RRule._rule_near).
_PERIODS = {"SECONDLY": 1, "MINUTELY": 60, "HOURLY": 3600, "DAILY": 86400}


def _zone(name: str) -> tzinfo:
    """The tzinfo of an IANA name, or a ScheduleError that suggests one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        if name in ("UTC", "Etc/UTC"):
            # A machine without a tz database still knows UTC.
            return UTC
    known = zoneinfo.available_timezones()
    by_case = {key.lower(): key for key in known}
    guess = by_case.get(str(name).lower()) or next(iter(difflib.get_close_matches(str(name), known, n=1)), None)
    hint = f" Did you mean {guess!r}?" if guess else ""
    raise ScheduleError(
        f"Unknown timezone {name!r}.{hint} Use an IANA tz database name such as "
        "'Europe/Berlin', 'America/New_York' or 'UTC'."
    )


def _resolve(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant of a naive local time: the first of two, or the jump over a gap."""
    instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    # ``wall`` lies in a spring-forward gap. Read with the offset after the
    # jump it lands before the transition, with the one before it lands after;
    # bisect the seconds between for the transition itself.
    lo = int(wall.replace(tzinfo=tz, fold=1).astimezone(UTC).timestamp())
    hi = int(instant.timestamp())
    before = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _to_utc(moment: datetime, tz: tzinfo) -> datetime:
    """An aware datetime in UTC; a naive one is read in the schedule's zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return _resolve(moment.replace(tzinfo=None), tz)
    return moment.astimezone(UTC)


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _offset_change(instant: datetime, tz: tzinfo) -> timedelta:
    """How far the UTC offset moved during the day before ``instant`` (signed)."""
    now = instant.astimezone(tz).utcoffset() or timedelta(0)
    then = (instant - timedelta(hours=26)).astimezone(tz).utcoffset() or timedelta(0)
    return now - then


class Schedule(abc.ABC):
    """What Cron, Interval and RRule share: instants after, between and before."""

    timezone: str

    @property
    def tzinfo(self) -> tzinfo:
        return _zone(self.timezone)

    def next_times(self, n: int, start: datetime | None = None) -> list[datetime]:
        """The next ``n`` scheduled times strictly after ``start`` (default: now).

        Fewer come back only when the schedule ends (an RRULE with COUNT or UNTIL).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ScheduleError(f"next_times(n={n!r}): n must be an int >= 1, e.g. next_times(5).")
        tz = self.tzinfo
        after = datetime.now(UTC) if start is None else _to_utc(start, tz)
        times = itertools.islice(self._forward(after, inclusive=False), n)
        return [t.astimezone(tz) for t in times]

    def times_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every scheduled time ``t`` with ``start <= t <= end``, both ends included.

        Inclusive like Prefect's ``get_dates(start=, end=)``, so a backfill of
        [Jan 1 00:00, Jan 7 00:00] on a daily schedule runs seven times.
        """
        tz = self.tzinfo
        first, last = _to_utc(start, tz), _to_utc(end, tz)
        times = itertools.takewhile(lambda t: t <= last, self._forward(first, inclusive=True))
        return (t.astimezone(tz) for t in times)

    def previous_time(self, before: datetime | None = None) -> datetime | None:
        """The last scheduled time strictly before ``before`` (default: now), if any."""
        tz = self.tzinfo
        end = datetime.now(UTC) if before is None else _to_utc(before, tz)
        previous = next(self._backward(end), None)
        return None if previous is None else previous.astimezone(tz)

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that ``schedule_from_dict`` turns back into this schedule."""

    @abc.abstractmethod
    def _forward(self, start: datetime, inclusive: bool) -> Iterator[datetime]:
        """Ascending UTC instants from ``start`` on."""

    @abc.abstractmethod
    def _backward(self, end: datetime) -> Iterator[datetime]:
        """Descending UTC instants strictly before ``end``."""


class _WallClockSchedule(Schedule):
    """A schedule defined by local times; subclasses list candidate naive times."""

    @abc.abstractmethod
    def _walls(self, wall: datetime, backward: bool) -> Iterator[datetime]:
        """Naive local times ascending from ``wall`` on, or descending from just before it."""

    def _forward(self, start: datetime, inclusive: bool) -> Iterator[datetime]:
        tz = self.tzinfo
        # A local time in a gap just behind ``start`` maps onto the jump, which
        # may still be ahead of ``start``: look back by the size of that jump.
        lookback = max(_offset_change(start, tz), timedelta(0))
        last: datetime | None = None
        for wall in self._walls(_wall(start, tz) - lookback, backward=False):
            t = _resolve(wall, tz)
            if t < start or (t == start and not inclusive) or (last is not None and t <= last):
                continue
            last = t
            yield t

    def _backward(self, end: datetime) -> Iterator[datetime]:
        tz = self.tzinfo
        # After a fall back, ``end`` may sit in the repeated hour while the
        # first pass of that hour (an earlier instant) has later local times.
        lookahead = max(-_offset_change(end, tz), timedelta(0)) + timedelta(seconds=1)
        last: datetime | None = None
        for wall in self._walls(_wall(end, tz) + lookahead, backward=True):
            t = _resolve(wall, tz)
            if t >= end or (last is not None and t >= last):
                continue
            last = t
            yield t


def _check_cron(expression: str, day_or: bool) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise ScheduleError(f"Invalid cron expression {expression!r}. {_CRON_HELP}")
    normal = " ".join(expression.split())
    fields = normal.split(" ")
    if not normal.startswith("@") and len(fields) not in (5, 6, 7):
        raise ScheduleError(
            f"Invalid cron expression {expression!r}: it has {len(fields)} field(s), cron needs 5. {_CRON_HELP}"
        )
    for (label, _), value in zip(_CRON_FIELDS, fields, strict=False):
        if _NONDETERMINISTIC_FIELD.match(value):
            raise ScheduleError(
                f"Invalid cron expression {expression!r}: the {label} field {value!r} "
                "is random or hashed, which daskflow does not support; write a fixed value."
            )
    try:
        croniter(normal, _DEFAULT_ANCHOR, ret_type=datetime, day_or=day_or).get_next()
    except CroniterBadDateError:
        raise ScheduleError(
            f"Cron expression {expression!r} never fires (no date matches, e.g. "
            "February 30th); check its day-of-month and month fields."
        ) from None
    except (CroniterError, ValueError, TypeError, KeyError) as exc:
        # croniter says the expression is bad but not where: try each field
        # alone among wildcards to name the culprit.
        for i, value in enumerate(fields):
            probe = ["*"] * len(fields)
            probe[i] = value
            if i < len(_CRON_FIELDS) and not croniter.is_valid(" ".join(probe)):
                name, allowed = _CRON_FIELDS[i]
                raise ScheduleError(
                    f"Invalid cron expression {expression!r}: the {name} field {value!r} "
                    f"is not valid (allowed: {allowed}). {_CRON_HELP}"
                ) from None
        message = f"Invalid cron expression {expression!r} ({exc}). {_CRON_HELP}"
        raise ScheduleError(message) from None
    return normal


@dataclass(frozen=True, init=False, repr=False)
class Cron(_WallClockSchedule):
    """Runs at the local times a cron expression matches, in ``timezone``.

    On a spring-forward day a time in the skipped hour ("0 2 * * *" or
    "30 2 * * *" in America/New_York) runs once, at the jump (03:00 EDT),
    instead of being lost; on a fall-back day a time in the repeated hour
    ("30 1 * * *") runs once, at its first occurrence (01:30 EDT). So an
    hourly cron pauses two hours at the fall back, as in Prefect; Prefect
    would run "30 2" at 03:30, daskflow at the jump, so that several skipped
    times make one run and never land after a real later time.
    ``day_or=False`` requires both day-of-month and day-of-week to match.
    """

    cron: str
    timezone: str
    day_or: bool

    def __init__(self, cron: str, timezone: str | None = "UTC", day_or: bool = True) -> None:
        name = timezone or "UTC"
        _zone(name)
        object.__setattr__(self, "cron", _check_cron(cron, day_or))
        object.__setattr__(self, "timezone", name)
        object.__setattr__(self, "day_or", bool(day_or))

    def __repr__(self) -> str:
        day_or = "" if self.day_or else ", day_or=False"
        return f"Cron({self.cron!r}, timezone={self.timezone!r}{day_or})"

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.cron, "timezone": self.timezone, "day_or": self.day_or}

    def _walls(self, wall: datetime, backward: bool) -> Iterator[datetime]:
        # get_next is strictly after its start: begin a second early so that
        # ``wall`` itself is a candidate.
        start = wall if backward else wall.replace(microsecond=0) - timedelta(seconds=1)
        it = croniter(self.cron, start, ret_type=datetime, day_or=self.day_or)
        step = it.get_prev if backward else it.get_next
        while True:
            try:
                yield step()
            except CroniterBadDateError:  # a year field that has run out
                return


def _as_interval(interval: timedelta | float) -> timedelta:
    value = None
    if isinstance(interval, timedelta):
        value = interval
    elif isinstance(interval, int | float) and not isinstance(interval, bool):
        value = timedelta(seconds=interval)
    if value is None or value <= timedelta(0):
        raise ScheduleError(
            f"Invalid interval {interval!r}: give a positive timedelta or number of seconds, "
            "e.g. Interval(timedelta(hours=6)) or Interval(3600) for every hour."
        )
    return value


def _as_datetime(value: datetime | str, what: str) -> datetime:
    try:
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise ScheduleError(
            f"Invalid {what} {value!r}: give a datetime or an ISO 8601 string such as '2026-01-05T09:00:00+01:00'."
        ) from None


@dataclass(frozen=True, init=False, repr=False, eq=False)
class Interval(Schedule):
    """Runs at ``anchor_date + k * interval`` for every integer ``k``.

    The whole days of the interval step the local calendar in ``timezone``
    (a daily run anchored at 09:00 stays at 09:00 across DST, and one anchored
    in a skipped hour runs at the jump); the remainder is exact elapsed time,
    so an hourly run fires every 60 minutes and shows 01:00 twice on the
    fall-back night. ``timezone`` defaults to the anchor's IANA zone, else
    UTC; a naive anchor is read in ``timezone``; no anchor means 2020-01-01
    00:00 local. Times before the anchor belong to the schedule too.
    """

    interval: timedelta
    anchor_date: datetime
    timezone: str

    def __init__(
        self,
        interval: timedelta | float,
        anchor_date: datetime | str | None = None,
        timezone: str | None = None,
    ) -> None:
        step = _as_interval(interval)
        anchor = None if anchor_date is None else _as_datetime(anchor_date, "anchor_date")
        name = timezone or getattr(getattr(anchor, "tzinfo", None), "key", None) or "UTC"
        tz = _zone(name)
        object.__setattr__(self, "interval", step)
        object.__setattr__(self, "timezone", name)
        moment = _to_utc(_DEFAULT_ANCHOR if anchor is None else anchor, tz)
        object.__setattr__(self, "anchor_date", moment.astimezone(tz))

    def _key(self) -> tuple[timedelta, datetime, str]:
        # In UTC: two anchors an hour apart in a repeated local hour compare
        # equal as same-zone datetimes.
        return (self.interval, self.anchor_date.astimezone(UTC), self.timezone)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _seconds(self) -> float:
        seconds = self.interval.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds

    def __repr__(self) -> str:
        anchor = self.anchor_date.isoformat()
        return f"Interval({self._seconds()!r}, anchor_date={anchor!r}, timezone={self.timezone!r})"

    def to_dict(self) -> dict[str, Any]:
        anchor = self.anchor_date.isoformat()
        return {"interval": self._seconds(), "anchor_date": anchor, "timezone": self.timezone}

    def _time(self, k: int) -> datetime:
        """The k-th scheduled instant in UTC (k may be negative)."""
        days, rest = self.interval.days, self.interval - timedelta(days=self.interval.days)
        if days == 0:
            return self.anchor_date.astimezone(UTC) + self.interval * k
        tz = self.tzinfo
        wall = _wall(self.anchor_date, tz) + timedelta(days=days * k)
        return _resolve(wall, tz) + rest * k

    def _index(self, moment: datetime) -> int:
        # Exact for sub-day intervals; off by at most one around a DST change
        # otherwise, which the callers' loops correct.
        return (moment - self.anchor_date.astimezone(UTC)) // self.interval

    def _forward(self, start: datetime, inclusive: bool) -> Iterator[datetime]:
        def wanted(t: datetime) -> bool:
            return t > start or (inclusive and t == start)

        k = self._index(start)
        while wanted(self._time(k - 1)):
            k -= 1
        while not wanted(self._time(k)):
            k += 1
        while True:
            yield self._time(k)
            k += 1

    def _backward(self, end: datetime) -> Iterator[datetime]:
        k = self._index(end)
        while self._time(k + 1) < end:
            k += 1
        while self._time(k) >= end:
            k -= 1
        while True:
            yield self._time(k)
            k -= 1


def _parse_dtstart(line: str, text: str) -> tuple[datetime, str | None]:
    """DTSTART's naive local time and its zone (None for a floating time)."""
    match = _DTSTART.match(line)
    if match is None:
        raise ScheduleError(f"Invalid RRULE {text!r}: cannot read {line!r}. {_RRULE_HELP}")
    params = dict(p.split("=", 1) for p in match["params"].split(";") if "=" in p)
    params = {key.upper(): value for key, value in params.items()}
    try:
        wall = datetime.strptime(match["date"] + (match["time"] or "000000"), "%Y%m%d%H%M%S")
    except ValueError:
        message = f"Invalid RRULE {text!r}: bad date in {line!r}. {_RRULE_HELP}"
        raise ScheduleError(message) from None
    zone = "UTC" if match["z"] else params.get("TZID")
    return wall, zone


@dataclass(frozen=True, init=False, repr=False)
class RRule(_WallClockSchedule):
    """Runs at the local times an RFC 5545 recurrence rule lists, in ``timezone``.

    ``timezone`` defaults to DTSTART's TZID (or UTC for a "Z" time, else UTC).
    The rule steps the local wall clock, so "FREQ=DAILY;BYHOUR=9" stays at
    09:00 across DST, with the same gap and fall-back rule as ``Cron``. Without
    DTSTART the rule starts at 2020-01-01 00:00 local, so times default to
    midnight, on the hour, etc.; a DTSTART in another zone is converted to
    ``timezone``. UNTIL and EXDATE are read as local times in ``timezone``.
    """

    rrule: str
    timezone: str
    # Parsed once; derived from the two fields above, so not compared.
    _rule: rrulebase = field(compare=False)
    _dtstart: datetime = field(compare=False)
    _step: timedelta | None = field(compare=False)

    def __init__(self, rrule: str, timezone: str | None = None) -> None:
        if not isinstance(rrule, str) or "FREQ=" not in rrule.upper():
            raise ScheduleError(f"Invalid RRULE {rrule!r}: it has no FREQ. {_RRULE_HELP}")
        lines = [line.strip() for line in rrule.strip().splitlines() if line.strip()]
        starts = [line for line in lines if line.upper().startswith("DTSTART")]
        rest = "\n".join(line for line in lines if not line.upper().startswith("DTSTART"))
        wall, zone = _parse_dtstart(starts[0], rrule) if starts else (_DEFAULT_ANCHOR, None)
        name = timezone or zone or "UTC"
        tz = _zone(name)
        if zone is not None and zone != name:
            wall = _wall(_resolve(wall, _zone(zone)), tz)
        try:
            # Naive and ignoretz: dateutil then steps the wall clock only, and
            # _resolve places each time on the time line.
            rule = rrulestr(rest, dtstart=wall, ignoretz=True, cache=False)
        except Exception as exc:  # dateutil raises ValueError, TypeError, KeyError...
            raise ScheduleError(f"Invalid RRULE {rrule!r} ({exc}). {_RRULE_HELP}") from None
        freq = re.search(r"FREQ=(\w+)", rest.upper())
        interval = re.search(r"INTERVAL=(\d+)", rest.upper())
        period = _PERIODS.get(freq[1] if freq else "")
        step = None
        if isinstance(rule, _DateutilRRule) and period and "COUNT=" not in rest.upper():
            step = timedelta(seconds=period * int(interval[1] if interval else 1))
        state = dict(rrule=rrule.strip(), timezone=name, _rule=rule, _dtstart=wall, _step=step)
        for key, value in state.items():
            object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        return f"RRule({self.rrule!r}, timezone={self.timezone!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Re-parse on arrival rather than pickle dateutil's internals.
        return (RRule, (self.rrule, self.timezone))

    def to_dict(self) -> dict[str, Any]:
        return {"rrule": self.rrule, "timezone": self.timezone}

    def _rule_near(self, target: datetime) -> rrulebase:
        """The rule restarted by whole periods to just before ``target``.

        dateutil walks every occurrence from DTSTART: a minutely rule from
        2020 takes seconds to reach today. Moving DTSTART by whole periods of
        a fixed-length frequency keeps every later occurrence (no COUNT).
        """
        rule, step, dtstart = self._rule, self._step, self._dtstart
        if step is None or target <= dtstart or not isinstance(rule, _DateutilRRule):
            return rule
        return rule.replace(dtstart=dtstart + step * ((target - dtstart) // step))

    def _walls(self, wall: datetime, backward: bool) -> Iterator[datetime]:
        if not backward:
            yield from self._rule_near(wall).xafter(wall, inc=True)
            return
        full = self._rule
        rule = self._rule_near(wall - timedelta(days=2))
        current = wall
        while True:
            previous = rule.before(current)
            if previous is None and rule is not full:
                rule = full  # ran off the restarted rule: fall back to the whole one
                previous = rule.before(current)
            if previous is None:
                return
            yield previous
            current = previous


_KINDS = ("cron", "interval", "rrule")
_KEYS = {"cron": {"cron", "timezone", "day_or"}, "rrule": {"rrule", "timezone"}}
_KEYS["interval"] = {"interval", "anchor_date", "timezone"}
_ONE_OF = (
    "pass exactly one of cron='0 6 * * *', interval=3600 (seconds or a timedelta), "
    "rrule='FREQ=WEEKLY;BYDAY=MO' or a Cron/Interval/RRule object"
)


def schedule_from_dict(data: Schedule | Mapping[str, Any]) -> Schedule:
    """A schedule from its dict form, e.g. ``{"cron": "0 6 * * *", "timezone": "UTC"}``.

    Accepts what ``to_dict`` returns; a Schedule passes through unchanged.
    """
    if isinstance(data, Schedule):
        return data
    if not isinstance(data, Mapping):
        raise ScheduleError(f"Invalid schedule {data!r}: {_ONE_OF}, e.g. {{'cron': '0 6 * * *'}}.")
    kinds = [kind for kind in _KINDS if data.get(kind) is not None]
    if len(kinds) != 1:
        raise ScheduleError(f"Invalid schedule {dict(data)!r}: {_ONE_OF}.")
    kind = kinds[0]
    unknown = sorted(set(data) - _KEYS[kind])
    if unknown:
        raise ScheduleError(
            f"Invalid schedule {dict(data)!r}: unknown key(s) {unknown}; a {kind} schedule takes {sorted(_KEYS[kind])}."
        )
    if kind == "cron":
        return Cron(data["cron"], timezone=data.get("timezone"), day_or=data.get("day_or", True))
    if kind == "interval":
        return Interval(data["interval"], data.get("anchor_date"), data.get("timezone"))
    return RRule(data["rrule"], timezone=data.get("timezone"))


def construct_schedule(
    cron: str | None = None,
    interval: timedelta | float | None = None,
    rrule: str | None = None,
    timezone: str | None = None,
    anchor_date: datetime | str | None = None,
    *,
    schedule: Schedule | Mapping[str, Any] | None = None,
) -> Schedule:
    """The one schedule that ``flow.serve(cron=... | interval=... | rrule=...)`` names."""
    options = {"cron": cron, "interval": interval, "rrule": rrule, "schedule": schedule}
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        which = f"several schedules ({' and '.join(given)})" if given else "no schedule"
        raise ScheduleError(f"Got {which}: {_ONE_OF}.")
    if anchor_date is not None and interval is None:
        raise ScheduleError(f"anchor_date={anchor_date!r} needs interval=...; drop it or add one.")
    if schedule is not None and timezone is not None:
        raise ScheduleError(f"Set timezone={timezone!r} on the schedule itself: {schedule!r}.")
    if schedule is not None:
        return schedule_from_dict(schedule)
    if cron is not None:
        return Cron(cron, timezone=timezone)
    if interval is not None:
        return Interval(interval, anchor_date=anchor_date, timezone=timezone)
    assert rrule is not None
    return RRule(rrule, timezone=timezone)


def data_interval(schedule: Schedule | Mapping[str, Any], scheduled_time: datetime) -> tuple[datetime, datetime]:
    """(previous scheduled time, ``scheduled_time``) for ``{{ data_interval_start/end }}``.

    The previous time is the schedule's last one strictly before
    ``scheduled_time``, which itself need not be on the schedule (a manual
    run). When there is none (the first run of an RRULE), the interval is
    empty: both ends are ``scheduled_time``.
    """
    resolved = schedule_from_dict(schedule)
    tz = resolved.tzinfo
    end = _to_utc(scheduled_time, tz).astimezone(tz)
    start = resolved.previous_time(end)
    return (end if start is None else start, end)
