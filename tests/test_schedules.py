"""Schedules against times worked out by hand.

DST dates used below (2026): America/New_York springs forward on Sun 8 March
at 02:00 EST (07:00 UTC) and falls back on Sun 1 November at 02:00 EDT
(06:00 UTC); Europe/Berlin springs forward on Sun 29 March at 02:00 CET
(01:00 UTC) and falls back on Sun 25 October at 03:00 CEST (01:00 UTC).
Expected instants are written in UTC, and local readings as "HH:MM ZONE".
"""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import daskflow.schedules as schedules_module
from daskflow.exceptions import ScheduleError
from daskflow.schedules import (
    Cron,
    Interval,
    RRule,
    Schedule,
    construct_schedule,
    data_interval,
    schedule_from_dict,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def as_utc(times: list[datetime]) -> list[datetime]:
    return [t.astimezone(UTC) for t in times]


def local(times: list[datetime]) -> list[str]:
    return [t.strftime("%m-%d %H:%M %Z") for t in times]


def test_public_names() -> None:
    assert sorted(schedules_module.__all__) == [
        "Cron", "Interval", "RRule", "Schedule",
        "construct_schedule", "data_interval", "schedule_from_dict",
    ]  # fmt: skip


# --- cron ---------------------------------------------------------------------


def test_cron_utc_is_strictly_after_start() -> None:
    times = Cron("0 6 * * *").next_times(2, start=utc(2026, 1, 15, 6, 0))
    assert as_utc(times) == [utc(2026, 1, 16, 6), utc(2026, 1, 17, 6)]
    assert all(t.tzinfo == ZoneInfo("UTC") for t in times)


def test_cron_non_utc_timezone() -> None:
    times = Cron("0 6 * * *", timezone="Asia/Tokyo").next_times(1, start=utc(2026, 1, 15, 0))
    assert as_utc(times) == [utc(2026, 1, 15, 21)]  # 06:00 JST on the 16th
    assert times[0].utcoffset() == timedelta(hours=9)


def test_naive_start_is_read_in_the_schedule_timezone() -> None:
    times = Cron("0 6 * * *", timezone="Asia/Tokyo").next_times(1, datetime(2026, 1, 15, 5, 59))
    assert as_utc(times) == [utc(2026, 1, 14, 21)]


def test_cron_new_york_spring_forward_runs_at_the_jump() -> None:
    times = Cron("0 2 * * *", timezone=NY).next_times(3, start=utc(2026, 3, 7, 12))
    assert as_utc(times) == [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6), utc(2026, 3, 10, 6)]
    assert local(times) == ["03-08 03:00 EDT", "03-09 02:00 EDT", "03-10 02:00 EDT"]
    half_past = Cron("30 2 * * *", timezone=NY).next_times(2, start=utc(2026, 3, 7, 12))
    assert as_utc(half_past) == [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)]


def test_cron_new_york_fall_back_fires_once() -> None:
    times = Cron("30 1 * * *", timezone=NY).next_times(3, start=utc(2026, 10, 31, 12))
    assert as_utc(times) == [
        utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30), utc(2026, 11, 3, 6, 30),
    ]  # fmt: skip
    assert local(times)[0] == "11-01 01:30 EDT"
    day = Cron("30 1 * * *", timezone=NY).times_between(utc(2026, 11, 1, 4), utc(2026, 11, 2, 4))
    assert as_utc(list(day)) == [utc(2026, 11, 1, 5, 30)]


def test_hourly_cron_new_york_pauses_two_hours_at_fall_back() -> None:
    times = Cron("0 * * * *", timezone=NY).next_times(3, start=utc(2026, 11, 1, 4, 30))
    assert as_utc(times) == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)]
    assert local(times) == ["11-01 01:00 EDT", "11-01 02:00 EST", "11-01 03:00 EST"]


