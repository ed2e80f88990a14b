//! Objects users configure on a server: deployments and their schedules, work
//! pools and queues, variables. Plain data with its validation; no IO.

use super::capabilities::Capabilities;
use super::{Policy, TimestampMicros};
use crate::schedule::{ScheduleError, Timetable, Zone};
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
    #[error(
        "a schedule has exactly one of `cron`, `interval_seconds` (`interval:` in weir.yaml) or `rrule`"
    )]
    ScheduleKind,
    #[error("`anchor` belongs to interval and rrule schedules (a cron fires on its own calendar)")]
    AnchorOnCron,
    #[error(
        "`timezone` belongs to cron and rrule schedules; an interval is counted in real time from its `anchor`, whose offset says where it is"
    )]
    TimezoneOnInterval,
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("concurrency_limit must be at least 1 (or absent for no limit)")]
    ZeroConcurrencyLimit,
    #[error("capabilities: {0}")]
    Capability(#[from] super::capabilities::CapabilityError),
    #[error(
        "catchup_limit must be 1 to {MAX_CATCHUP_LIMIT} (use `catchup: skip` to run no missed time)"
    )]
    CatchupLimit,
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
    /// What its runs may reach beyond the sandbox; only hosts that allow it all take them.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
    /// What the scheduler makes of fire times missed while no server ran.
    #[serde(default)]
    pub catchup: Catchup,
    /// With `catchup: all`, at most this many missed times (the latest) run.
    #[serde(default = "default_catchup_limit")]
    pub catchup_limit: u32,
    /// Which saved version this definition is (`host deployment history`):
    /// set by the server when a deploy changes something; what a client
    /// sends here is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One saved definition of a deployment: every deploy that changes
/// something (component, flow, params, schedules, limits, grants...) makes
/// the next one, and a rollback makes one from an older one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentVersion {
    pub version: u32,
    pub deployment: Deployment,
    /// Who saved it: the API key's role and fingerprint, or who the server says it is.
    pub created_by: String,
    pub created_at: TimestampMicros,
    /// Why, when it is not a plain deploy ("rollback to version 2").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Fire times missed while no server ran (by more than `--late-after`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// None of them run.
    #[default]
    Skip,
    /// Only the latest one runs.
    Latest,
    /// Each runs, the latest `catchup_limit` of them.
    All,
}

/// How many missed times `catchup: all` runs when the deployment does not say.
pub const DEFAULT_CATCHUP_LIMIT: u32 = 10;

fn default_catchup_limit() -> u32 {
    DEFAULT_CATCHUP_LIMIT
}

/// The most missed times `catchup: all` runs: a week's downtime of an
/// every-second schedule must not become 600,000 runs.
pub const MAX_CATCHUP_LIMIT: u32 = 1000;

fn default_pool() -> String {
    DEFAULT_POOL.to_string()
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

impl Deployment {
    /// Whether `other` defines the same deployment: everything but its
    /// version and its paused flag (pausing is an operation, not a deploy).
    pub fn same_definition(&self, other: &Deployment) -> bool {
        let plain = |d: &Deployment| Deployment {
            version: None,
            paused: false,
            ..d.clone()
        };
        plain(self) == plain(other)
    }

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
        self.capabilities.check()?;
        if self.catchup_limit == 0 || self.catchup_limit > MAX_CATCHUP_LIMIT {
            return Err(DeploymentError::CatchupLimit);
        }
        Ok(())
    }
}

/// When a deployment runs by itself. Exactly one of `cron`, `interval_seconds`
/// and `rrule`; see `crate::schedule` for how each fires, across
/// daylight-saving changes too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Five fields (minute hour day-of-month month day-of-week), six with
    /// seconds first, or a macro (`@daily`), read in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Every this many seconds, on the grid through `anchor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// An RFC 5545 recurrence rule (`FREQ=WEEKLY;BYDAY=MO;BYHOUR=9`), starting
    /// at `anchor` or at its own DTSTART line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rrule: Option<String>,
    /// RFC 3339 with an offset: an interval's grid passes through it (the
    /// Unix epoch when absent); an rrule starts there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// IANA name (`Europe/Berlin`) a cron or rrule is read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Laid over the deployment's params for the runs this schedule makes.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    #[serde(default = "default_active")]
    pub active: bool,
}

fn default_active() -> bool {
    true
}

