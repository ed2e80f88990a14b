//! The vocabulary of Weir: ids, states, manifests, policies and outcomes.
//!
//! Plain data with no IO and no async. Every other module speaks in these types;
//! the store maps them to rows, the engine to WIT values, the API to JSON.

pub mod artifact;
pub mod automation;
pub mod capabilities;
pub mod deploy;
pub mod limits;
pub mod template;

pub use automation::{Automation, AutomationEvent, EventFields};
pub use deploy::{
    Catchup, Deployment, DeploymentVersion, GrantedSecrets, Schedule, Variable, WorkPool,
    WorkQueue, validate_secret_value,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7), so ids sort by creation time.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(uuid::Uuid::from_bytes(bytes))
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// One execution of a flow.
    FlowRunId
);
uuid_id!(
    /// One call of a task from a flow (all its attempts).
    TaskRunId
);

/// The sha256 of a component's bytes, lower-case hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ComponentDigest(String);

impl ComponentDigest {
    /// Wraps a digest that is already lower-case hex of 64 characters.
    pub fn parse(hex: &str) -> Option<Self> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(hex.to_string()))
    }
    pub fn from_sha256(bytes: [u8; 32]) -> Self {
        Self(hex::encode(bytes))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 12 characters, for humans.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ComponentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ComponentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

/// The state of a flow run or a task run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum RunState {
    Scheduled,
    Late,
    Pending,
    Running,
    Retrying,
    Paused,
    Cancelling,
    Completed,
    Cached,
    Failed,
    TimedOut,
    Crashed,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 13] = [
        RunState::Scheduled,
        RunState::Late,
        RunState::Pending,
        RunState::Running,
        RunState::Retrying,
        RunState::Paused,
        RunState::Cancelling,
        RunState::Completed,
        RunState::Cached,
        RunState::Failed,
        RunState::TimedOut,
        RunState::Crashed,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Scheduled => "Scheduled",
            RunState::Late => "Late",
            RunState::Pending => "Pending",
            RunState::Running => "Running",
            RunState::Retrying => "Retrying",
            RunState::Paused => "Paused",
            RunState::Cancelling => "Cancelling",
            RunState::Completed => "Completed",
            RunState::Cached => "Cached",
            RunState::Failed => "Failed",
            RunState::TimedOut => "TimedOut",
            RunState::Crashed => "Crashed",
            RunState::Cancelled => "Cancelled",
        }
    }

    /// A final state: nothing will run again unless a user retries.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Completed
                | RunState::Cached
                | RunState::Failed
                | RunState::TimedOut
                | RunState::Crashed
                | RunState::Cancelled
        )
    }

    /// Finished with a value.
    pub fn is_success(self) -> bool {
        matches!(self, RunState::Completed | RunState::Cached)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown state '{0}'; expected one of: Scheduled, Late, Pending, Running, Retrying, Paused, Cancelling, Completed, Cached, Failed, TimedOut, Crashed, Cancelled"
)]
pub struct UnknownState(pub String);

impl FromStr for RunState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// Why a task attempt or a flow did not produce a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The guest returned an error.
    Failed,
    /// The input did not match what the code expects.
    InvalidInput,
    /// Stopped by a user.
    Cancelled,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest wanted more memory than its limit.
    Memory,
    /// The guest trapped: panic, unreachable, stack overflow, bad memory access.
    Trap,
    /// The guest returned something the host will not accept (not JSON, too large).
    InvalidOutput,
    /// The process running it died.
    Crashed,
}

impl FailureKind {
    pub const ALL: [FailureKind; 9] = [
        FailureKind::Failed,
        FailureKind::InvalidInput,
        FailureKind::Cancelled,
        FailureKind::OutOfFuel,
        FailureKind::Timeout,
        FailureKind::Memory,
        FailureKind::Trap,
        FailureKind::InvalidOutput,
        FailureKind::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Failed => "failed",
            FailureKind::InvalidInput => "invalid-input",
            FailureKind::Cancelled => "cancelled",
            FailureKind::OutOfFuel => "out-of-fuel",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Trap => "trap",
            FailureKind::InvalidOutput => "invalid-output",
            FailureKind::Crashed => "crashed",
        }
    }

    /// The state a run ends in when this is its last failure.
    pub fn final_state(self) -> RunState {
        match self {
            FailureKind::Timeout => RunState::TimedOut,
            FailureKind::Cancelled => RunState::Cancelled,
            FailureKind::Crashed => RunState::Crashed,
            _ => RunState::Failed,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown failure kind '{s}'; expected one of: failed, invalid-input, cancelled, out-of-fuel, timeout, memory, trap, invalid-output, crashed"
                )
            })
    }
}

