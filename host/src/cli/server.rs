//! `host server start`: the API and the embedded executor in one process.

use super::output::say;
use super::paths;
use crate::api;
use crate::server::{Server, ServerConfig, ServerHandle};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Serve the API on ADDR and run flow runs on the embedded executor.
    #[command(after_help = "Examples:
  host server start
  curl --data-binary @flow.wasm -H 'content-type: application/wasm' http://127.0.0.1:4200/api/components
  curl -X POST http://127.0.0.1:4200/api/components/<DIGEST>/flows/etl/runs -d '{\"params\": {\"rows\": 10}}' -H 'content-type: application/json'")]
    Start(StartArgs),
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Where to listen (port 0 picks a free one and prints it) [default:
    /// server.addr, i.e. 127.0.0.1:4200].
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Serve the API only; runs wait for an executor (remote hosts: `host run --pool`).
    #[arg(long)]
    no_worker: bool,
    /// How long a claim on a run lasts unless its holder renews it; a run
    /// whose holder stops renewing is crashed this long after.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    lease_ttl: humantime::Duration,
    #[command(flatten)]
    allows: super::remote::AllowArgs,
    /// Where tasks with `result_storage = NAME` keep their results: one file
    /// per result in DIR, a reference in the database (repeatable).
    #[arg(long = "result-storage", value_name = "NAME=DIR")]
    result_storages: Vec<String>,
    /// A work pool the embedded executor serves (repeatable) [default: wasm].
    /// Runs of other pools go to remote hosts started with `host run --pool`.
    #[arg(long = "pool", value_name = "NAME")]
    pools: Vec<String>,
    /// Require `Authorization: Bearer <key>` with one of the keys in FILE: one
    /// per line, `#` comments, at least 16 characters. `read-only: KEY` may
    /// only read, `operator: KEY` may also upload, deploy and run, `admin:
    /// KEY` (or a bare KEY) may also write secrets and grant them to
    /// deployments. Only their sha256 hashes are kept in memory.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Serve an address other machines can reach without API keys (only on
    /// a network you trust: anyone there may run code and read results).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Also answer to this host name (besides localhost and the server's
    /// addresses), e.g. the name of a proxy in front; repeatable [also:
    /// server.allowed_hosts, comma-separated].
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Mark a run `Late` when it has waited this long past its scheduled time.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    late_after: humantime::Duration,
    /// Make runs for schedules this far ahead (they wait in `Scheduled`).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    schedule_ahead: humantime::Duration,
    /// At most this many runs made ahead per schedule.
    #[arg(long, value_name = "N", default_value_t = crate::scheduler::MAX_AHEAD)]
    schedule_max_runs: usize,
    /// Delete log lines older than this (e.g. 30d), checked hourly; runs and
    /// their states are kept (`host flow-run prune` removes those).
    #[arg(long, value_name = "DURATION")]
    log_retention: Option<humantime::Duration>,
    /// Keep runs in this PostgreSQL database instead of $WEIR_HOME/weir.db
    /// (postgres://user[:password]@host:port/db); several servers may share
    /// one. Default: the `server.database` setting (WEIR_DATABASE_URL).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Once listening, write `{"url": ..., "pid": ...}` to FILE (atomically),
    /// for scripts and supervisors that start the server on port 0.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<std::path::PathBuf>,
}

/// How long a stopping server waits for running flows.
pub(super) const GRACE: Duration = Duration::from_secs(10);

pub fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Start(args) => start(args),
    }
}

/// What a command that serves in the foreground (`host serve`) does besides
/// serving: once the server listens, and when a stop is asked for (while the
/// server still serves, before running flows are waited for).
pub(super) trait Foreground {
    /// An error stops the server and ends the command with it.
    fn started(&mut self, handle: &ServerHandle) -> anyhow::Result<()>;
    fn stopping(&mut self, handle: &ServerHandle);
}

/// `host server start` does nothing besides serving.
struct JustServe;

impl Foreground for JustServe {
    fn started(&mut self, _: &ServerHandle) -> anyhow::Result<()> {
        Ok(())
    }
    fn stopping(&mut self, _: &ServerHandle) {}
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    serve_in_foreground(args, &mut JustServe)
}