def test_hourly_cron_new_york_spring_forward_has_no_duplicate() -> None:
    times = Cron("0 * * * *", timezone=NY).times_between(utc(2026, 3, 8, 5), utc(2026, 3, 8, 9))
    assert as_utc(list(times)) == [
        utc(2026, 3, 8, 5), utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8),
        utc(2026, 3, 8, 9),
    ]  # fmt: skip


def test_cron_berlin_spring_forward_and_fall_back() -> None:
    cron = Cron("30 2 * * *", timezone=BERLIN)
    spring = cron.next_times(2, start=utc(2026, 3, 28, 12))
    assert as_utc(spring) == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
    assert local(spring) == ["03-29 03:00 CEST", "03-30 02:30 CEST"]
    autumn = cron.next_times(2, start=utc(2026, 10, 24, 12))
    assert as_utc(autumn) == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert local(autumn) == ["10-25 02:30 CEST", "10-26 02:30 CET"]


def test_start_just_before_and_at_the_jump() -> None:
    cron = Cron("30 2 * * *", timezone=NY)
    assert as_utc(cron.next_times(1, utc(2026, 3, 8, 6, 59, 59))) == [utc(2026, 3, 8, 7)]
    assert as_utc(cron.next_times(1, utc(2026, 3, 8, 7))) == [utc(2026, 3, 9, 6, 30)]
    assert as_utc(list(cron.times_between(utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)))) == [utc(2026, 3, 8, 7)]


def test_start_in_the_repeated_hour() -> None:
    quarter = Cron("*/15 * * * *", timezone=NY)
    # 01:20 EST is the second 01:20; the next new quarter hour is 02:00 EST.
    assert as_utc(quarter.next_times(1, utc(2026, 11, 1, 6, 20))) == [utc(2026, 11, 1, 7)]
    previous = quarter.previous_time(utc(2026, 11, 1, 6, 30))
    # An ambiguous local time never compares equal across zones (PEP 495): go to UTC.
    assert previous is not None and previous.astimezone(UTC) == utc(2026, 11, 1, 5, 45)


def test_leap_day_cron() -> None:
    times = Cron("0 0 29 2 *").next_times(2, start=utc(2026, 1, 1))
    assert as_utc(times) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_end_of_month_cron() -> None:
    last = Cron("0 0 L * *").next_times(3, start=datetime(2026, 1, 15))
    assert as_utc(last) == [utc(2026, 1, 31), utc(2026, 2, 28), utc(2026, 3, 31)]
    thirty_first = Cron("0 0 31 * *").next_times(3, start=datetime(2026, 1, 15))
    assert as_utc(thirty_first) == [utc(2026, 1, 31), utc(2026, 3, 31), utc(2026, 5, 31)]


def test_cron_day_or() -> None:
    friday_13th = Cron("0 0 13 * 5", day_or=False).next_times(3, start=utc(2026, 1, 1))
    assert as_utc(friday_13th) == [utc(2026, 2, 13), utc(2026, 3, 13), utc(2026, 11, 13)]
    either = Cron("0 0 13 * 5").next_times(2, start=utc(2026, 1, 1))
    assert as_utc(either) == [utc(2026, 1, 2), utc(2026, 1, 9)]


# --- interval -----------------------------------------------------------------


def test_daily_interval_keeps_wall_clock_across_new_york_dst() -> None:
    daily = Interval(timedelta(days=1), anchor_date=datetime(2026, 3, 1, 9), timezone=NY)
    spring = daily.next_times(2, start=utc(2026, 3, 7, 15))
    assert as_utc(spring) == [utc(2026, 3, 8, 13), utc(2026, 3, 9, 13)]
    assert local(spring) == ["03-08 09:00 EDT", "03-09 09:00 EDT"]
    autumn = daily.next_times(2, start=utc(2026, 10, 31, 14))
    assert as_utc(autumn) == [utc(2026, 11, 1, 14), utc(2026, 11, 2, 14)]


