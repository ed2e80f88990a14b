//! The Weir SDK for Rust: write flows and tasks as plain functions.
//!
//! ```text
//! use weir_sdk::{flow, info, task, Result};
//!
//! /// Says hello.
//! #[task(retries = 2, retry_delay = "100ms")]
//! fn greet(name: String) -> Result<String> {
//!     Ok(format!("Hello, {name}!"))
//! }
//!
//! #[flow]
//! fn hello(name: Option<String>) -> Result<String> {
//!     let name = name.unwrap_or_else(|| "world".into());
//!     info!("greeting {name}");
//!     Ok(greet(name)?)          // a sandboxed, recorded task run
//! }
//!
//! weir_sdk::export!(flows: [hello], tasks: [greet]);
//! ```
//!
//! Inside a flow, calling a `#[task]` function asks the host to run it in a
//! fresh sandbox with its policy (retries, timeout, fuel, memory, cache) and
//! records it; `greet::submit(..)` starts it concurrently and `greet::map(..)`
//! fans out. Calling a `#[flow]` function from a flow starts a subflow.
//!
//! The guest is built for `wasm32-wasip2` as a `cdylib`; the bindings come from
//! `wit/flow.wit`, the only thing this SDK shares with the host.

use std::fmt;
use std::marker::PhantomData;

pub use hooks::HookRun;
pub use schemars;
pub use serde;
pub use serde_json;
pub use weir_sdk_macros::{flow, task};

mod hooks;

/// Bindings generated from `wit/flow.wit`.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "flow",
        pub_export_macro: true,
        default_bindings_module: "weir_sdk::bindings",
        export_macro_name: "export_flow_world",
    });
}

use bindings::weir::flow::runtime;
use bindings::weir::flow::types as wit;

/// The result type of flows and tasks.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from flow or task code: a message with its causes.
///
/// Anything that implements `std::error::Error` converts into it with `?`,
/// including [`TaskError`] from a task call.
pub struct Error {
    message: String,
}

impl Error {
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }

    /// The same error with context in front: `"loading rows: connection reset"`.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            message: format!("{context}: {}", self.message),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error { message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.message)
    }
}

/// Returns early with an error made from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}

/// Why the sandbox stopped a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxKind {
    OutOfFuel,
    DeadlineExceeded,
    MemoryLimit,
    Trap,
    InvalidOutput,
}

/// Why a task or subflow call did not return a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskError {
    /// The task's code returned an error.
    Failed(String),
    /// The input did not match what the task expects.
    InvalidInput(String),
    /// The run was cancelled.
    Cancelled,
    /// The sandbox stopped it: fuel, deadline, memory, a trap or bad output.
    Sandbox { kind: SandboxKind, message: String },
}

impl TaskError {
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            TaskError::Sandbox {
                kind: SandboxKind::DeadlineExceeded,
                ..
            }
        )
    }

    pub fn is_out_of_fuel(&self) -> bool {
        matches!(
            self,
            TaskError::Sandbox {
                kind: SandboxKind::OutOfFuel,
                ..
            }
        )
    }

    pub fn is_memory_limit(&self) -> bool {
        matches!(
            self,
            TaskError::Sandbox {
                kind: SandboxKind::MemoryLimit,
                ..
            }
        )
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(message) => write!(f, "failed: {message}"),
            TaskError::InvalidInput(message) => write!(f, "invalid input: {message}"),
            TaskError::Cancelled => f.write_str("cancelled"),
            TaskError::Sandbox { kind, message } => {
                let kind = match kind {
                    SandboxKind::OutOfFuel => "out of fuel",
                    SandboxKind::DeadlineExceeded => "deadline exceeded",
                    SandboxKind::MemoryLimit => "memory limit",
                    SandboxKind::Trap => "trap",
                    SandboxKind::InvalidOutput => "invalid output",
                };
                write!(f, "{kind}: {message}")
            }
        }
    }
}

impl std::error::Error for TaskError {}

impl From<wit::TaskError> for TaskError {
    fn from(error: wit::TaskError) -> Self {
        match error {
            wit::TaskError::Failed(m) => TaskError::Failed(m),
            wit::TaskError::InvalidInput(m) => TaskError::InvalidInput(m),
            wit::TaskError::Cancelled => TaskError::Cancelled,
            wit::TaskError::Sandbox(s) => TaskError::Sandbox {
                kind: match s.kind {
                    wit::SandboxFailureKind::OutOfFuel => SandboxKind::OutOfFuel,
                    wit::SandboxFailureKind::DeadlineExceeded => SandboxKind::DeadlineExceeded,
                    wit::SandboxFailureKind::MemoryLimit => SandboxKind::MemoryLimit,
                    wit::SandboxFailureKind::Trap => SandboxKind::Trap,
                    wit::SandboxFailureKind::InvalidOutput => SandboxKind::InvalidOutput,
                },
                message: s.message,
            },
        }
    }
}

