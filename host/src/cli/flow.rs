//! `host flow run|inspect` and `host build`.

use super::local::Local;
use super::output::{Progress, print_summary};
use super::{Exit, JsonFlag, paths};
use crate::builder::{self, Built, housekeeping};
use crate::config::Paths;
use crate::engine::{Component, LoadKind, human_bytes};
use crate::model::{FlowDef, Policy, RunState};
use crate::protocol::{build_params, validate_params};
use crate::worker::{ExecutorSettings, FlowRunRequest};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum FlowCommand {
    /// Build (if needed) and run a flow in this process, showing live task states.
    #[command(after_help = "Examples:
  host flow run examples/etl --param rows=500
  host flow run my_flow.wasm etl --params-json '{\"rows\": 10}' --json")]
    // Boxed: its flags (the --allow-* lists among them) make it the largest by far.
    Run(Box<RunArgs>),
    /// Print a component's manifest: its flows, tasks, parameters and policies.
    Inspect(InspectArgs),
    /// Upload a component (building the project first) to the server or local store.
    #[command(after_help = "Examples:
  host flow upload examples/etl
  host flow upload target/flow.wasm --json")]
    Upload(super::component::UploadArgs),
    /// List the flows of uploaded components.
    Ls(JsonFlag),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A guest project folder (built first) or a .wasm component.
    path: PathBuf,
    /// The flow to run; may be left out when the component has only one.
    flow: Option<String>,
    /// A parameter as key=value; the value is read as JSON when it parses (rows=500), else as text.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// All parameters as one JSON object; --param values override its keys.
    #[arg(long, value_name = "JSON")]
    params_json: Option<String>,
    /// Override the flow's timeout, e.g. 30s or 5m.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<humantime::Duration>,
    /// Run cached tasks again and cache their new results.
    #[arg(long)]
    refresh_cache: bool,
    /// Override every task's deadline per attempt, e.g. 10s.
    #[arg(long, value_name = "DURATION")]
    task_timeout: Option<humantime::Duration>,
    /// Override every task's fuel (instruction budget) per attempt.
    #[arg(long, value_name = "N")]
    task_fuel: Option<u64>,
    /// Override every task's memory cap, e.g. 256MiB.
    #[arg(long, value_name = "SIZE")]
    task_memory: Option<String>,
    /// At most N tasks with this tag at once, e.g. --limit db=2 (repeatable).
    #[arg(long = "limit", value_name = "TAG=N")]
    limits: Vec<String>,
    /// Print one JSON object with the run's id, state, result and totals.
    #[arg(long)]
    json: bool,
    /// Do not print the flow's log lines.
    #[arg(long, short)]
    quiet: bool,
    /// What the run may reach beyond its sandbox (nothing unless given).
    #[command(flatten)]
    allows: super::remote::AllowArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A guest project folder (built first) or a .wasm component.
    path: PathBuf,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  host build my-flow
  host build --prune                   keep the newest builds.keep builds and cache.keep compiled components
  host build --prune --keep 5 --max-size 500MiB")]
pub struct BuildArgs {
    /// The guest project folder (may be left out with --prune).
    #[arg(required_unless_present = "prune")]
    path: Option<PathBuf>,
    /// Remove all but the newest builds ($WEIR_HOME/builds) and compiled
    /// components ($WEIR_HOME/cache) [also after every build, to the
    /// settings builds.keep, builds.max_size, cache.keep, cache.max_size].
    #[arg(long)]
    prune: bool,
    /// With --prune: keep this many of each, the newest.
    #[arg(long, value_name = "N", requires = "prune")]
    keep: Option<usize>,
    /// With --prune: keep at most this much of each (e.g. 500MiB).
    #[arg(long, value_name = "SIZE", requires = "prune")]
    max_size: Option<String>,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: FlowCommand) -> anyhow::Result<()> {
    match command {
        FlowCommand::Run(args) => run_flow(*args),
        FlowCommand::Inspect(args) => inspect(args),
        FlowCommand::Upload(args) => super::component::upload(args),
        FlowCommand::Ls(format) => super::component::list_flows(format),
    }
}

pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let Some(path) = args.path.clone() else {
        return prune(&args);
    };
    let Loaded {
        built,
        build_ms,
        component,
        ..
    } = load_project(&path, !args.format.json)?;
    if args.prune {
        prune(&args)?;
    }
    if args.format.json {
        let (load, load_ms) = match component.load {
            LoadKind::Compiled { millis } => ("compiled", millis),
            LoadKind::Cached { millis } => ("cached", millis),
        };
        let json = serde_json::json!({
            "wasm": built.wasm,
            "language": built.language.map(|l| l.as_str()),
            "reused_build": built.reused,
            "build_ms": build_ms,
            "digest": component.digest.as_str(),
            "size_bytes": component.size_bytes,
            "flows": component.manifest.flow_names(),
            "load": load,
            "load_ms": load_ms,
        });
        println!("{json}");
    } else {
        println!(
            "Built {} ({}, sha256 {}), flows: {}",
            built.wasm.display(),
            human_bytes(component.size_bytes),
            component.digest.short(),
            component.manifest.flow_names().join(", ")
        );
    }
    Ok(())
}