def test_daily_interval_keeps_wall_clock_across_berlin_dst() -> None:
    daily = Interval(86400, anchor_date=datetime(2026, 3, 1, 6), timezone=BERLIN)
    assert as_utc(daily.next_times(2, utc(2026, 3, 28, 12))) == [
        utc(2026, 3, 29, 4), utc(2026, 3, 30, 4),
    ]  # fmt: skip
    assert as_utc(daily.next_times(2, utc(2026, 10, 24, 12))) == [
        utc(2026, 10, 25, 5), utc(2026, 10, 26, 5),
    ]  # fmt: skip


def test_daily_interval_anchored_in_the_skipped_hour() -> None:
    daily = Interval(timedelta(days=1), anchor_date=datetime(2026, 3, 1, 2, 30), timezone=NY)
    times = daily.next_times(2, start=utc(2026, 3, 7, 12))
    assert local(times) == ["03-08 03:00 EDT", "03-09 02:30 EDT"]


def test_hourly_interval_is_elapsed_time_across_new_york_dst() -> None:
    hourly = Interval(3600, timezone=NY)
    autumn = hourly.next_times(4, start=utc(2026, 11, 1, 4, 30))
    assert as_utc(autumn) == [
        utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8),
    ]  # fmt: skip
    assert local(autumn) == [
        "11-01 01:00 EDT", "11-01 01:00 EST", "11-01 02:00 EST", "11-01 03:00 EST",
    ]  # fmt: skip
    spring = hourly.next_times(3, start=utc(2026, 3, 8, 5, 30))
    assert local(spring) == ["03-08 01:00 EST", "03-08 03:00 EDT", "03-08 04:00 EDT"]


def test_hourly_interval_across_berlin_fall_back() -> None:
    hourly = Interval(timedelta(hours=1), timezone=BERLIN)
    times = hourly.next_times(3, start=utc(2026, 10, 24, 23, 30))
    assert as_utc(times) == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]
    assert local(times) == ["10-25 02:00 CEST", "10-25 02:00 CET", "10-25 03:00 CET"]


def test_interval_anchor_phase_and_times_before_the_anchor() -> None:
    six_hourly = Interval(timedelta(hours=6), anchor_date=utc(2026, 1, 1, 3))
    times = six_hourly.next_times(2, utc(2026, 1, 1))
    assert as_utc(times) == [utc(2026, 1, 1, 3), utc(2026, 1, 1, 9)]
    future_anchor = Interval(3600, anchor_date=utc(2030, 1, 1))
    assert as_utc(future_anchor.next_times(1, utc(2026, 1, 1, 0, 30))) == [utc(2026, 1, 1, 1)]


def test_interval_of_a_day_and_a_half() -> None:
    day_and_a_half = Interval(timedelta(hours=36), anchor_date=utc(2026, 1, 1))
    times = day_and_a_half.next_times(2, utc(2026, 1, 1))
    assert as_utc(times) == [utc(2026, 1, 2, 12), utc(2026, 1, 4)]


def test_interval_timezone_comes_from_the_anchor() -> None:
    berlin_anchor = datetime(2026, 1, 1, tzinfo=ZoneInfo(BERLIN))
    assert Interval(60, anchor_date=berlin_anchor).timezone == BERLIN
    assert Interval(60, anchor_date="2026-01-01T00:00:00+01:00").timezone == "UTC"
    assert Interval(60).anchor_date == utc(2020, 1, 1)


def test_naive_start_in_the_gap_reads_as_the_jump() -> None:
    hourly = Interval(3600, timezone=NY)
    assert as_utc(hourly.next_times(1, datetime(2026, 3, 8, 2, 30))) == [utc(2026, 3, 8, 8)]


# --- rrule --------------------------------------------------------------------