impl From<TaskError> for wit::TaskError {
    fn from(error: TaskError) -> Self {
        match error {
            TaskError::Failed(m) => wit::TaskError::Failed(m),
            TaskError::InvalidInput(m) => wit::TaskError::InvalidInput(m),
            TaskError::Cancelled => wit::TaskError::Cancelled,
            TaskError::Sandbox { kind, message } => wit::TaskError::Sandbox(wit::SandboxFailure {
                kind: match kind {
                    SandboxKind::OutOfFuel => wit::SandboxFailureKind::OutOfFuel,
                    SandboxKind::DeadlineExceeded => wit::SandboxFailureKind::DeadlineExceeded,
                    SandboxKind::MemoryLimit => wit::SandboxFailureKind::MemoryLimit,
                    SandboxKind::Trap => wit::SandboxFailureKind::Trap,
                    SandboxKind::InvalidOutput => wit::SandboxFailureKind::InvalidOutput,
                },
                message,
            }),
        }
    }
}

/// A task started with `submit`; `wait` for its result (once).
#[must_use = "a submitted task runs anyway; wait() for its result"]
pub struct TaskHandle<T> {
    handle: u64,
    _output: PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> TaskHandle<T> {
    /// Blocks the flow until the task ends.
    pub fn wait(self) -> Result<T, TaskError> {
        let output = runtime::await_task(self.handle).map_err(TaskError::from)?;
        decode_output(&output)
    }
}

/// Waits for every handle, in order; one failure does not lose the others.
pub fn wait_all<T: serde::de::DeserializeOwned>(
    handles: Vec<TaskHandle<T>>,
) -> Vec<Result<T, TaskError>> {
    handles.into_iter().map(TaskHandle::wait).collect()
}

/// Calls a task by name with JSON input (what `#[task]` functions do for you).
pub fn call_task_json(
    name: &str,
    input: &serde_json::Value,
) -> Result<serde_json::Value, TaskError> {
    let output = runtime::call_task(name, &input.to_string()).map_err(TaskError::from)?;
    decode_output(&output)
}

/// Starts a task by name with JSON input.
pub fn submit_task_json(name: &str, input: &serde_json::Value) -> TaskHandle<serde_json::Value> {
    TaskHandle {
        handle: runtime::submit_task(name, &input.to_string()),
        _output: PhantomData,
    }
}

/// Runs another flow of this component as a subflow, by name.
pub fn call_flow_json(
    name: &str,
    params: &serde_json::Value,
) -> Result<serde_json::Value, TaskError> {
    let output = runtime::call_flow(name, &params.to_string()).map_err(TaskError::from)?;
    decode_output(&output)
}

/// A secret granted to this run's deployment, or `None`.
pub fn secret(name: &str) -> Option<String> {
    runtime::get_secret(name)
}

/// A variable's value (`host variable set NAME VALUE`) as `T`, or `None`
/// when it is not set.
///
/// In a flow the read is recorded: a retried or resumed run sees the value
/// it saw the first time, even if the variable changed since. A task reads
/// the current value (its result is what a replay sees).
///
/// ```text
/// let threshold: u32 = weir_sdk::variable("threshold")?.unwrap_or(10);
/// ```
pub fn variable<T: serde::de::DeserializeOwned>(name: &str) -> Result<Option<T>, TaskError> {
    match runtime::get_variable(name) {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json).map(Some).map_err(|e| {
            TaskError::InvalidInput(format!(
                "variable '{name}' does not have the type this code expects: {e}"
            ))
        }),
    }
}

/// Slots of server-wide limits, held until this drops (see [`limit`]).
#[must_use = "the slots are given back when this drops"]
pub struct Slots {
    handle: u64,
}

impl Drop for Slots {
    fn drop(&mut self) {
        runtime::release_slots(self.handle);
    }
}