/// A guest project built, stored, validated and recorded.
struct Loaded {
    built: Built,
    /// How long building (or finding the build in the cache) took, in ms.
    build_ms: f64,
    runtime: tokio::runtime::Runtime,
    local: Local,
    component: Component,
}

fn load_project(path: &std::path::Path, show_progress: bool) -> anyhow::Result<Loaded> {
    let started = std::time::Instant::now();
    let built = build_component(path, show_progress)?;
    // Tenths of a millisecond: a cache hit takes well under one.
    let build_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
    let bytes =
        std::fs::read(&built.wasm).with_context(|| format!("reading {}", built.wasm.display()))?;
    let runtime = runtime()?;
    let local = Local::open(&paths())?;
    let component = runtime.block_on(local.load(&built.wasm, &bytes))?;
    if built.compiled {
        // Every build keeps the folders bounded; a failure costs disk, not the build.
        if let Err(e) = housekeep(&paths(), None) {
            tracing::warn!("could not prune old builds: {e:#}");
        }
    }
    Ok(Loaded {
        built,
        build_ms,
        runtime,
        local,
        component,
    })
}

pub(crate) fn build_component(
    path: &std::path::Path,
    show_progress: bool,
) -> anyhow::Result<Built> {
    let toolchains = std::env::var_os("WEIR_TOOLCHAINS")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let dirs = builder::BuildDirs::new(&paths(), toolchains);
    builder::build(path, &dirs, show_progress).map_err(|e| match e {
        builder::BuildError::Missing(_)
        | builder::BuildError::UnknownProject(_)
        | builder::BuildError::NoEntry { .. } => Exit::bad_input(e.to_string()),
        other => anyhow::Error::new(other),
    })
}

/// `host build --prune`: prunes now, to the flags or else the settings, and says what went.
fn prune(args: &BuildArgs) -> anyhow::Result<()> {
    let max_bytes = args
        .max_size
        .as_deref()
        .map(crate::protocol::parse_memory_size)
        .transpose()
        .map_err(|e| Exit::bad_input(format!("--max-size: {e}")))?;
    let paths = paths();
    let (builds, cache) = housekeep(
        &paths,
        Some((args.keep, max_bytes)).filter(|(k, m)| k.is_some() || m.is_some()),
    )?;
    if args.format.json && args.path.is_none() {
        let json = |p: housekeeping::Pruned| serde_json::json!({"kept": p.kept, "removed": p.removed, "freed_bytes": p.freed_bytes});
        println!(
            "{}",
            serde_json::json!({"builds": json(builds), "cache": json(cache)})
        );
    } else if !args.format.json {
        for (dir, pruned) in [(paths.builds(), builds), (paths.compile_cache(), cache)] {
            eprintln!(
                "{}: kept {}, removed {} ({})",
                dir.display(),
                pruned.kept,
                pruned.removed,
                human_bytes(pruned.freed_bytes)
            );
        }
    }
    Ok(())
}