impl Schedule {
    pub fn validate(&self) -> Result<(), DeploymentError> {
        self.timetable().map(|_| ())
    }

    /// The zone its times are best read in: its own, else UTC.
    pub fn zone(&self) -> Zone {
        self.timezone
            .as_deref()
            .and_then(|name| Zone::named(name).ok())
            .unwrap_or_else(Zone::utc)
    }

    /// Its next `count` fire times after `now`, in RFC 3339 in its own zone.
    pub fn next_times(
        &self,
        now: TimestampMicros,
        count: usize,
    ) -> Result<Vec<String>, DeploymentError> {
        let timetable = self.timetable()?;
        let zone = self.zone();
        Ok(timetable
            .upcoming(now, count)
            .into_iter()
            .map(|t| zone.format(t))
            .collect())
    }

    /// The compiled schedule, or why it is refused.
    pub fn timetable(&self) -> Result<Timetable, DeploymentError> {
        let zone = self.timezone.as_deref().map(Zone::named).transpose()?;
        let anchor = self
            .anchor
            .as_deref()
            .map(crate::schedule::parse_instant)
            .transpose()?;
        match (&self.cron, self.interval_seconds, &self.rrule) {
            (Some(expr), None, None) => {
                if anchor.is_some() {
                    return Err(DeploymentError::AnchorOnCron);
                }
                Ok(Timetable::cron(expr, zone.unwrap_or_else(Zone::utc))?)
            }
            (None, Some(every), None) => {
                if zone.is_some() {
                    return Err(DeploymentError::TimezoneOnInterval);
                }
                Ok(Timetable::interval(every, anchor)?)
            }
            (None, None, Some(rule)) => Ok(Timetable::rrule(
                rule,
                zone.unwrap_or_else(Zone::utc),
                anchor,
            )?),
            _ => Err(DeploymentError::ScheduleKind),
        }
    }

    /// Names this schedule's runs: a digest of everything that decides when
    /// they fire and with what params (not `active`), so an edited schedule
    /// is a new one and the runs the old one made ahead can be told apart.
    pub fn key(&self) -> String {
        use sha2::Digest;
        let mut identity = self.clone();
        identity.active = true;
        let text = serde_json::to_string(&identity).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: TimestampMicros) -> Option<TimestampMicros> {
        self.timetable().ok()?.next_after(after)
    }
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
    /// A hosts' filter (`host run --queue NAME`): runs of the pool whose
    /// tags include all of these belong to this queue too, whatever queue
    /// their deployment names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl WorkQueue {
    /// Whether a run placed in `queue` with `tags` is one this queue serves.
    pub fn takes(&self, queue: &str, tags: &[String]) -> bool {
        queue == self.name || (!self.tags.is_empty() && self.tags.iter().all(|t| tags.contains(t)))
    }
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

/// The fewest characters a secret may have when it is set. Every granted
/// value is redacted whatever its length, but a one- or two-character value
/// would turn every occurrence of those characters in logs and results into
/// `***` while protecting nothing: it can be guessed.
pub const MIN_SECRET_CHARS: usize = 3;

/// Lines of a multi-line secret shorter than this are not redacted on their
/// own: a PEM's `==` tail or a JSON credential's `}` would blank out every
/// such text in the run's records.
const MIN_SECRET_LINE_CHARS: usize = 3;

/// What replaces a secret in everything recorded.
pub const REDACTED: &str = "***";

/// A secret value too short to be worth keeping secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "secret '{name}' has {chars} characters; a secret needs at least {MIN_SECRET_CHARS} \
     (a shorter one can be guessed, and redacting it would blank those characters out of every log and result)"
)]
pub struct SecretTooShort {
    pub name: String,
    pub chars: usize,
}

/// Refuses a secret value too short to be worth keeping secret.
pub fn validate_secret_value(name: &str, value: &str) -> Result<(), SecretTooShort> {
    let chars = value.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(SecretTooShort {
            name: name.to_string(),
            chars,
        });
    }
    Ok(())
}

/// The secrets a run may read, in clear, and the redaction of their values.
#[derive(Clone, Default)]
pub struct GrantedSecrets {
    values: std::collections::BTreeMap<String, String>,
    /// Every encoded form of every value (see `encoded_forms`); `None` when
    /// nothing is granted, so a run without secrets pays nothing.
    patterns: Option<aho_corasick::AhoCorasick>,
}

