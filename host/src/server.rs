//! A whole server assembled once: store, engine, dispatcher, API, scheduler
//! and the embedded executor, for `host server start`, the CLI's local mode,
//! the tests and the benchmarks.
//!
//! A server owns two runtimes. Guests, the executor and the scheduler run on
//! one; the API runs on another with one thread, so a busy guest cannot
//! starve a request and a request never waits behind a guest.
//!
//! Runs that a stopped (or killed) server left unfinished are marked
//! `Crashed` when the next one opens the home (see `dispatch::leases`), and
//! those of its pools are resumed when it starts: their completed tasks are
//! replayed. While it serves, the scheduler's tick crashes runs whose lease
//! ran out.

use crate::api::guard::ApiKey;
use crate::api::{self, ApiConfig, ApiState, InProcess};
use crate::clock::SystemClock;
use crate::config::Paths;
use crate::control::Control;
use crate::dispatch::leases::{self, LEASE_TTL};
use crate::dispatch::{DispatchError, Dispatched, Dispatcher, DispatcherConfig, RunSource};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::model::capabilities::Capabilities;
use crate::model::deploy::DEFAULT_POOL;
use crate::secrets::{SecretBox, SecretError};
use crate::store::{ComponentFiles, FlowRunRow, ObjectKind, Store, StoreError, StoreOptions};
use crate::worker::{Executor, ExecutorSettings, this_process_marker};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error("starting the {what} runtime: {source}")]
    Runtime {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("creating work pool '{pool}': {message}")]
    Pool { pool: String, message: String },
}

/// What a server is made of; [`ServerConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub paths: Paths,
    /// API keys with their roles; none means no auth.
    pub api_keys: Vec<ApiKey>,
    /// Host names besides loopback and the bound address that requests may name.
    pub allowed_hosts: Vec<String>,
    /// The embedded executor's settings; `None` runs no executor (runs wait).
    pub executor: Option<ExecutorSettings>,
    /// The pools the embedded executor serves.
    pub pools: Vec<String>,
    pub engine: EngineConfig,
    /// A run still waiting this long past its time is marked `Late`.
    pub late_after: Duration,
    pub scheduler_tick: Duration,
    /// Schedules make runs this far ahead, at most `schedule_max_runs` each.
    pub schedule_ahead: Duration,
    pub schedule_max_runs: usize,
    /// A clock tests move by hand; the system clock when `None`.
    pub clock: Option<crate::clock::ManualClock>,
    /// Whether the executor takes runs waiting in the database, or only the
    /// ones this process creates (the CLI's local mode).
    pub take_waiting: bool,
    /// Log lines older than this are deleted now and then; `None` keeps them.
    pub log_retention: Option<Duration>,
    /// How the database is opened (durability).
    pub store: StoreOptions,
    /// How long a claim on a run lasts unless renewed.
    pub lease_ttl: Duration,
    /// What the embedded executor lets runs reach (directories, env).
    pub allows: Capabilities,
}

impl ServerConfig {
    pub fn new(paths: Paths) -> ServerConfig {
        ServerConfig {
            engine: EngineConfig {
                cache_dir: Some(paths.compile_cache()),
                ..EngineConfig::default()
            },
            paths,
            api_keys: Vec::new(),
            allowed_hosts: Vec::new(),
            executor: Some(ExecutorSettings::default()),
            pools: vec![DEFAULT_POOL.to_string()],
            late_after: crate::scheduler::LATE_AFTER,
            scheduler_tick: crate::scheduler::TICK,
            schedule_ahead: crate::scheduler::LOOK_AHEAD,
            schedule_max_runs: crate::scheduler::MAX_AHEAD,
            clock: None,
            take_waiting: true,
            log_retention: None,
            store: StoreOptions::default(),
            lease_ttl: LEASE_TTL,
            allows: Capabilities::default(),
        }
    }
}

/// An assembled server, not yet serving.
pub struct Server {
    config: ServerConfig,
    pub store: Arc<Store>,
    pub engine: Arc<Engine>,
    pub dispatcher: Arc<Dispatcher>,
    pub executor: Option<Arc<Executor>>,
    pub api: Arc<ApiState>,
    /// Top-level runs a dead process left unfinished, now `Crashed`.
    pub interrupted: Vec<FlowRunRow>,
    stop: CancellationToken,
    guests: Option<tokio::runtime::Runtime>,
    api_runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// The scheduler's settings from this server's config (a test drives a
    /// `scheduler::Scheduler` with them, tick by tick).
    pub fn scheduler_settings(&self) -> crate::scheduler::SchedulerSettings {
        crate::scheduler::SchedulerSettings {
            tick: self.config.scheduler_tick,
            late_after: self.config.late_after,
            look_ahead: self.config.schedule_ahead,
            max_ahead: self.config.schedule_max_runs,
        }
    }