/// Takes `slots` of the concurrency limit `name` (`host concurrency-limit
/// create NAME N`), waiting while it is full; they are held until the
/// returned [`Slots`] drops, or the task or flow ends. The limit holds for
/// every run on every host. A name with no limit is an error.
///
/// ```text
/// let _db = weir_sdk::limit("db", 1)?;
/// // at most N of these run at once, anywhere
/// ```
pub fn limit(name: &str, slots: u32) -> Result<Slots, TaskError> {
    limits(&[name], slots, None)
}

/// Takes `slots` of each named limit, all or none, waiting at most
/// `timeout` (forever when `None`) for them to be free.
pub fn limits(
    names: &[&str],
    slots: u32,
    timeout: Option<std::time::Duration>,
) -> Result<Slots, TaskError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let handle = runtime::take_slots(&names, slots, timeout.map(|t| t.as_secs()))
        .map_err(TaskError::from)?;
    Ok(Slots { handle })
}

/// Takes one slot of the rate limit `name` (`host concurrency-limit create
/// NAME N --slot-decay-per-second R`), waiting until one has come back:
/// at most N at once, then R per second, across every run on every host.
///
/// ```text
/// weir_sdk::rate_limit("github-api")?;
/// ```
///
/// On a concurrency limit it only waits for a free slot, and gives it back.
pub fn rate_limit(name: &str) -> Result<(), TaskError> {
    // A rate limit's slots are spent, not held: the release gives back nothing.
    limit(name, 1).map(drop)
}

/// Pauses the flow run until someone resumes it with input matching
/// `input_schema` (a JSON Schema), and returns that input as `T`.
///
/// The run goes `Paused` and its sandbox is dropped; `host flow-run resume
/// ID --input '{...}'` (or the API) resumes it. The flow then runs again
/// from the start: every finished task is replayed from its record, so code
/// before the pause must call the same tasks in the same order (as any
/// retried flow must). Without a resume within `timeout` the run fails.
/// Only a top-level flow may pause.
///
/// ```text
/// let schema = serde_json::json!({"type": "object", "required": ["approved"],
///     "properties": {"approved": {"type": "boolean"}}});
/// let answer: Approval = weir_sdk::pause(Duration::from_secs(3600), &schema)?;
/// ```
pub fn pause<T: serde::de::DeserializeOwned>(
    timeout: std::time::Duration,
    input_schema: &serde_json::Value,
) -> Result<T, TaskError> {
    let input =
        runtime::pause(timeout.as_secs(), &input_schema.to_string()).map_err(TaskError::from)?;
    serde_json::from_str(&input).map_err(|e| {
        TaskError::InvalidInput(format!(
            "the resume input does not have the type this flow expects: {e}"
        ))
    })
}

/// Runs a deployment (a flow of any component, on its own pool) with
/// `params` laid over its defaults, waits for it and returns its result.
/// The start is recorded in this run: a retried or resumed run waits for the
/// same child instead of starting another. Prefect's `run_deployment()`.
pub fn run_deployment<T: serde::de::DeserializeOwned>(
    name: &str,
    params: &serde_json::Value,
) -> Result<T, TaskError> {
    let output =
        runtime::run_deployment(name, &params.to_string(), true).map_err(TaskError::from)?;
    decode_output(&output)
}

/// Starts a run of a deployment without waiting; returns its flow run id.
pub fn start_deployment(name: &str, params: &serde_json::Value) -> Result<String, TaskError> {
    let output =
        runtime::run_deployment(name, &params.to_string(), false).map_err(TaskError::from)?;
    decode_output(&output)
}

/// An artifact to leave on the run: a Markdown report, a table or a link.
/// Give it a key to make it the next version of that key across runs.
///
/// ```text
/// Artifact::markdown("# Report\n...").key("daily-report").create()?;
/// ```
#[derive(Clone, Debug)]
pub struct Artifact {
    kind: runtime::ArtifactKind,
    key: Option<String>,
    description: Option<String>,
    data: String,
}

impl Artifact {
    pub fn markdown(text: impl Into<String>) -> Self {
        Self::of(runtime::ArtifactKind::Markdown, text.into())
    }

    /// Rows as objects (or arrays); shown as a table.
    pub fn table<R: serde::Serialize>(rows: &[R]) -> Self {
        let data = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
        Self::of(runtime::ArtifactKind::Table, data)
    }

    /// An http:// or https:// URL.
    pub fn link(url: impl Into<String>) -> Self {
        Self::of(runtime::ArtifactKind::Link, url.into())
    }

    fn of(kind: runtime::ArtifactKind, data: String) -> Self {
        Self {
            kind,
            key: None,
            description: None,
            data,
        }
    }

