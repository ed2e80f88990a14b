//! `/metrics` (Prometheus text) and `/api/ready` (the database answers).
//!
//! Two kinds of figures. Events (task attempts by outcome, cache hits, fuel
//! and peak memory per attempt, finished flow runs, webhook deliveries) are
//! counted where they happen through the `metrics` facade and kept by the
//! Prometheus exporter's recorder, installed once per process. Levels (runs
//! by state, unfinished runs per pool and queue, hosts online) are read from
//! the store at scrape time, so they are right after a restart and across
//! servers that share a database. The exporter runs no listener of its own:
//! this API serves it, behind the same keys as every other read.

use super::{ApiError, ApiResult, ApiState};
use crate::store::{ObjectKind, StoreTable};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Fuel per task attempt: a trivial Rust task burns ~10k, a Python one ~10M.
const FUEL_BUCKETS: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];
/// Peak linear memory per task attempt, bytes.
const MEMORY_BUCKETS: &[f64] = &[
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];
/// `/api/ready` gives up on a database that does not answer in this long.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process's recorder, installed on first use. A process that already
/// has another recorder (an embedding program) still gets the level
/// figures; its events go to that recorder.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("weir_task_fuel".into()),
                FUEL_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "weir_task_peak_memory_bytes".into(),
                    ),
                    MEMORY_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows levels only");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        "weir_task_attempts_total",
        "Task attempts run in a sandbox, by outcome (ok or the failure kind)."
    );
    metrics::describe_counter!(
        "weir_task_cache_hits_total",
        "Task calls served from the cache."
    );
    metrics::describe_histogram!("weir_task_fuel", "Fuel one task attempt consumed.");
    metrics::describe_histogram!(
        "weir_task_peak_memory_bytes",
        "Peak linear memory of one task attempt."
    );
    metrics::describe_counter!(
        "weir_flow_runs_finished_total",
        "Flow runs this process ran to a final state, by state."
    );
    metrics::describe_counter!(
        "weir_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome."
    );
}

/// Installs the recorder before the first event, so nothing counted early is lost.
pub fn install() {
    recorder();
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format (version 0.0.4)", content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<Arc<ApiState>>) -> ApiResult<Response> {
    let levels = state.blocking(levels).await?;
    let dispatcher = state.dispatcher.clone();
    let hosts = dispatcher.hosts().await?;
    let online = hosts.iter().filter(|(_, online)| *online).count();
    let mut text = levels;
    let _ = write!(
        text,
        "# HELP weir_hosts Remote hosts known to the server, by whether they heartbeat lately.\n\
         # TYPE weir_hosts gauge\nweir_hosts{{online=\"true\"}} {online}\nweir_hosts{{online=\"false\"}} {}\n",
        hosts.len() - online
    );
    text.push_str(&recorder().render());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The figures read from the store. Blocks.
fn levels(state: &ApiState) -> ApiResult<String> {
    let mut text = String::from(
        "# HELP weir_flow_runs Flow runs recorded, by state.\n# TYPE weir_flow_runs gauge\n",
    );
    for (run_state, n) in state.store.count_flow_runs_by_state()? {
        let _ = writeln!(text, "weir_flow_runs{{state=\"{run_state}\"}} {n}");
    }
    let tasks = state.store.count(StoreTable::TaskRuns)?;
    let _ = write!(
        text,
        "# HELP weir_task_runs Task runs recorded.\n# TYPE weir_task_runs gauge\nweir_task_runs {tasks}\n"
    );
    let deployments = state.store.objects(ObjectKind::Deployment)?.len();
    let _ = write!(
        text,
        "# HELP weir_deployments Deployments defined.\n# TYPE weir_deployments gauge\nweir_deployments {deployments}\n"
    );
    text.push_str(
        "# HELP weir_queue_unfinished_runs Runs of a pool's queue that have not ended (waiting or running).\n\
         # TYPE weir_queue_unfinished_runs gauge\n",
    );
    for row in state.store.objects(ObjectKind::WorkQueue)? {
        let Ok(queue) = serde_json::from_str::<crate::model::WorkQueue>(&row.body) else {
            continue;
        };
        let n = state
            .store
            .active_runs_of_pool(&queue.work_pool, Some(&queue.name))?;
        let _ = writeln!(
            text,
            "weir_queue_unfinished_runs{{pool=\"{}\",queue=\"{}\"}} {n}",
            label(&queue.work_pool),
            label(&queue.name)
        );
    }
    Ok(text)
}

/// A label value: Prometheus escapes `\`, `"` and newlines.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Ready to serve: the database answers a read (so it is open and its
/// migrations ran: the server opens it only after they do).
#[utoipa::path(get, path = "/api/ready", tag = "server",
    responses((status = 200, body = super::wire::Ready, description = "The database answers"),
        (status = 503, body = super::ErrorReply, description = "The database does not answer")))]
pub(super) async fn ready(
    State(state): State<Arc<ApiState>>,
) -> ApiResult<Json<super::wire::Ready>> {
    let read = state.blocking(|state| Ok(state.store.count(StoreTable::TaskRuns)?));
    match tokio::time::timeout(READY_TIMEOUT, read).await {
        Ok(Ok(_)) => Ok(Json(super::wire::Ready {
            status: "ready".to_string(),
            database: "ok".to_string(),
        })),
        Ok(Err(e)) => Err(ApiError::unavailable(format!(
            "the database does not answer ({}); see the server log",
            e.message()
        ))),
        Err(_) => Err(ApiError::unavailable(format!(
            "the database did not answer in {} s; it may be locked or its disk stalled",
            READY_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
