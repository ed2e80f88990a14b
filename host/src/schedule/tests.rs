//! Fire times checked by hand against calendars and the tz database's
//! transitions for 2026 (US: 8 March and 1 November at 02:00; EU: 29 March
//! and 25 October at 01:00 UTC; Lord Howe: 5 April 02:00 → 01:30 and
//! 4 October 02:00 → 02:30).

use super::*;

fn zone(name: &str) -> Zone {
    Zone::named(name).unwrap()
}

/// The next `n` fire times of `expr` in `tz` after `from`, printed in `tz`.
fn cron_times(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let timetable = Timetable::cron(expr, zone(tz)).unwrap();
    timetable
        .upcoming(parse_instant(from).unwrap(), n)
        .into_iter()
        .map(|t| zone(tz).format(t))
        .collect()
}

fn utc(expr: &str, from: &str, n: usize) -> Vec<String> {
    cron_times(expr, "UTC", from, n)
}

#[test]
fn month_ends_skip_months_without_the_day() {
    assert_eq!(
        utc("0 0 31 * *", "2026-01-31T00:00:00Z", 3),
        [
            "2026-03-31T00:00:00+00:00",
            "2026-05-31T00:00:00+00:00",
            "2026-07-31T00:00:00+00:00"
        ]
    );
    assert_eq!(
        utc("0 12 30 * *", "2026-01-30T12:00:00Z", 1),
        ["2026-03-30T12:00:00+00:00"]
    );
    assert_eq!(
        utc("59 23 31 12 *", "2026-12-31T23:59:00Z", 1),
        ["2027-12-31T23:59:00+00:00"]
    );
}

#[test]
fn leap_day_waits_for_a_leap_year() {
    assert_eq!(
        utc("0 0 29 feb *", "2026-03-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
    );
}

#[test]
fn steps_lists_ranges_and_names() {
    assert_eq!(
        utc("*/15 * * * *", "2026-01-01T00:07:30Z", 4),
        [
            "2026-01-01T00:15:00+00:00",
            "2026-01-01T00:30:00+00:00",
            "2026-01-01T00:45:00+00:00",
            "2026-01-01T01:00:00+00:00"
        ]
    );
    assert_eq!(
        utc("5,35 8,20 * * *", "2026-01-01T08:05:00Z", 4),
        [
            "2026-01-01T08:35:00+00:00",
            "2026-01-01T20:05:00+00:00",
            "2026-01-01T20:35:00+00:00",
            "2026-01-02T08:05:00+00:00"
        ]
    );
    // 2026-07-01 is a Wednesday.
    assert_eq!(
        utc("0 9 * jan,JUL mon-fri", "2026-06-30T00:00:00Z", 4),
        [
            "2026-07-01T09:00:00+00:00",
            "2026-07-02T09:00:00+00:00",
            "2026-07-03T09:00:00+00:00",
            "2026-07-06T09:00:00+00:00"
        ]
    );
    // 7 is Sunday as well as 0; 2026-11-29 is a Sunday.
    assert_eq!(
        utc("0 0 * * 7", "2026-11-25T00:00:00Z", 1),
        ["2026-11-29T00:00:00+00:00"]
    );
}

#[test]
fn day_of_month_or_day_of_week_as_vixie_cron() {
    // Both restricted: the 13th OR any Friday (2026-01-02 is a Friday).
    assert_eq!(
        utc("0 0 13 * fri", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-02T00:00:00+00:00",
            "2026-01-09T00:00:00+00:00",
            "2026-01-13T00:00:00+00:00",
            "2026-01-16T00:00:00+00:00"
        ]
    );
    // Only one restricted: that one alone decides.
    assert_eq!(
        utc("0 0 13 * *", "2026-01-01T00:00:00Z", 2),
        ["2026-01-13T00:00:00+00:00", "2026-02-13T00:00:00+00:00"]
    );
}

#[test]
fn macros_seconds_last_day_and_nth_weekday() {
    assert_eq!(
        utc("@daily", "2026-02-28T12:00:00Z", 2),
        ["2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00"]
    );
    assert_eq!(
        utc("@hourly", "2026-02-28T23:00:00Z", 1),
        ["2026-03-01T00:00:00+00:00"]
    );
    assert_eq!(
        utc("*/20 * * * * *", "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-01T00:00:20+00:00",
            "2026-01-01T00:00:40+00:00",
            "2026-01-01T00:01:00+00:00"
        ]
    );
    assert_eq!(
        utc("0 0 L * *", "2026-02-01T00:00:00Z", 2),
        ["2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]
    );
    // The second Monday: 2026-01-12 and 2026-02-09.
    assert_eq!(
        utc("0 0 * * 1#2", "2026-01-01T00:00:00Z", 2),
        ["2026-01-12T00:00:00+00:00", "2026-02-09T00:00:00+00:00"]
    );
}

#[test]
fn next_is_strictly_after_even_within_a_second() {
    let every_minute = Timetable::cron("* * * * *", Zone::utc()).unwrap();
    let ten = parse_instant("2026-01-01T10:00:00Z").unwrap();
    let minute = 60 * MICROS_PER_SECOND;
    assert_eq!(every_minute.next_after(ten - 1), Some(ten));
    assert_eq!(every_minute.next_after(ten), Some(ten + minute));
    assert_eq!(every_minute.next_after(ten + 500_000), Some(ten + minute));
}

#[test]
fn new_york_spring_forward_and_fall_back() {
    // 02:30 does not exist on 8 March: once, at the first instant after the gap.
    assert_eq!(
        cron_times(
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T00:00:00-05:00",
            3
        ),
        [
            "2026-03-07T02:30:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-09T02:30:00-04:00"
        ]
    );
    // 01:30 happens twice on 1 November: once, the first time.
    assert_eq!(
        cron_times(
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00-04:00",
            3
        ),
        [
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00",
            "2026-11-03T01:30:00-05:00"
        ]
    );
    // Hourly fires every real hour through both changes.
    assert_eq!(
        cron_times(
            "0 * * * *",
            "America/New_York",
            "2026-03-08T00:30:00-05:00",
            3
        ),
        [
            "2026-03-08T01:00:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-08T04:00:00-04:00"
        ]
    );
    assert_eq!(
        cron_times(
            "0 * * * *",
            "America/New_York",
            "2026-11-01T00:30:00-04:00",
            4
        ),
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T02:00:00-05:00",
            "2026-11-01T03:00:00-05:00"
        ]
    );
}

#[test]
fn berlin_spring_forward_and_fall_back() {
    assert_eq!(
        cron_times(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T00:00:00+01:00",
            3
        ),
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ]
    );
    assert_eq!(
        cron_times(
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00+02:00",
            3
        ),
        [
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T02:30:00+01:00",
            "2026-10-27T02:30:00+01:00"
        ]
    );
    // The example: 02:00 every night in Berlin, across both changes.
    assert_eq!(
        cron_times("0 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00+01:00", 2),
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]
    );
    assert_eq!(
        cron_times("0 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00+02:00", 2),
        ["2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"]
    );
}