def test_weekly_rrule_on_mondays_across_berlin_dst() -> None:
    weekly = RRule("FREQ=WEEKLY;BYDAY=MO;BYHOUR=9", timezone=BERLIN)
    times = weekly.next_times(3, start=utc(2026, 3, 20))
    assert as_utc(times) == [utc(2026, 3, 23, 8), utc(2026, 3, 30, 7), utc(2026, 4, 6, 7)]


def test_rrule_without_dtstart_starts_at_midnight() -> None:
    times = RRule("FREQ=WEEKLY;BYDAY=MO").next_times(2, start=utc(2026, 1, 1))
    assert as_utc(times) == [utc(2026, 1, 5), utc(2026, 1, 12)]


def test_rrule_last_day_of_month() -> None:
    times = RRule("FREQ=MONTHLY;BYMONTHDAY=-1").next_times(3, start=utc(2028, 1, 15))
    assert as_utc(times) == [utc(2028, 1, 31), utc(2028, 2, 29), utc(2028, 3, 31)]


def test_rrule_dtstart_with_tzid_and_count() -> None:
    rule = RRule("DTSTART;TZID=America/New_York:20260302T090000\nRRULE:FREQ=DAILY;COUNT=10")
    assert rule.timezone == NY
    times = rule.next_times(3, start=utc(2026, 3, 7))
    assert as_utc(times) == [utc(2026, 3, 7, 14), utc(2026, 3, 8, 13), utc(2026, 3, 9, 13)]
    # COUNT=10 ends on 11 March: only two are left.
    assert as_utc(rule.next_times(5, start=utc(2026, 3, 10))) == [
        utc(2026, 3, 10, 13), utc(2026, 3, 11, 13),
    ]  # fmt: skip


def test_rrule_utc_dtstart_in_another_timezone() -> None:
    rule = RRule("DTSTART:20260105T080000Z\nRRULE:FREQ=DAILY", timezone=BERLIN)
    assert as_utc(rule.next_times(1, start=utc(2026, 3, 29, 12))) == [utc(2026, 3, 30, 7)]


def test_hourly_rrule_matches_hourly_cron_at_fall_back() -> None:
    times = RRule("FREQ=HOURLY", timezone=NY).next_times(2, start=utc(2026, 11, 1, 4, 30))
    assert as_utc(times) == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)]


def test_minutely_rrule_far_from_its_dtstart() -> None:
    rule = RRule("FREQ=MINUTELY;INTERVAL=7")  # from 2020-01-01 00:00 UTC
    # 2026-01-01 is 2192 days later, 3_156_480 minutes = 450_925 * 7 + 5.
    assert as_utc(rule.next_times(2, start=utc(2026, 1, 1))) == [
        utc(2026, 1, 1, 0, 2), utc(2026, 1, 1, 0, 9),
    ]  # fmt: skip
    assert rule.previous_time(utc(2026, 1, 1)) == utc(2025, 12, 31, 23, 55)


# --- times_between and data_interval -----------------------------------------


def test_times_between_includes_both_ends() -> None:
    daily = Cron("0 0 * * *")
    week = list(daily.times_between(utc(2026, 1, 1), utc(2026, 1, 7)))
    assert as_utc(week) == [utc(2026, 1, day) for day in range(1, 8)]
    assert list(daily.times_between(utc(2026, 1, 7), utc(2026, 1, 1))) == []
    quarters = Interval(timedelta(hours=6), anchor_date=utc(2026, 1, 1))
    assert len(list(quarters.times_between(utc(2026, 1, 1), utc(2026, 1, 2)))) == 5


def test_data_interval_for_the_seed_deployment() -> None:
    schedule = schedule_from_dict({"cron": "0 6 * * *", "timezone": "UTC"})
    start, end = data_interval(schedule, utc(2026, 1, 15, 6))
    assert (start, end) == (utc(2026, 1, 14, 6), utc(2026, 1, 15, 6))
    assert data_interval({"cron": "0 6 * * *"}, utc(2026, 1, 15, 6))[0] == utc(2026, 1, 14, 6)


