//! Objects users configure on a server: deployments and their schedules, work
//! pools and queues, variables. Plain data with its validation; no IO.

use super::{Policy, TimestampMicros};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The pool the server's embedded executor serves.
pub const DEFAULT_POOL: &str = "wasm";
/// The queue every pool has.
pub const DEFAULT_QUEUE: &str = "default";

/// Why a deployment (or a name of one of its objects) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error(
        "{what} name '{name}' is not allowed: use 1-100 letters, digits, '-', '_' or '.' (not first)"
    )]
    BadName { what: String, name: String },
    #[error(
        "component '{0}' is not a sha256 digest; upload the .wasm first (host flow upload) and use the digest it prints"
    )]
    NotADigest(String),
    #[error("flow is empty: name the flow of the component to run")]
    EmptyFlow,
    #[error("interval_seconds must be at least 1")]
    ZeroInterval,
    #[error("a schedule has either `cron` or `interval_seconds`, not both or neither")]
    ScheduleKind,
    #[error(transparent)]
    Cron(#[from] CronError),
    #[error("concurrency_limit must be at least 1 (or absent for no limit)")]
    ZeroConcurrencyLimit,
}

/// Why a cron expression is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "cron '{expr}' has {count} fields; expected 5: minute hour day-of-month month day-of-week (e.g. '0 3 * * *')"
    )]
    FieldCount { expr: String, count: usize },
    #[error("cron '{expr}': {field}: {problem}")]
    Field {
        expr: String,
        field: &'static str,
        problem: CronFieldError,
    },
}

/// What is wrong with one cron field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronFieldError {
    #[error("'{0}' is not a number")]
    NotANumber(String),
    #[error("{n} is outside {lo}-{hi}")]
    OutOfRange { n: u32, lo: u32, hi: u32 },
    #[error("step '{0}' is not a number")]
    StepNotANumber(String),
    #[error("a step of 0")]
    ZeroStep,
    #[error("range {0}-{1} runs backwards")]
    Backwards(u32, u32),
}

/// A named, server-side way to run one flow of one component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub name: String,
    /// sha256 of an uploaded component (64 hex characters).
    pub component: String,
    pub flow: String,
    #[serde(default)]
    pub description: String,
    /// Default parameters; a run's own params are laid over them.
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default = "default_pool")]
    pub work_pool: String,
    #[serde(default = "default_queue")]
    pub work_queue: String,
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    /// Applied over every task's own policy: fuel, memory, timeout, retries.
    #[serde(default)]
    pub task_policy: Policy,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Names of the secrets its runs may read.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub paused: bool,
    /// At most this many of its runs at once (others wait in `Scheduled`).
    #[serde(default)]
    pub concurrency_limit: Option<u32>,
}

fn default_pool() -> String {
    DEFAULT_POOL.to_string()
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

impl Deployment {
    /// Checks what can be checked without the store.
    pub fn validate(&self) -> Result<(), DeploymentError> {
        validate_name("deployment", &self.name)?;
        if super::ComponentDigest::parse(self.component.trim_start_matches("sha256:")).is_none() {
            return Err(DeploymentError::NotADigest(self.component.clone()));
        }
        if self.flow.is_empty() {
            return Err(DeploymentError::EmptyFlow);
        }
        validate_name("work pool", &self.work_pool)?;
        validate_name("work queue", &self.work_queue)?;
        for secret in &self.secrets {
            validate_name("secret", secret)?;
        }
        for schedule in &self.schedules {
            schedule.validate()?;
        }
        if self.concurrency_limit == Some(0) {
            return Err(DeploymentError::ZeroConcurrencyLimit);
        }
        Ok(())
    }
}

/// When a deployment runs by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Five fields: minute hour day-of-month month day-of-week, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Every this many seconds, counted from the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    #[serde(default = "default_active")]
    pub active: bool,
}

fn default_active() -> bool {
    true
}

