//! `host server start`: the API and the embedded executor in one process.

use super::flow::Local;
use super::paths;
use crate::api::{self, ApiConfig, ApiState};
use crate::model::deploy::DEFAULT_POOL;
use crate::secrets::SecretBox;
use crate::store::ComponentFiles;
use crate::worker::ExecutorSettings;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// Serve the API only; runs wait for an executor.
    #[arg(long)]
    no_worker: bool,
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
}

/// How long a stopping server waits for running flows.
const GRACE: Duration = Duration::from_secs(10);

pub fn run(command: ServerCommand) -> anyhow::Result<()> {
    match command {
        ServerCommand::Start(args) => start(args),
    }
}

fn start(args: StartArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let paths = paths();
    // Guests run on a runtime of their own, so a busy guest cannot starve the API.
    let runs = tokio::runtime::Builder::new_multi_thread()
        .thread_name("weir-runs")
        .enable_all()
        .build()
        .context("starting the executor's runtime")?;
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-api")
        .enable_all()
        .build()
        .context("starting the API's runtime")?;

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
    let local = Local::open(&paths)?;
    let interrupted = local.report_dead_runs(&runs, false);
    let executor = (!args.no_worker).then(|| local.executor(ExecutorSettings::default()));
    let executor_present = executor.is_some();
    let sealed = local.store.objects(crate::store::ObjectKind::Secret)?.len();
    let secrets = SecretBox::open_key(&paths.secrets_key(), sealed)?;
    let state = ApiState::new(ApiConfig {
        store: local.store.clone(),
        files: ComponentFiles::new(paths.components()),
        engine: local.engine.clone(),
        control: local.control(),
        secrets: Arc::new(secrets),
        executor,
        pools: vec![DEFAULT_POOL.to_string()],
        runs: runs.handle().clone(),
        api_keys: api_keys.clone(),
    });

    let stop = tokio_util::sync::CancellationToken::new();
    api_runtime.block_on(async {
        api::ensure_pool(&state, DEFAULT_POOL)
            .await
            .map_err(|e| anyhow::anyhow!("creating the default work pool: {e:?}"))?;
        // Runs this server was running when it last stopped resume here:
        // their completed tasks are replayed, the rest run.
        if executor_present {
            let api = api::InProcess::new(state.clone());
            for run in interrupted.iter().filter(|r| r.work_pool.is_some()) {
                let (status, body) = api
                    .call(
                        "POST",
                        &format!("/api/flow-runs/{}/retry", run.id),
                        None,
                        "application/json",
                    )
                    .await;
                eprintln!(
                    "Resuming flow run {} ('{}'), interrupted when the server last stopped{}",
                    run.id,
                    run.flow_name,
                    if status == 202 {
                        String::new()
                    } else {
                        format!(": could not ({})", String::from_utf8_lossy(&body))
                    }
                );
            }
        }
        for run in interrupted.iter().filter(|r| r.work_pool.is_none()) {
            super::flow::note_interrupted(run);
        }
        let scheduler = tokio::spawn(crate::scheduler::run(
            state.clone(),
            crate::scheduler::TICK,
            args.late_after.into(),
            stop.clone(),
        ));
        let mut allowed_hosts = args.allowed_hosts.clone();
        allowed_hosts.extend(
            settings
                .get("server.allowed_hosts")
                .into_iter()
                .flat_map(|names| names.split(',').map(str::to_string)),
        );
        let (addr, server) = api::bind(state, addr, &allowed_hosts, shutdown_signal())
            .await
            .with_context(|| format!("listening on {addr}"))?;
        eprintln!(
            "Weir server on http://{addr} (home {}, ready in {} ms{}{})",
            paths.home().display(),
            started.elapsed().as_millis(),
            if args.no_worker { ", no executor" } else { "" },
            if api_keys.is_empty() {
                String::new()
            } else {
                format!(", {} API keys", api_keys.len())
            }
        );
        let served = server.await.context("serving the API");
        stop.cancel();
        let _ = scheduler.await;
        served
    })?;

    // Let running flows finish; whatever does not finish in time stays Running
    // under this process's marker, and the next start marks it Crashed and
    // resumes it (completed tasks are replayed).
    let mine = crate::worker::this_process_marker();
    let running = || {
        local
            .store
            .unfinished_flow_runs()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.host.as_deref() == Some(mine.as_str()))
            .count()
    };
    let deadline = Instant::now() + GRACE;
    let mut said = false;
    while running() > 0 && Instant::now() < deadline {
        if !said {
            eprintln!(
                "Stopping: waiting up to {} s for {} running flow runs ...",
                GRACE.as_secs(),
                running()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = running();
    if left > 0 {
        eprintln!("{left} flow runs did not finish; they resume when the server starts again");
    }
    runs.shutdown_timeout(Duration::from_secs(1));
    local.store.close();
    eprintln!("Stopped.");
    Ok(())
}

/// The keys and their roles ([`api::guard::parse_key_file`]).
fn read_api_keys(file: &std::path::Path) -> anyhow::Result<Vec<api::guard::ApiKey>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading API keys from {}", file.display()))?;
    api::guard::parse_key_file(&text)
        .map_err(|e| super::Exit::bad_input(format!("{}: {e}", file.display())))
}

async fn shutdown_signal() {
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
