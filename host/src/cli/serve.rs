//! `host serve PATH --flow F [--cron EXPR | --interval D]`: Prefect's
//! `flow.serve()`. Builds the project, starts the server in the foreground
//! (the very `host server start`), creates or updates a deployment of the
//! flow through `host deploy`'s own code, and prints the log of each of its
//! runs as they happen until Ctrl-C or SIGTERM.
//!
//! Stopping pauses the deployment first (so its runs made ahead are dropped
//! and no other server starts them), then lets running flows finish within
//! the server's grace; a flow still running after that is left to the next
//! start, which marks it `Crashed` and resumes it, as for `host server start`.

use super::backend::{Backend, settings};
use super::output::say;
use super::server::{Foreground, GRACE, StartArgs, serve_in_foreground};
use super::{Exit, paths};
use crate::api::wire::FlowRunList;
use crate::client::Client;
use crate::model::RunState;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  host serve examples/etl --flow etl --interval 10s --param rows=50
  host serve my-flow --flow hello --cron '0 * * * *' --timezone Europe/Berlin
  host serve my-flow --flow hello               (no schedule: run it with `host deployment run hello`)")]
pub struct ServeArgs {
    /// A guest project folder (built first) or a .wasm component.
    path: PathBuf,
    /// The flow to serve.
    #[arg(long)]
    flow: String,
    /// The deployment's name [default: the flow's].
    #[arg(long)]
    name: Option<String>,
    /// Run on this cron pattern (5 fields).
    #[arg(long, value_name = "EXPR", conflicts_with = "interval")]
    cron: Option<String>,
    /// Run every D (e.g. 10s, 5m), on the grid through the moment it starts.
    #[arg(long, value_name = "D")]
    interval: Option<humantime::Duration>,
    /// The zone a cron pattern is read in (IANA name) [default: UTC].
    #[arg(long, value_name = "ZONE", requires = "cron")]
    timezone: Option<String>,
    /// A parameter of every run as key=value (read as JSON when it parses).
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    params: Vec<String>,
    #[command(flatten)]
    server: StartArgs,
}

/// How long stopping waits for the scheduler to drop the runs made ahead
/// (it ticks every 500 ms).
const RUNS_AHEAD_GONE: Duration = Duration::from_secs(5);
/// How often the log of the served runs is read.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// The states whose runs' logs are followed: running, and just ended.
const WATCHED: [RunState; 7] = [
    RunState::Running,
    RunState::Completed,
    RunState::Cached,
    RunState::Failed,
    RunState::TimedOut,
    RunState::Crashed,
    RunState::Cancelled,
];
/// Runs listed per state and look (the newest): more than end between looks.
const LISTED: usize = 100;

/// The end of a run's id: its start is a timestamp, the same for runs made together.
fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Built before the server starts: a project that does not build never
    // binds a port, and the deployment below takes the component as it is.
    let built = super::flow::build_component(&args.path, true)?;
    let wasm = built
        .wasm
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e}", built.wasm.display()))?;
    let params = crate::protocol::build_params(None, &args.params, None)
        .map_err(|e| Exit::bad_input(e.to_string()))?;
    let name = args.name.clone().unwrap_or_else(|| args.flow.clone());
    let mut schedule = serde_json::Map::new();
    if let Some(cron) = &args.cron {
        schedule.insert("cron".into(), Value::from(cron.as_str()));
        if let Some(zone) = &args.timezone {
            schedule.insert("timezone".into(), Value::from(zone.as_str()));
        }
    }
    if let Some(interval) = args.interval {
        if interval.as_secs() == 0 {
            return Err(Exit::bad_input("--interval must be at least 1s"));
        }
        schedule.insert(
            "interval".into(),
            Value::from(format!("{}s", interval.as_secs())),
        );
        // The grid starts now rather than at the Unix epoch's multiples.
        schedule.insert(
            "anchor".into(),
            Value::from(crate::clock::format_rfc3339(
                crate::clock::Clock::now_micros(&crate::clock::SystemClock),
            )),
        );
    }
    let schedules = if schedule.is_empty() {
        Vec::new()
    } else {
        vec![Value::Object(schedule)]
    };
    let document = json!({ "deployments": [{
        "name": name,
        "component": wasm,
        "flow": args.flow,
        "params": params,
        "schedules": schedules,
    }]});
    let every = match (&args.cron, args.interval) {
        (Some(cron), _) => format!("on '{cron}'"),
        (None, Some(interval)) => format!("every {interval}"),
        (None, None) => format!("when run (host deployment run {name})"),
    };
    let mut serving = Serving {
        document: document.to_string(),
        deployment: name,
        every,
        follower: None,
        stop_following: Arc::new(AtomicBool::new(false)),
    };
    serve_in_foreground(args.server, &mut serving)
}

struct Serving {
    document: String,
    deployment: String,
    every: String,
    follower: Option<std::thread::JoinHandle<()>>,
    stop_following: Arc<AtomicBool>,
}

/// The API of the server this process runs, over HTTP like any client (with
/// `api.key` when the server was given keys).
fn own_api(url: &str) -> anyhow::Result<Backend> {
    let key = settings()?.get("api.key").map(str::to_string);
    let client = Client::new(url, key, "host serve").map_err(|e| Exit::bad_input(e.to_string()))?;
    Ok(Backend::Remote(client))
}

