//! `host flow-run ls|inspect|logs`: what the local database recorded.

use super::output::{format_count, format_duration, level_label, table};
use super::{Exit, JsonFlag, paths};
use crate::clock::format_rfc3339;
use crate::engine::human_bytes;
use crate::model::{FlowRunId, RunState};
use crate::store::{FlowRunFilter, Store, StoreError};
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum FlowRunCommand {
    /// List recent flow runs, newest first.
    Ls(LsArgs),
    /// Show one flow run: its state history and a table of its task runs.
    Inspect(IdArgs),
    /// Print a flow run's log lines (its tasks' included).
    Logs(IdArgs),
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
pub struct IdArgs {
    /// The flow run's id (a unique prefix of at least 4 characters is enough).
    id: String,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: FlowRunCommand) -> anyhow::Result<()> {
    let store = open_store()?;
    match command {
        FlowRunCommand::Ls(args) => ls(&store, args),
        FlowRunCommand::Inspect(args) => inspect(&store, args),
        FlowRunCommand::Logs(args) => logs(&store, args),
    }
}

fn open_store() -> anyhow::Result<Store> {
    Ok(Store::open(&paths().database())?)
}

fn resolve(store: &Store, text: &str) -> anyhow::Result<FlowRunId> {
    store.resolve_flow_run(text).map_err(|e| match e {
        StoreError::NotFound { .. } => Exit::bad_input(format!("no flow run with id '{text}'; list them with `host flow-run ls`")),
        StoreError::Corrupt(message) => Exit::bad_input(message),
        other => anyhow::Error::new(other),
    })
}

fn when(micros: Option<i64>) -> String {
    micros.map(|m| format_rfc3339(m)[..19].replace('T', " ")).unwrap_or_else(|| "-".into())
}

fn took(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) if e >= s => format_duration(Duration::from_micros((e - s) as u64)),
        _ => "-".into(),
    }
}

fn ls(store: &Store, args: LsArgs) -> anyhow::Result<()> {
    let rows = store.list_flow_runs(&FlowRunFilter {
        state: args.state,
        flow_name: args.flow,
        top_level_only: !args.all,
        limit: args.limit,
    })?;
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
                r.message.clone().unwrap_or_default().lines().next().unwrap_or_default().chars().take(60).collect(),
            ]
        })
        .collect();
    println!("{}", table(&["ID", "FLOW", "STATE", "CREATED (UTC)", "DURATION", "MESSAGE"], &table_rows));
    Ok(())
}

fn inspect(store: &Store, args: IdArgs) -> anyhow::Result<()> {
    let id = resolve(store, &args.id)?;
    let run = store.flow_run(id)?;
    let tasks = store.task_runs(id)?;
    let history = store.state_history(id.0)?;
    if args.format.json {
        let history: Vec<_> = history
            .iter()
            .map(|(at, state, message)| serde_json::json!({"at": format_rfc3339(*at), "state": state, "message": message}))
            .collect();
        println!("{}", serde_json::json!({"flow_run": run, "states": history, "task_runs": tasks}));
        return Ok(());
    }
    println!("flow run   {}", run.id);
    println!("flow       {} (component sha256:{})", run.flow_name, &run.component[..12.min(run.component.len())]);
    println!("state      {}{}", run.state, run.message.as_deref().map(|m| format!(" — {m}")).unwrap_or_default());
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
        println!("  {}  {state}{}", &format_rfc3339(*at)[11..23], message.as_deref().map(|m| format!("  {m}")).unwrap_or_default());
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
                t.message.clone().unwrap_or_default().lines().next().unwrap_or_default().chars().take(70).collect(),
            ]
        })
        .collect();
    println!("{}", table(&["#", "TASK", "STATE", "ATTEMPTS", "DURATION", "FUEL", "PEAK MEM", "HOST", "MESSAGE"], &rows));
    Ok(())
}

fn logs(store: &Store, args: IdArgs) -> anyhow::Result<()> {
    let id = resolve(store, &args.id)?;
    let tasks = store.task_runs(id)?;
    let names: std::collections::HashMap<_, _> = tasks.iter().map(|t| (t.id, t.task_name.clone())).collect();
    let mut after = 0;
    loop {
        let page = store.logs(id, after, 1000)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for line in &page {
            if args.format.json {
                println!("{}", serde_json::to_string(line)?);
            } else {
                let who = line.task_run.and_then(|t| names.get(&t)).map(|n| format!("[{n}] ")).unwrap_or_default();
                println!("{} {:<5} {who}{}", &format_rfc3339(line.at)[11..23], level_label(line.level), line.message);
            }
        }
    }
    Ok(())
}
