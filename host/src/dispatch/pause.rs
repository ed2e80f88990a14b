//! Runs that wait for a person: the records a `pause` leaves, the resume
//! that answers it, and the deadline that fails it.
//!
//! A flow's `pause` is recorded as a call of its own (task name
//! [`PAUSE_CALL`]) that stays `Paused` with its deadline in
//! `next_attempt_at`, its input the timeout and the JSON Schema the answer
//! must match. The flow run is `Paused` and nobody holds it. Resuming checks
//! the input against that schema and, in one unit with the run's way back to
//! `Pending` or `Scheduled`, completes the call with the input as its output,
//! so the next attempt replays it like any finished task: the flow's `pause`
//! returns the input. Nothing here needs the run's process: the records are
//! all there is, so a pause outlives a server restart.

use super::DispatchError;
use crate::control::{Control, Durability};
use crate::model::{FailureKind, FlowRunId, RunState, TimestampMicros};
use crate::store::{StateChange, Store, TaskRunRow, Write};
use serde_json::Value;

/// The task name a `pause` call is recorded under. It holds a character no
/// SDK allows in a task's name, so it cannot meet a real task in replay.
pub const PAUSE_CALL: &str = "weir:pause";
/// The task name a flow's variable read is recorded under (see [`PAUSE_CALL`]).
pub const VARIABLE_CALL: &str = "weir:variable";
/// The task name a flow's artifact is recorded under (see [`PAUSE_CALL`]).
pub const ARTIFACT_CALL: &str = "weir:artifact";
/// The task name a flow's start of a deployment's run is recorded under.
pub const RUN_DEPLOYMENT_CALL: &str = "weir:run-deployment";

/// What a pause call records as its input (and replay compares).
pub fn pause_input(timeout_seconds: u64, input_schema: &Value) -> String {
    serde_json::json!({"timeout_seconds": timeout_seconds, "input_schema": input_schema})
        .to_string()
}

/// The open pause of a run: its call record and the schema its input must match.
pub struct OpenPause {
    pub call: TaskRunRow,
    pub schema: Value,
}

/// The pause a `Paused` run waits in, if its records hold one.
pub fn open_pause(store: &Store, run: FlowRunId) -> Result<Option<OpenPause>, DispatchError> {
    let call = store
        .task_runs(run)?
        .into_iter()
        .find(|t| t.task_name == PAUSE_CALL && t.state == RunState::Paused);
    let Some(call) = call else {
        return Ok(None);
    };
    let input: Value = serde_json::from_str(&call.input).map_err(|e| DispatchError::Corrupt {
        what: "pause record",
        message: e.to_string(),
    })?;
    let schema = input
        .get("input_schema")
        .cloned()
        .unwrap_or(Value::Bool(true));
    Ok(Some(OpenPause { call, schema }))
}

/// Checks `input` against the pause's schema and returns the writes that
/// complete the pause call with it; the caller puts them in one unit with
/// the run's own change, so either both happen or neither.
pub fn answer(
    control: &Control,
    run: FlowRunId,
    pause: &OpenPause,
    input: &Value,
) -> Result<Vec<Write>, DispatchError> {
    let now = control.now();
    if pause
        .call
        .next_attempt_at
        .is_some_and(|deadline| deadline <= now)
    {
        // The scheduler may not have looked yet (or there is none: a run of
        // `host flow run`): the pause ends here, as it would there.
        expire_pauses(control, control.store(), now)?;
        return Err(DispatchError::WrongState {
            id: run,
            state: RunState::Failed,
            why: "its pause timed out before this resume; start it again with `host flow-run retry ID`",
        });
    }
    crate::protocol::validate_against(&pause.schema, input).map_err(|problems| {
        DispatchError::InvalidResumeInput {
            id: run,
            problems: problems.join("; "),
        }
    })?;
    let id = pause.call.id.0;
    let running = StateChange::new(id, RunState::Paused, RunState::Running, now);
    let mut done = StateChange::new(id, RunState::Running, RunState::Completed, now);
    done.output = Some(input.to_string());
    done.attempts = Some(1);
    for change in [&running, &done] {
        crate::orchestrate::decide(Some(change.from), change.to)
            .map_err(|e| DispatchError::Control(e.into()))?;
    }
    Ok(vec![
        Write::TaskRunState(running),
        Write::TaskRunState(done),
    ])
}

/// Answers the pause of `run` and moves it to `Pending` in one unit, for a
/// caller that runs it in its own process next (`host flow-run resume`
/// without a server). Blocks.
pub fn resume_here(
    control: &Control,
    run: &crate::store::FlowRunRow,
    input: &Value,
) -> Result<(), DispatchError> {
    let not_paused = |why| DispatchError::WrongState {
        id: run.id,
        state: run.state,
        why,
    };
    if run.state != RunState::Paused {
        return Err(not_paused("only a Paused run takes input"));
    }
    let open = open_pause(control.store(), run.id)?
        .ok_or_else(|| not_paused("it has no pause waiting for input; cancel or retry it"))?;
    let writes = answer(control, run.id, &open, input)?;
    let mut change = StateChange::new(run.id.0, RunState::Paused, RunState::Pending, control.now());
    change.message = Some(format!(
        "resumed with input; attempt {} replays the finished calls",
        run.attempt + 1
    ));
    if let Some(ticket) = control.change_flow_run(change, writes, Durability::Committed)? {
        ticket.wait_blocking()?;
    }
    Ok(())
}

/// Fails the paused runs whose pause deadline passed by `now`; returns how
/// many. A run resumed meanwhile is left alone (compare-and-set).
pub fn expire_pauses(
    control: &Control,
    store: &Store,
    now: TimestampMicros,
) -> Result<usize, DispatchError> {
    let mut expired = 0;
    for run in store.runs_in_state(RunState::Paused, 1000)? {
        let Some(pause) = open_pause(store, run.id)? else {
            continue;
        };
        let Some(deadline) = pause.call.next_attempt_at else {
            continue;
        };
        if deadline > now {
            continue;
        }
        let waited = pause_timeout_text(&pause.call.input);
        let why = format!(
            "nobody resumed it within its pause timeout ({waited}); start it again with `host flow-run retry {}`",
            run.id
        );
        let mut call =
            StateChange::new(pause.call.id.0, RunState::Paused, RunState::Cancelled, now);
        call.message = Some("the pause timed out".into());
        call.failure_kind = Some(FailureKind::Cancelled);
        let mut change = StateChange::new(run.id.0, RunState::Paused, RunState::Failed, now);
        change.message = Some(why);
        change.failure_kind = Some(FailureKind::Failed);
        let ticket = control.change_flow_run(
            change,
            vec![Write::TaskRunState(call)],
            Durability::Committed,
        )?;
        if let Some(ticket) = ticket {
            match ticket.wait_blocking() {
                Ok(()) => expired += 1,
                // Resumed or cancelled meanwhile: theirs stands.
                Err(crate::store::StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(expired)
}

fn pause_timeout_text(input: &str) -> String {
    let seconds = serde_json::from_str::<Value>(input)
        .ok()
        .and_then(|v| v.get("timeout_seconds").and_then(Value::as_u64))
        .unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}
