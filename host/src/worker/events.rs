//! What a running flow tells whoever watches it (the CLI's progress line, SSE).

use crate::model::{Failure, FlowRunId, LogLevel, RunState, TaskRunId};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum RunEvent {
    FlowStarted {
        id: FlowRunId,
        flow_name: String,
        attempt: u32,
    },
    TaskStarted {
        id: TaskRunId,
        name: String,
        attempt: u32,
    },
    TaskRetrying {
        id: TaskRunId,
        name: String,
        attempt: u32,
        failure: Failure,
        delay: Duration,
    },
    TaskFinished {
        id: TaskRunId,
        name: String,
        state: RunState,
        duration: Duration,
    },
    Log {
        task: Option<String>,
        level: LogLevel,
        message: String,
    },
    FlowFinished {
        id: FlowRunId,
        state: RunState,
        summary: RunSummary,
    },
}

/// Totals for one flow run, its subflows' tasks included.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    /// Task calls that ran or hit the cache (replayed calls are counted apart).
    pub tasks: u64,
    pub attempts: u64,
    pub cached: u64,
    pub replayed: u64,
    pub failed: u64,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}
