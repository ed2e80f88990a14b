//! `host run --pool P`: this machine becomes a remote host of a server's pool.

use super::output::say;
use super::{Exit, paths};
use crate::dispatch::remote::MAX_CLAIM_BATCH;
use crate::engine::EngineConfig;
use crate::model::capabilities::{Capabilities, DirGrant, HttpHost};
use crate::worker::ExecutorSettings;
use crate::worker::remote::{self, RemoteConfig};
use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  host run --pool wasm --api http://10.0.0.5:4200
  WEIR_API_KEY=... host run --pool gpu --queue urgent --slots 8 --name gpu-1

Runs are claimed as soon as the server has one (a long poll, no fixed
interval), held under a lease this host renews, and run in this machine's
sandboxes; their records go back to the server. SIGTERM or Ctrl-C stops
claiming and lets running flows finish (up to --drain-timeout).")]
pub struct RunArgs {
    /// The work pool to take runs from (repeatable).
    #[arg(long = "pool", value_name = "NAME", required = true)]
    pools: Vec<String>,
    /// Only runs of this queue of the pools (repeatable) [default: all queues].
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
    /// The server, http:// or https:// [default: api.url, i.e. WEIR_API_URL
    /// or the profile's].
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Trust the CA certificate(s) in this PEM file for an https:// server
    /// [default: api.ca_file, i.e. WEIR_CA_FILE; else Mozilla's roots].
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Flow runs this host runs at once.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Runs asked for in one claim, at most (1 to 64): a host asks for all
    /// its free slots at once; 1 asks for one run per claim, as hosts did
    /// before batched claims (for comparisons).
    #[arg(long, value_name = "N", default_value_t = MAX_CLAIM_BATCH,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CLAIM_BATCH as i64))]
    claim_batch: u32,
    /// How the server lists this host [default: the machine's host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// On SIGTERM, how long running flows may take to finish before the
    /// host exits and leaves them to their leases (the server then crashes
    /// and resumes them elsewhere).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    drain_timeout: humantime::Duration,
    #[command(flatten)]
    allows: AllowArgs,
    /// Test-only: how long the host holds no run before it drops its
    /// compiled components and gives memory back (tests shorten it so
    /// that claims race the drop).
    #[arg(long = "test-only-idle-after", value_name = "DURATION", hide = true)]
    test_only_idle_after: Option<humantime::Duration>,
}

/// What runs may reach beyond their sandbox on this machine.
#[derive(Args, Debug, Default)]
pub struct AllowArgs {
    /// Let runs whose deployment needs it open this directory (and below),
    /// read-only unless `:rw`; repeatable. E.g. --allow-dir /data/in:ro.
    #[arg(long = "allow-dir", value_name = "PATH[:ro|rw]")]
    dirs: Vec<String>,
    /// Let runs whose deployment needs it read this environment variable
    /// (this machine's value); repeatable.
    #[arg(long = "allow-env", value_name = "NAME")]
    env: Vec<String>,
    /// Let runs whose deployment needs it send HTTP requests (wasi:http) to
    /// this host: NAME (the scheme's own port, 80 or 443) or NAME:PORT, as
    /// written, never resolved; repeatable. E.g. --allow-http api.example.com.
    #[arg(long = "allow-http", value_name = "HOST[:PORT]")]
    http: Vec<String>,
}

impl AllowArgs {
    pub fn capabilities(&self) -> anyhow::Result<Capabilities> {
        let caps = Capabilities {
            dirs: self
                .dirs
                .iter()
                .map(|d| DirGrant::parse(d))
                .collect::<Result<_, _>>()
                .map_err(|e| Exit::bad_input(format!("--allow-dir {e}")))?,
            env: self.env.clone(),
            http: self
                .http
                .iter()
                .map(|h| HttpHost::parse(h).map(|h| h.to_string()))
                .collect::<Result<_, _>>()
                .map_err(|e| Exit::bad_input(format!("--allow-http {e}")))?,
        };
        caps.check()
            .map_err(|e| Exit::bad_input(format!("--allow-env {e}")))?;
        Ok(caps)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = super::backend::settings()?;
    let api = args
        .api
        .clone()
        .or_else(|| settings.get("api.url").map(str::to_string))
        .ok_or_else(|| {
            Exit::bad_input(
                "no server to take runs from: pass --api http://HOST:PORT (or set api.url / WEIR_API_URL)",
            )
        })?;
    if args.slots == 0 {
        return Err(Exit::bad_input("--slots must be at least 1"));
    }
    let paths = paths();
    let name = args
        .name
        .clone()
        .unwrap_or_else(crate::dispatch::leases::local_host_name);
    let config = RemoteConfig {
        engine: EngineConfig {
            cache_dir: Some(paths.compile_cache()),
            ..EngineConfig::default()
        },
        paths,
        api: api.clone(),
        key: settings.get("api.key").map(str::to_string),
        pools: args.pools.clone(),
        queues: args.queues.clone(),
        slots: args.slots,
        claim_batch: args.claim_batch,
        name: name.clone(),
        drain_timeout: args.drain_timeout.into(),
        idle_after: args
            .test_only_idle_after
            .map_or(crate::worker::remote::IDLE_AFTER, Into::into),
        executor: ExecutorSettings::default(),
        allows: args.allows.capabilities()?,
        ca_file: args
            .ca_file
            .clone()
            .or_else(|| settings.get("api.ca_file").map(Into::into)),
    };
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            let waiter = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a signal runtime starts");
            waiter.block_on(super::server::shutdown_signal());
            say!("Stopping: no new runs; waiting for running ones to finish");
            on_signal.cancel();
        })
        .context("starting the signal handler")?;
    say!(
        "Host '{name}' taking runs of pool {} from {api} ({} slots)",
        args.pools.join(", "),
        args.slots
    );
    remote::run(config, stop).map_err(|e| Exit::bad_input(e.to_string()))?;
    say!("Host '{name}' stopped");
    Ok(())
}