def test_data_interval_across_dst_and_off_schedule() -> None:
    start, end = data_interval(Cron("0 6 * * *", timezone=NY), datetime(2026, 3, 8, 6))
    assert as_utc([start, end]) == [utc(2026, 3, 7, 11), utc(2026, 3, 8, 10)]  # 23 hours
    start, end = data_interval(Interval(3600, timezone=NY), utc(2026, 11, 1, 6))
    assert as_utc([start, end]) == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6)]
    assert data_interval(Cron("0 * * * *"), utc(2026, 1, 1, 10, 17))[0] == utc(2026, 1, 1, 10)


def test_data_interval_of_the_first_run_is_empty() -> None:
    rule = RRule("DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;COUNT=3")
    assert data_interval(rule, utc(2026, 1, 1)) == (utc(2026, 1, 1), utc(2026, 1, 1))
    assert rule.previous_time(utc(2026, 1, 1)) is None


# --- dicts, construction, values ----------------------------------------------


def test_schedule_from_dict_forms() -> None:
    assert schedule_from_dict({"cron": "0 6 * * *", "timezone": "UTC"}) == Cron("0 6 * * *")
    hourly = schedule_from_dict({"interval": 3600, "anchor_date": "2026-01-01T00:00:00"})
    assert isinstance(hourly, Interval)
    assert hourly.interval == timedelta(hours=1) and hourly.anchor_date == utc(2026, 1, 1)
    assert schedule_from_dict({"rrule": "FREQ=DAILY"}) == RRule("FREQ=DAILY", timezone="UTC")
    cron = Cron("0 6 * * *", timezone=NY)
    assert schedule_from_dict(cron) is cron


@pytest.mark.parametrize(
    "schedule",
    [
        Cron("0 6 * * 1-5", timezone=NY, day_or=False),
        Interval(timedelta(minutes=90), anchor_date=datetime(2026, 11, 1, 1, 30), timezone=NY),
        RRule("FREQ=WEEKLY;BYDAY=MO", timezone=BERLIN),
    ],
)
def test_round_trips(schedule: Schedule) -> None:
    assert schedule_from_dict(schedule.to_dict()) == schedule
    assert pickle.loads(pickle.dumps(schedule)) == schedule
    assert hash(schedule_from_dict(schedule.to_dict())) == hash(schedule)
    namespace = {"Cron": Cron, "Interval": Interval, "RRule": RRule}
    assert eval(repr(schedule), namespace) == schedule


def test_repr_reads_like_the_constructor() -> None:
    assert repr(Cron("0 6 * * *")) == "Cron('0 6 * * *', timezone='UTC')"
    assert repr(Cron("0 0 13 * 5", day_or=False)) == ("Cron('0 0 13 * 5', timezone='UTC', day_or=False)")
    assert repr(Interval(3600, anchor_date=utc(2026, 1, 1))) == (
        "Interval(3600, anchor_date='2026-01-01T00:00:00+00:00', timezone='UTC')"
    )
    assert repr(RRule("FREQ=DAILY", timezone=NY)) == ("RRule('FREQ=DAILY', timezone='America/New_York')")


def test_schedules_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        Cron("0 6 * * *").cron = "0 7 * * *"  # type: ignore[misc]


