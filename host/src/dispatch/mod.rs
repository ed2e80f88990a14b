//! The dispatcher: the one service that stores components, creates server
//! runs, admits them (pool, queue and deployment pause and concurrency
//! limits), binds what they may read, and hands admitted runs to executors.
//!
//! The API and the scheduler create and query; they never start a run.
//! Executors take work through [`RunSource::claim`]: the embedded executor
//! claims from this dispatcher in-process; remote hosts will claim the same
//! way over HTTP. A run is handed to exactly one claimer because it moves to
//! `Pending` by compare-and-set before it is handed over.
//!
//! Admission is one critical section per process: counting the runs a limit
//! covers and moving a run to `Pending` happen under one lock, and the move
//! is committed before the lock is released, so two concurrent triggers can
//! never both take a pool's last slot.
//!
//! Everything here blocks on SQLite, so the async entry points run it on the
//! blocking pool: a slow read never stalls the API's own thread.

pub mod leases;
pub mod limits;
pub mod pause;
pub mod remote;

use crate::control::{Control, ControlError, Durability};
use crate::engine::{Component, Engine, EngineError};
use crate::model::capabilities::Capabilities;
use crate::model::deploy::{DEFAULT_POOL, DEFAULT_QUEUE};
use crate::model::{
    ComponentDigest, Deployment, FlowRunId, GrantedSecrets, Policy, RunState, TimestampMicros,
    WorkPool, WorkQueue,
};
use crate::protocol::{ParamError, validate_params};
use crate::secrets::SecretBox;
use crate::store::{
    ComponentFileError, ComponentFiles, Exclusive, FlowRunRow, Lease, NewFlowRun, ObjectKind, Role,
    StateChange, Store, StoreError, Wasm, Write,
};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the dispatcher refused or failed. The API maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("no component with digest {0}; upload it first (host flow upload FILE.wasm)")]
    UnknownComponent(ComponentDigest),
    #[error("component {component} has no flow '{flow}'; it has: {available}")]
    UnknownFlow {
        component: String,
        flow: String,
        available: String,
    },
    #[error("no deployment named '{0}'; see `host deployment ls`")]
    UnknownDeployment(String),
    #[error("no flow run {0}")]
    UnknownRun(FlowRunId),
    /// A claim asking for a number of runs out of range; it takes nothing.
    #[error("max_runs is {asked}; ask for 1 to {max} runs", max = remote::MAX_CLAIM_BATCH)]
    BadClaimSize { asked: u32 },
    /// Params that are not a JSON object.
    #[error("params must be a JSON object")]
    ParamsNotObject,
    /// Params that do not match the flow's schema.
    #[error("{0}")]
    InvalidParams(String),
    #[error("deployment '{0}' is paused; resume it with `host deployment resume {0}`")]
    DeploymentPaused(String),
    #[error(
        "deployment '{deployment}' is granted secret '{secret}', which is not set; set it with `host secret set {secret}`"
    )]
    SecretNotSet { deployment: String, secret: String },
    #[error("flow run {id} is {state}; {why}")]
    WrongState {
        id: FlowRunId,
        state: RunState,
        why: &'static str,
    },
    /// Input for a paused run that its pause's schema refuses; the run stays Paused.
    #[error(
        "the input does not match what flow run {id} asks for: {problems}; it is still Paused, resume it again with input that matches"
    )]
    InvalidResumeInput { id: FlowRunId, problems: String },
    #[error("{0}")]
    InvalidComponent(EngineError),
    #[error("the component could not be loaded: {0}")]
    Engine(EngineError),
    #[error("storing the component: {0}")]
    Files(ComponentFileError),
    /// A stored component that is damaged or unreadable.
    #[error(transparent)]
    ComponentFile(ComponentFileError),
    #[error("a stored {what} is unreadable: {message}")]
    Corrupt { what: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the dispatcher's worker thread stopped: {0}")]
    Join(String),
    /// A remote host could not ask its server for runs (unreachable, or an
    /// error reply); it asks again after a pause.
    #[error("asking the server for runs: {0}")]
    ClaimFailed(String),
    /// A remote host's server answers 404 to both claim endpoints: `--api`
    /// names something that is not a Weir server's API (a proxy that does
    /// not route `/api/hosts/*`, another service).
    #[error(
        "the server at {api} has no host claims (POST /api/hosts/claims and /api/hosts/claim answered 404); point --api at a Weir server (`host server start`), not a proxy that hides /api/hosts/"
    )]
    NoClaimEndpoint { api: String },
    #[error(
        "no host of pool '{pool}' allows what deployment '{deployment}' needs: {missing}; start one with `host run --pool {pool}` and --allow-dir / --allow-env / --allow-http"
    )]
    NoHostAllows {
        pool: String,
        deployment: String,
        missing: String,
    },
}

/// A run handed to an executor: everything it needs to start it.
pub struct Claim {
    pub run: FlowRunId,
    pub component: Component,
    pub flow: String,
    pub params: String,
    /// The attempt the run has had so far (the executor makes the next one).
    pub attempt: u32,
    /// The state it was claimed in (`Pending`).
    pub state: RunState,
    /// The claim's lease epoch: every write about the run names it.
    pub epoch: u64,
    pub deployment: Option<String>,
    /// The deployment's task policy, laid over every task of the run.
    pub task_override: Policy,
    /// The secrets bound to the run when it was created, in clear.
    pub secrets: GrantedSecrets,
    /// What its instances may reach beyond the sandbox (its deployment's needs).
    pub capabilities: Capabilities,
}

/// How many waiting runs one claim looks through for one that may start.
const MAX_WAITING_SCAN: usize = 2_000;

/// A run admitted in this process, waiting for its executor.
enum Ready {
    /// Made at creation, with everything the executor needs.
    Claim(Box<Claim>),
    /// Moved to `Pending` (a retry); its claim is read when it is taken.
    Admitted(FlowRunId),
}

