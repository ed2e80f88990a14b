//! The CLI's one door to the local database: running a flow in this process
//! (`host flow run`; `host flow-run resume|retry` when no server is set),
//! and `host db`. Every other command goes through the API (`Backend`); the
//! tidy test lets only this file name the store, its writes and `Control`.

use super::flow::{Display, runtime, watch};
use super::runs::{Rerun, RerunArgs};
use super::{Exit, paths};
use crate::clock::SystemClock;
use crate::config::Paths;
use crate::control::Control;
use crate::engine::{Component, Engine, EngineConfig, EngineError};
use crate::model::{FlowRunId, RunState};
use crate::store::{
    ComponentFiles, FlowRunRow, Store, StoreError, StoreOptions, StoreTable, Write,
};
use crate::worker::{Executor, ExecutorSettings, ExistingRun, FlowRunRequest};
use anyhow::Context;
use std::sync::Arc;

/// Opens the local database with the profile's `store.durability`.
pub(crate) fn open_store(paths: &Paths) -> anyhow::Result<Store> {
    Ok(Store::open_with_options(
        &paths.database(),
        store_options(paths)?,
    )?)
}

/// How to open the database, from the `store.durability` and
/// `server.database` settings.
pub(crate) fn store_options(paths: &Paths) -> anyhow::Result<StoreOptions> {
    let settings = super::backend::load_profiles(paths)?.resolve(&|var| std::env::var(var).ok());
    let durability = match settings.get("store.durability") {
        Some(text) => text.parse().map_err(Exit::bad_input)?,
        None => Default::default(),
    };
    let database = settings.get("server.database").map(str::to_string);
    Ok(StoreOptions {
        durability,
        database,
        skip_migrations: false,
    })
}

/// The local database, component files and engine.
pub(crate) struct Local {
    pub store: Arc<Store>,
    pub files: ComponentFiles,
    pub engine: Arc<Engine>,
}

impl Local {
    pub fn open(paths: &Paths) -> anyhow::Result<Local> {
        let store = Arc::new(open_store(paths)?);
        let engine = Arc::new(Engine::new(EngineConfig {
            cache_dir: Some(paths.compile_cache()),
            ..EngineConfig::default()
        })?);
        Ok(Local {
            store,
            files: ComponentFiles::new(paths.components()),
            engine,
        })
    }

    /// Validates, stores and records a component.
    pub async fn load(&self, origin: &std::path::Path, bytes: &[u8]) -> anyhow::Result<Component> {
        let component = self.engine.load(bytes).await.map_err(|e| match e {
            EngineError::Setup(_) | EngineError::Cache { .. } => anyhow::Error::new(e),
            other => Exit::bad_input(format!("{}: {other}", origin.display())),
        })?;
        self.files.put(bytes).context("storing the component")?;
        let manifest = serde_json::to_string(&*component.manifest)?;
        self.store
            .submit(vec![Write::Component {
                digest: component.digest.clone(),
                size_bytes: component.size_bytes,
                manifest,
                at: crate::clock::Clock::now_micros(&SystemClock),
                wasm: Some(crate::store::Wasm(bytes::Bytes::copy_from_slice(bytes))),
            }])
            .committed()
            .await?;
        Ok(component)
    }

    pub fn control(&self) -> Arc<Control> {
        Arc::new(Control::new(self.store.clone(), Arc::new(SystemClock)))
    }

    pub fn executor(&self, settings: ExecutorSettings) -> Arc<Executor> {
        Executor::new(self.engine.clone(), self.control(), settings)
    }

    /// Marks runs of dead processes Crashed and says how to resume each.
    pub fn report_dead_runs(&self) {
        for run in crate::dispatch::leases::crash_lost_runs(&self.control()) {
            note_interrupted(&run);
        }
    }
}

/// Tells the user a dead process left `run` behind and how to finish it.
pub(crate) fn note_interrupted(run: &crate::store::FlowRunRow) {
    eprintln!(
        "note: flow run {} ('{}') was interrupted when its process stopped; it is now Crashed. Resume it with: host flow-run resume {}",
        run.id, run.flow_name, run.id
    );
}

