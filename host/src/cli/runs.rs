//! `host flow-run ls|inspect|logs`: what the local database recorded.

use super::output::{format_count, format_duration, table};
use super::{Exit, JsonFlag};
use crate::api::wire::{
    FlowRun, FlowRunDetail, FlowRunList, LogList, ResumeInput, RunAction, TaskRun,
};
use crate::clock::format_rfc3339;
use crate::engine::human_bytes;
use crate::model::RunState;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum FlowRunCommand {
    /// List recent flow runs, newest first.
    Ls(LsArgs),
    /// Show one flow run: its state history and a table of its task runs.
    Inspect(IdArgs),
    /// Print a flow run's log lines (its tasks' included); -f follows until it ends.
    Logs(LogsArgs),
    /// Stop a running flow and its tasks; they end Cancelled.
    Cancel(IdArgs),
    /// Run an interrupted flow run again: completed tasks are replayed, not re-run.
    Resume(RerunArgs),
    /// Run a Failed, TimedOut, Cancelled or Crashed flow run again, replaying completed tasks.
    Retry(RerunArgs),
    /// Delete runs (their tasks, logs and result files) that ended long ago.
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub struct RerunArgs {
    /// The flow run's id (a unique prefix of at least 4 characters is enough).
    pub(super) id: String,
    /// Print one JSON object with the run's id, state, result and totals.
    #[arg(long)]
    pub(super) json: bool,
    /// Do not print the flow's log lines.
    #[arg(long, short)]
    pub(super) quiet: bool,
    /// For a Paused run (resume only): the input its pause asks for, as JSON
    /// matching the pause's schema, e.g. '{"approved": true}'.
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
}

impl RerunArgs {
    /// The `--input` JSON, if given.
    pub(super) fn input(&self) -> anyhow::Result<Option<serde_json::Value>> {
        match &self.input {
            None => Ok(None),
            Some(text) => serde_json::from_str(text).map(Some).map_err(|e| {
                Exit::bad_input(format!(
                    "--input is not JSON ({e}); quote it for the shell, e.g. --input '{{\"approved\": true}}'"
                ))
            }),
        }
    }
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Delete runs that ended longer ago than this, e.g. 30d or 12h.
    #[arg(long, value_name = "DURATION")]
    older_than: humantime::Duration,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only runs in this state (e.g. Failed, Completed).
    #[arg(long)]
    state: Option<RunState>,
    /// Only runs of this flow.
    #[arg(long)]
    flow: Option<String>,
    /// Include subflow runs.
    #[arg(long)]
    all: bool,
    /// How many runs to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The flow run's id (a unique prefix of at least 4 characters is enough).
    id: String,
    /// Keep printing new lines until the run ends.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The flow run's id (a unique prefix of at least 4 characters is enough).
    id: String,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: FlowRunCommand) -> anyhow::Result<()> {
    // Reading, cancelling and pruning go through the API (the server's, or
    // in-process over the local database). Without a server, resume and retry
    // run the flow in this process with live progress.
    let local_only = matches!(
        command,
        FlowRunCommand::Resume(_) | FlowRunCommand::Retry(_)
    );
    if !local_only || super::backend::settings()?.get("api.url").is_some() {
        return through_api(command);
    }
    match command {
        FlowRunCommand::Resume(args) => super::local::rerun(args, Rerun::Resume),
        FlowRunCommand::Retry(args) => super::local::rerun(args, Rerun::Retry),
        _ => unreachable!("only local commands get here"),
    }
}

/// What `resume` and `retry` do to a run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Rerun {
    Resume,
    Retry,
}

/// POSTs `/api/flow-runs/{id}/{action}`; returns the run's full id and state.
fn run_action(
    backend: &super::backend::Backend,
    id: &str,
    action: &str,
) -> anyhow::Result<RunAction> {
    backend.act_as(&format!("/api/flow-runs/{id}/{action}"))
}

/// The state of run `id` now.
fn state_of(backend: &super::backend::Backend, id: &str) -> anyhow::Result<RunState> {
    let detail: FlowRunDetail = backend.get_as(&format!("/api/flow-runs/{id}"))?;
    Ok(detail.flow_run.state)
}