/// Prunes the builds and the compiled cache to `overrides` (keep, bytes)
/// where given, else to the settings `builds.*` and `cache.*`.
fn housekeep(
    paths: &Paths,
    overrides: Option<(Option<usize>, Option<u64>)>,
) -> anyhow::Result<(housekeeping::Pruned, housekeeping::Pruned)> {
    let settings = super::backend::settings()?;
    let bound = |prefix: &str,
                 default: housekeeping::Bound|
     -> anyhow::Result<housekeeping::Bound> {
        let keep = match overrides.and_then(|(keep, _)| keep) {
            Some(keep) => keep,
            None => match settings.get(&format!("{prefix}.keep")) {
                Some(text) => text.trim().parse().map_err(|_| {
                    Exit::bad_input(format!("{prefix}.keep '{text}' is not a number of entries"))
                })?,
                None => default.keep,
            },
        };
        let max_bytes = match overrides.and_then(|(_, bytes)| bytes) {
            Some(bytes) => bytes,
            None => match settings.get(&format!("{prefix}.max_size")) {
                Some(text) => crate::protocol::parse_memory_size(text)
                    .map_err(|e| Exit::bad_input(format!("{prefix}.max_size: {e}")))?,
                None => default.max_bytes,
            },
        };
        Ok(housekeeping::Bound { keep, max_bytes })
    };
    let builds = housekeeping::prune(
        &paths.builds(),
        housekeeping::Kind::Builds,
        bound("builds", housekeeping::Bound::BUILDS)?,
    )?;
    let cache = housekeeping::prune(
        &paths.compile_cache(),
        housekeeping::Kind::CompiledCache,
        bound("cache", housekeeping::Bound::CACHE)?,
    )?;
    Ok((builds, cache))
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let Loaded { component, .. } = load_project(&args.path, !args.format.json)?;
    if args.format.json {
        let json = serde_json::json!({
            "digest": component.digest.as_str(),
            "size_bytes": component.size_bytes,
            "manifest": &*component.manifest,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let m = &component.manifest;
    println!(
        "component  sha256:{}  ({})",
        component.digest,
        human_bytes(component.size_bytes)
    );
    if let Some(sdk) = &m.sdk {
        println!("sdk        {} {}", sdk.language, sdk.version);
    }
    println!();
    for flow in &m.flows {
        println!("flow {}{}", flow.name, describe_line(&flow.description));
        if let Some(schema) = &flow.params_schema {
            for line in param_lines(schema) {
                println!("    {line}");
            }
        }
        print_policy(&flow.policy);
    }
    println!();
    for task in &m.tasks {
        println!("task {}{}", task.name, describe_line(&task.description));
        print_policy(&task.policy);
    }
    Ok(())
}

fn describe_line(description: &str) -> String {
    match description.lines().next() {
        Some(first) if !first.is_empty() => format!("  — {first}"),
        _ => String::new(),
    }
}

fn param_lines(schema: &serde_json::Value) -> Vec<String> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, prop)| {
            let ty = match &prop["type"] {
                serde_json::Value::String(t) => t.clone(),
                serde_json::Value::Array(ts) => ts
                    .iter()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
                _ => "any".into(),
            };
            let default = prop
                .get("default")
                .map(|d| format!(" = {d}"))
                .unwrap_or_default();
            let req = if required.contains(&name.as_str()) {
                " (required)"
            } else {
                ""
            };
            format!("--param {name}=<{ty}>{default}{req}")
        })
        .collect()
}

fn print_policy(policy: &Policy) {
    let json = serde_json::to_value(policy).unwrap_or_default();
    if let Some(map) = json.as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("    policy: {}", parts.join(" "));
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-worker")
        .build()
        .context("starting the async runtime")
}

/// Unfinished runs whose process (on this host) no longer exists.
fn choose_flow<'a>(component: &'a Component, wanted: Option<&str>) -> anyhow::Result<&'a FlowDef> {
    let manifest = &component.manifest;
    match wanted {
        Some(name) => manifest.flow(name).ok_or_else(|| {
            Exit::bad_input(format!(
                "no flow named '{name}' in this component; it has: {}",
                manifest.flow_names().join(", ")
            ))
        }),
        None if manifest.flows.len() == 1 => Ok(&manifest.flows[0]),
        None => Err(Exit::bad_input(format!(
            "this component has several flows; name one: {}",
            manifest.flow_names().join(", ")
        ))),
    }
}

fn run_flow(args: RunArgs) -> anyhow::Result<()> {
    let tag_limits = parse_tag_limits(&args.limits)?;
    let allows = args.allows.capabilities()?;
    let Loaded {
        built,
        runtime,
        local,
        component,
        ..
    } = load_project(&args.path, !args.json)?;
    local.report_dead_runs();
    let flow = choose_flow(&component, args.flow.as_deref())?;
    let params = build_params(
        args.params_json.as_deref(),
        &args.params,
        flow.params_schema.as_ref(),
    )
    .map_err(|e| Exit::bad_input(e.to_string()))?;
    if let Some(schema) = &flow.params_schema {
        validate_params(schema, &params).map_err(|e| Exit::bad_input(e.to_string()))?;
    }
    if !args.json {
        let load = match component.load {
            LoadKind::Compiled { millis } => format!("compiled in {millis} ms"),
            LoadKind::Cached { millis } => format!("loaded from cache in {millis} ms"),
        };
        eprintln!(
            "Running flow '{}' of {} ({load})",
            flow.name,
            built.wasm.display()
        );
    }
    let mut request = FlowRunRequest::new(component.clone(), flow.name.clone(), params.to_string());
    request.capabilities = std::sync::Arc::new(allows);
    if let Some(timeout) = args.timeout {
        request.policy_override.timeout_ms = Some(timeout.as_millis() as u64);
    }
    request.task_override = Policy {
        refresh_cache: args.refresh_cache.then_some(true),
        timeout_ms: args.task_timeout.map(|d| d.as_millis() as u64),
        fuel: args.task_fuel,
        memory_bytes: args
            .task_memory
            .as_deref()
            .map(crate::protocol::parse_memory_size)
            .transpose()
            .map_err(|e| Exit::bad_input(format!("--task-memory: {e}")))?,
        ..Policy::default()
    };
    let settings = ExecutorSettings {
        tag_limits,
        ..ExecutorSettings::default()
    };
    watch(
        &runtime,
        &local,
        settings,
        request,
        Display {
            json: args.json,
            quiet: args.quiet,
        },
    )
}