/// A failure with the words a user needs to act on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Failure {}

/// Log levels, as in the WIT contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    pub fn from_u8(n: u8) -> LogLevel {
        match n {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a component says about itself (`describe()`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub sdk: Option<SdkInfo>,
    #[serde(default)]
    pub flows: Vec<FlowDef>,
    #[serde(default)]
    pub tasks: Vec<TaskDef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdkInfo {
    pub language: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub params_schema: Option<serde_json::Value>,
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub input_schema: Option<serde_json::Value>,
    #[serde(default)]
    pub policy: Policy,
}

impl Manifest {
    pub fn flow(&self, name: &str) -> Option<&FlowDef> {
        self.flows.iter().find(|f| f.name == name)
    }
    pub fn task(&self, name: &str) -> Option<&TaskDef> {
        self.tasks.iter().find(|t| t.name == name)
    }
    pub fn flow_names(&self) -> Vec<&str> {
        self.flows.iter().map(|f| f.name.as_str()).collect()
    }
}

/// How a cache key is formed for a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheKeyPolicy {
    /// sha256(component digest, task name, canonical input).
    #[default]
    InputAndCode,
    /// sha256(task name, canonical input): survives a new build of the component.
    Input,
    /// Never cached.
    None,
}

/// What a cache key is made of when a policy lists its parts
/// (`cache_key = ["input", "params"]`, Prefect's `INPUTS + TASK_SOURCE`,
/// `FLOW_PARAMETERS`, `RUN_ID`); the task's name is always in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheKeyPart {
    /// The task's input, as canonical JSON.
    Input,
    /// The flow run's params, as canonical JSON.
    Params,
    /// The flow run's id: a result is reused within its run only.
    RunId,
    /// The component's digest: a new build of the code caches anew.
    Code,
}

/// A `cache_ttl` of this many milliseconds (`"forever"` in the SDKs) never expires.
pub const CACHE_FOREVER_MS: u64 = u64::MAX;

/// A task's or flow's policy as written in the manifest; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<FailureKind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<CacheKeyPolicy>,
    /// The key's parts, when given; `cache_key` is then not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key_parts: Option<Vec<CacheKeyPart>>,
    /// Run even on a cache hit, and cache the new result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_cache: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// State hooks: tasks of the same component run when a run of this
    /// ends Completed (or Cached), Failed (or TimedOut), Cancelled or Crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_completion: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_cancellation: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_crashed: Option<Vec<String>>,
    /// `false` keeps the result out of the database and result files: the
    /// caller gets it, nothing records it, and so a resume runs it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_result: Option<bool>,
    /// A storage the host names (`--result-storage NAME=DIR`) that keeps
    /// the result in a file; the record holds a reference to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_storage: Option<String>,
}

impl Policy {
    /// The hooks to run when a run of this ends in `state`, and which
    /// option named them.
    pub fn hooks_for(&self, state: RunState) -> (&'static str, &[String]) {
        let (event, hooks) = match state {
            RunState::Completed | RunState::Cached => ("on_completion", &self.on_completion),
            RunState::Failed | RunState::TimedOut => ("on_failure", &self.on_failure),
            RunState::Cancelled => ("on_cancellation", &self.on_cancellation),
            RunState::Crashed => ("on_crashed", &self.on_crashed),
            _ => ("", &None),
        };
        (event, hooks.as_deref().unwrap_or(&[]))
    }