/// Cancels through the API (the server's, or in-process over the local
/// database): a waiting run ends at once; a running one when its runner
/// notices, or by force when the runner does not answer within 5 s.
fn cancel(args: IdArgs) -> anyhow::Result<()> {
    use super::backend::Backend;
    let backend = Backend::open()?;
    let RunAction {
        flow_run_id: id,
        mut state,
    } = run_action(&backend, &args.id, "cancel")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !state.is_terminal() {
        if std::time::Instant::now() >= deadline {
            let forced =
                backend.act_as::<RunAction>(&format!("/api/flow-runs/{id}/cancel?force=true"));
            state = match forced {
                Ok(reply) => reply.state,
                // It ended on its own just now.
                Err(_) => state_of(&backend, &id)?,
            };
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        state = state_of(&backend, &id)?;
    }
    if args.format.json {
        let ended = RunAction {
            flow_run_id: id,
            state,
        };
        println!("{}", serde_json::to_string(&ended)?);
    } else {
        println!("flow run {id}: {}", state.as_str());
    }
    Ok(())
}

fn prune(backend: &super::backend::Backend, args: PruneArgs) -> anyhow::Result<()> {
    let older_than_seconds = Duration::from(args.older_than).as_secs();
    let request = crate::api::housekeeping::PruneRequest { older_than_seconds };
    let reply = backend.send(
        "POST",
        "/api/flow-runs/prune",
        &serde_json::to_value(&request)?,
    )?;
    let report: crate::api::housekeeping::PruneReply =
        serde_json::from_value(reply).context("reading the prune's reply")?;
    if args.format.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "Deleted {} flow runs, {} task runs, {} log lines and {} result files that ended before {}",
            report.flow_runs,
            report.task_runs,
            report.logs,
            report.result_files,
            report
                .ended_before
                .get(..19)
                .unwrap_or(&report.ended_before)
        );
    }
    Ok(())
}

fn when(micros: Option<i64>) -> String {
    micros
        .map(|m| format_rfc3339(m)[..19].replace('T', " "))
        .unwrap_or_else(|| "-".into())
}

fn took(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) if e >= s => format_duration(Duration::from_micros((e - s) as u64)),
        _ => "-".into(),
    }
}

fn print_runs(rows: &[FlowRun], args: &LsArgs) -> anyhow::Result<()> {
    if args.format.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("No flow runs yet. Start one with: host flow run examples/hello");
        return Ok(());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.flow_name.clone(),
                r.state.to_string(),
                when(Some(r.created_at)),
                took(r.started_at, r.ended_at),
                r.message
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(60)
                    .collect(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ID",
                "FLOW",
                "STATE",
                "CREATED (UTC)",
                "DURATION",
                "MESSAGE"
            ],
            &table_rows
        )
    );
    Ok(())
}

type History = Vec<(i64, RunState, Option<String>)>;

fn print_inspect(
    run: FlowRun,
    tasks: Vec<TaskRun>,
    history: History,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let history: Vec<_> = history
            .iter()
            .map(|(at, state, message)| serde_json::json!({"at": format_rfc3339(*at), "state": state, "message": message}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"flow_run": run, "states": history, "task_runs": tasks})
        );
        return Ok(());
    }
    println!("flow run   {}", run.id);
    println!(
        "flow       {} (component sha256:{})",
        run.flow_name,
        &run.component[..12.min(run.component.len())]
    );
    if let Some(deployment) = &run.deployment {
        match run.deployment_version {
            Some(version) => println!("deployment {deployment} (version {version})"),
            None => println!("deployment {deployment}"),
        }
    }
    println!(
        "state      {}{}",
        run.state,
        run.message
            .as_deref()
            .map(|m| format!(" — {m}"))
            .unwrap_or_default()
    );
    if let Some(holder) = &run.lease_holder {
        let lease = match run.lease_expires_at {
            Some(until) if !run.state.is_terminal() => {
                format!(
                    " · lease {} until {}",
                    run.lease_epoch,
                    format_rfc3339(until)
                )
            }
            _ => format!(" · lease {}", run.lease_epoch),
        };
        println!("held by    {holder}{lease}");
    }
    println!("params     {}", run.params);
    if let Some(result) = &run.result {
        println!("result     {result}");
    }
    println!(
        "attempt    {} · fuel {} · peak memory {} · duration {}",
        run.attempt,
        format_count(run.fuel_used),
        human_bytes(run.peak_memory),
        took(run.started_at, run.ended_at)
    );
    if let Some(parent) = run.parent_flow_run {
        println!("parent     {parent}");
    }
    println!("\nstates");
    for (at, state, message) in &history {
        println!(
            "  {}  {state}{}",
            &format_rfc3339(*at)[11..23],
            message
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        );
    }
    println!("\ntask runs ({})", tasks.len());
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.call_seq.to_string(),
                t.task_name.clone(),
                t.state.to_string(),
                t.attempts.to_string(),
                took(t.started_at, t.ended_at),
                format_count(t.fuel_used),
                human_bytes(t.peak_memory),
                t.host.clone().unwrap_or_default(),
                t.message
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(70)
                    .collect(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "#", "TASK", "STATE", "ATTEMPTS", "DURATION", "FUEL", "PEAK MEM", "HOST", "MESSAGE"
            ],
            &rows
        )
    );
    Ok(())
}