impl GrantedSecrets {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Self {
        let values: std::collections::BTreeMap<String, String> = values.into_iter().collect();
        let forms: std::collections::BTreeSet<String> =
            values.values().flat_map(|v| encoded_forms(v)).collect();
        // Overlapping matches are all reported (see `redact`), so the order of
        // the patterns does not decide what is covered.
        let patterns = (!forms.is_empty()).then(|| {
            aho_corasick::AhoCorasick::new(&forms)
                // Only fails past u32::MAX automaton states: gigabytes of secrets.
                .expect("the patterns of a run's secrets fit an automaton")
        });
        Self { values, patterns }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every granted value replaced by `***`, in every form a
    /// guest or the host may have written it: raw, JSON-escaped (also with
    /// `\uXXXX` for non-ASCII, as Python writes it), Rust-`{:?}`-escaped,
    /// any two of those nested, and each line of a multi-line value (stdout
    /// reaches the log one line at a time). Where secrets overlap, the union
    /// of their spans is replaced, so no tail of the longer one is left.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let Some(patterns) = &self.patterns else {
            return std::borrow::Cow::Borrowed(text);
        };
        let mut spans: Vec<(usize, usize)> = patterns
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        if spans.is_empty() {
            return std::borrow::Cow::Borrowed(text);
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut written = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            while let Some(&(next_start, next_end)) = spans.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            // Patterns are whole UTF-8 strings, so spans fall on char boundaries.
            out.push_str(&text[written..start]);
            out.push_str(REDACTED);
            written = end;
        }
        out.push_str(&text[written..]);
        std::borrow::Cow::Owned(out)
    }
}

impl std::fmt::Debug for GrantedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

/// Every text `value` can become on its way into a record: the value, its
/// trimmed form, each line of a multi-line value, and each of those encoded
/// once or twice (a JSON string inside a JSON document, a `{:?}` of JSON).
fn encoded_forms(value: &str) -> Vec<String> {
    let mut sources = vec![value];
    if value.trim().chars().count() >= MIN_SECRET_LINE_CHARS {
        sources.push(value.trim());
    }
    if value.contains('\n') {
        for line in value.split('\n') {
            for line in [line.trim_end_matches('\r'), line.trim()] {
                if line.chars().count() >= MIN_SECRET_LINE_CHARS {
                    sources.push(line);
                }
            }
        }
    }
    let mut forms = std::collections::BTreeSet::new();
    for source in sources {
        for once in encodings(source) {
            forms.extend(encodings(&once));
            forms.insert(once);
        }
    }
    forms.retain(|f| !f.is_empty());
    forms.into_iter().collect()
}