    /// Fields set in `over` win over fields set in `self`.
    pub fn overlay(&self, over: &Policy) -> Policy {
        Policy {
            retries: over.retries.or(self.retries),
            retry_delay_ms: over
                .retry_delay_ms
                .clone()
                .or_else(|| self.retry_delay_ms.clone()),
            backoff: over.backoff.or(self.backoff),
            max_delay_ms: over.max_delay_ms.or(self.max_delay_ms),
            jitter: over.jitter.or(self.jitter),
            retry_on: over.retry_on.clone().or_else(|| self.retry_on.clone()),
            timeout_ms: over.timeout_ms.or(self.timeout_ms),
            fuel: over.fuel.or(self.fuel),
            memory_bytes: over.memory_bytes.or(self.memory_bytes),
            cache_ttl_ms: over.cache_ttl_ms.or(self.cache_ttl_ms),
            cache_key: over.cache_key.or(self.cache_key),
            cache_key_parts: over
                .cache_key_parts
                .clone()
                .or_else(|| self.cache_key_parts.clone()),
            refresh_cache: over.refresh_cache.or(self.refresh_cache),
            tags: over.tags.clone().or_else(|| self.tags.clone()),
            // Hooks are the code's own: a deployment or an override cannot name others.
            on_completion: self.on_completion.clone(),
            on_failure: self.on_failure.clone(),
            on_cancellation: self.on_cancellation.clone(),
            on_crashed: self.on_crashed.clone(),
            persist_result: over.persist_result.or(self.persist_result),
            result_storage: over
                .result_storage
                .clone()
                .or_else(|| self.result_storage.clone()),
        }
    }
}

/// Sandbox limits for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: u64,
    /// Wall-clock deadline; `None` means no deadline.
    #[serde(with = "opt_millis")]
    pub timeout: Option<Duration>,
}

/// A policy with every default filled in: what the host applies.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectivePolicy {
    pub retries: u32,
    pub retry_delays: Vec<Duration>,
    pub backoff: f64,
    pub max_delay: Duration,
    pub jitter: f64,
    pub retry_on: Vec<FailureKind>,
    pub limits: Limits,
    /// `Duration::MAX` never expires.
    pub cache_ttl: Option<Duration>,
    pub cache_key: CacheKeyPolicy,
    /// Sorted, without repeats; `None` when the policy names none.
    pub cache_key_parts: Option<Vec<CacheKeyPart>>,
    /// Whether its result is recorded (and so may be replayed or cached).
    pub persist_result: bool,
    /// The host's storage that keeps its result in a file, if any.
    pub result_storage: Option<String>,
    pub refresh_cache: bool,
    pub tags: Vec<String>,
    /// What the server's ceilings lowered, one sentence each, for the run log.
    pub clamped: Vec<String>,
}

/// The host's defaults for fields a policy leaves out, and the ceilings that
/// no policy (a component's manifest, a deployment, a CLI override) may exceed.
#[derive(Clone, Copy, Debug)]
pub struct PolicyDefaults {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout: Option<Duration>,
    pub max_memory_bytes: u64,
    pub max_fuel: u64,
    /// The longest deadline; `None` allows a policy to ask for no deadline.
    pub max_timeout: Option<Duration>,
    pub max_retries: u32,
}

impl PolicyDefaults {
    /// Defaults with ceilings that never bind: for tests and tools.
    pub fn unbounded(fuel: u64, memory_bytes: u64, timeout: Option<Duration>) -> Self {
        Self {
            fuel,
            memory_bytes,
            timeout,
            max_memory_bytes: u64::MAX,
            max_fuel: u64::MAX,
            max_timeout: None,
            max_retries: u32::MAX,
        }
    }
}