    /// Opens the home (database, engine, secrets key), marks runs of dead
    /// processes `Crashed` and makes sure the served pools exist. Blocks.
    pub fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let guests = tokio::runtime::Builder::new_multi_thread()
            .thread_name("weir-runs")
            .enable_all()
            .build()
            .map_err(|source| ServerError::Runtime {
                what: "executor's",
                source,
            })?;
        let api_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-api")
            .enable_all()
            .build()
            .map_err(|source| ServerError::Runtime {
                what: "API's",
                source,
            })?;
        let paths = &config.paths;
        let store = Arc::new(Store::open_with_options(
            &paths.database(),
            config.store.clone(),
        )?);
        let engine = Arc::new(Engine::new(config.engine.clone())?);
        let clock: Arc<dyn crate::clock::Clock> = match &config.clock {
            Some(manual) => Arc::new(manual.clone()),
            None => Arc::new(SystemClock),
        };
        let control = Arc::new(Control::new(store.clone(), clock));
        let sealed = store.objects(ObjectKind::Secret)?.len();
        let secrets = Arc::new(SecretBox::open_key(&paths.secrets_key(), sealed)?);
        let executor = config.executor.clone().map(|mut settings| {
            settings.lease_ttl = config.lease_ttl;
            Executor::new(engine.clone(), control.clone(), settings)
        });
        let dispatcher = Dispatcher::new(DispatcherConfig {
            store: store.clone(),
            control: control.clone(),
            engine: engine.clone(),
            files: ComponentFiles::new(paths.components()),
            secrets,
            local_pools: if executor.is_some() {
                config.pools.clone()
            } else {
                Vec::new()
            },
            guests: guests.handle().clone(),
            host_marker: this_process_marker(),
            lease_ttl: config.lease_ttl,
            local_allows: config.allows.clone(),
            take_waiting: config.take_waiting,
        });
        if let Some(executor) = &executor {
            executor.start_deployments_with(dispatcher.clone());
        }
        let stop = CancellationToken::new();
        let api = ApiState::new(ApiConfig {
            dispatcher: dispatcher.clone(),
            api_keys: config.api_keys.clone(),
            shutdown: stop.clone(),
        });
        // A server (not the CLI's local mode) was what holders renew with:
        // while it was down they could not.
        if config.take_waiting {
            leases::grace_after_downtime(&control, config.lease_ttl);
        }
        let interrupted = leases::crash_lost_runs(&control);
        for pool in &config.pools {
            api_runtime
                .block_on(api::ensure_pool(&api, pool))
                .map_err(|e| ServerError::Pool {
                    pool: pool.clone(),
                    message: format!("{e:?}"),
                })?;
        }
        Ok(Server {
            config,
            store,
            engine,
            dispatcher,
            executor,
            api,
            interrupted,
            stop,
            guests: Some(guests),
            api_runtime: Some(api_runtime),
        })
    }

    fn guests(&self) -> &tokio::runtime::Runtime {
        self.guests.as_ref().expect("runtimes live until drop")
    }

    fn api_runtime(&self) -> &tokio::runtime::Runtime {
        self.api_runtime.as_ref().expect("runtimes live until drop")
    }

    /// Runs `future` to its end on the API's runtime (for callers outside
    /// any runtime: the CLI).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.api_runtime().block_on(future)
    }

    /// Starts the embedded executor's claim loop, if there is an executor.
    fn start_executor(&self) {
        if let Some(executor) = &self.executor {
            self.run_crash_hooks(executor);
            self.guests().spawn(leases::keep_leases(
                self.dispatcher.control().clone(),
                self.dispatcher.holder().to_string(),
                self.dispatcher.lease_ttl(),
                self.stop.clone(),
            ));
            let source: Arc<dyn RunSource> = self.dispatcher.clone();
            self.guests().spawn(crate::worker::serve(
                executor.clone(),
                source,
                self.config.pools.clone(),
                self.guests().handle().clone(),
                self.stop.clone(),
            ));
        }
    }

    /// Runs the `on_crashed` hooks of each run this process marks `Crashed`
    /// (those it found at opening, then what the reaper finds) on the
    /// executor, each in a task of its own so a slow hook holds up no other.
    fn run_crash_hooks(&self, executor: &Arc<Executor>) {
        let (tell, mut told) = tokio::sync::mpsc::unbounded_channel();
        for run in &self.interrupted {
            let _ = tell.send(run.clone());
        }
        self.dispatcher.listen_for_crashes(tell);
        let (dispatcher, executor) = (self.dispatcher.clone(), executor.clone());
        self.guests().spawn(async move {
            while let Some(run) = told.recv().await {
                let Some(digest) = crate::model::ComponentDigest::parse(&run.component) else {
                    continue;
                };
                let (dispatcher, executor) = (dispatcher.clone(), executor.clone());
                tokio::spawn(async move {
                    match dispatcher.component(&digest).await {
                        Ok(component) => executor.run_crash_hooks(component, &run).await,
                        Err(e) => tracing::warn!(
                            "the on_crashed hooks of flow run {} could not run: {e}",
                            run.id
                        ),
                    }
                });
            }
        });
    }

    /// The API without a socket, with the executor running: the CLI's local
    /// mode. No scheduler runs.
    pub fn in_process(&self) -> InProcess {
        self.start_executor();
        InProcess::new(self.api.clone())
    }

    /// Binds `addr` (port 0 picks one) and serves the API, the scheduler and
    /// the executor until [`ServerHandle::shutdown`]. Interrupted runs of the
    /// served pools are resumed; what became of each is in the handle.
    pub async fn start(self, addr: SocketAddr) -> Result<ServerHandle, ServerError> {
        let bind_error = |source| ServerError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let listener = {
            let _entered = self.api_runtime().enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
        };
        let serving = self.api_runtime().spawn(api::serve(
            self.api.clone(),
            listener,
            self.config.allowed_hosts.clone(),
            self.stop.clone().cancelled_owned(),
        ));
        let scheduler = self.guests().spawn(crate::scheduler::run(
            self.dispatcher.clone(),
            self.scheduler_settings(),
            self.stop.clone(),
        ));
        // Automations' webhooks, in a loop of their own: a slow receiver
        // never holds up the scheduler or a run.
        self.guests().spawn(crate::automations::run(
            self.dispatcher.clone(),
            format!("http://{local}"),
            self.stop.clone(),
        ));
        self.start_executor();
        self.guests().spawn(give_back_memory_when_idle(
            self.store.clone(),
            self.stop.clone(),
        ));
        if let Some(keep) = self.config.log_retention {
            self.guests().spawn(crate::worker::log_retention_job(
                self.dispatcher.control().clone(),
                keep,
                self.stop.clone(),
            ));
        }
        let mut resumed = Vec::new();
        if self.executor.is_some() {
            for run in self.interrupted.iter().filter(|r| r.work_pool.is_some()) {
                resumed.push((run.clone(), self.dispatcher.retry(run.id).await));
            }
        }
        Ok(ServerHandle {
            addr: local,
            started: Instant::now(),
            serving: Some(serving),
            scheduler: Some(scheduler),
            resumed,
            server: self,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        // Dropping a runtime may happen inside another one (tests): never block here.
        for runtime in [self.guests.take(), self.api_runtime.take()]
            .into_iter()
            .flatten()
        {
            runtime.shutdown_background();
        }
    }
}

/// A serving server.
pub struct ServerHandle {
    addr: SocketAddr,
    pub started: Instant,
    serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    /// Interrupted runs resumed at start, and how.
    pub resumed: Vec<(FlowRunRow, Result<Dispatched, DispatchError>)>,
    pub server: Server,
}

impl ServerHandle {
    /// Where it listens (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking requests and claims, closes event streams, waits up to
    /// `grace` for running flows, then closes the store. Flows still running
    /// stay `Running` under this process's marker: the next start marks them
    /// `Crashed` and resumes them. Returns how many were left.
    pub async fn shutdown(mut self, grace: Duration) -> usize {
        self.server.stop.cancel();
        if let Some(serving) = self.serving.take() {
            let _ = serving.await;
        }
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.await;
        }
        let store = self.server.store.clone();
        let left = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + grace;
            loop {
                let left = running_here(&store);
                if left == 0 || Instant::now() >= deadline {
                    return left;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap_or(0);
        self.server.store.close();
        left
    }

    /// Flow runs this process is running now.
    pub fn running(&self) -> usize {
        running_here(&self.server.store)
    }
}

/// Gives freed memory back to the system once a spell without run changes
/// has lasted [`TRIM_AFTER`]: the heap glibc keeps once freed (after
/// compiling one uploaded component and running one task an idle server
/// held 44 MB of anonymous memory, most of it free space in its malloc
/// arenas), and the binary's code and constants that compiling touched
/// (~20 MB, clean copies the page cache keeps: the next run maps them back
/// with a few hundred minor faults). A busy server is never trimmed; an
/// idle one is trimmed once, not again and again.
async fn give_back_memory_when_idle(store: Arc<Store>, stop: CancellationToken) {
    let mut changes = store.changes();
    // Whether a run changed since the last trim; each change restarts the wait.
    let mut changed = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.recv() => match change {
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                _ => changed = true,
            },
            _ = tokio::time::sleep(TRIM_AFTER), if changed => {
                changed = false;
                let _ = tokio::task::spawn_blocking(
                    crate::worker::remote::memory::give_back_freed_memory,
                )
                .await;
            }
        }
    }
}

/// How long a server goes without run changes before it gives memory back.
const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn running_here(store: &Store) -> usize {
    let mine = this_process_marker();
    store
        .unfinished_flow_runs()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.parent_flow_run.is_none())
        .filter(|r| r.lease_holder.as_deref() == Some(mine.as_str()))
        .count()
}