impl Foreground for Serving {
    fn started(&mut self, handle: &crate::server::ServerHandle) -> anyhow::Result<()> {
        let url = handle.url();
        let since = crate::clock::Clock::now_micros(&crate::clock::SystemClock);
        super::deploy::apply_document(
            &self.document,
            std::path::Path::new("(host serve)"),
            paths().home(),
            &[],
            false,
            || own_api(&url),
        )?;
        say!(
            "Serving flow deployment '{}' {}; its runs' logs follow. Ctrl-C stops.",
            self.deployment,
            self.every
        );
        let backend = own_api(&url)?;
        let stop = self.stop_following.clone();
        let deployment = self.deployment.clone();
        self.follower = Some(std::thread::spawn(move || {
            let mut follower = Follower::new(deployment, since);
            while !stop.load(Ordering::Relaxed) {
                follower.look(&backend);
                std::thread::sleep(FOLLOW_EVERY);
            }
            // What ended while stopping (a run's end is told at the look after).
            follower.look(&backend);
            follower.look(&backend);
        }));
        Ok(())
    }

    fn stopping(&mut self, handle: &crate::server::ServerHandle) {
        say!("\nStopping: pausing deployment '{}' ...", self.deployment);
        match own_api(&handle.url())
            .and_then(|api| api.act(&format!("/api/deployments/{}/pause", self.deployment)))
        {
            Ok(_) => self.settle_waiting_runs(&handle.url()),
            Err(e) => say!("  could not pause it ({e}); it stays active"),
        }
        let deadline = Instant::now() + GRACE;
        let mut said = false;
        while handle.running() > 0 && Instant::now() < deadline {
            if !said {
                say!(
                    "  waiting up to {} s for {} running flow runs ...",
                    GRACE.as_secs(),
                    handle.running()
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop_following.store(true, Ordering::Relaxed);
        if let Some(follower) = self.follower.take() {
            let _ = follower.join();
        }
    }
}

impl Serving {
    /// The scheduler drops a paused deployment's runs made ahead at its next
    /// tick (the server must still be up for that, so it is waited for). A
    /// run whose time came but that had not started when the deployment was
    /// paused is not "ahead": it would wait for a resume, so it is cancelled.
    fn settle_waiting_runs(&self, url: &str) {
        let Ok(api) = own_api(url) else { return };
        let deadline = Instant::now() + RUNS_AHEAD_GONE;
        while Instant::now() < deadline {
            let mut waiting = Vec::new();
            for state in [RunState::Scheduled, RunState::Late] {
                match api.get_as::<FlowRunList>(&format!(
                    "/api/flow-runs?deployment={}&state={}&limit=100",
                    self.deployment,
                    state.as_str()
                )) {
                    Ok(page) => waiting.extend(page.flow_runs),
                    Err(_) => return,
                }
            }
            if waiting.is_empty() {
                return;
            }
            let now = crate::clock::Clock::now_micros(&crate::clock::SystemClock);
            for run in &waiting {
                if run.scheduled_at.is_none_or(|at| at <= now) {
                    let id = run.id;
                    let _ = api.act(&format!("/api/flow-runs/{id}/cancel"));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say!("  some of its runs still wait; they stay until the deployment is resumed");
    }
}

/// Prints the log lines of the deployment's runs, and how each ended.
struct Follower {
    deployment: String,
    since: i64,
    /// Per run not yet ended: the last log line printed.
    after: BTreeMap<String, i64>,
    /// Runs seen ended once: their last lines may land just after the state,
    /// so how they ended is printed at the next look.
    ending: BTreeSet<String>,
    ended: BTreeSet<String>,
}

impl Follower {
    fn new(deployment: String, since: i64) -> Follower {
        Follower {
            deployment,
            since,
            after: BTreeMap::new(),
            ending: BTreeSet::new(),
            ended: BTreeSet::new(),
        }
    }

    /// One look at the runs; errors (the server stopping) are skipped, the
    /// next look tries again.
    ///
    /// Runs are listed by state, not as the newest: the runs a schedule made
    /// ahead are newer than the ones running now, and would crowd them out.
    fn look(&mut self, api: &Backend) {
        let mut runs = Vec::new();
        for state in WATCHED {
            let Ok(page) = api.get_as::<FlowRunList>(&format!(
                "/api/flow-runs?deployment={}&top_level=true&since={}&state={}&limit={LISTED}",
                self.deployment,
                self.since,
                state.as_str()
            )) else {
                return;
            };
            runs.extend(page.flow_runs);
        }
        // Oldest first, so the output reads in order.
        runs.sort_by_key(|r| r.created_at);
        let listed: BTreeSet<String> = runs.iter().map(|r| r.id.to_string()).collect();
        // Only what can still be listed is remembered, however long it serves.
        self.ended.retain(|id| listed.contains(id));
        for run in runs {
            let id = run.id.to_string();
            let state = run.state;
            if self.ended.contains(&id) {
                continue;
            }
            let after = self.after.entry(id.clone()).or_insert(0);
            if let Ok(page) = api.get_as::<crate::api::wire::LogList>(&format!(
                "/api/flow-runs/{id}/logs?after={after}&limit=1000"
            )) {
                for line in &page.logs {
                    *after = line.id;
                    print!("{} ", short(&id));
                    super::output::print_log_line(line);
                }
            }
            if state.is_terminal() && !self.ending.insert(id.clone()) {
                let outcome = match &run.result {
                    Some(result) => format!("→ {result}"),
                    None => run.message.clone().unwrap_or_default(),
                };
                println!(
                    "{} {} flow run {id} ('{}') {outcome}",
                    short(&id),
                    state.as_str(),
                    run.flow_name
                );
                self.after.remove(&id);
                self.ending.remove(&id);
                self.ended.insert(id);
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}