impl EffectivePolicy {
    pub fn resolve(policy: &Policy, defaults: &PolicyDefaults) -> EffectivePolicy {
        let mut clamped = Vec::new();
        let mut ceiling = |what: &str, asked: String, limit: String| {
            clamped.push(format!(
                "{what} {asked} lowered to the server's ceiling of {limit}; ask the server's operator to raise it if this work needs more"
            ));
        };
        let retries = policy.retries.unwrap_or(0);
        if retries > defaults.max_retries {
            ceiling(
                "retries",
                retries.to_string(),
                defaults.max_retries.to_string(),
            );
        }
        let fuel = policy.fuel.unwrap_or(defaults.fuel);
        if fuel > defaults.max_fuel {
            ceiling("fuel", fuel.to_string(), defaults.max_fuel.to_string());
        }
        let memory_bytes = policy.memory_bytes.unwrap_or(defaults.memory_bytes);
        if memory_bytes > defaults.max_memory_bytes {
            ceiling(
                "memory",
                format!("{memory_bytes} bytes"),
                format!("{} bytes", defaults.max_memory_bytes),
            );
        }
        let timeout = policy
            .timeout_ms
            .map(Duration::from_millis)
            .or(defaults.timeout);
        let timeout = match (timeout, defaults.max_timeout) {
            (Some(asked), Some(max)) if asked > max => {
                ceiling(
                    "timeout",
                    humantime::format_duration(asked).to_string(),
                    humantime::format_duration(max).to_string(),
                );
                Some(max)
            }
            // Nobody asked for "no deadline" (a policy cannot): the ceiling is the default.
            (None, Some(max)) => Some(max),
            (asked, _) => asked,
        };
        EffectivePolicy {
            retries: retries.min(defaults.max_retries),
            retry_delays: policy
                .retry_delay_ms
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            backoff: policy.backoff.unwrap_or(1.0).clamp(1.0, 100.0),
            max_delay: Duration::from_millis(policy.max_delay_ms.unwrap_or(3_600_000)),
            jitter: policy.jitter.unwrap_or(0.0).clamp(0.0, 1.0),
            retry_on: policy.retry_on.clone().unwrap_or_else(|| {
                vec![
                    FailureKind::Failed,
                    FailureKind::Timeout,
                    FailureKind::OutOfFuel,
                    FailureKind::Memory,
                    FailureKind::Trap,
                    FailureKind::InvalidOutput,
                ]
            }),
            limits: Limits {
                fuel: fuel.min(defaults.max_fuel),
                memory_bytes: memory_bytes.min(defaults.max_memory_bytes),
                timeout,
            },
            cache_ttl: policy.cache_ttl_ms.map(|ms| match ms {
                CACHE_FOREVER_MS => Duration::MAX,
                ms => Duration::from_millis(ms),
            }),
            cache_key: policy.cache_key.unwrap_or_default(),
            persist_result: policy.persist_result.unwrap_or(true),
            result_storage: policy.result_storage.clone(),
            cache_key_parts: policy.cache_key_parts.clone().map(|mut parts| {
                parts.sort();
                parts.dedup();
                parts
            }),
            refresh_cache: policy.refresh_cache.unwrap_or(false),
            tags: policy.tags.clone().unwrap_or_default(),
            clamped,
        }
    }

    /// Whether a failure of this kind on attempt `attempt` (1-based) earns another attempt.
    pub fn should_retry(&self, attempt: u32, kind: FailureKind) -> bool {
        attempt <= self.retries && self.retry_on.contains(&kind)
    }