/// A boxed future, as the object-safe [`RunSource`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an executor gets its runs: this dispatcher in-process, or a server
/// over HTTP. The executor cannot tell which one it has.
pub trait RunSource: Send + Sync + 'static {
    /// The next run admitted for one of `pools`, now owned by the caller.
    fn claim<'a>(
        &'a self,
        pools: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Claim>, DispatchError>>;

    /// Some runs at once, as many as the caller has room for (a remote
    /// host asks for its free slots in one round trip); empty when none is
    /// ready. The default takes one.
    fn claim_some<'a>(
        &'a self,
        pools: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Claim>, DispatchError>> {
        Box::pin(async move { Ok(self.claim(pools).await?.into_iter().collect()) })
    }

    /// Resolves when new work may be ready.
    fn work_ready(&self) -> BoxFuture<'_, ()>;

    /// Says run `run`, handed over earlier, has ended, so waiting runs may fit now.
    fn run_ended(&self, run: FlowRunId);

    /// Whether [`RunSource::run_started`] is wanted: the claim loop then
    /// watches its runs' events for it (a remote host, to report a start at
    /// once rather than with its next batch).
    fn wants_starts(&self) -> bool {
        false
    }

    /// Says run `run` (or a subflow of it) is `Running` now, committed.
    fn run_started(&self, _run: FlowRunId) {}
}

/// A run to create.
pub struct NewRun {
    pub component: ComponentDigest,
    pub flow: String,
    /// The run's own params; a deployment's defaults are laid under them.
    pub params: Option<Value>,
    pub deployment: Option<Deployment>,
    pub tags: Vec<String>,
    /// Made by a schedule for this time: it waits until then.
    pub scheduled_at: Option<TimestampMicros>,
    /// The schedule (`Schedule::key`) that made it: at most one run per
    /// deployment, schedule and time.
    pub schedule_key: Option<String>,
}

/// What `create_run` and `retry` report.
#[derive(Clone, Copy, Debug)]
pub struct Dispatched {
    pub id: FlowRunId,
    pub state: RunState,
}

/// How to build a [`Dispatcher`].
pub struct DispatcherConfig {
    pub store: Arc<Store>,
    pub control: Arc<Control>,
    pub engine: Arc<Engine>,
    pub files: ComponentFiles,
    pub secrets: Arc<SecretBox>,
    /// Pools whose runs an executor of this process takes; empty without one.
    pub local_pools: Vec<String>,
    /// The runtime guest code runs on (component loads run `describe()`).
    pub guests: tokio::runtime::Handle,
    /// The holder of the leases this process's executor takes ("host pid=N
    /// boot=B"), also recorded as the host of the runs it creates.
    pub host_marker: String,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// What this process's executor lets runs reach (directories, env).
    pub local_allows: Capabilities,
    /// Whether this process's executor also takes runs that wait in the
    /// database (a server), or only those it creates itself (the CLI's
    /// local mode, which must not pick up a stopped server's work).
    pub take_waiting: bool,
}

pub struct Dispatcher {
    store: Arc<Store>,
    control: Arc<Control>,
    engine: Arc<Engine>,
    files: ComponentFiles,
    secrets: Arc<SecretBox>,
    local_pools: Vec<String>,
    guests: tokio::runtime::Handle,
    host_marker: String,
    lease_ttl: Duration,
    local_allows: Capabilities,
    take_waiting: bool,
    /// Loaded components by digest; loading compiles or maps the artifact once.
    loaded: Mutex<HashMap<ComponentDigest, Component>>,
    /// Held from counting a limit to committing the move to `Pending`.
    admission: Mutex<()>,
    /// Runs admitted here, waiting for an executor of this process.
    ready: Mutex<VecDeque<Ready>>,
    wake: tokio::sync::Notify,
    me: std::sync::Weak<Dispatcher>,
    /// Told of each run this process marked `Crashed` (its `on_crashed`
    /// hooks run there); set by a server with an executor.
    crashed: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<FlowRunRow>>,
}

