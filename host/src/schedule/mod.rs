//! When a schedule fires: cron patterns in an IANA time zone, fixed intervals
//! from an anchor, RFC 5545 recurrence rules, and RFC 3339 text for instants.
//! The only module that names `croner`, `jiff` and `rrule`; no IO and no
//! async (the time zone database is compiled in, so a machine without
//! `/usr/share/zoneinfo` computes the same times).
//!
//! Daylight-saving rules (croner's, which follow Vixie cron and OCPS):
//! - a local time that does not exist (spring forward) fires once, at the
//!   first real instant after the gap;
//! - a local time that occurs twice (fall back) fires once, at its first
//!   occurrence;
//! - a pattern with a wildcard or a step in its hour (or minute, second)
//!   field fires on every real instant that matches, so `0 * * * *` fires
//!   every real hour, twice in a repeated hour and not at all in a skipped one.
//!
//! An rrule keeps its wall-clock time across DST (the rrule crate's rules, on
//! chrono-tz's copy of the database).
//!
//! Instants are microseconds since the Unix epoch (`model::TimestampMicros`);
//! this module does not depend on `model`, which depends on it.

use std::str::FromStr;

/// Why a schedule is refused. Each message names what was wrong and how to
/// write it instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron '{expr}' has {count} fields; expected 5 (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'), 6 with seconds first, or a macro such as @daily"
    )]
    CronFieldCount { expr: String, count: usize },
    #[error("cron '{expr}': {field} field '{text}' is invalid ({reason}); {field} takes {allowed}")]
    CronField {
        expr: String,
        field: &'static str,
        text: String,
        reason: String,
        allowed: &'static str,
    },
    #[error("cron '{0}' is not a known macro; use @hourly, @daily, @weekly, @monthly or @yearly")]
    UnknownMacro(String),
    #[error("cron '{expr}' is invalid: {reason}")]
    Cron { expr: String, reason: String },
    #[error("cron '{0}' never fires: no real date matches it (such as 30 February)")]
    NeverFires(String),
    #[error(
        "unknown time zone '{0}': use an IANA name such as UTC, Europe/Berlin or America/New_York"
    )]
    UnknownTimeZone(String),
    #[error("interval must be at least 1 second")]
    ZeroInterval,
    #[error("interval of {0} seconds is too long; use at most 100 years")]
    IntervalTooLong(u64),
    #[error("rrule '{rule}' is invalid: {reason}")]
    RRule { rule: String, reason: String },
    #[error(
        "rrule '{0}' needs a start: give `anchor:` (RFC 3339, e.g. 2026-01-05T09:00:00+01:00) or a DTSTART line"
    )]
    RRuleWithoutStart(String),
    #[error("`anchor:` and a DTSTART line both give rrule '{0}' a start; keep one")]
    RRuleTwoStarts(String),
    #[error(
        "'{text}' is not an RFC 3339 time with an offset (e.g. 2026-01-01T03:00:00+01:00): {reason}"
    )]
    BadInstant { text: String, reason: String },
}

/// Microseconds since the Unix epoch.
pub type Micros = i64;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// An IANA time zone (or UTC), checked against the compiled-in database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone(jiff::tz::TimeZone);

impl Zone {
    pub fn utc() -> Self {
        Zone(jiff::tz::TimeZone::UTC)
    }

    /// A zone by IANA name (`Europe/Berlin`); `UTC` and `Z` are UTC.
    pub fn named(name: &str) -> Result<Self, ScheduleError> {
        if name.eq_ignore_ascii_case("utc") || name == "Z" {
            return Ok(Self::utc());
        }
        jiff::tz::TimeZone::get(name)
            .map(Zone)
            .map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))
    }

    /// `at` as RFC 3339 with this zone's offset at that instant
    /// (`2026-03-08T03:00:00-04:00`); fractional seconds only when present.
    pub fn format(&self, at: Micros) -> String {
        match jiff::Timestamp::from_microsecond(at) {
            Ok(ts) => {
                let offset = self.0.to_offset(ts);
                ts.display_with_offset(offset).to_string()
            }
            Err(_) => format!("(out of range: {at} µs)"),
        }
    }
}

/// RFC 3339 text in UTC with milliseconds, as the records print instants.
pub fn format_utc_millis(at: Micros) -> String {
    match jiff::Timestamp::from_microsecond(at) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => format!("(out of range: {at} µs)"),
    }
}

/// An RFC 3339 instant with an offset (`2026-01-01T03:00:00+01:00`, `...Z`).
pub fn parse_instant(text: &str) -> Result<Micros, ScheduleError> {
    jiff::Timestamp::from_str(text.trim())
        .map(|ts| ts.as_microsecond())
        .map_err(|e| ScheduleError::BadInstant {
            text: text.to_string(),
            reason: e.to_string(),
        })
}