/// `host flow-run resume|retry` without a server: runs the flow again in
/// this process, replaying its finished calls.
pub(super) fn rerun(args: RerunArgs, mode: Rerun) -> anyhow::Result<()> {
    let store = open_store(&paths())?;
    let id = resolve(&store, &args.id)?;
    let run = store.flow_run(id)?;
    let input = args.input()?;
    if mode == Rerun::Resume && (run.state == RunState::Paused || input.is_some()) {
        drop(store);
        return resume_paused(run, input.unwrap_or(serde_json::Value::Null), &args);
    }
    let unfinished = matches!(
        run.state,
        RunState::Running | RunState::Pending | RunState::Retrying | RunState::Cancelling
    );
    match (mode, run.state) {
        (_, RunState::Completed | RunState::Cached) => {
            return Err(Exit::bad_input(format!(
                "flow run {id} already completed; start a new run instead"
            )));
        }
        (Rerun::Retry, _) if unfinished => {
            return Err(Exit::bad_input(format!(
                "flow run {id} is {}; if its process died, use `host flow-run resume {id}`",
                run.state
            )));
        }
        (Rerun::Resume, s) if !unfinished && s != RunState::Crashed => {
            return Err(Exit::bad_input(format!(
                "flow run {id} is {s}, not interrupted; use `host flow-run retry {id}` to run it again"
            )));
        }
        _ => {}
    }
    if run.parent_flow_run.is_some() {
        return Err(Exit::bad_input(format!(
            "flow run {id} is a subflow; resume or retry its parent instead"
        )));
    }
    drop(store);

    let runtime = runtime()?;
    let local = Local::open(&paths())?;
    let mut state = run.state;
    if unfinished {
        let now = local.control().now();
        if crate::dispatch::leases::is_held(&run, now) {
            return Err(Exit::bad_input(format!(
                "flow run {id} is still {} in a live process ({}); cancel it first with `host flow-run cancel {id}`",
                run.state,
                run.host.as_deref().unwrap_or("unknown host")
            )));
        }
        let why = format!(
            "the process running it ({}) is gone; resumed by hand",
            run.host.as_deref().unwrap_or("unknown host")
        );
        if !crate::dispatch::leases::crash_tree(&local.control(), &run, &why) {
            return Err(Exit::bad_input(format!(
                "flow run {id} changed while it was being resumed; look at it again with `host flow-run inspect {id}`"
            )));
        }
        state = RunState::Crashed;
    }
    let banner = format!(
        "Running flow run {id} ('{}') again as attempt {}; completed tasks are replayed",
        run.flow_name,
        run.attempt + 1
    );
    run_again(&runtime, &local, &run, state, &banner, &args)
}

/// Resumes a Paused run here with `input`: checked against its pause's
/// schema, recorded as the pause's answer in one unit with the run's move to
/// Pending, then run in this process, replaying its finished calls.
fn resume_paused(
    run: FlowRunRow,
    input: serde_json::Value,
    args: &RerunArgs,
) -> anyhow::Result<()> {
    use crate::dispatch::pause;
    let id = run.id;
    if run.state != RunState::Paused {
        return Err(Exit::bad_input(format!(
            "flow run {id} is {}, not Paused: only a paused run takes --input",
            run.state
        )));
    }
    let runtime = runtime()?;
    let local = Local::open(&paths())?;
    let control = local.control();
    match pause::resume_here(&control, &run, &input) {
        Ok(()) => {}
        Err(e @ crate::dispatch::DispatchError::InvalidResumeInput { .. }) => {
            return Err(Exit::bad_input(e.to_string()));
        }
        Err(e @ crate::dispatch::DispatchError::WrongState { .. }) => {
            return Err(Exit::bad_input(e.to_string()));
        }
        Err(e) => return Err(e.into()),
    }
    let banner = format!(
        "Resuming flow run {id} ('{}') with input; finished calls are replayed",
        run.flow_name
    );
    run_again(&runtime, &local, &run, RunState::Pending, &banner, args)
}

