//! The dashboard, the flow-run list and the run page (summary, parameters,
//! result, state history, the task timeline and live logs), with cancel and
//! retry through the dispatcher.

use super::html::{self, esc, url_part};
use super::{CsrfForm, Session, UiError, UiResult};
use crate::api::ApiState;
use crate::api::runs::parse_run_id;
use crate::model::{RunState, TimestampMicros};
use crate::store::{FlowRunFilter, FlowRunRow, TaskRunRow};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::fmt::Write as _;
use std::sync::Arc;

/// Runs per page of the list.
const PAGE: usize = 50;
const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

/// A table of runs (shared by the dashboard, the list and deployment pages).
pub(super) fn run_table(rows: &[FlowRunRow], now: TimestampMicros) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">No runs.</p>".to_string();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"runs\"><thead><tr><th>Run</th><th>Flow</th><th>Deployment</th>\
         <th>State</th><th>Created</th><th>Duration</th><th>Tags</th></tr></thead><tbody>",
    );
    for run in rows {
        let id = run.id.to_string();
        let duration = match (run.started_at, run.ended_at) {
            (Some(start), end) => html::duration(end.unwrap_or(now) - start),
            _ => "–".to_string(),
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"/runs/{id}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{duration}</td><td>{}</td></tr>",
            id.get(..8).unwrap_or(&id),
            esc(&run.flow_name),
            run.deployment
                .as_deref()
                .map(|d| format!(
                    "<a href=\"/deployments/{}\">{}</a>",
                    esc(&url_part(d)),
                    esc(d)
                ))
                .unwrap_or_default(),
            html::badge(run.state),
            html::time(run.created_at),
            esc(&run.tags.join(", ")),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

pub(super) async fn dashboard(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
) -> UiResult<Html<String>> {
    let now = state.dispatcher.control().now();
    let since = now - DAY_MICROS;
    let (counts, hourly, late, failed, recent) = state
        .blocking(move |state| {
            let mut counts: Vec<(RunState, u64)> = Vec::new();
            let mut hourly: Vec<(i64, u64)> = Vec::new();
            for (hour, run_state, n) in state
                .store
                .count_flow_runs_per_hour_and_state_since(since)?
            {
                match counts.iter_mut().find(|(s, _)| *s == run_state) {
                    Some((_, total)) => *total += n,
                    None => counts.push((run_state, n)),
                }
                match hourly.last_mut() {
                    Some((h, total)) if *h == hour => *total += n,
                    _ => hourly.push((hour, n)),
                }
            }
            let newest = |run_state: Option<RunState>, since: Option<i64>, limit| {
                state.store.list_flow_runs(&FlowRunFilter {
                    state: run_state,
                    since,
                    limit,
                    ..Default::default()
                })
            };
            // Late runs are still waiting, however old; failures count for a day.
            let late = newest(Some(RunState::Late), None, 20)?;
            let failed = newest(Some(RunState::Failed), Some(since), 200)?;
            let recent = newest(None, None, 10)?;
            Ok((counts, hourly, late, failed, recent))
        })
        .await?;
    let hosts = state.dispatcher.hosts().await?;
    let mut body = String::from("<h1>Dashboard</h1><section><h2>Runs of the last 24 hours</h2>");
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if total == 0 {
        body.push_str("<p class=\"empty\">No runs in the last 24 hours.</p>");
    } else {
        body.push_str("<ul class=\"counts\">");
        for run_state in RunState::ALL {
            if let Some((_, n)) = counts.iter().find(|(s, _)| *s == run_state) {
                let _ = write!(
                    body,
                    "<li><a href=\"/runs?state={0}\">{1}</a> <strong>{n}</strong>\
                     <svg viewBox=\"0 0 100 6\" preserveAspectRatio=\"none\" aria-hidden=\"true\"><rect class=\"s-{0}\" width=\"{2:.1}\" height=\"6\"/></svg></li>",
                    run_state.as_str(),
                    html::badge(run_state),
                    (*n as f64 * 100.0 / total as f64).max(1.0),
                );
            }
        }
        body.push_str("</ul>");
    }
    body.push_str("</section><section><h2>Runs started per hour</h2>");
    body.push_str(&throughput_chart(&hourly, now));
    body.push_str("</section><section><h2>Late runs</h2>");
    body.push_str(&run_table(&late, now));
    body.push_str("</section><section><h2>Failing deployments (24 h)</h2>");
    let mut failing: Vec<(String, usize)> = Vec::new();
    for run in &failed {
        if let Some(name) = &run.deployment {
            match failing.iter_mut().find(|(n, _)| n == name) {
                Some((_, count)) => *count += 1,
                None => failing.push((name.clone(), 1)),
            }
        }
    }
    if failing.is_empty() {
        body.push_str("<p class=\"empty\">None.</p>");
    } else {
        body.push_str("<ul>");
        for (name, count) in failing {
            let _ = write!(
                body,
                "<li><a href=\"/runs?deployment={}&amp;state=Failed\">{}</a>: {count} failed</li>",
                esc(&url_part(&name)),
                esc(&name)
            );
        }
        body.push_str("</ul>");
    }
    body.push_str("</section><section><h2>Hosts</h2>");
    if hosts.is_empty() {
        body.push_str(
            "<p class=\"empty\">No remote hosts; start one with <code>host run --pool wasm</code>.</p>",
        );
    } else {
        body.push_str(
            "<table><thead><tr><th>Host</th><th>Status</th><th>Pools</th><th>Runs / slots</th><th>Last heartbeat</th></tr></thead><tbody>",
        );
        for (host, online) in &hosts {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} s ago</td></tr>",
                esc(&host.name),
                if *online { "online" } else { "offline" },
                esc(&host.pools.join(", ")),
                host.runs_in_hand,
                host.slots,
                (now - host.last_heartbeat).max(0) / 1_000_000,
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section><section><h2>Latest runs</h2>");
    body.push_str(&run_table(&recent, now));
    body.push_str("<p><a href=\"/runs\">All runs →</a></p></section>");
    Ok(session.page("Dashboard", "/", &body))
}

/// Bars of runs created per hour over the last 24 hours, newest right.
fn throughput_chart(hourly: &[(i64, u64)], now: TimestampMicros) -> String {
    const HOUR: i64 = 3600 * 1_000_000;
    let this_hour = now.div_euclid(HOUR);
    let most = hourly.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let mut out = String::from(
        "<svg class=\"chart\" viewBox=\"0 0 250 64\" role=\"img\" aria-label=\"Runs created per hour over the last 24 hours\">",
    );
    for (hour, n) in hourly {
        let slot = 24 - (this_hour - hour);
        if !(0..=24).contains(&slot) {
            continue;
        }
        let height = (*n as f64 / most as f64 * 56.0).max(1.0);
        let _ = write!(
            out,
            "<rect class=\"s-Running\" x=\"{}\" y=\"{:.1}\" width=\"8\" height=\"{height:.1}\"><title>{n} runs, {}</title></rect>",
            slot * 10,
            56.0 - height,
            crate::clock::format_rfc3339(hour * HOUR),
        );
    }
    let _ = write!(
        out,
        "<text x=\"0\" y=\"64\">−24 h</text><text x=\"250\" y=\"64\" text-anchor=\"end\">now · peak {most}/h</text></svg>"
    );
    out
}

/// One task run: its input, output and every attempt in its sandbox.
pub(super) async fn task(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let id: crate::model::TaskRunId = id
        .parse()
        .map_err(|_| UiError::BadRequest(format!("'{id}' is not a task run id")))?;
    let (task, attempts) = state
        .blocking(move |state| Ok((state.store.task_run(id)?, state.store.task_attempts(id)?)))
        .await?;
    let mut body = format!(
        "<h1>Task <span class=\"flow\">{}</span> {}</h1><p>Call {} of run <a href=\"/runs/{}\"><code>{}</code></a></p>",
        esc(&task.task_name),
        html::badge(task.state),
        task.call_seq,
        task.flow_run,
        task.flow_run,
    );
    if let Some(message) = &task.message {
        let _ = write!(body, "<p class=\"message\">{}</p>", esc(message));
    }
    if let Some(source) = task.cached_from {
        let _ = write!(
            body,
            "<p>Result taken from the cache: <a href=\"/task-runs/{source}\">the task run that computed it</a>.</p>"
        );
    }
    body.push_str("<h2>Attempts</h2><div class=\"scroll\"><table id=\"attempts\"><thead><tr><th>Attempt</th><th>Started</th><th>Duration</th>\
        <th>Fuel</th><th>Peak memory</th><th>Outcome</th></tr></thead><tbody>");
    for attempt in &attempts {
        let outcome = match &attempt.failure {
            Some((kind, message)) => format!("{}: {}", esc(kind.as_str()), esc(message)),
            None => "ok".to_string(),
        };
        let _ = write!(
            body,
            "<tr class=\"attempt\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{outcome}</td></tr>",
            attempt.attempt,
            html::time(attempt.started_at),
            html::duration(attempt.ended_at - attempt.started_at),
            html::fuel(attempt.fuel_used),
            html::bytes(attempt.peak_memory),
        );
    }
    body.push_str("</tbody></table></div>");
    if attempts.is_empty() {
        body.push_str(
            "<p class=\"empty\">No attempt recorded (a cache hit or a replay runs nothing).</p>",
        );
    }
    body.push_str("<div class=\"cols\"><section><h2>Input</h2>");
    body.push_str(&html::json_block(&task.input));
    body.push_str("</section><section><h2>Output</h2>");
    match &task.output {
        Some(output) => body.push_str(&html::json_block(output)),
        None => body.push_str("<p class=\"empty\">None.</p>"),
    }
    body.push_str("</section></div>");
    Ok(session.page(&format!("Task {}", task.task_name), "/runs", &body))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct ListQuery {
    state: Option<String>,
    deployment: Option<String>,
    flow: Option<String>,
    tag: Option<String>,
    /// Created within the last `1h`, `24h` or `7d`.
    within: Option<String>,
    offset: Option<usize>,
}

/// The time windows the list offers: (query value, label, length).
const WINDOWS: [(&str, &str, i64); 3] = [
    ("1h", "last hour", 3600 * 1_000_000),
    ("24h", "last 24 hours", DAY_MICROS),
    ("7d", "last 7 days", 7 * DAY_MICROS),
];

/// An empty filter field means "any".
fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let run_state = given(&q.state)
        .map(|s| s.parse::<RunState>())
        .transpose()
        .map_err(|e| UiError::BadRequest(e.to_string()))?;
    let offset = q.offset.unwrap_or(0);
    let now = state.dispatcher.control().now();
    let within = match given(&q.within) {
        None => None,
        Some(w) => Some(
            WINDOWS
                .iter()
                .find(|(value, _, _)| *value == w)
                .ok_or_else(|| {
                    UiError::BadRequest(format!("'{w}' is not a time window; use 1h, 24h or 7d"))
                })?,
        ),
    };
    let filter = FlowRunFilter {
        since: within.map(|(_, _, length)| now - length),
        state: run_state,
        flow_name: given(&q.flow),
        deployment: given(&q.deployment),
        tag: given(&q.tag),
        top_level_only: false,
        limit: PAGE + 1,
        offset,
        ..Default::default()
    };
    let mut rows = state
        .blocking(move |state| Ok(state.store.list_flow_runs(&filter)?))
        .await?;
    let more = rows.len() > PAGE;
    rows.truncate(PAGE);

    let mut body = String::from(
        "<h1>Flow runs</h1><form method=\"get\" action=\"/runs\" class=\"filters\"><label>State <select name=\"state\"><option value=\"\">any</option>",
    );
    for s in RunState::ALL {
        let selected = if run_state == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{}</option>", s.as_str());
    }
    body.push_str("</select></label>");
    for (name, label, value) in [
        ("deployment", "Deployment", &q.deployment),
        ("flow", "Flow", &q.flow),
        ("tag", "Tag", &q.tag),
    ] {
        let _ = write!(
            body,
            "<label>{label} <input name=\"{name}\" value=\"{}\"></label>",
            esc(value.as_deref().unwrap_or(""))
        );
    }
    body.push_str("<label>Created <select name=\"within\"><option value=\"\">any time</option>");
    for window in &WINDOWS {
        let selected = if within == Some(window) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{}\"{selected}>{}</option>",
            window.0, window.1
        );
    }
    body.push_str("</select></label><button>Filter</button></form>");
    body.push_str(&run_table(&rows, now));
    // The filters again in the paging links.
    let mut keep = String::new();
    for (name, value) in [
        ("state", given(&q.state)),
        ("deployment", given(&q.deployment)),
        ("flow", given(&q.flow)),
        ("tag", given(&q.tag)),
        ("within", given(&q.within)),
    ] {
        if let Some(value) = value {
            let _ = write!(keep, "{name}={}&", url_part(&value));
        }
    }
    body.push_str("<nav class=\"pages\" aria-label=\"Pages\">");
    if offset > 0 {
        let _ = write!(
            body,
            "<a href=\"/runs?{}offset={}\" rel=\"prev\">← Newer</a>",
            esc(&keep),
            offset.saturating_sub(PAGE)
        );
    }
    if more {
        let _ = write!(
            body,
            "<a href=\"/runs?{}offset={}\" rel=\"next\">Older →</a>",
            esc(&keep),
            offset + PAGE
        );
    }
    body.push_str("</nav>");
    Ok(session.page("Flow runs", "/runs", &body))
}

/// What the run page shows, read in one go on the blocking pool.
struct RunView {
    run: FlowRunRow,
    tasks: Vec<TaskRunRow>,
    states: Vec<(TimestampMicros, RunState, Option<String>)>,
}

pub(super) async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let view = state
        .blocking(move |state| {
            let id = parse_run_id(state, &id)?;
            Ok(RunView {
                run: state.store.flow_run(id)?,
                tasks: state.store.task_runs(id)?,
                states: state.store.state_history(id.0)?,
            })
        })
        .await?;
    let now = state.dispatcher.control().now();
    let body = run_page(&view, &session, now);
    Ok(session.page(&format!("Run of {}", view.run.flow_name), "/runs", &body))
}

fn run_page(view: &RunView, session: &Session, now: TimestampMicros) -> String {
    let run = &view.run;
    let id = run.id.to_string();
    let mut out = String::with_capacity(4096 + view.tasks.len() * 300);
    let _ = write!(
        out,
        "<h1>Run of <span class=\"flow\">{}</span> <span id=\"run-state\" data-terminal=\"{}\">{}</span></h1><p><code>{id}</code></p><div class=\"actions\">",
        esc(&run.flow_name),
        run.state.is_terminal(),
        html::badge(run.state),
    );
    if !run.state.is_terminal() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/runs/{id}/cancel\">{}<button class=\"danger\">Cancel</button></form>",
            session.csrf_field()
        );
        // A run whose holder is gone waits for its lease to run out; resume it now.
        let interrupted = matches!(
            run.state,
            RunState::Pending | RunState::Running | RunState::Retrying
        ) && !crate::dispatch::leases::is_held(run, now);
        if interrupted {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/runs/{id}/resume\">{}<button>Resume</button></form>",
                session.csrf_field()
            );
        }
    } else if run.state != RunState::Completed && run.state != RunState::Cached {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/runs/{id}/retry\">{}<button>Retry</button></form>",
            session.csrf_field()
        );
    }
    out.push_str("</div><div id=\"run-live\">");
    // Summary.
    out.push_str("<dl class=\"summary\">");
    let mut item = |term: &str, value: String| {
        let _ = write!(out, "<div><dt>{term}</dt><dd>{value}</dd></div>");
    };
    item(
        "Deployment",
        run.deployment
            .as_deref()
            .map(|d| {
                format!(
                    "<a href=\"/deployments/{}\">{}</a>",
                    esc(&url_part(d)),
                    esc(d)
                )
            })
            .unwrap_or_else(|| "–".into()),
    );
    item(
        "Pool / queue",
        format!(
            "{} / {}",
            esc(run.work_pool.as_deref().unwrap_or("–")),
            esc(run.work_queue.as_deref().unwrap_or("–"))
        ),
    );
    item("Created", html::time(run.created_at));
    item("Started", html::maybe_time(run.started_at));
    item("Ended", html::maybe_time(run.ended_at));
    item(
        "Duration",
        match run.started_at {
            Some(start) => html::duration(run.ended_at.unwrap_or(now) - start),
            None => "–".into(),
        },
    );
    item("Attempt", run.attempt.to_string());
    item("Fuel", html::fuel(run.fuel_used));
    item("Peak memory", html::bytes(run.peak_memory));
    item("Host", esc(run.host.as_deref().unwrap_or("–")).to_string());
    item("Tags", esc(&run.tags.join(", ")).to_string());
    if let Some(parent) = run.parent_flow_run {
        item(
            "Parent run",
            format!("<a href=\"/runs/{parent}\">{parent}</a>"),
        );
    }
    out.push_str("</dl>");
    if let Some(message) = &run.message {
        let _ = write!(out, "<p class=\"message\">{}</p>", esc(message));
    }
    out.push_str("<div class=\"cols\"><section><h2>Parameters</h2>");
    out.push_str(&html::json_block(&run.params));
    out.push_str("</section><section><h2>Result</h2>");
    match &run.result {
        Some(result) => out.push_str(&html::json_block(result)),
        None => out.push_str("<p class=\"empty\">None yet.</p>"),
    }
    out.push_str("</section></div>");
    out.push_str(&gantt(view, now));
    out.push_str("<section><h2>State history</h2><ol class=\"history\">");
    for (at, s, message) in &view.states {
        let _ = write!(
            out,
            "<li>{} {} {}</li>",
            html::time(*at),
            html::badge(*s),
            esc(message.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</ol></section></div>");
    let _ = write!(
        out,
        "<section><h2>Logs</h2><label>Level <select id=\"log-level\">\
         <option value=\"0\">trace</option><option value=\"1\">debug</option><option value=\"2\" selected>info</option>\
         <option value=\"3\">warn</option><option value=\"4\">error</option></select></label>\
         <div id=\"logs\" class=\"logs\" data-events=\"/runs/{id}/events\" role=\"log\" aria-live=\"polite\"></div>\
         <noscript><p>Logs are shown with JavaScript; see <code>host flow-run logs {id}</code>.</p></noscript></section>"
    );
    out
}

/// The task runs as a timeline: one row per task call, its bar placed on
/// the run's time span, with attempts, cache hits and the sandbox figures.
fn gantt(view: &RunView, now: TimestampMicros) -> String {
    let run = &view.run;
    let mut out = String::from("<section><h2>Task runs</h2>");
    if view.tasks.is_empty() {
        out.push_str("<p class=\"empty\" id=\"gantt\">No task runs yet.</p></section>");
        return out;
    }
    let start = view
        .tasks
        .iter()
        .filter_map(|t| t.started_at)
        .chain(run.started_at)
        .min()
        .unwrap_or(run.created_at);
    let end = view
        .tasks
        .iter()
        .filter_map(|t| t.ended_at.or(t.started_at.map(|_| now)))
        .chain(Some(run.ended_at.unwrap_or(now)))
        .max()
        .unwrap_or(now)
        .max(start + 1);
    let scale = 1000.0 / (end - start) as f64;
    let _ = write!(
        out,
        "<p class=\"note\">{} task runs over {}; bars on the run's time line.</p>\
         <div class=\"scroll\"><table id=\"gantt\" class=\"gantt\"><thead><tr><th>#</th><th>Task</th><th>State</th><th>Attempts</th>\
         <th>Duration</th><th>Fuel</th><th>Memory</th><th>Host</th><th>Timeline</th></tr></thead><tbody>",
        view.tasks.len(),
        html::duration(end - start)
    );
    for task in &view.tasks {
        let (x, width) = match task.started_at {
            Some(s) => {
                let e = task.ended_at.unwrap_or(now).max(s);
                (
                    (s - start) as f64 * scale,
                    ((e - s) as f64 * scale).max(2.0),
                )
            }
            None => ((task.created_at - start).max(0) as f64 * scale, 2.0),
        };
        let mut flags = String::new();
        if task.cached_from.is_some() {
            flags.push_str(
                " <span class=\"tag\" title=\"result taken from the cache\">cache hit</span>",
            );
        }
        if task.attempts > 1 {
            flags.push_str(" <span class=\"tag\" title=\"retried\">retried</span>");
        }
        // A tooltip only where there is more to say than the state column.
        let title = task
            .message
            .as_deref()
            .map(|m| format!("<title>{}</title>", esc(m)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=\"task\"><td>{}</td><td class=\"name\"><a href=\"/task-runs/{}\">{}</a>{flags}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><svg viewBox=\"0 0 1000 10\" preserveAspectRatio=\"none\" aria-hidden=\"true\">{title}\
             <rect class=\"s-{}\" x=\"{x:.1}\" width=\"{width:.1}\" height=\"10\"/></svg></td></tr>",
            task.call_seq,
            task.id,
            esc(&task.task_name),
            html::badge(task.state),
            task.attempts,
            html::span(task.started_at, task.ended_at),
            html::fuel(task.fuel_used),
            html::bytes(task.peak_memory),
            esc(task.host.as_deref().unwrap_or("–")),
            task.state.as_str(),
        );
    }
    out.push_str("</tbody></table></div></section>");
    out
}

pub(super) async fn cancel(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> UiResult<Response> {
    act_on_run(state, session, id, form, |d, id| async move {
        d.cancel(id, false).await
    })
    .await
}

pub(super) async fn resume(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> UiResult<Response> {
    act_on_run(state, session, id, form, |d, id| async move {
        d.resume(id).await
    })
    .await
}

pub(super) async fn retry(
    State(state): State<Arc<ApiState>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> UiResult<Response> {
    act_on_run(state, session, id, form, |d, id| async move {
        d.retry(id).await
    })
    .await
}

/// A run button: checks the form's token, has the dispatcher `act` on run
/// `id`, and shows the run again.
async fn act_on_run<Fut>(
    state: Arc<ApiState>,
    session: Session,
    id: String,
    form: CsrfForm,
    act: impl FnOnce(Arc<crate::dispatch::Dispatcher>, crate::model::FlowRunId) -> Fut,
) -> UiResult<Response>
where
    Fut: std::future::Future<
            Output = Result<crate::dispatch::Dispatched, crate::dispatch::DispatchError>,
        >,
{
    session.check_csrf(&form.csrf)?;
    let id = state
        .blocking(move |state| parse_run_id(state, &id))
        .await?;
    act(state.dispatcher.clone(), id).await?;
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}