    /// The wait before attempt `attempt + 1`, given a jitter sample in [0, 1).
    ///
    /// A list of delays is used per attempt (the last one repeats); a backoff factor
    /// multiplies the last listed delay for each attempt past the list; jitter
    /// spreads the delay by ±jitter; the result never exceeds `max_delay`.
    pub fn retry_delay(&self, attempt: u32, jitter_sample: f64) -> Duration {
        let Some(last) = self.retry_delays.last() else {
            return Duration::ZERO;
        };
        let index = (attempt.saturating_sub(1)) as usize;
        let base = match self.retry_delays.get(index) {
            Some(delay) => *delay,
            None => {
                let beyond = (index + 1 - self.retry_delays.len()) as i32;
                last.mul_f64(self.backoff.powi(beyond).min(1e6))
            }
        };
        let spread = 1.0 + self.jitter * (2.0 * jitter_sample - 1.0);
        base.mul_f64(spread.max(0.0)).min(self.max_delay)
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Who and where a guest runs, as the `info` import reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub flow_run_id: String,
    pub task_run_id: Option<String>,
    pub attempt: u32,
    pub flow_name: String,
    pub task_name: Option<String>,
    pub deployment: Option<String>,
    pub scheduled_at: Option<String>,
}

/// Microseconds since the Unix epoch; what the store keeps.
pub type TimestampMicros = i64;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delays: &[u64], backoff: f64, jitter: f64) -> EffectivePolicy {
        let defaults = PolicyDefaults::unbounded(1, 1, None);
        EffectivePolicy::resolve(
            &Policy {
                retries: Some(5),
                retry_delay_ms: Some(delays.to_vec()),
                backoff: Some(backoff),
                max_delay_ms: Some(10_000),
                jitter: Some(jitter),
                ..Policy::default()
            },
            &defaults,
        )
    }

    #[test]
    fn retry_delay_uses_list_then_backoff_then_cap() {
        let p = policy(&[100, 200], 2.0, 0.0);
        let ms = |attempt| p.retry_delay(attempt, 0.5).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(10)],
            [100, 200, 400, 800, 10_000]
        );
    }

    #[test]
    fn jitter_spreads_both_ways() {
        let p = policy(&[1000], 1.0, 0.2);
        assert_eq!(p.retry_delay(1, 0.0).as_millis(), 800);
        assert_eq!(p.retry_delay(1, 0.5).as_millis(), 1000);
        assert!(p.retry_delay(1, 0.999).as_millis() > 1190);
    }

    #[test]
    fn no_delays_means_retry_at_once() {
        assert_eq!(policy(&[], 2.0, 0.5).retry_delay(3, 0.9), Duration::ZERO);
    }

    #[test]
    fn retry_respects_count_and_kinds() {
        let mut p = policy(&[], 1.0, 0.0);
        p.retry_on = vec![FailureKind::Timeout];
        assert!(p.should_retry(1, FailureKind::Timeout));
        assert!(!p.should_retry(1, FailureKind::Failed));
        assert!(!p.should_retry(6, FailureKind::Timeout));
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
        }
        assert!("Done".parse::<RunState>().is_err());
    }

    #[test]
    fn manifest_parses_the_sdk_format() {
        let json = r#"{"sdk":{"language":"rust","version":"0.1.0"},
            "flows":[{"name":"etl","description":"d","params_schema":{"type":"object"},"policy":{}}],
            "tasks":[{"name":"load","policy":{"retries":3,"retry_delay_ms":[50],"retry_on":["failed","timeout"],"cache_key":"input"}}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.flow_names(), ["etl"]);
        let load = m.task("load").unwrap();
        assert_eq!(load.policy.retries, Some(3));
        assert_eq!(load.policy.cache_key, Some(CacheKeyPolicy::Input));
        assert_eq!(
            load.policy.retry_on.as_deref(),
            Some(&[FailureKind::Failed, FailureKind::Timeout][..])
        );
    }

    #[test]
    fn ceilings_bind_whatever_the_policy_asks_and_say_so() {
        let defaults = PolicyDefaults {
            fuel: 1_000,
            memory_bytes: 1 << 20,
            timeout: Some(Duration::from_secs(1)),
            max_memory_bytes: 2 << 20,
            max_fuel: 10_000,
            max_timeout: Some(Duration::from_secs(60)),
            max_retries: 5,
        };
        let greedy = Policy {
            retries: Some(1_000_000),
            fuel: Some(u64::MAX),
            memory_bytes: Some(64 << 30),
            timeout_ms: Some(86_400_000),
            ..Policy::default()
        };
        let p = EffectivePolicy::resolve(&greedy, &defaults);
        assert_eq!(p.retries, 5);
        assert_eq!(
            p.limits,
            Limits {
                fuel: 10_000,
                memory_bytes: 2 << 20,
                timeout: Some(Duration::from_secs(60)),
            }
        );
        assert_eq!(p.clamped.len(), 4, "{:?}", p.clamped);
        assert!(p.clamped[0].starts_with("retries 1000000 lowered to the server's ceiling of 5"));
        // Within the ceilings nothing changes and nothing is said.
        let modest = Policy {
            retries: Some(2),
            fuel: Some(5_000),
            ..Policy::default()
        };
        let p = EffectivePolicy::resolve(&modest, &defaults);
        assert_eq!((p.retries, p.limits.fuel), (2, 5_000));
        assert!(p.clamped.is_empty());
        // A ceiling on the deadline also bounds "no deadline".
        let defaults = PolicyDefaults {
            timeout: None,
            ..defaults
        };
        let p = EffectivePolicy::resolve(&Policy::default(), &defaults);
        assert_eq!(p.limits.timeout, Some(Duration::from_secs(60)));
    }
}