/// Runs `run` again in this process from `state`, replaying its finished
/// calls, with live progress (after `banner`, unless `--json`).
fn run_again(
    runtime: &tokio::runtime::Runtime,
    local: &Local,
    run: &FlowRunRow,
    state: RunState,
    banner: &str,
    args: &RerunArgs,
) -> anyhow::Result<()> {
    let id = run.id;
    let digest = crate::model::ComponentDigest::parse(&run.component)
        .ok_or_else(|| Exit::bad_input(format!("flow run {id} names no valid component digest")))?;
    let bytes = local.files.get(&digest).with_context(|| {
        format!(
            "the component of flow run {id} (sha256:{}) is not stored here any more",
            digest.short()
        )
    })?;
    let component = runtime.block_on(local.load(&local.files.path_of(&digest), &bytes))?;
    let mut request = FlowRunRequest::new(component, run.flow_name.clone(), run.params.clone());
    request.existing = Some(ExistingRun {
        id,
        state,
        attempt: run.attempt,
    });
    if !args.json {
        eprintln!("{banner}");
    }
    watch(
        runtime,
        local,
        ExecutorSettings::default(),
        request,
        Display {
            json: args.json,
            quiet: args.quiet,
        },
    )
}

fn resolve(store: &Store, text: &str) -> anyhow::Result<FlowRunId> {
    store.resolve_flow_run(text).map_err(|e| match e {
        StoreError::NotFound { .. } => Exit::bad_input(format!(
            "no flow run with id '{text}'; list them with `host flow-run ls`"
        )),
        StoreError::Corrupt(message) => Exit::bad_input(message),
        other => anyhow::Error::new(other),
    })
}

/// `host db check|migrate`: opens the database (`database` or the
/// profile's), migrating it or not, and reports on it.
pub(super) fn db_report(database: Option<String>, migrate: bool, json: bool) -> anyhow::Result<()> {
    report(&open_db(database, migrate)?, json)
}

fn open_db(database: Option<String>, migrate: bool) -> anyhow::Result<Store> {
    let paths = paths();
    let mut options = store_options(&paths)?;
    if let Some(url) = database {
        options.database = Some(url);
    }
    options.skip_migrations = !migrate;
    Ok(Store::open_with_options(&paths.database(), options)?)
}

fn report(store: &Store, json: bool) -> anyhow::Result<()> {
    let (current, newest) = store.schema_version()?;
    let current_schema = current == newest;
    let size = store.size_bytes()?;
    let rows = if current_schema {
        Some((
            store.count(StoreTable::FlowRuns)?,
            store.count(StoreTable::TaskRuns)?,
            store.count(StoreTable::Logs)?,
        ))
    } else {
        None
    };
    if json {
        let mut out = serde_json::json!({
            "database": store.location(),
            "schema_version": current,
            "newest_schema_version": newest,
            "size_bytes": size,
        });
        if let Some((flow_runs, task_runs, logs)) = rows {
            out["rows"] =
                serde_json::json!({"flow_runs": flow_runs, "task_runs": task_runs, "logs": logs});
        }
        println!("{out}");
    } else {
        println!("database        {}", store.location());
        println!("schema version  {current} (this host knows {newest})");
        println!("size            {:.1} MB", size as f64 / 1e6);
        if let Some((flow_runs, task_runs, logs)) = rows {
            println!("flow runs       {flow_runs}");
            println!("task runs       {task_runs}");
            println!("log lines       {logs}");
        }
    }
    if current > newest {
        anyhow::bail!(
            "the database is at schema version {current}, newer than this host ({newest}); use a newer host"
        );
    }
    if !current_schema {
        anyhow::bail!("the schema is at version {current} of {newest}: run `host db migrate`");
    }
    Ok(())
}