impl Dispatcher {
    pub fn new(config: DispatcherConfig) -> Arc<Dispatcher> {
        let dispatcher = Arc::new_cyclic(|me| Dispatcher {
            store: config.store,
            control: config.control,
            engine: config.engine,
            files: config.files,
            secrets: config.secrets,
            local_pools: config.local_pools,
            guests: config.guests,
            host_marker: config.host_marker,
            lease_ttl: config.lease_ttl,
            local_allows: config.local_allows,
            take_waiting: config.take_waiting,
            loaded: Mutex::new(HashMap::new()),
            crashed: std::sync::OnceLock::new(),
            admission: Mutex::new(()),
            ready: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            me: me.clone(),
        });
        if dispatcher.store.shared() {
            // Runs another server made or put back wake this one's claimers
            // (remote hosts long-polling here) at once, not at the next tick.
            let mut changes = dispatcher.store.changes();
            let me = Arc::downgrade(&dispatcher);
            dispatcher.guests.spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match changes.recv().await {
                        Ok(change) if !change.waiting => continue,
                        Err(RecvError::Closed) => return,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                    }
                    match me.upgrade() {
                        Some(dispatcher) => dispatcher.wake_claimers(),
                        None => return,
                    }
                }
            });
        }
        dispatcher
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    /// A stored component's bytes, checked against its digest: from the
    /// file under `$WEIR_HOME/components`, else from the database (a
    /// component another server sharing it took), which is then kept as a
    /// file. Blocks.
    pub fn component_bytes(&self, digest: &ComponentDigest) -> Result<Vec<u8>, DispatchError> {
        match self.files.get(digest) {
            Err(ComponentFileError::Missing { .. }) => {}
            found => return found.map_err(DispatchError::ComponentFile),
        }
        let Some(bytes) = self.store.component_wasm(digest)? else {
            return Err(DispatchError::UnknownComponent(digest.clone()));
        };
        // `put` names the file by the bytes' own hash: bytes that do not
        // match the digest asked for are refused, not served under it.
        if self.files.put(&bytes).map_err(DispatchError::Files)? != *digest {
            return Err(DispatchError::ComponentFile(ComponentFileError::Damaged {
                digest: digest.clone(),
            }));
        }
        Ok(bytes)
    }

    /// The lease holder of this process's executor.
    pub fn holder(&self) -> &str {
        &self.host_marker
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    fn lease_until(&self, now: TimestampMicros) -> TimestampMicros {
        now + self.lease_ttl.as_micros() as i64
    }

    /// Whether an executor in this process takes runs of `pool`.
    pub fn serves(&self, pool: &str) -> bool {
        self.local_pools.iter().any(|p| p == pool)
    }

    /// Runs `work` on the blocking pool (SQLite reads and commits block).
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Dispatcher) -> Result<T, DispatchError> + Send + 'static,
    ) -> Result<T, DispatchError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|e| DispatchError::Join(e.to_string()))?
    }

    // ---- components ----

    /// Validates `bytes` against the world, stores them by sha256 and records
    /// the component. Returns it and whether it was stored before.
    pub async fn store_component(
        self: &Arc<Self>,
        bytes: bytes::Bytes,
    ) -> Result<(Component, bool), DispatchError> {
        let component = self.load_bytes(bytes.clone()).await.map_err(|e| match e {
            EngineError::Setup(_) | EngineError::Cache { .. } => DispatchError::Engine(e),
            other => DispatchError::InvalidComponent(other),
        })?;
        let manifest =
            serde_json::to_string(&*component.manifest).map_err(|e| DispatchError::Corrupt {
                what: "manifest",
                message: e.to_string(),
            })?;
        let digest = component.digest.clone();
        let size_bytes = component.size_bytes;
        let existed = self
            .blocking(move |d| {
                let existed = d.store.component(&digest)?.is_some();
                d.files.put(&bytes).map_err(DispatchError::Files)?;
                d.store
                    .submit(vec![Write::Component {
                        digest,
                        size_bytes,
                        manifest,
                        at: d.control.now(),
                        wasm: Some(Wasm(bytes)),
                    }])
                    .wait_blocking()?;
                Ok(existed)
            })
            .await?;
        self.remember(component.clone());
        Ok((component, existed))
    }

    /// A stored component, loaded once and kept.
    pub async fn component(
        self: &Arc<Self>,
        digest: &ComponentDigest,
    ) -> Result<Component, DispatchError> {
        if let Some(component) = self.loaded().get(digest) {
            return Ok(component.clone());
        }
        let wanted = digest.clone();
        let bytes = self.blocking(move |d| d.component_bytes(&wanted)).await?;
        let component = self
            .load_bytes(bytes.into())
            .await
            .map_err(DispatchError::Engine)?;
        self.remember(component.clone());
        Ok(component)
    }

    /// Compiles (or maps the cached artifact) and runs `describe()` on the
    /// guests' runtime, so neither stalls the caller's.
    async fn load_bytes(&self, bytes: bytes::Bytes) -> Result<Component, EngineError> {
        let engine = self.engine.clone();
        match self
            .guests
            .spawn(async move { engine.load(&bytes).await })
            .await
        {
            Ok(loaded) => loaded,
            Err(e) => Err(EngineError::Setup(format!("loading stopped: {e}"))),
        }
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<ComponentDigest, Component>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, component: Component) {
        self.loaded().insert(component.digest.clone(), component);
    }

    // ---- creating runs ----

    /// Creates a run: `Pending` and handed to an executor here when it may
    /// start now, `Scheduled` otherwise (paused, at a limit, no executor of
    /// its pool here, or made by a schedule for later).
    pub async fn create_run(self: &Arc<Self>, new: NewRun) -> Result<Dispatched, DispatchError> {
        let component = self.component(&new.component).await?;
        let dispatched = self
            .blocking(move |d| d.create_loaded(new, component))
            .await?;
        self.announce(dispatched);
        Ok(dispatched)
    }

    /// Wakes this process's executor for a run it may take now, and remote
    /// hosts waiting for work (a run that waits here may be theirs).
    fn announce(&self, _dispatched: Dispatched) {
        self.wake.notify_waiters();
    }

    /// [`Dispatcher::create_run`] once its component is loaded: checks the
    /// flow and the params, then creates the run. Blocks.
    fn create_loaded(
        &self,
        mut new: NewRun,
        component: Component,
    ) -> Result<Dispatched, DispatchError> {
        let Some(flow_def) = component.manifest.flow(&new.flow) else {
            return Err(DispatchError::UnknownFlow {
                component: new.component.short().to_string(),
                flow: new.flow,
                available: component.manifest.flow_names().join(", "),
            });
        };
        let mut params: Map<String, Value> = new
            .deployment
            .as_ref()
            .map(|d| d.params.clone())
            .unwrap_or_default();
        match new.params.take() {
            Some(Value::Object(own)) => params.extend(own),
            Some(Value::Null) | None => {}
            Some(_) => return Err(DispatchError::ParamsNotObject),
        }
        let params = Value::Object(params);
        check_params(flow_def.params_schema.as_ref(), &params)?;
        self.create_blocking(new, params, component)
    }

    fn create_blocking(
        &self,
        new: NewRun,
        params: Value,
        component: Component,
    ) -> Result<Dispatched, DispatchError> {
        let deployment = new.deployment.as_ref();
        let pool = deployment.map_or(DEFAULT_POOL, |d| d.work_pool.as_str());
        let queue = deployment.map_or(DEFAULT_QUEUE, |d| d.work_queue.as_str());
        // The run may read exactly what its deployment grants now, even if the
        // deployment is changed before it starts.
        let grants = match deployment {
            Some(d) => {
                for secret in &d.secrets {
                    if self.store.object(ObjectKind::Secret, secret)?.is_none() {
                        return Err(DispatchError::SecretNotSet {
                            deployment: d.name.clone(),
                            secret: secret.clone(),
                        });
                    }
                }
                d.secrets.clone()
            }
            None => Vec::new(),
        };
        let mut tags = new.tags;
        if let Some(d) = deployment {
            tags.extend(d.tags.iter().cloned());
        }
        tags.sort();
        tags.dedup();

        let _admission = self.admit_alone()?;
        let now = self.control.now();
        let needs = deployment
            .map(|d| d.capabilities.clone())
            .unwrap_or_default();
        if let (Some(d), Some(missing)) = (deployment, self.nobody_allows(pool, &needs)?) {
            return Err(DispatchError::NoHostAllows {
                pool: pool.to_string(),
                deployment: d.name.clone(),
                missing,
            });
        }
        let start_now = new.scheduled_at.is_none()
            && self.serves(pool)
            && self.local_allows.missing(&needs).is_none()
            && self.admits(pool, queue, deployment.map(|d| d.name.as_str()))?;
        let state = if start_now {
            RunState::Pending
        } else {
            RunState::Scheduled
        };
        let id = FlowRunId::new();
        let params = params.to_string();
        // A run that starts now is handed over as it is: the executor reads nothing again.
        let claim = match start_now {
            true => Some(Claim {
                run: id,
                component,
                flow: new.flow.clone(),
                params: params.clone(),
                attempt: 0,
                state: RunState::Pending,
                epoch: 1,
                deployment: deployment.map(|d| d.name.clone()),
                task_override: deployment
                    .map(|d| d.task_policy.clone())
                    .unwrap_or_default(),
                secrets: self.open_secrets(&grants)?,
                capabilities: needs.clone(),
            }),
            false => None,
        };
        let run = NewFlowRun {
            id,
            parent_flow_run: None,
            component: new.component,
            flow_name: new.flow,
            params,
            state,
            attempt: 0,
            host: self.host_marker.clone(),
            at: now,
            deployment: deployment.map(|d| d.name.clone()),
            tags,
            scheduled_at: new.scheduled_at.or((!start_now).then_some(now)),
            work_pool: Some(pool.to_string()),
            work_queue: Some(queue.to_string()),
            secret_grants: grants,
            lease: start_now.then(|| Lease {
                holder: self.host_marker.clone(),
                expires_at: self.lease_until(now),
            }),
            deployment_version: deployment.and_then(|d| d.version),
        };
        let ticket = match new.schedule_key {
            Some(key) => self
                .control
                .create_scheduled_flow_run(run, key, Durability::Committed)?,
            None => self.control.create_flow_run(run, Durability::Committed)?,
        };
        if let Some(ticket) = ticket {
            ticket.wait_blocking()?;
        }
        if let Some(claim) = claim {
            self.ready().push_back(Ready::Claim(Box::new(claim)));
        }
        Ok(Dispatched { id, state })
    }

    /// Runs a deployment now with `params` laid over its defaults.
    pub async fn run_deployment(
        self: &Arc<Self>,
        name: &str,
        params: Option<Value>,
        tags: Vec<String>,
    ) -> Result<Dispatched, DispatchError> {
        let name = name.to_string();
        // One trip to the blocking pool when the component is loaded already
        // (the usual case): this is the trigger's latency.
        let outcome = self
            .blocking(move |d| {
                let deployment = d
                    .deployment_named(&name)?
                    .ok_or(DispatchError::UnknownDeployment(name))?;
                if deployment.paused {
                    return Err(DispatchError::DeploymentPaused(deployment.name));
                }
                let new = NewRun {
                    component: parse_component(&deployment.component)?,
                    flow: deployment.flow.clone(),
                    params,
                    deployment: Some(deployment),
                    tags,
                    scheduled_at: None,
                    schedule_key: None,
                };
                let loaded = d.loaded().get(&new.component).cloned();
                match loaded {
                    Some(component) => d.create_loaded(new, component).map(Ok),
                    None => Ok(Err(new)),
                }
            })
            .await?;
        match outcome {
            Ok(dispatched) => {
                self.announce(dispatched);
                Ok(dispatched)
            }
            Err(new) => self.create_run(new).await,
        }
    }

    /// A run the schedule `schedule_key` made for `at`, with the schedule's
    /// `params` over the deployment's: it waits in `Scheduled` until then.
    /// At most one per deployment, schedule and time, whoever asks
    /// (`StoreError::SlotTaken` for the second).
    pub async fn schedule_run(
        self: &Arc<Self>,
        deployment: Deployment,
        schedule_key: String,
        params: Map<String, Value>,
        at: TimestampMicros,
    ) -> Result<Dispatched, DispatchError> {
        self.create_run(NewRun {
            component: parse_component(&deployment.component)?,
            flow: deployment.flow.clone(),
            params: Some(Value::Object(params)),
            deployment: Some(deployment),
            tags: Vec::new(),
            scheduled_at: Some(at),
            schedule_key: Some(schedule_key),
        })
        .await
    }

    fn deployment_named(&self, name: &str) -> Result<Option<Deployment>, DispatchError> {
        self.store
            .object(ObjectKind::Deployment, name)?
            .map(|row| parse_object("deployment", &row.body))
            .transpose()
    }

    /// Runs a finished, unsuccessful run again (completed tasks are replayed):
    /// `Pending` and handed over when it may start now, else `Scheduled`.
    pub async fn retry(self: &Arc<Self>, id: FlowRunId) -> Result<Dispatched, DispatchError> {
        let dispatched = self.blocking(move |d| d.retry_blocking(id)).await?;
        self.announce(dispatched);
        Ok(dispatched)
    }

    fn retry_blocking(&self, id: FlowRunId) -> Result<Dispatched, DispatchError> {
        let run = self.run(id)?;
        if !run.state.is_terminal() || run.state.is_success() {
            return Err(DispatchError::WrongState {
                id,
                state: run.state,
                why: "only a Failed, Crashed, TimedOut or Cancelled run can be retried",
            });
        }
        let message = format!(
            "attempt {} requested; completed tasks will be replayed",
            run.attempt + 1
        );
        self.requeue(run, Vec::new(), message)
    }

    /// Resumes a `Paused` run with the input its pause asked for: checked
    /// against the pause's JSON Schema (a refusal leaves it Paused), then
    /// recorded as the pause's result in one unit with the run's return to
    /// its pool, where it runs again replaying its finished calls.
    pub async fn resume_paused(
        self: &Arc<Self>,
        id: FlowRunId,
        input: Value,
    ) -> Result<Dispatched, DispatchError> {
        let dispatched = self
            .blocking(move |d| {
                let run = d.run(id)?;
                let not_paused = |why| DispatchError::WrongState {
                    id,
                    state: run.state,
                    why,
                };
                if run.state != RunState::Paused {
                    return Err(not_paused(
                        "only a Paused run takes input; see `host flow-run inspect ID`",
                    ));
                }
                let Some(open) = pause::open_pause(&d.store, id)? else {
                    return Err(not_paused(
                        "it has no pause waiting for input (it was paused by hand); cancel or retry it",
                    ));
                };
                let answer = pause::answer(&d.control, id, &open, &input)?;
                let message = format!(
                    "resumed with input; attempt {} replays the finished calls",
                    run.attempt + 1
                );
                d.requeue(run, answer, message)
            })
            .await?;
        self.announce(dispatched);
        Ok(dispatched)
    }

    /// Fails the paused runs nobody resumed before their pause's timeout.
    pub async fn expire_pauses(self: &Arc<Self>) -> Result<usize, DispatchError> {
        self.blocking(|d| pause::expire_pauses(&d.control, &d.store, d.control.now()))
            .await
    }

    /// Sends a run that ended or waits back to its pool (`Pending` when it
    /// may start now, else `Scheduled`), with `before` in the same unit.
    fn requeue(
        &self,
        run: FlowRunRow,
        before: Vec<Write>,
        message: String,
    ) -> Result<Dispatched, DispatchError> {
        let id = run.id;
        // Runs started by `host flow run` have no pool: they come back on the default one.
        let pool = run.work_pool.as_deref().unwrap_or(DEFAULT_POOL);
        let queue = run.work_queue.as_deref().unwrap_or(DEFAULT_QUEUE);
        let _admission = self.admit_alone()?;
        let now = self.control.now();
        let to = if self.serves(pool) && self.admits(pool, queue, run.deployment.as_deref())? {
            RunState::Pending
        } else {
            RunState::Scheduled
        };
        let mut change = StateChange::new(id.0, run.state, to, now);
        change.message = Some(message);
        let mut placed = before;
        placed.extend([Write::PlaceRun {
            id,
            work_pool: pool.to_string(),
            work_queue: queue.to_string(),
            scheduled_at: now,
        }]);
        if to == RunState::Pending {
            placed.push(Write::TakeLease {
                id,
                holder: self.host_marker.clone(),
                expires_at: self.lease_until(now),
            });
        }
        if let Some(ticket) = self
            .control
            .change_flow_run(change, placed, Durability::Committed)?
        {
            ticket.wait_blocking()?;
        }
        if to == RunState::Pending {
            self.ready().push_back(Ready::Admitted(id));
        }
        Ok(Dispatched { id, state: to })
    }

    /// Resumes an interrupted run: one whose holder is gone (crashed now,
    /// with its subflows) or one already `Crashed`, like any other failed
    /// run, goes again with its completed task calls replayed. A run someone
    /// still holds is refused: cancel it first.
    pub async fn resume(self: &Arc<Self>, id: FlowRunId) -> Result<Dispatched, DispatchError> {
        let crashed_now = self
            .blocking(move |d| {
                let run = d.run(id)?;
                let interrupted = matches!(
                    run.state,
                    RunState::Pending
                        | RunState::Running
                        | RunState::Retrying
                        | RunState::Cancelling
                );
                if !interrupted {
                    // Waiting or ended: `retry` says what may be done with it.
                    return Ok(());
                }
                let now = d.control.now();
                if leases::is_held(&run, now) {
                    return Err(DispatchError::WrongState {
                        id,
                        state: run.state,
                        why: "someone still holds it; cancel it first (`host flow-run cancel ID`)",
                    });
                }
                let holder = run
                    .lease_holder
                    .clone()
                    .or(run.host.clone())
                    .unwrap_or_else(|| "its holder".into());
                let why = format!("{holder} is gone; resumed by hand");
                if !leases::crash_tree(&d.control, &run, &why) {
                    return Err(DispatchError::WrongState {
                        id,
                        state: run.state,
                        why: "it changed while it was being resumed; look at it again",
                    });
                }
                d.tell_crashed(run.clone());
                Ok(())
            })
            .await;
        crashed_now?;
        self.retry(id).await
    }

    /// Cancels a run: at once if nobody runs it yet, else by asking its
    /// executor (the run ends `Cancelled` when it notices). With `force`, a
    /// run whose executor does not answer is ended here and now.
    pub async fn cancel(
        self: &Arc<Self>,
        id: FlowRunId,
        force: bool,
    ) -> Result<Dispatched, DispatchError> {
        self.blocking(move |d| {
            let run = d.run(id)?;
            if run.state.is_terminal() {
                return Err(DispatchError::WrongState {
                    id,
                    state: run.state,
                    why: "it already ended",
                });
            }
            let now = d.control.now();
            // A paused run is held by nobody (its lease columns are stale).
            let paused = run.state == RunState::Paused;
            let waiting = matches!(run.state, RunState::Scheduled | RunState::Late) || paused;
            let unheld = !waiting && !leases::is_held(&run, now);
            if waiting || force || unheld {
                let mut change = StateChange::new(id.0, run.state, RunState::Cancelled, now);
                change.failure_kind = Some(crate::model::FailureKind::Cancelled);
                change.message = Some(if paused {
                    "cancelled while it was paused for input".into()
                } else if waiting {
                    "cancelled before it started".into()
                } else if unheld {
                    "cancelled; nobody held it any more (its host is gone)".into()
                } else {
                    "cancelled by force; whoever ran it did not answer".into()
                });
                // A runner that is alive after all stops at its next look.
                let mut request = vec![Write::RequestCancel { id, at: now }];
                for sub in d.store.unfinished_descendants(id)?.into_iter().rev() {
                    let mut change =
                        StateChange::new(sub.id.0, sub.state, RunState::Cancelled, now);
                    change.failure_kind = Some(crate::model::FailureKind::Cancelled);
                    change.message = Some(format!("its parent run {id} was cancelled"));
                    request.push(Write::FlowRunState(change));
                }
                if let Some(ticket) =
                    d.control
                        .change_flow_run(change, request, Durability::Committed)?
                {
                    ticket.wait_blocking()?;
                }
                return Ok(Dispatched {
                    id,
                    state: RunState::Cancelled,
                });
            }
            d.store
                .submit(vec![Write::RequestCancel { id, at: now }])
                .wait_blocking()?;
            Ok(Dispatched {
                id,
                state: RunState::Cancelling,
            })
        })
        .await
    }

    fn run(&self, id: FlowRunId) -> Result<FlowRunRow, DispatchError> {
        self.store.flow_run(id).map_err(|e| match e {
            StoreError::NotFound { .. } => DispatchError::UnknownRun(id),
            other => other.into(),
        })
    }

    // ---- admission ----

    /// Whether a run of `pool`/`queue` (and `deployment`) may start now:
    /// nothing paused, no limit reached. Call with the admission lock held.
    fn admits(
        &self,
        pool: &str,
        queue: &str,
        deployment: Option<&str>,
    ) -> Result<bool, DispatchError> {
        if let Some(row) = self.store.object(ObjectKind::WorkPool, pool)? {
            let pool: WorkPool = parse_object("work pool", &row.body)?;
            if pool.paused
                || pool.concurrency_limit.is_some_and(|limit| {
                    self.store
                        .active_runs_of_pool(&pool.name, None)
                        .is_ok_and(|n| n >= u64::from(limit))
                })
            {
                return Ok(false);
            }
        }
        if let Some(row) = self
            .store
            .object(ObjectKind::WorkQueue, &format!("{pool}/{queue}"))?
        {
            let queue: WorkQueue = parse_object("work queue", &row.body)?;
            if queue.paused {
                return Ok(false);
            }
            if let Some(limit) = queue.concurrency_limit
                && self.store.active_runs_of_pool(pool, Some(&queue.name))? >= u64::from(limit)
            {
                return Ok(false);
            }
        }
        if let Some(name) = deployment
            && let Some(d) = self.deployment_named(name)?
        {
            if d.paused {
                return Ok(false);
            }
            if let Some(limit) = d.concurrency_limit
                && self.store.active_runs_of_deployment(&d.name)? >= u64::from(limit)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether this server leads `role` now (several servers on one
    /// database: one schedules, one delivers webhooks). A database that
    /// cannot say means no, and is logged.
    pub async fn leads(self: &Arc<Self>, role: Role) -> bool {
        match self.blocking(move |d| Ok(d.store.leads(role)?)).await {
            Ok(leads) => leads,
            Err(e) => {
                tracing::warn!("asking the database who leads the {role:?}: {e}");
                false
            }
        }
    }

    /// Admission, one at a time: this process's mutex, then the store's
    /// lock across every server sharing the database; released in the
    /// opposite order (a tuple drops its first field first).
    fn admit_alone(&self) -> Result<(Exclusive, std::sync::MutexGuard<'_, ()>), DispatchError> {
        let local = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        let shared = self.store.lock_admission()?;
        Ok((shared, local))
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<Ready>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits the first waiting run of `pools` that may start now, by queue
    /// priority then age, and moves it to `Pending`.
    fn admit_waiting(
        &self,
        pools: &[String],
        holder: &str,
    ) -> Result<Option<FlowRunId>, DispatchError> {
        let pools: Vec<String> = pools.iter().filter(|p| self.serves(p)).cloned().collect();
        if !self.take_waiting {
            return Ok(None);
        }
        self.admit_for(&pools, &[], holder, &self.local_allows)
    }

    /// What of `needs` no executor of `pool` allows, when the pool has
    /// executors online (this process's, or remote hosts) and none of them
    /// allows it all; `None` while someone does, or nobody is there to ask.
    fn nobody_allows(
        &self,
        pool: &str,
        needs: &Capabilities,
    ) -> Result<Option<String>, DispatchError> {
        if needs.is_empty() {
            return Ok(None);
        }
        let mut missing = None;
        if self.serves(pool) {
            match self.local_allows.missing(needs) {
                None => return Ok(None),
                Some(m) => missing = Some(m),
            }
        }
        let now = self.control.now();
        let fresh = 2 * self.lease_ttl.as_micros() as i64;
        for row in self.store.objects(ObjectKind::Host)? {
            let Ok(host) = serde_json::from_str::<remote::HostRecord>(&row.body) else {
                continue;
            };
            if now - host.last_heartbeat > fresh || !host.pools.iter().any(|p| p == pool) {
                continue;
            }
            match host.allows.missing(needs) {
                None => return Ok(None),
                Some(m) => missing = Some(m),
            }
        }
        Ok(missing)
    }

    /// Admits the first waiting run of `pools` (and of `queues`, unless
    /// empty) that may start now, by queue priority then age, and moves it to
    /// `Pending` under a lease for `holder`.
    fn admit_for(
        &self,
        pools: &[String],
        queues: &[String],
        holder: &str,
        allows: &Capabilities,
    ) -> Result<Option<FlowRunId>, DispatchError> {
        Ok(self.admit_some_for(pools, queues, holder, allows, 1)?.pop())
    }

    /// Admits up to `max` waiting runs of `pools` (and of `queues`, unless
    /// empty) that may start now, by queue priority then age, each moved to
    /// `Pending` under a lease for `holder`, in admission order.
    ///
    /// The whole pass holds the admission lock, from reading the waiting
    /// runs to the last commit, and reads the clock under it: two hosts
    /// claiming batches at once are served one after the other, each from
    /// the runs still waiting then, so a lower queue's run is never taken
    /// while a higher queue's run that may start waits, and the `Pending`
    /// times the records keep are the order runs were admitted in. (The
    /// clock and the waiting runs used to be read before the lock: a claimer
    /// that waited on it recorded an earlier time than the run admitted
    /// ahead of it, and could miss a run made meanwhile.)
    fn admit_some_for(
        &self,
        pools: &[String],
        queues: &[String],
        holder: &str,
        allows: &Capabilities,
        max: usize,
    ) -> Result<Vec<FlowRunId>, DispatchError> {
        let mut taken = Vec::new();
        if pools.is_empty() || max == 0 {
            return Ok(taken);
        }
        let _admission = self.admit_alone()?;
        let now = self.control.now();
        let mut due = self.store.due_runs(pools, now, MAX_WAITING_SCAN)?;
        if !queues.is_empty() {
            // The named queues, with their tag filters.
            let served: Vec<WorkQueue> = self
                .store
                .objects(ObjectKind::WorkQueue)?
                .into_iter()
                .filter_map(|row| serde_json::from_str::<WorkQueue>(&row.body).ok())
                .filter(|q| queues.contains(&q.name) && pools.contains(&q.work_pool))
                .collect();
            due.retain(|run| {
                let queue = run.work_queue.as_deref().unwrap_or(DEFAULT_QUEUE);
                queues.iter().any(|q| q == queue)
                    || served.iter().any(|q| {
                        Some(q.work_pool.as_str()) == run.work_pool.as_deref()
                            && q.takes(queue, &run.tags)
                    })
            });
        }
        if due.is_empty() {
            return Ok(taken);
        }
        let priorities: HashMap<String, u32> = self
            .store
            .objects(ObjectKind::WorkQueue)?
            .into_iter()
            .filter_map(|row| {
                let queue: WorkQueue = serde_json::from_str(&row.body).ok()?;
                Some((row.name, queue.priority))
            })
            .collect();
        let priority = |run: &FlowRunRow| {
            let key = format!(
                "{}/{}",
                run.work_pool.as_deref().unwrap_or_default(),
                run.work_queue.as_deref().unwrap_or(DEFAULT_QUEUE)
            );
            priorities.get(&key).copied().unwrap_or(u32::MAX)
        };
        due.sort_by_key(|run| (priority(run), run.scheduled_at));
        // Runs held by one limit say nothing of runs under others, and are
        // decided once until the next admission: a hundred stuck runs cost
        // one check.
        let mut decided: HashMap<(String, String, Option<String>), bool> = HashMap::new();
        for run in due {
            if taken.len() == max {
                break;
            }
            let pool = run.work_pool.as_deref().unwrap_or(DEFAULT_POOL);
            let queue = run.work_queue.as_deref().unwrap_or(DEFAULT_QUEUE);
            let key = (pool.to_string(), queue.to_string(), run.deployment.clone());
            let admitted = match decided.get(&key) {
                Some(admitted) => *admitted,
                None => {
                    let needs = match &run.deployment {
                        Some(name) => self
                            .deployment_named(name)?
                            .map(|d| d.capabilities)
                            .unwrap_or_default(),
                        None => Capabilities::default(),
                    };
                    // A run goes only to a holder that allows all it needs.
                    let admitted = allows.missing(&needs).is_none()
                        && self.admits(pool, queue, run.deployment.as_deref())?;
                    decided.insert(key, admitted);
                    admitted
                }
            };
            if !admitted {
                continue;
            }
            // Each its own time, so the records order a batch too.
            let at = self.control.now();
            let change = StateChange::new(run.id.0, run.state, RunState::Pending, at);
            let lease = vec![Write::TakeLease {
                id: run.id,
                holder: holder.to_string(),
                expires_at: self.lease_until(at),
            }];
            let moved = self
                .control
                .change_flow_run(change, lease, Durability::Committed)
                .map_err(DispatchError::from)
                .and_then(|ticket| match ticket {
                    Some(ticket) => ticket.wait_blocking().map_err(DispatchError::from),
                    None => Ok(()),
                });
            match moved {
                Ok(()) => {
                    taken.push(run.id);
                    // It counts against its pool's, queue's and
                    // deployment's limits now: keys that had room are
                    // decided again (one refused stays refused: admitting
                    // never frees room).
                    decided.retain(|_, admitted| !*admitted);
                }
                // Another server sharing the database (or a cancel) got
                // there first.
                Err(DispatchError::Store(StoreError::Conflict { .. })) => continue,
                // What was admitted is committed and leased: handed over.
                Err(e) if !taken.is_empty() => {
                    tracing::warn!("admitting flow run {}: {e}", run.id);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    /// The run `id`, which the caller now owns in `Pending`, as a claim.
    async fn claim_of(self: &Arc<Self>, id: FlowRunId) -> Result<Claim, DispatchError> {
        let (run, deployment, secrets) = self
            .blocking(move |d| {
                let run = d.run(id)?;
                let deployment = match &run.deployment {
                    Some(name) => d.deployment_named(name)?,
                    None => None,
                };
                let secrets = d.open_secrets(&run.secret_grants)?;
                Ok((run, deployment, secrets))
            })
            .await?;
        let component = self.component(&parse_component(&run.component)?).await?;
        Ok(Claim {
            run: run.id,
            component,
            flow: run.flow_name,
            params: run.params,
            attempt: run.attempt,
            state: RunState::Pending,
            epoch: run.lease_epoch,
            deployment: run.deployment,
            capabilities: deployment
                .as_ref()
                .map(|d| d.capabilities.clone())
                .unwrap_or_default(),
            task_override: deployment.map(|d| d.task_policy).unwrap_or_default(),
            secrets,
        })
    }

    /// The secrets named, in clear (a run's grant). One that was removed since the
    /// run was created is simply not there for the guest.
    fn open_secrets(&self, names: &[String]) -> Result<GrantedSecrets, DispatchError> {
        Ok(GrantedSecrets::new(self.secret_values(names)?))
    }

    /// The secrets named, in clear, as (name, value).
    fn secret_values(&self, names: &[String]) -> Result<Vec<(String, String)>, DispatchError> {
        let mut values = Vec::new();
        for name in names {
            if let Some(row) = self.store.object(ObjectKind::Secret, name)? {
                let value =
                    self.secrets
                        .open(name, &row.body)
                        .map_err(|e| DispatchError::Corrupt {
                            what: "secret",
                            message: e.to_string(),
                        })?;
                values.push((name.clone(), value));
            }
        }
        Ok(values)
    }

    /// Crashes runs whose holder is gone (its process died, or its lease ran
    /// out), with their subflows. Returns the top-level runs it crashed.
    ///
    /// A crashed run of a pool whose flow has retries left runs again (on
    /// any executor or host of its pool) and resumes: its completed task
    /// calls are replayed.
    pub async fn reap(self: &Arc<Self>) -> Result<Vec<FlowRunRow>, DispatchError> {
        let crashed = self
            .blocking(|d| Ok(leases::crash_lost_runs(&d.control)))
            .await?;
        for run in &crashed {
            self.tell_crashed(run.clone());
        }
        for run in crashed.iter().filter(|r| r.work_pool.is_some()) {
            let Ok(digest) = parse_component(&run.component) else {
                continue;
            };
            let Ok(component) = self.component(&digest).await else {
                continue;
            };
            let retries = component
                .manifest
                .flow(&run.flow_name)
                .and_then(|f| f.policy.retries)
                .unwrap_or(0);
            if run.attempt <= retries {
                match self.retry(run.id).await {
                    Ok(_) => tracing::info!(
                        "flow run {} crashed; attempt {} of {} starts",
                        run.id,
                        run.attempt + 1,
                        retries + 1
                    ),
                    Err(e) => {
                        tracing::warn!("flow run {} crashed and could not retry: {e}", run.id)
                    }
                }
            }
        }
        Ok(crashed)
    }

    /// Where to send each run this process marks `Crashed` from now on
    /// (once: the first listener stays).
    pub fn listen_for_crashes(&self, listener: tokio::sync::mpsc::UnboundedSender<FlowRunRow>) {
        let _ = self.crashed.set(listener);
    }

    /// Tells the listener, if any, that this process crashed `run`: only
    /// the compare-and-set that made it `Crashed` calls this, so a run is
    /// told of once however many recovery passes see it.
    pub fn tell_crashed(&self, run: FlowRunRow) {
        if let Some(listener) = self.crashed.get() {
            let _ = listener.send(run);
        }
    }

    /// Ends a claimed run that could not be started (its component or a
    /// secret is unreadable), so it does not stay `Pending`.
    fn fail_claim(&self, id: FlowRunId, error: &DispatchError) {
        let mut change = StateChange::new(
            id.0,
            RunState::Pending,
            RunState::Crashed,
            self.control.now(),
        );
        change.message = Some(format!("could not start: {error}"));
        change.failure_kind = Some(crate::model::FailureKind::Crashed);
        match self
            .control
            .change_flow_run(change, Vec::new(), Durability::Committed)
        {
            Ok(Some(ticket)) => {
                if let Err(e) = ticket.wait_blocking() {
                    tracing::warn!("flow run {id} could not be marked Crashed: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("flow run {id} could not be marked Crashed: {e}"),
        }
    }
}

impl RunSource for Dispatcher {
    fn claim<'a>(
        &'a self,
        pools: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Claim>, DispatchError>> {
        Box::pin(async move {
            let this = self.arc();
            loop {
                let next = self.ready().pop_front();
                let id = match next {
                    Some(Ready::Claim(claim)) => return Ok(Some(*claim)),
                    Some(Ready::Admitted(id)) => id,
                    None => {
                        let pools = pools.to_vec();
                        let holder = self.host_marker.clone();
                        match this
                            .blocking(move |d| d.admit_waiting(&pools, &holder))
                            .await?
                        {
                            Some(id) => id,
                            None => return Ok(None),
                        }
                    }
                };
                match this.claim_of(id).await {
                    Ok(claim) => return Ok(Some(claim)),
                    Err(e) => {
                        tracing::warn!("flow run {id} could not start: {e}");
                        this.blocking(move |d| {
                            d.fail_claim(id, &e);
                            Ok(())
                        })
                        .await?;
                    }
                }
            }
        })
    }

    fn work_ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.wake.notified())
    }

    fn run_ended(&self, _run: FlowRunId) {
        self.wake_claimers();
    }
}

impl Dispatcher {
    /// Wakes every claimer waiting for work (runs may have come due).
    pub fn wake_claimers(&self) {
        self.wake.notify_waiters();
    }

    /// The dispatcher as an `Arc` again: every one is made inside an `Arc` by
    /// `new`, and a borrow of it keeps that `Arc` alive.
    fn arc(&self) -> Arc<Dispatcher> {
        self.me.upgrade().expect("a borrowed dispatcher is alive")
    }
}

/// Checks `params` (an object) against the flow's schema.
pub fn check_params(schema: Option<&Value>, params: &Value) -> Result<(), DispatchError> {
    if !params.is_object() {
        return Err(DispatchError::ParamsNotObject);
    }
    if let Some(schema) = schema {
        validate_params(schema, params).map_err(|e| match e {
            ParamError::Invalid(problems) => DispatchError::InvalidParams(problems.join("; ")),
            other => DispatchError::InvalidParams(other.to_string()),
        })?;
    }
    Ok(())
}

/// A component digest as a run or deployment records it.
fn parse_component(text: &str) -> Result<ComponentDigest, DispatchError> {
    ComponentDigest::parse(text.trim_start_matches("sha256:")).ok_or_else(|| {
        DispatchError::Corrupt {
            what: "component digest",
            message: format!("'{text}' is not a sha256 digest"),
        }
    })
}

fn parse_object<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &str,
) -> Result<T, DispatchError> {
    serde_json::from_str(body).map_err(|e| DispatchError::Corrupt {
        what,
        message: e.to_string(),
    })
}