    /// Lowercase letters, digits and dashes.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Records it; returns its id. Secrets in it are redacted.
    pub fn create(self) -> Result<String, TaskError> {
        runtime::create_artifact(&runtime::Artifact {
            kind: self.kind,
            key: self.key,
            description: self.description,
            data: self.data,
        })
        .map_err(TaskError::from)
    }
}

/// Who and where this code runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub flow_run_id: String,
    pub task_run_id: Option<String>,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    pub flow_name: String,
    pub task_name: Option<String>,
    pub deployment: Option<String>,
    pub scheduled_at: Option<String>,
}

pub fn run_info() -> RunInfo {
    let info = runtime::info();
    RunInfo {
        flow_run_id: info.flow_run_id,
        task_run_id: info.task_run_id,
        attempt: info.attempt,
        flow_name: info.flow_name,
        task_name: info.task_name,
        deployment: info.deployment,
        scheduled_at: info.scheduled_at,
    }
}

/// Log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Appends a line to the run's log.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit::LogLevel::Trace,
        Level::Debug => wit::LogLevel::Debug,
        Level::Info => wit::LogLevel::Info,
        Level::Warn => wit::LogLevel::Warn,
        Level::Error => wit::LogLevel::Error,
    };
    runtime::log(level, message);
}

#[macro_export]
macro_rules! trace { ($($arg:tt)*) => { $crate::log($crate::Level::Trace, &::std::format!($($arg)*)) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) }; }
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) }; }

fn decode_output<T: serde::de::DeserializeOwned>(output: &str) -> Result<T, TaskError> {
    serde_json::from_str(output).map_err(|e| {
        TaskError::Failed(format!(
            "the result does not have the type this flow expects: {e}"
        ))
    })
}