impl Schedule {
    pub fn validate(&self) -> Result<(), DeploymentError> {
        match (&self.cron, self.interval_seconds) {
            (Some(expr), None) => Ok(Cron::parse(expr).map(|_| ())?),
            (None, Some(0)) => Err(DeploymentError::ZeroInterval),
            (None, Some(_)) => Ok(()),
            _ => Err(DeploymentError::ScheduleKind),
        }
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: TimestampMicros) -> Option<TimestampMicros> {
        if let Some(expr) = &self.cron {
            return Cron::parse(expr).ok()?.next_after(after);
        }
        let every = i64::try_from(self.interval_seconds?)
            .ok()?
            .checked_mul(1_000_000)?;
        Some((after.div_euclid(every) + 1) * every)
    }
}

/// A parsed five-field cron expression (UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month and day-of-week both restricted: either matches (as cron does).
    either_day: bool,
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [min, hour, dom, month, dow] = fields.as_slice() else {
            return Err(CronError::FieldCount {
                expr: expr.to_string(),
                count: fields.len(),
            });
        };
        let bad = |field: &'static str, problem: CronFieldError| CronError::Field {
            expr: expr.to_string(),
            field,
            problem,
        };
        let weekdays = field(
            dow,
            0,
            7,
            &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
        )
        .map_err(|e| bad("day-of-week", e))?;
        Ok(Cron {
            minutes: field(min, 0, 59, &[]).map_err(|e| bad("minute", e))?,
            hours: field(hour, 0, 23, &[]).map_err(|e| bad("hour", e))?,
            days: field(dom, 1, 31, &[]).map_err(|e| bad("day-of-month", e))?,
            months: field(
                month,
                1,
                12,
                &[
                    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                    "dec",
                ],
            )
            .map_err(|e| bad("month", e))?,
            // 7 is Sunday too.
            weekdays: (weekdays | (weekdays >> 7)) & 0x7f,
            either_day: *dom != "*" && *dow != "*",
        })
    }

    /// The first matching minute strictly after `after` (within ~5 years).
    pub fn next_after(&self, after: TimestampMicros) -> Option<TimestampMicros> {
        let mut minute = after.div_euclid(60_000_000) + 1;
        let limit = minute + 5 * 366 * 24 * 60;
        while minute < limit {
            let (days, rem) = (minute.div_euclid(1440), minute.rem_euclid(1440));
            let (_, month, day) = civil_from_days(days);
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday.
            let day_ok = if self.either_day {
                bit(self.days, day) || bit(self.weekdays, weekday)
            } else {
                bit(self.days, day) && bit(self.weekdays, weekday)
            };
            if !bit(self.months, month) || !day_ok {
                minute = (days + 1) * 1440;
                continue;
            }
            let (hour, min) = ((rem / 60) as u32, (rem % 60) as u32);
            if !bit(self.hours, hour) {
                minute = days * 1440 + (i64::from(hour) + 1) * 60;
                continue;
            }
            if bit(self.minutes, min) {
                return Some(minute * 60_000_000);
            }
            minute += 1;
        }
        None
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

/// Parses one cron field into a bit set.
fn field(text: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, CronFieldError> {
    let value = |s: &str| -> Result<u32, CronFieldError> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + lo);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| CronFieldError::NotANumber(s.to_string()))?;
        if n < lo || n > hi {
            return Err(CronFieldError::OutOfRange { n, lo, hi });
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| CronFieldError::StepNotANumber(s.to_string()))?;
                if step == 0 {
                    return Err(CronFieldError::ZeroStep);
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(CronFieldError::Backwards(a, b));
            }
            (a, b)
        } else {
            let a = value(range)?;
            (a, if step > 1 { hi } else { a })
        };
        let mut n = start;
        while n <= end {
            set |= 1 << n;
            n += step;
        }
    }
    Ok(set)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A pool groups the hosts that may run a deployment's runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkPool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub concurrency_limit: Option<u32>,
}

/// A queue inside a pool: lower priority numbers are served first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkQueue {
    pub name: String,
    #[serde(default = "default_pool")]
    pub work_pool: String,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub concurrency_limit: Option<u32>,
    #[serde(default)]
    pub paused: bool,
}

fn default_priority() -> u32 {
    1
}

/// A named JSON value flows and deployments can refer to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    pub value: Value,
}