/// `text` as it is, and as the body of a JSON string (raw and ASCII-only
/// non-ASCII) and of a Rust `{:?}` string.
fn encodings(text: &str) -> [String; 4] {
    let json = serde_json::to_string(text).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    let mut json_ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            json_ascii.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                json_ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    let debug = format!("{text:?}");
    let debug = debug[1..debug.len() - 1].to_string();
    [text.to_string(), json, json_ascii, debug]
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

    fn schedule(value: serde_json::Value) -> Result<Schedule, String> {
        let schedule: Schedule = serde_json::from_value(value).map_err(|e| e.to_string())?;
        schedule.validate().map_err(|e| e.to_string())?;
        Ok(schedule)
    }

    #[test]
    fn old_schedules_read_as_before() {
        let cron = schedule(serde_json::json!({"cron": "0 3 * * *"})).unwrap();
        assert_eq!(cron.next_after(0), Some(3 * 3600 * 1_000_000));
        let interval = schedule(serde_json::json!({"interval_seconds": 60})).unwrap();
        assert_eq!(interval.next_after(30_000_000), Some(60_000_000));
        assert_eq!(interval.next_after(60_000_000), Some(120_000_000));
        assert!(interval.active && cron.active);
    }

    #[test]
    fn schedules_in_a_time_zone_and_from_an_anchor() {
        let berlin =
            schedule(serde_json::json!({"cron": "0 2 * * *", "timezone": "Europe/Berlin"}))
                .unwrap();
        // 2026-01-01T00:00Z → 02:00 in Berlin is 01:00Z.
        let new_year = 1_767_225_600_000_000;
        assert_eq!(
            berlin.next_after(new_year),
            Some(new_year + 3600 * 1_000_000)
        );
        let anchored = schedule(serde_json::json!({
            "interval_seconds": 3600, "anchor": "2026-01-01T03:30:00+01:00"
        }))
        .unwrap();
        assert_eq!(
            anchored.next_after(new_year),
            Some(new_year + 1800 * 1_000_000)
        );
    }

    #[test]
    fn a_schedule_is_named_by_what_it_does_not_by_whether_it_is_on() {
        let base = schedule(serde_json::json!({"cron": "0 2 * * *", "timezone": "Europe/Berlin"}))
            .unwrap();
        let mut off = base.clone();
        off.active = false;
        assert_eq!(base.key(), off.key());
        for edited in [
            serde_json::json!({"cron": "0 3 * * *", "timezone": "Europe/Berlin"}),
            serde_json::json!({"cron": "0 2 * * *"}),
            serde_json::json!({"cron": "0 2 * * *", "timezone": "Europe/Berlin", "params": {"rows": 1}}),
        ] {
            assert_ne!(
                schedule(edited.clone()).unwrap().key(),
                base.key(),
                "{edited}"
            );
        }
        let rrule = schedule(serde_json::json!({
            "rrule": "FREQ=DAILY;COUNT=3", "anchor": "2026-01-01T09:00:00+01:00",
            "timezone": "Europe/Berlin", "params": {"rows": 7}
        }))
        .unwrap();
        assert_eq!(rrule.params["rows"], 7);
        assert_eq!(
            rrule.next_after(0),
            crate::schedule::parse_instant("2026-01-01T09:00:00+01:00").ok()
        );
    }

    #[test]
    fn schedules_that_cannot_be_meant_are_refused() {
        let refused = |v: serde_json::Value| schedule(v).unwrap_err();
        assert!(refused(serde_json::json!({})).contains("exactly one of"));
        assert!(
            refused(serde_json::json!({"cron": "* * * * *", "interval_seconds": 5}))
                .contains("exactly one of")
        );
        assert!(refused(serde_json::json!({"interval_seconds": 0})).contains("at least 1 second"));
        assert!(
            refused(serde_json::json!({"cron": "0 2 * * *", "timezone": "Europe/Berlinn"}))
                .contains("unknown time zone 'Europe/Berlinn'")
        );
        assert!(
            refused(serde_json::json!({"interval_seconds": 60, "anchor": "tomorrow"}))
                .contains("RFC 3339")
        );
        assert!(
            refused(serde_json::json!({"cron": "0 2 * * *", "anchor": "2026-01-01T00:00:00Z"}))
                .contains("interval and rrule schedules")
        );
        assert!(
            refused(serde_json::json!({"interval_seconds": 60, "timezone": "Europe/Berlin"}))
                .contains("`timezone` belongs to cron")
        );
        assert!(refused(serde_json::json!({"cron": "0 25 * * *"})).contains("hour field '25'"));
        let deployment = |limit: u32| {
            serde_json::from_value::<Deployment>(serde_json::json!({
                "name": "d", "component": "0".repeat(64), "flow": "f",
                "catchup": "all", "catchup_limit": limit
            }))
            .unwrap()
            .validate()
        };
        assert!(deployment(1000).is_ok());
        assert_eq!(deployment(0), Err(DeploymentError::CatchupLimit));
        assert_eq!(deployment(1001), Err(DeploymentError::CatchupLimit));
        assert!(
            refused(serde_json::json!({"cron": "0 2 * * *", "tz": "UTC"}))
                .contains("unknown field")
        );
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

    fn granted(values: &[&str]) -> GrantedSecrets {
        GrantedSecrets::new(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("s{i}"), v.to_string())),
        )
    }

    /// Asserts that no trace of `secret` (nor of its lines of 3+ characters)
    /// is left in `redacted`, in any of the encodings tested.
    fn assert_no_trace(secret: &str, redacted: &str) {
        let mut traces = vec![secret.to_string()];
        traces.extend(
            secret
                .lines()
                .filter(|l| l.chars().count() >= 3)
                .map(str::to_string),
        );
        for trace in traces {
            let json = serde_json::to_string(&trace).unwrap();
            let debug = format!("{trace:?}");
            for form in [&trace, &json[1..json.len() - 1], &debug[1..debug.len() - 1]] {
                assert!(
                    !redacted.contains(form),
                    "{form:?} of {secret:?} is left in {redacted:?}"
                );
            }
        }
    }

    /// Secrets that break naive matching: escapes, newlines, PEM and JSON
    /// credentials, unicode, three characters.
    const HARD_SECRETS: &[&str] = &[
        "pa\"ss\\wo\nrd-line2",
        "-----BEGIN TEST KEY-----\nMIIBVwIBADANBgkqhkiG9w0BAQEFAASCAUEwggE9\nq8Zr4KpLmN0vW2yT7uJ3hFdS9aXcE6bR\n-----END TEST KEY-----\n",
        "{\n  \"type\": \"service_account\",\n  \"private_key\": \"k3y\\nm4t3r1al\"\n}",
        "mot-de-passe-été-🔑",
        "Zq7",
        "tab\there\r\nand\u{1}control",
    ];

    #[test]
    fn every_encoded_form_of_a_secret_is_redacted() {
        let secrets = granted(HARD_SECRETS);
        for secret in HARD_SECRETS {
            let json = serde_json::to_string(secret).unwrap();
            let debug = format!("{secret:?}");
            let json_in_json = serde_json::to_string(&json).unwrap();
            let debug_of_json = format!("{json:?}");
            let python_json: String = json
                .chars()
                .map(|c| match c {
                    c if c.is_ascii() => c.to_string(),
                    c => c
                        .encode_utf16(&mut [0; 2])
                        .iter()
                        .map(|u| format!("\\u{u:04x}"))
                        .collect(),
                })
                .collect();
            for written in [
                format!("raw: {secret} end"),
                format!("{{\"result\": {json}}}"),
                format!("the secret is Some({debug})"),
                format!("double: {json_in_json}"),
                format!("debug of json: {debug_of_json}"),
                format!("python: {python_json}"),
            ] {
                let redacted = secrets.redact(&written);
                assert!(redacted.contains("***"), "{written:?} -> {redacted:?}");
                assert_no_trace(secret, &redacted);
            }
            // stdout reaches the log one line at a time.
            for line in secret.lines() {
                let redacted = secrets.redact(line);
                assert_no_trace(secret, &redacted);
            }
        }
    }

    #[test]
    fn redaction_keeps_the_text_around_the_secret() {
        let secrets = granted(&["a\"b\\c", "Zq7"]);
        assert_eq!(
            secrets.redact(r#"{"k":"a\"b\\c","n":"Zq7Zq7","m":"ok"}"#),
            r#"{"k":"***","n":"***","m":"ok"}"#
        );
        assert_eq!(secrets.redact("nothing here"), "nothing here");
        assert!(matches!(
            secrets.redact("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            GrantedSecrets::default().redact("Zq7"),
            std::borrow::Cow::Borrowed("Zq7")
        ));
    }

    #[test]
    fn overlapping_secrets_are_redacted_whole() {
        // Neither order of replacement leaves a tail: the union is covered.
        let secrets = granted(&["abcdef", "cdefgh", "ghij"]);
        assert_eq!(secrets.redact("<abcdefghij>"), "<***>");
        assert_eq!(secrets.redact("<cdefgh>"), "<***>");
        // A secret inside another, and one repeating itself.
        let secrets = granted(&["token-XYZ-token", "XYZ", "aaa"]);
        assert_eq!(secrets.redact("1 token-XYZ-token 2 XYZ 3"), "1 *** 2 *** 3");
        assert_eq!(secrets.redact("aaaaa"), "***");
    }

    #[test]
    fn short_lines_of_a_multi_line_secret_are_not_patterns_but_the_whole_is() {
        let secrets = granted(&["{\nlong-enough-line\n}"]);
        assert_eq!(secrets.redact("{ok}"), "{ok}");
        assert_eq!(secrets.redact("x long-enough-line y"), "x *** y");
        // A whole value is redacted whatever its length.
        assert_eq!(granted(&["#"]).redact("a#b"), "a***b");
    }

    #[test]
    fn secrets_shorter_than_three_characters_are_refused() {
        assert!(
            validate_secret_value("pin", "ab")
                .unwrap_err()
                .to_string()
                .contains("at least 3")
        );
        assert!(validate_secret_value("pin", "").is_err());
        assert!(validate_secret_value("pin", "abc").is_ok());
        // Characters, not bytes.
        assert!(validate_secret_value("pin", "éé").is_err());
    }
}