/// Exports the component: `describe()` and dispatch of `run-flow`/`run-task`.
///
/// ```text
/// weir_sdk::export!(flows: [etl], tasks: [extract, transform, load]);
/// ```
#[macro_export]
macro_rules! export {
    (flows: [$($flow:ident),* $(,)?] $(, tasks: [$($task:ident),* $(,)?])? $(,)?) => {
        #[doc(hidden)]
        struct __WeirComponent;

        impl $crate::bindings::exports::weir::flow::guest::Guest for __WeirComponent {
            fn describe() -> ::std::string::String {
                $crate::__private::describe(&[$($flow::__weir_entry()),*], &[$($($task::__weir_entry()),*)?])
            }

            fn run_flow(
                name: ::std::string::String,
                params: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::weir::flow::types::TaskError> {
                $crate::__private::dispatch("flow", &name, &params, &[$($flow::__weir_entry()),*]).map_err(::core::convert::Into::into)
            }

            fn run_task(
                name: ::std::string::String,
                input: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::weir::flow::types::TaskError> {
                $crate::__private::dispatch("task", &name, &input, &[$($($task::__weir_entry()),*)?]).map_err(::core::convert::Into::into)
            }
        }

        $crate::bindings::export_flow_world!(__WeirComponent with_types_in $crate::bindings);
    };
}

/// What the macros generate code against. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use schemars::{JsonSchema, schema_for};
    pub use serde::{Deserialize, Serialize};

    /// A flow or a task, as `export!` sees it.
    pub struct Entry {
        pub name: &'static str,
        pub description: &'static str,
        /// The policy as JSON text, checked by the macro at compile time.
        pub policy: &'static str,
        pub schema: fn() -> serde_json::Value,
        pub run: fn(&str) -> Result<String, TaskError>,
    }

    pub fn schema<T: JsonSchema>() -> serde_json::Value {
        let mut schema = serde_json::to_value(schema_for!(T)).unwrap_or_default();
        if let Some(map) = schema.as_object_mut() {
            map.remove("title");
        }
        schema
    }

    pub fn describe(flows: &[Entry], tasks: &[Entry]) -> String {
        let entry = |e: &Entry, schema_key: &str| {
            let policy: serde_json::Value = serde_json::from_str(e.policy).unwrap_or_default();
            serde_json::json!({
                "name": e.name,
                "description": e.description,
                schema_key: (e.schema)(),
                "policy": policy,
            })
        };
        serde_json::json!({
            "sdk": {"language": "rust", "version": env!("CARGO_PKG_VERSION")},
            "flows": flows.iter().map(|e| entry(e, "params_schema")).collect::<Vec<_>>(),
            "tasks": tasks.iter().map(|e| entry(e, "input_schema")).collect::<Vec<_>>(),
        })
        .to_string()
    }

    pub fn dispatch(
        what: &str,
        name: &str,
        input: &str,
        entries: &[Entry],
    ) -> Result<String, TaskError> {
        match entries.iter().find(|e| e.name == name) {
            Some(entry) => (entry.run)(input),
            None => {
                let names: Vec<&str> = entries.iter().map(|e| e.name).collect();
                Err(TaskError::InvalidInput(format!(
                    "no {what} named '{name}' in this component; it has: {}",
                    names.join(", ")
                )))
            }
        }
    }

    /// Parses the JSON object of arguments.
    pub fn decode_args<A: serde::de::DeserializeOwned>(input: &str) -> Result<A, TaskError> {
        serde_json::from_str(input).map_err(|e| TaskError::InvalidInput(e.to_string()))
    }

    /// Turns what the user's function returned into the export's result.
    pub fn encode<T: Serialize, E: fmt::Display>(
        result: Result<T, E>,
    ) -> Result<String, TaskError> {
        match result {
            Ok(value) => serde_json::to_string(&value).map_err(|e| {
                TaskError::Failed(format!("the result could not be written as JSON: {e}"))
            }),
            Err(error) => Err(TaskError::Failed(error.to_string())),
        }
    }

    pub fn call_task<A: Serialize, T: serde::de::DeserializeOwned>(
        name: &str,
        args: &A,
    ) -> Result<T, TaskError> {
        let input =
            serde_json::to_string(args).map_err(|e| TaskError::InvalidInput(e.to_string()))?;
        let output = runtime::call_task(name, &input).map_err(TaskError::from)?;
        decode_output(&output)
    }

    pub fn submit_task<A: Serialize, T>(name: &str, args: &A) -> TaskHandle<T> {
        // Arguments built from Rust values always serialize; a failure would be a bug in serde.
        let input = serde_json::to_string(args).unwrap_or_else(|_| "null".into());
        TaskHandle {
            handle: runtime::submit_task(name, &input),
            _output: PhantomData,
        }
    }

    pub fn call_flow<A: Serialize, T: serde::de::DeserializeOwned>(
        name: &str,
        args: &A,
    ) -> Result<T, TaskError> {
        let params =
            serde_json::to_string(args).map_err(|e| TaskError::InvalidInput(e.to_string()))?;
        let output = runtime::call_flow(name, &params).map_err(TaskError::from)?;
        decode_output(&output)
    }
}

#[cfg(test)]
mod tests {
    use super::__private::*;
    use super::*;

    fn ok_task(input: &str) -> Result<String, TaskError> {
        let n: i64 = decode_args::<serde_json::Value>(input)?["n"]
            .as_i64()
            .unwrap_or(0);
        encode::<i64, Error>(Ok(n * 2))
    }

    fn entries() -> Vec<Entry> {
        vec![Entry {
            name: "double",
            description: "Doubles n.",
            policy: r#"{"retries":2}"#,
            schema: || serde_json::json!({"type": "object"}),
            run: ok_task,
        }]
    }

    #[test]
    fn describe_writes_the_manifest_format() {
        let manifest: serde_json::Value =
            serde_json::from_str(&describe(&entries(), &entries())).unwrap();
        assert_eq!(manifest["sdk"]["language"], "rust");
        assert_eq!(manifest["flows"][0]["name"], "double");
        assert_eq!(manifest["flows"][0]["params_schema"]["type"], "object");
        assert_eq!(manifest["tasks"][0]["input_schema"]["type"], "object");
        assert_eq!(manifest["tasks"][0]["policy"]["retries"], 2);
    }

    #[test]
    fn dispatch_runs_by_name_and_names_what_exists() {
        assert_eq!(
            dispatch("task", "double", r#"{"n": 21}"#, &entries()),
            Ok("42".into())
        );
        let err = dispatch("task", "triple", "{}", &entries()).unwrap_err();
        assert_eq!(
            err,
            TaskError::InvalidInput(
                "no task named 'triple' in this component; it has: double".into()
            )
        );
        assert!(matches!(
            decode_args::<i64>("{"),
            Err(TaskError::InvalidInput(_))
        ));
    }

    #[test]
    fn errors_keep_their_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("loading rows")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e: Error = Outer(std::io::Error::other("connection reset")).into();
        assert_eq!(e.to_string(), "loading rows: connection reset");
        assert_eq!(
            encode::<(), Error>(Err(e)),
            Err(TaskError::Failed("loading rows: connection reset".into()))
        );
    }
}