def test_construct_schedule() -> None:
    assert construct_schedule(cron="0 6 * * *", timezone=NY) == Cron("0 6 * * *", timezone=NY)
    assert construct_schedule(interval=timedelta(hours=1)) == Interval(3600)
    assert construct_schedule(interval=60, anchor_date=utc(2026, 1, 1)) == Interval(60, anchor_date=utc(2026, 1, 1))
    assert construct_schedule(rrule="FREQ=DAILY") == RRule("FREQ=DAILY")
    cron = Cron("0 6 * * *")
    assert construct_schedule(schedule=cron) is cron
    assert construct_schedule(schedule={"cron": "0 6 * * *"}) == cron


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 25 * * *", ["hour", "0-23", "'0 6 * * *'"]),
        ("61 * * * *", ["minute"]),
        ("0 0 * * MON-XYZ", ["day-of-week", "SUN-SAT"]),
        ("0 0 * 13 *", ["month"]),
        ("0 0 * *", ["4 field", "5"]),
        ("0 0 30 2 *", ["never fires"]),
        ("H 0 * * *", ["hashed"]),
        ("", ["'0 6 * * *'"]),
    ],
)
def test_bad_cron_names_the_problem(expression: str, words: list[str]) -> None:
    with pytest.raises(ScheduleError) as info:
        Cron(expression)
    assert repr(expression) in str(info.value)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_timezone_suggests_the_iana_form() -> None:
    with pytest.raises(ScheduleError, match="'Europe/berlin'.*Did you mean 'Europe/Berlin'"):
        Cron("0 6 * * *", timezone="Europe/berlin")
    with pytest.raises(ScheduleError, match="'Mars/Base'.*'Europe/Berlin'"):
        Interval(60, timezone="Mars/Base")
    with pytest.raises(ScheduleError, match="'Mars/Base'.*'Europe/Berlin'"):
        RRule("FREQ=DAILY", "Mars/Base")


@pytest.mark.parametrize("interval", [0, -5, timedelta(0), timedelta(seconds=-1), "hourly", True])
def test_bad_interval(interval: object) -> None:
    with pytest.raises(ScheduleError) as info:
        Interval(interval)  # type: ignore[arg-type]
    assert repr(interval) in str(info.value)


def test_bad_anchor_date() -> None:
    with pytest.raises(ScheduleError, match="'yesterday'"):
        Interval(60, anchor_date="yesterday")


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("FREQ=SOMETIMES", "SOMETIMES"),
        ("BYDAY=MO", "no FREQ"),
        ("FREQ=DAILY;BYHOUR=25", "hour"),
        ("DTSTART:2026\nRRULE:FREQ=DAILY", "DTSTART:2026"),
        ("DTSTART:20261399T000000\nRRULE:FREQ=DAILY", "bad date"),
    ],
)
def test_bad_rrule_is_quoted(text: str, word: str) -> None:
    with pytest.raises(ScheduleError) as info:
        RRule(text)
    assert repr(text) in str(info.value) and word in str(info.value)


@pytest.mark.parametrize("n", [0, -1])
def test_n_must_be_positive(n: int) -> None:
    with pytest.raises(ScheduleError, match=f"n={n}"):
        Cron("0 6 * * *").next_times(n)


def test_bad_schedule_dicts() -> None:
    with pytest.raises(ScheduleError, match="exactly one of"):
        schedule_from_dict({})
    with pytest.raises(ScheduleError, match="exactly one of"):
        schedule_from_dict({"cron": "0 6 * * *", "interval": 60})
    with pytest.raises(ScheduleError, match="'anchor_date'"):
        schedule_from_dict({"cron": "0 6 * * *", "anchor_date": "2026-01-01"})
    with pytest.raises(ScheduleError, match="'0 6 \\* \\* \\*'"):
        schedule_from_dict("0 6 * * *")  # type: ignore[arg-type]


def test_construct_schedule_refuses_zero_or_several() -> None:
    with pytest.raises(ScheduleError, match="no schedule.*exactly one of"):
        construct_schedule()
    with pytest.raises(ScheduleError, match="cron and interval"):
        construct_schedule(cron="0 6 * * *", interval=60)
    with pytest.raises(ScheduleError, match="anchor_date"):
        construct_schedule(cron="0 6 * * *", anchor_date=utc(2026, 1, 1))
    with pytest.raises(ScheduleError, match="on the schedule itself"):
        construct_schedule(schedule=Cron("0 6 * * *"), timezone=NY)