/// The commands through the API: the server's, or in-process over the local database.
fn through_api(command: FlowRunCommand) -> anyhow::Result<()> {
    use super::backend::Backend;
    let backend = Backend::open()?;
    match command {
        FlowRunCommand::Ls(args) => {
            let mut query = format!(
                "/api/flow-runs?limit={}&top_level={}",
                args.limit.max(1),
                !args.all
            );
            if let Some(state) = args.state {
                query.push_str(&format!("&state={state}"));
            }
            if let Some(flow) = &args.flow {
                query.push_str(&format!("&flow={flow}"));
            }
            let page: FlowRunList = backend.get_as(&query)?;
            print_runs(&page.flow_runs, &args)
        }
        FlowRunCommand::Inspect(args) => {
            let detail: FlowRunDetail = backend.get_as(&format!("/api/flow-runs/{}", args.id))?;
            let history: History = detail
                .states
                .into_iter()
                .map(|s| (s.at, s.state, s.message))
                .collect();
            print_inspect(detail.flow_run, detail.task_runs, history, args.format.json)
        }
        FlowRunCommand::Logs(args) => {
            let run: FlowRunDetail = backend.get_as(&format!("/api/flow-runs/{}", args.id))?;
            let id = run.flow_run.id.to_string();
            if args.follow {
                let end = backend.follow(&id, args.format.json, super::output::print_log_line)?;
                if !args.format.json {
                    println!("-- {}", end.state);
                }
                return Ok(());
            }
            let mut after = 0;
            loop {
                let page: LogList = backend.get_as(&format!(
                    "/api/flow-runs/{id}/logs?after={after}&limit=1000"
                ))?;
                let Some(last) = page.logs.last() else { break };
                after = last.id;
                for line in &page.logs {
                    if args.format.json {
                        println!("{}", serde_json::to_string(line)?);
                    } else {
                        super::output::print_log_line(line);
                    }
                }
            }
            Ok(())
        }
        FlowRunCommand::Cancel(args) => cancel(args),
        FlowRunCommand::Retry(args) => {
            let id = run_action(&backend, &args.id, "retry")?.flow_run_id;
            if !args.json {
                eprintln!(
                    "Retrying flow run {id} on {}; completed tasks are replayed",
                    backend.describe()
                );
            }
            let end = backend.follow(&id, args.json, |line| {
                if !args.quiet {
                    super::output::print_log_line(line)
                }
            })?;
            super::output::finish(&end, args.json)
        }
        FlowRunCommand::Resume(args) => {
            let body = ResumeInput {
                input: args.input()?,
            };
            let reply: RunAction =
                backend.send_as("POST", &format!("/api/flow-runs/{}/resume", args.id), &body)?;
            let id = reply.flow_run_id;
            if !args.json {
                eprintln!(
                    "Resuming flow run {id} on {}; completed tasks are replayed",
                    backend.describe()
                );
            }
            let end = backend.follow(&id, args.json, |line| {
                if !args.quiet {
                    super::output::print_log_line(line)
                }
            })?;
            super::output::finish(&end, args.json)
        }
        FlowRunCommand::Prune(args) => prune(&backend, args),
    }
}