/// The secrets a run may read, in clear, and the redaction of their values.
#[derive(Clone, Default)]
pub struct GrantedSecrets(std::collections::BTreeMap<String, String>);

impl GrantedSecrets {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(values.into_iter().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every granted value (of 4+ characters) replaced by `***`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(text);
        for value in self.0.values().filter(|v| v.len() >= 4) {
            if out.contains(value.as_str()) {
                out = std::borrow::Cow::Owned(out.replace(value.as_str(), "***"));
            }
        }
        out
    }
}

impl std::fmt::Debug for GrantedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Names of deployments, pools, queues, secrets and variables: they appear in
/// URLs and files, so letters, digits, `-`, `_` and `.`, at most 100.
pub fn validate_name(what: &str, name: &str) -> Result<(), DeploymentError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(DeploymentError::BadName {
            what: what.to_string(),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> TimestampMicros {
        // Days from civil, the inverse of civil_from_days, by search (tests only).
        let mut days = (y - 1970) * 365;
        while civil_from_days(days) > (y, mo, d) {
            days -= 1;
        }
        while civil_from_days(days) < (y, mo, d) {
            days += 1;
        }
        (days * 1440 + h * 60 + mi) * MIN
    }

    #[test]
    fn cron_fires_at_the_next_matching_minute() {
        let daily = Cron::parse("0 3 * * *").unwrap();
        assert_eq!(
            daily.next_after(at(2026, 11, 25, 5, 0)),
            Some(at(2026, 11, 26, 3, 0))
        );
        assert_eq!(
            daily.next_after(at(2026, 11, 25, 2, 59)),
            Some(at(2026, 11, 25, 3, 0))
        );
        let every_15 = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every_15.next_after(at(2026, 1, 1, 0, 0)),
            Some(at(2026, 1, 1, 0, 15))
        );
        // 2026-11-27 is a Friday.
        let fridays = Cron::parse("30 9 * * fri").unwrap();
        assert_eq!(
            fridays.next_after(at(2026, 11, 25, 0, 0)),
            Some(at(2026, 11, 27, 9, 30))
        );
        let leap = Cron::parse("0 0 29 feb *").unwrap();
        assert_eq!(
            leap.next_after(at(2026, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        let sunday_as_7 = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sunday_as_7.next_after(at(2026, 11, 25, 0, 0)),
            Some(at(2026, 11, 29, 0, 0))
        );
    }

    #[test]
    fn bad_cron_says_which_field() {
        let message = |expr: &str| Cron::parse(expr).unwrap_err().to_string();
        assert!(message("* * *").contains("expected 5"));
        assert!(message("61 * * * *").contains("minute: 61 is outside 0-59"));
        assert!(message("* * * foo *").contains("month: 'foo' is not a number"));
        assert!(message("*/0 * * * *").contains("step of 0"));
        assert!(message("5-1 * * * *").contains("range 5-1 runs backwards"));
        assert_eq!(
            Cron::parse("* * * * x/2"),
            Err(CronError::Field {
                expr: "* * * * x/2".into(),
                field: "day-of-week",
                problem: CronFieldError::NotANumber("x".into())
            })
        );
    }

    #[test]
    fn interval_schedules_align_to_the_epoch() {
        let s = Schedule {
            cron: None,
            interval_seconds: Some(60),
            active: true,
        };
        assert_eq!(s.next_after(30 * 1_000_000), Some(60 * 1_000_000));
        assert_eq!(s.next_after(60 * 1_000_000), Some(120 * 1_000_000));
    }

    #[test]
    fn granted_secrets_are_redacted_and_never_printed() {
        let s = GrantedSecrets::new([("db".to_string(), "hunter22".to_string())]);
        assert_eq!(s.redact("password=hunter22;"), "password=***;");
        assert_eq!(format!("{s:?}"), r#"["db"]"#);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("deployment", "etl-nightly_2.0").is_ok());
        assert!(validate_name("deployment", "").is_err());
        assert!(validate_name("deployment", "a/b").is_err());
        assert!(validate_name("deployment", ".hidden").is_err());
    }
}
