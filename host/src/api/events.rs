//! Live logs and state changes of a flow run as Server-Sent Events.
//!
//! The stream reads the database when the store says the run changed (a
//! commit of this server's, or under PostgreSQL of any server's), and at
//! least every second (a process that writes the same SQLite file is not
//! heard): `log` events carry a log line (their SSE id is the line's id,
//! so a client resumes with `?after=`), `state` events the run's state when
//! it changes, and one `end` event the final run once it has ended and its
//! log is drained. Then the stream closes. At most `MAX_EVENT_STREAMS` are
//! open at once (more get 503), each read runs on the blocking pool, and
//! every stream ends when the server stops.

use super::runs::parse_run_id;
use super::{ApiError, ApiResult, ApiState, MAX_EVENT_STREAMS};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// How often an ended run is read again for its last lines.
const POLL: Duration = Duration::from_millis(100);
/// How long a stream that heard of a change waits for more before it reads.
const COALESCE: Duration = Duration::from_millis(20);
/// How often a run is read when nothing was heard of it.
const UNHEARD: Duration = Duration::from_secs(1);
/// A run's final lines may land just after its state: look this many more times.
const DRAIN_POLLS: u32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventQuery {
    after: Option<i64>,
}

struct Cursor {
    state: Arc<ApiState>,
    id: crate::model::FlowRunId,
    after: i64,
    last_state: Option<crate::model::RunState>,
    pending: std::collections::VecDeque<Event>,
    drain: Option<u32>,
    done: bool,
    /// What the store commits; the stream reads again when its run changed.
    changes: tokio::sync::broadcast::Receiver<crate::store::Change>,
    /// Held while the stream is open.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Follow a flow run: `log`, `state` and a final `end` event.
#[utoipa::path(get, path = "/api/flow-runs/{id}/events", tag = "flow runs",
    params(("id" = String, Path), ("after" = Option<i64>, Query, description = "skip log lines up to this id")),
    responses((status = 200, content_type = "text/event-stream",
        description = "`event: log` (a LogLine), `event: state` ({state, message}), `event: end` (the FlowRun)"),
        (status = 404, body = super::ErrorReply),
        (status = 503, body = super::ErrorReply, description = "Too many streams are open")))]
pub(crate) async fn flow_run_events(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let slot = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "{MAX_EVENT_STREAMS} event streams are open already; close one or poll /api/flow-runs/{{id}}/logs"
        ))
    })?;
    let id = state
        .blocking(move |state| {
            let id = parse_run_id(state, &id)?;
            state.store.flow_run(id)?;
            Ok(id)
        })
        .await?;
    let cursor = Cursor {
        state: state.clone(),
        id,
        after: q.after.unwrap_or(0),
        last_state: None,
        pending: Default::default(),
        drain: None,
        done: false,
        changes: state.store.changes(),
        _slot: slot,
    };
    let events = stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(event) = c.pending.pop_front() {
                return Some((Ok(event), c));
            }
            if c.done {
                return None;
            }
            c.poll().await;
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

impl Cursor {
    /// Queues what changed since the last look; waits first, unless it is
    /// the first look, for its run to change (an ended run: a short while).
    async fn poll(&mut self) {
        if self.last_state.is_some() {
            let wait = if self.drain.is_some() { POLL } else { UNHEARD };
            let id = self.id;
            let changes = &mut self.changes;
            let heard = async move {
                loop {
                    match changes.recv().await {
                        Ok(change) if change.concerns(id) => return,
                        Ok(_) => {}
                        // Missed some: read again. Closed: the sleep decides.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = self.state.shutdown.cancelled() => {
                    self.done = true;
                    return;
                }
                // A burst of commits (a busy run) makes one read.
                _ = heard => tokio::time::sleep(COALESCE).await,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let (id, after) = (self.id, self.after);
        let read = self
            .state
            .blocking(move |state| {
                let lines = state.store.logs(id, after, 1000).unwrap_or_default();
                Ok((lines, state.store.flow_run(id)))
            })
            .await;
        let Ok((lines, run)) = read else {
            self.done = true;
            return;
        };
        let got_lines = !lines.is_empty();
        for line in lines {
            self.after = line.id;
            self.pending.push_back(
                Event::default()
                    .event("log")
                    .id(line.id.to_string())
                    .data(to_json(&super::wire::LogLine::from(line))),
            );
        }
        let Ok(run) = run else {
            self.done = true;
            return;
        };
        if self.last_state != Some(run.state) {
            self.last_state = Some(run.state);
            self.pending
                .push_back(Event::default().event("state").data(to_json(
                    &super::wire::StateEvent {
                        state: run.state,
                        message: run.message.clone(),
                    },
                )));
        }
        if run.state.is_terminal() {
            let left = self.drain.get_or_insert(DRAIN_POLLS);
            if got_lines {
                *left = DRAIN_POLLS;
            } else if *left == 0 {
                self.pending.push_back(
                    Event::default()
                        .event("end")
                        .data(to_json(&super::wire::FlowRun::from(run))),
                );
                self.done = true;
            } else {
                *left -= 1;
            }
        }
    }
}

/// An event's data: JSON text (these types always serialize).
fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