#[test]
fn lord_howe_half_hour_shifts() {
    // 4 October: 02:00 (+10:30) jumps to 02:30 (+11:00); 02:15 does not exist.
    assert_eq!(
        cron_times(
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-03T12:00:00+10:30",
            2
        ),
        ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]
    );
    // 5 April: 02:00 (+11:00) falls back to 01:30 (+10:30); 01:45 happens twice.
    assert_eq!(
        cron_times(
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T12:00:00+11:00",
            2
        ),
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]
    );
    // Every 15 minutes through the repeated half hour: both passes, in order.
    assert_eq!(
        cron_times(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-04-05T01:40:00+11:00",
            5
        ),
        [
            "2026-04-05T01:45:00+11:00",
            "2026-04-05T01:30:00+10:30",
            "2026-04-05T01:45:00+10:30",
            "2026-04-05T02:00:00+10:30",
            "2026-04-05T02:15:00+10:30"
        ]
    );
}

#[test]
fn intervals_keep_to_the_grid_through_their_anchor() {
    let anchor = parse_instant("2026-01-01T03:00:00+01:00").unwrap();
    let every_90m = Timetable::interval(90 * 60, Some(anchor)).unwrap();
    let times: Vec<String> = every_90m
        .upcoming(parse_instant("2026-01-01T00:10:00Z").unwrap(), 3)
        .into_iter()
        .map(|t| Zone::utc().format(t))
        .collect();
    assert_eq!(
        times,
        [
            "2026-01-01T00:30:00+00:00",
            "2026-01-01T02:00:00+00:00",
            "2026-01-01T03:30:00+00:00"
        ]
    );
    // Without an anchor: the Unix epoch, as `interval_seconds` always was.
    let every_minute = Timetable::interval(60, None).unwrap();
    assert_eq!(every_minute.next_after(30_000_000), Some(60_000_000));
    assert_eq!(every_minute.next_after(60_000_000), Some(120_000_000));
    assert_eq!(
        Timetable::interval(0, None).unwrap_err(),
        ScheduleError::ZeroInterval
    );
}

#[test]
fn a_bad_cron_names_its_field() {
    let message = |expr: &str| Timetable::cron(expr, Zone::utc()).unwrap_err().to_string();
    assert!(
        message("* * *").contains("has 3 fields; expected 5"),
        "{}",
        message("* * *")
    );
    assert!(
        message("61 * * * *").contains("minute field '61'"),
        "{}",
        message("61 * * * *")
    );
    assert!(message("* 24 * * *").contains("hour field '24'"));
    assert!(message("* * 0 * *").contains("day-of-month field '0'"));
    assert!(message("* * * foo *").contains("month field 'foo'"));
    assert!(message("* * * * x/2").contains("day-of-week field 'x/2'"));
    assert!(message("*/0 * * * *").contains("minute field '*/0'"));
    assert!(message("70 * * * * *").contains("second field '70'"));
    assert!(message("@fortnightly").contains("not a known macro"));
    assert!(message("0 0 30 2 *").contains("never fires"));
    assert!(message("0 0 31 4,6,9,11 *").contains("never fires"));
    assert!(message("61 * * * *").ends_with("minute takes 0-59"));
}