/// Serves until Ctrl-C or SIGTERM, then stops cleanly: `host server start`,
/// and `host serve` with its own [`Foreground`].
pub(super) fn serve_in_foreground(
    args: StartArgs,
    foreground: &mut dyn Foreground,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let paths = paths();
    let settings = super::backend::settings()?;
    let addr: SocketAddr = match args.addr {
        Some(addr) => addr,
        None => {
            let text = settings.get("server.addr").unwrap_or("127.0.0.1:4200");
            text.parse().map_err(|_| {
                super::Exit::bad_input(format!(
                    "server.addr '{text}' is not an address like 127.0.0.1:4200"
                ))
            })?
        }
    };
    let key_file = args
        .api_key_file
        .clone()
        .or_else(|| settings.get("server.api_key_file").map(Into::into));
    let api_keys = match &key_file {
        Some(file) => read_api_keys(file)?,
        None => Vec::new(),
    };
    api::guard::check_exposure(addr, !api_keys.is_empty(), args.insecure_no_auth)
        .map_err(|e| super::Exit::bad_input(e.to_string()))?;
    let mut config = ServerConfig::new(paths.clone());
    config.api_keys = api_keys.clone();
    config.allowed_hosts = args.allowed_hosts.clone();
    let allowed_hosts = settings.get("server.allowed_hosts");
    config.allowed_hosts.extend(
        allowed_hosts
            .into_iter()
            .flat_map(|names| names.split(',').map(|n| n.trim().to_string()))
            .filter(|n| !n.is_empty()),
    );
    config.late_after = args.late_after.into();
    config.schedule_ahead = args.schedule_ahead.into();
    if args.schedule_max_runs == 0 {
        return Err(super::Exit::bad_input(
            "--schedule-max-runs must be at least 1",
        ));
    }
    config.schedule_max_runs = args.schedule_max_runs;
    config.store = super::local::store_options(&paths)?;
    if let Some(url) = &args.database {
        config.store.database = Some(url.clone());
    }
    config.log_retention = args.log_retention.map(Into::into);
    if !args.pools.is_empty() {
        config.pools = args.pools.clone();
    }
    config.lease_ttl = args.lease_ttl.into();
    config.allows = args.allows.capabilities()?;
    if let Some(executor) = config.executor.as_mut() {
        for storage in &args.result_storages {
            let (name, dir) = storage
                .split_once('=')
                .filter(|(name, dir)| !name.is_empty() && std::path::Path::new(dir).is_dir())
                .ok_or_else(|| {
                    super::Exit::bad_input(format!(
                        "--result-storage {storage}: give NAME=DIR with an existing directory, e.g. big=/var/lib/weir/results"
                    ))
                })?;
            executor
                .result_storages
                .insert(name.to_string(), std::path::PathBuf::from(dir));
        }
    }
    if args.no_worker {
        config.executor = None;
    }
    let server = Server::open(config)?;
    for run in server.interrupted.iter().filter(|r| r.work_pool.is_none()) {
        super::local::note_interrupted(run);
    }
    // The main thread only waits: the server serves on runtimes of its own.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    let handle = waiter
        .block_on(server.start(addr))
        .with_context(|| format!("listening on {addr}"))?;
    for (run, outcome) in &handle.resumed {
        say!(
            "Resuming flow run {} ('{}'), interrupted when the server last stopped{}",
            run.id,
            run.flow_name,
            match outcome {
                Ok(_) => String::new(),
                Err(e) => format!(": could not ({e})"),
            }
        );
    }
    say!(
        "Weir server on http://{} (home {}, ready in {} ms{}{})",
        handle.addr(),
        paths.home().display(),
        started.elapsed().as_millis(),
        if args.no_worker { ", no executor" } else { "" },
        if api_keys.is_empty() {
            String::new()
        } else {
            format!(", {} API keys", api_keys.len())
        }
    );
    // The same for log collectors (`--log-format json`), at info.
    tracing::info!(url = %handle.url(), home = %paths.home().display(), "serving");
    if let Err(e) = foreground.started(&handle) {
        waiter.block_on(handle.shutdown(GRACE));
        return Err(e);
    }
    if let Some(file) = &args.ready_file {
        write_ready_file(file, &handle.url())?;
    }
    waiter.block_on(shutdown_signal());
    foreground.stopping(&handle);
    let running = handle.running();
    if running > 0 {
        say!(
            "Stopping: waiting up to {} s for {running} running flow runs ...",
            GRACE.as_secs()
        );
    }
    let left = waiter.block_on(handle.shutdown(GRACE));
    if left > 0 {
        say!("{left} flow runs did not finish; they resume when the server starts again");
    }
    say!("Stopped.");
    tracing::info!(unfinished_runs = left, "stopped");
    Ok(())
}

/// Writes the ready file through a temporary beside it, so a reader never
/// sees half of it.
fn write_ready_file(file: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let text = serde_json::json!({ "url": url, "pid": std::process::id() }).to_string();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, file))
        .with_context(|| format!("writing the ready file {}", file.display()))
}

/// The keys and their roles ([`api::guard::parse_key_file`]).
fn read_api_keys(file: &std::path::Path) -> anyhow::Result<Vec<api::guard::ApiKey>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading API keys from {}", file.display()))?;
    api::guard::parse_key_file(&text)
        .map_err(|e| super::Exit::bad_input(format!("{}: {e}", file.display())))
}

pub(super) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