/// How a run is shown while it runs and when it ends.
#[derive(Clone, Copy)]
pub(crate) struct Display {
    pub json: bool,
    pub quiet: bool,
}

/// Runs a flow in this process, shows its progress, prints its outcome, and
/// ends with exit code 1 unless it completed. Ctrl-C cancels the run.
pub(crate) fn watch(
    runtime: &tokio::runtime::Runtime,
    local: &Local,
    settings: ExecutorSettings,
    mut request: FlowRunRequest,
    display: Display,
) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal() && !display.json;
    let executor = local.executor(settings);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // `--json` shows nothing until the end: the run sends no events then.
    request.events = (!display.json).then_some(tx);
    let cancel = request.cancel.clone();
    let flow_name = request.flow_name.clone();
    let progress = Progress::new(tty, display.json, display.quiet);
    let outcome = runtime.block_on(async {
        let ended = tokio_util::sync::CancellationToken::new();
        let watcher = tokio::spawn(progress.watch(rx, ended.clone()));
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nCancelling the run (Ctrl-C) ...");
                cancel.cancel();
            }
        });
        // The run's lease is renewed while it runs: its slots of limits
        // count only while it is live, and other processes judge it by it.
        let keeping = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::dispatch::leases::keep_leases(
            executor.control().clone(),
            crate::dispatch::leases::process_marker(&executor.settings().host_name),
            executor.settings().lease_ttl,
            keeping.clone(),
        ));
        let outcome = executor.run_flow(request).await;
        keeping.cancel();
        ended.cancel();
        let _ = watcher.await;
        outcome
    })?;
    local.store.close();

    if display.json {
        let result = outcome
            .result
            .as_ref()
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok());
        let error = outcome
            .result
            .as_ref()
            .err()
            .map(|f| serde_json::json!({"kind": f.kind, "message": f.message}));
        let json = serde_json::json!({
            "flow_run_id": outcome.id.to_string(),
            "flow": flow_name,
            "state": outcome.state,
            "result": result,
            "error": error,
            "summary": outcome.summary,
        });
        println!("{json}");
    } else {
        match &outcome.result {
            Ok(result) => {
                eprintln!(
                    "\n✓ {} flow '{flow_name}' (run {})",
                    outcome.state, outcome.id
                );
                println!("{}", pretty_json(result));
            }
            Err(_) if outcome.state == RunState::Paused => {
                eprintln!(
                    "\n⏸ Paused flow '{flow_name}' (run {}): waiting for input",
                    outcome.id
                );
                eprintln!(
                    "  resume it with: host flow-run resume {} --input JSON",
                    outcome.id
                );
            }
            Err(failure) => {
                eprintln!(
                    "\n✗ {} flow '{flow_name}' (run {})",
                    outcome.state, outcome.id
                );
                eprintln!("  {failure}");
            }
        }
        print_summary(&outcome.summary);
        eprintln!(
            "  details: host flow-run inspect {}   logs: host flow-run logs {}",
            outcome.id, outcome.id
        );
    }
    // A run paused for input did what it was asked: it waits, resumable.
    if matches!(outcome.state, RunState::Completed | RunState::Paused) {
        Ok(())
    } else {
        Err(Exit::code(1))
    }
}

/// `--limit db=2` → at most two tasks tagged `db` at once.
fn parse_tag_limits(limits: &[String]) -> anyhow::Result<BTreeMap<String, usize>> {
    limits
        .iter()
        .map(|text| {
            let bad = || {
                Exit::bad_input(format!(
                    "--limit '{text}' is not of the form TAG=N (N a positive number)"
                ))
            };
            let (tag, n) = text.split_once('=').ok_or_else(bad)?;
            let n: usize = n.trim().parse().map_err(|_| bad())?;
            if tag.trim().is_empty() || n == 0 {
                return Err(bad());
            }
            Ok((tag.trim().to_string(), n))
        })
        .collect()
}

fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}