#[test]
fn zones_are_iana_names_and_instants_carry_offsets() {
    assert!(Zone::named("Europe/Berlin").is_ok());
    assert_eq!(Zone::named("utc").unwrap(), Zone::utc());
    let err = Zone::named("Mars/Olympus_Mons").unwrap_err().to_string();
    assert!(
        err.contains("unknown time zone 'Mars/Olympus_Mons'"),
        "{err}"
    );
    assert!(parse_instant("2026-01-01T03:00:00").is_err());
    assert!(
        parse_instant("yesterday")
            .unwrap_err()
            .to_string()
            .contains("RFC 3339")
    );
    assert_eq!(format_utc_millis(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        format_utc_millis(951_782_400_123_000),
        "2000-02-29T00:00:00.123Z"
    );
}

#[test]
fn rrule_with_byday_and_count_keeps_local_time_across_dst() {
    let start = parse_instant("2026-03-23T09:00:00+01:00").unwrap();
    let berlin = zone("Europe/Berlin");
    let rule = Timetable::rrule(
        "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4",
        berlin.clone(),
        Some(start),
    )
    .unwrap();
    let times: Vec<String> = rule
        .upcoming(parse_instant("2026-01-01T00:00:00Z").unwrap(), 10)
        .into_iter()
        .map(|t| berlin.format(t))
        .collect();
    // 23 and 25 March in winter time, then 30 March and 1 April in summer
    // time, still at 09:00; COUNT=4 ends it.
    assert_eq!(
        times,
        [
            "2026-03-23T09:00:00+01:00",
            "2026-03-25T09:00:00+01:00",
            "2026-03-30T09:00:00+02:00",
            "2026-04-01T09:00:00+02:00"
        ]
    );
    assert_eq!(
        rule.next_after(parse_instant("2026-03-25T09:00:00+01:00").unwrap()),
        Some(parse_instant("2026-03-30T09:00:00+02:00").unwrap())
    );
    assert_eq!(
        rule.next_after(parse_instant("2026-04-01T09:00:00+02:00").unwrap()),
        None
    );
    // A DTSTART without a zone is in the schedule's zone, not the machine's.
    let own_start = Timetable::rrule(
        "DTSTART:20260105T090000\nRRULE:FREQ=DAILY;COUNT=2",
        zone("America/New_York"),
        None,
    )
    .unwrap();
    assert_eq!(
        own_start.upcoming(0, 5),
        [
            parse_instant("2026-01-05T09:00:00-05:00").unwrap(),
            parse_instant("2026-01-06T09:00:00-05:00").unwrap()
        ]
    );
}

#[test]
fn a_bad_rrule_says_why() {
    let start = Some(0);
    let message = |rule: &str, anchor| {
        Timetable::rrule(rule, Zone::utc(), anchor)
            .unwrap_err()
            .to_string()
    };
    assert!(message("FREQ=WEEKLY;BYDAY=XX", start).contains("`XX` is not a valid weekday"));
    assert!(message("FREQ=SOMETIMES", start).contains("rrule 'FREQ=SOMETIMES' is invalid"));
    assert!(message("FREQ=DAILY", None).contains("needs a start"));
    assert!(message("DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY", start).contains("keep one"));
}

#[test]
fn the_latest_times_before_an_instant_walk_back_through_dst() {
    let ny = zone("America/New_York");
    let hourly = Timetable::cron("0 * * * *", ny.clone()).unwrap();
    let times: Vec<String> = hourly
        .latest_between(
            parse_instant("2026-11-01T00:30:00-04:00").unwrap(),
            parse_instant("2026-11-01T02:00:00-05:00").unwrap(),
            10,
        )
        .into_iter()
        .map(|t| ny.format(t))
        .collect();
    assert_eq!(
        times,
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T02:00:00-05:00"
        ]
    );
    let minute = 60 * MICROS_PER_SECOND;
    let every_minute = Timetable::interval(60, None).unwrap();
    assert_eq!(
        every_minute.latest_between(0, 10 * minute + 5, 3),
        [8 * minute, 9 * minute, 10 * minute]
    );
    assert_eq!(
        every_minute.latest_between(9 * minute, 10 * minute, 5),
        [10 * minute]
    );
    let rule = Timetable::rrule("FREQ=MINUTELY;COUNT=5", Zone::utc(), Some(0)).unwrap();
    assert_eq!(
        rule.latest_between(minute, 100 * minute, 2),
        [3 * minute, 4 * minute]
    );
}