/// A compiled schedule: answers "when next, after this instant?".
#[derive(Clone, Debug)]
pub enum Timetable {
    /// Boxed: a parsed pattern is ~300 bytes, an interval 16.
    Cron { cron: Box<croner::Cron>, zone: Zone },
    /// Fires at `anchor + k * every` for every integer `k`.
    Interval { every: Micros, anchor: Micros },
    /// Boxed for the same reason as `Cron`.
    RRule(Box<rrule::RRuleSet>),
}

/// How many occurrences of a recurrence rule are walked, from its start, to
/// find the next one: the crate iterates from DTSTART, so a minutely rule
/// started long ago stops here (about 70 days of minutes) rather than
/// costing a scheduler tick seconds.
const RRULE_WALK_LIMIT: usize = 100_000;

impl Timetable {
    /// A cron pattern read in `zone`: 5 fields, 6 with seconds first, or a
    /// macro (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). When
    /// both day-of-month and day-of-week are restricted, either matches (as
    /// Vixie cron does).
    pub fn cron(expr: &str, zone: Zone) -> Result<Self, ScheduleError> {
        let timetable = Timetable::Cron {
            cron: Box::new(parse_cron(expr)?),
            zone,
        };
        // Refused now rather than searched for, up to the year 5000, on
        // every scheduler tick.
        if timetable.next_after(0).is_none() {
            return Err(ScheduleError::NeverFires(expr.to_string()));
        }
        Ok(timetable)
    }

    /// Every `every_seconds`, on the grid through `anchor` (the Unix epoch
    /// when there is none, so old `interval_seconds` schedules keep their times).
    pub fn interval(every_seconds: u64, anchor: Option<Micros>) -> Result<Self, ScheduleError> {
        if every_seconds == 0 {
            return Err(ScheduleError::ZeroInterval);
        }
        const HUNDRED_YEARS: u64 = 100 * 366 * 86_400;
        if every_seconds > HUNDRED_YEARS {
            return Err(ScheduleError::IntervalTooLong(every_seconds));
        }
        let every = every_seconds as i64 * MICROS_PER_SECOND;
        Ok(Timetable::Interval {
            every,
            anchor: anchor.unwrap_or(0),
        })
    }

    /// An RFC 5545 rule (`FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;COUNT=10`), with
    /// its start either from `anchor` (read as a wall-clock time in `zone`)
    /// or from its own `DTSTART` line; a DTSTART without a zone is in `zone`.
    pub fn rrule(rule: &str, zone: Zone, anchor: Option<Micros>) -> Result<Self, ScheduleError> {
        let bad = |reason: String| ScheduleError::RRule {
            rule: rule.to_string(),
            reason,
        };
        let zone_name = zone.0.iana_name().unwrap_or("UTC").to_string();
        let has_start = rule.to_ascii_uppercase().contains("DTSTART");
        let text = match (has_start, anchor) {
            (true, Some(_)) => return Err(ScheduleError::RRuleTwoStarts(rule.to_string())),
            (false, None) => return Err(ScheduleError::RRuleWithoutStart(rule.to_string())),
            (false, Some(anchor)) => {
                let local = jiff::Timestamp::from_microsecond(anchor)
                    .map_err(|e| bad(e.to_string()))?
                    .to_zoned(zone.0.clone())
                    .datetime();
                let body = rule.trim();
                let body = body
                    .strip_prefix("RRULE:")
                    .or_else(|| body.strip_prefix("rrule:"))
                    .unwrap_or(body);
                format!(
                    "DTSTART;TZID={zone_name}:{}\nRRULE:{body}",
                    local.strftime("%Y%m%dT%H%M%S")
                )
            }
            // A floating DTSTART would be read in the machine's own zone.
            (true, None) => rule
                .lines()
                .map(|line| match line.trim().strip_prefix("DTSTART:") {
                    Some(at) if !at.ends_with('Z') => format!("DTSTART;TZID={zone_name}:{at}"),
                    _ => line.trim().to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let set: rrule::RRuleSet = text
            .parse()
            .map_err(|e: rrule::RRuleError| bad(e.to_string()))?;
        Ok(Timetable::RRule(Box::new(set)))
    }

    /// The first fire time strictly after `after`; `None` when there is none
    /// (a pattern that never matches, or past the year 9999).
    pub fn next_after(&self, after: Micros) -> Option<Micros> {
        match self {
            Timetable::Interval { every, anchor } => {
                let steps = after.saturating_sub(*anchor).div_euclid(*every) + 1;
                anchor.checked_add(steps.checked_mul(*every)?)
            }
            Timetable::Cron { cron, zone } => {
                // croner works in whole seconds: from the second `after` lies
                // in, strictly later is also strictly after `after`.
                let second = jiff::Timestamp::from_second(after.div_euclid(MICROS_PER_SECOND))
                    .ok()?
                    .to_zoned(zone.0.clone());
                let next = cron.find_next_occurrence(&second, false).ok()?;
                Some(next.timestamp().as_microsecond())
            }
            Timetable::RRule(_) => self.upcoming(after, 1).first().copied(),
        }
    }

    /// The latest fire time at or before `at`.
    pub fn latest_at_or_before(&self, at: Micros) -> Option<Micros> {
        match self {
            Timetable::Interval { every, anchor } => {
                let steps = at.saturating_sub(*anchor).div_euclid(*every);
                anchor.checked_add(steps.checked_mul(*every)?)
            }
            Timetable::Cron { cron, zone } => {
                let second = jiff::Timestamp::from_second(at.div_euclid(MICROS_PER_SECOND))
                    .ok()?
                    .to_zoned(zone.0.clone());
                let previous = cron.find_previous_occurrence(&second, true).ok()?;
                Some(previous.timestamp().as_microsecond())
            }
            Timetable::RRule(set) => (&**set)
                .into_iter()
                .take(RRULE_WALK_LIMIT)
                .map(|t| t.timestamp_micros())
                .take_while(|t| *t <= at)
                .last(),
        }
    }

    /// The latest `count` fire times in (`after`, `until`], in order.
    pub fn latest_between(&self, after: Micros, until: Micros, count: usize) -> Vec<Micros> {
        let mut times = Vec::new();
        let mut cursor = until;
        while times.len() < count {
            match self.latest_at_or_before(cursor) {
                Some(at) if at > after => {
                    times.push(at);
                    cursor = at - 1;
                }
                _ => break,
            }
        }
        times.reverse();
        times
    }

    /// The next `count` fire times after `after`, in order.
    pub fn upcoming(&self, after: Micros, count: usize) -> Vec<Micros> {
        if let Timetable::RRule(set) = self {
            return (&**set)
                .into_iter()
                .take(RRULE_WALK_LIMIT)
                .map(|at| at.timestamp_micros())
                .filter(|at| *at > after)
                .take(count)
                .collect();
        }
        let mut times = Vec::with_capacity(count.min(1024));
        let mut at = after;
        while times.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }
}

/// Field names by position, with what each accepts besides `*`, `,`, `-`
/// and `/`: for 5 fields and for 6 (seconds first).
const SECOND: (&str, &str) = ("second", "0-59");
const FIVE_FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or W"),
    ("month", "1-12 or JAN-DEC"),
    (
        "day-of-week",
        "0-7 or SUN-SAT (0 and 7 are Sunday), L (last) or # (nth, e.g. MON#2)",
    ),
];

fn cron_parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
}

fn parse_cron(expr: &str) -> Result<croner::Cron, ScheduleError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: Vec<(&str, &str)> = match fields.len() {
        1 if fields[0].starts_with('@') => Vec::new(),
        5 => FIVE_FIELDS.to_vec(),
        6 => std::iter::once(SECOND).chain(FIVE_FIELDS).collect(),
        count => {
            return Err(ScheduleError::CronFieldCount {
                expr: expr.to_string(),
                count,
            });
        }
    };
    let parser = cron_parser();
    let error = match parser.parse(expr) {
        Ok(cron) => return Ok(cron),
        Err(_) if names.is_empty() => {
            return Err(ScheduleError::UnknownMacro(expr.trim().to_string()));
        }
        Err(e) => e,
    };
    // croner's messages do not always say which field; the field whose
    // replacement by `*` makes the pattern parse is the one at fault.
    for (i, (name, allowed)) in names.into_iter().enumerate() {
        let mut replaced = fields.clone();
        replaced[i] = "*";
        if parser.parse(&replaced.join(" ")).is_ok() {
            return Err(ScheduleError::CronField {
                expr: expr.to_string(),
                field: name,
                text: fields[i].to_string(),
                reason: field_reason(&error),
                allowed,
            });
        }
    }
    Err(ScheduleError::Cron {
        expr: expr.to_string(),
        reason: field_reason(&error),
    })
}

/// croner's message without its "Component error:" style prefix.
fn field_reason(error: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    match error {
        E::ComponentError(m) | E::InvalidPattern(m) | E::IllegalCharacters(m) => {
            m.trim_end_matches('.').to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
