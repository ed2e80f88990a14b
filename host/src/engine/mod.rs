//! The sandbox: the only module that names wasmtime.
//!
//! One `Engine` with fuel, epoch interruption and a pooling allocator; one
//! `Component` (an `InstancePre`) per uploaded `.wasm`; a fresh `Store` per flow
//! and per task attempt. A guest's imports are served by a [`GuestHost`] that the
//! caller supplies, so the engine knows nothing of runs, policies or the store.
//!
//! Every way a guest can fail (fuel, deadline, memory, trap, bad output) comes
//! back as a [`Failure`] inside an [`Execution`]; nothing a guest does is an
//! error of the host.

mod cache;
mod http;
mod output;

use crate::model::artifact::{ArtifactKind, NewArtifact};
use crate::model::capabilities::Capabilities;
use crate::model::{ComponentDigest, Failure, FailureKind, Limits, LogLevel, Manifest, RunInfo};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

pub use http::MAX_RESPONSE_BODY_BYTES;
pub use output::OutputCapture;

mod bindings {
    wasmtime::component::bindgen!({
        world: "flow",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::weir::flow::types as wit;

/// Slots of limits an instance holds (see [`GuestHost::take_slots`]);
/// they are given back when this drops.
pub type HeldSlots = Box<dyn Send + Sync>;

/// The most `take-slots` handles one instance may hold at once.
pub const MAX_HELD_SLOTS: usize = 1024;

/// A boxed future, as returned by [`GuestHost`] methods.
pub type HostFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a guest's imports do. The worker implements this per flow run and per
/// task attempt; the engine only forwards calls.
///
/// Every method has a default that serves nothing: logs are dropped, secrets
/// are absent, and calls to tasks and flows fail with [`GuestHost::refusal`].
/// A host implements only what its instances may do (a task's host logs and
/// reads secrets, but starts nothing).
pub trait GuestHost: Send + Sync + 'static {
    /// A log line from the `log` import or from the guest's stdout/stderr.
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn call_task(&self, _name: String, _input: String) -> HostFuture<'_, Result<String, Failure>> {
        let refusal = self.refusal();
        Box::pin(async { Err(refusal) })
    }
    /// Starts a task; the handle is awaited with `await_task`. May wait (for a
    /// concurrency slot) before it answers, so a flow cannot outrun its tasks.
    fn submit_task(&self, _name: String, _input: String) -> HostFuture<'_, u64> {
        Box::pin(async { 0 })
    }
    fn await_task(&self, _handle: u64) -> HostFuture<'_, Result<String, Failure>> {
        let refusal = self.refusal();
        Box::pin(async { Err(refusal) })
    }
    fn call_flow(&self, _name: String, _params: String) -> HostFuture<'_, Result<String, Failure>> {
        let refusal = self.refusal();
        Box::pin(async { Err(refusal) })
    }
    fn get_secret(&self, _name: &str) -> Option<String> {
        None
    }
    fn info(&self) -> RunInfo {
        RunInfo::default()
    }
    /// The JSON value of a variable, or none (`get-variable`, since 0.1.1).
    /// An error traps the instance: the guest cannot tell a missing
    /// variable from one that could not be read, so it must not be told "none".
    fn get_variable(&self, _name: String) -> HostFuture<'_, Result<Option<String>, Failure>> {
        Box::pin(async { Ok(None) })
    }
    /// Pauses the run for input (`pause`, since 0.1.1): the input once the
    /// run was resumed with it, or [`PauseAnswer::Suspend`] to stop the
    /// instance now (the run was recorded Paused; it comes back by replay).
    fn pause(
        &self,
        _timeout: Duration,
        _input_schema: String,
    ) -> HostFuture<'_, Result<PauseAnswer, Failure>> {
        let refusal = self.refusal();
        Box::pin(async { Err(refusal) })
    }
    /// Records an artifact (`create-artifact`, since 0.1.1); returns its id.
    fn create_artifact(&self, _artifact: NewArtifact) -> HostFuture<'_, Result<String, Failure>> {
        Box::pin(async {
            Err(Failure::new(
                FailureKind::Failed,
                "artifacts cannot be created here",
            ))
        })
    }
    /// Starts a run of a deployment (`run-deployment`, since 0.1.1): its
    /// result when `wait`, else its id as a JSON string.
    fn run_deployment(
        &self,
        _name: String,
        _params: String,
        _wait: bool,
    ) -> HostFuture<'_, Result<String, Failure>> {
        let refusal = self.refusal();
        Box::pin(async { Err(refusal) })
    }
    /// Takes `slots` of each named limit (`take-slots`, since 0.1.2),
    /// waiting while one is full (at most `timeout`). What it returns holds
    /// the slots: dropping it gives them back, so an instance that ends or
    /// traps gives back all it took.
    fn take_slots(
        &self,
        _names: Vec<String>,
        _slots: u32,
        _timeout: Option<Duration>,
    ) -> HostFuture<'_, Result<HeldSlots, Failure>> {
        Box::pin(async {
            Err(Failure::new(
                FailureKind::Failed,
                "concurrency limits cannot be taken here",
            ))
        })
    }
    /// Directories, environment variables and HTTP hosts the instance may
    /// reach (nothing by default).
    fn capabilities(&self) -> &Capabilities {
        static NOTHING: Capabilities = Capabilities {
            dirs: Vec::new(),
            env: Vec::new(),
            http: Vec::new(),
        };
        &NOTHING
    }
    /// Why the default `call_task`, `await_task` and `call_flow` fail: the
    /// guest sees it as the call's error, so say what to do instead.
    fn refusal(&self) -> Failure {
        Failure::new(
            FailureKind::Failed,
            "this instance cannot start tasks or flows",
        )
    }
}

/// How a host answers `pause`.
#[derive(Debug)]
pub enum PauseAnswer {
    /// The run was resumed with this input (JSON).
    Input(String),
    /// Stop the instance: the run waits for input with nothing held.
    Suspend,
}

/// What a suspending `pause` traps with: the instance ends here, and the
/// caller's host knows from its own records that this was a pause.
#[derive(Debug, thiserror::Error)]
#[error("the run paused to wait for input")]
struct Suspended;

/// A host that serves nothing: every [`GuestHost`] default (benchmarks, tools
/// that run a task on its own).
pub struct NullHost;

impl GuestHost for NullHost {}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build for the wasm32-wasip2 target (e.g. `host build PATH`)"
    )]
    CoreModule,
    #[error("invalid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "this component is not a Weir flow: {0}. Build it with a Weir SDK for the world weir:flow/flow@0.1.x"
    )]
    WrongWorld(String),
    #[error("the component's describe() failed: {0}")]
    Describe(String),
    #[error(
        "the component's manifest is {bytes} bytes, over the limit of {limit} bytes; describe fewer or smaller flows and tasks"
    )]
    ManifestTooLarge { bytes: usize, limit: usize },
    #[error("the component's manifest is not valid: {0}")]
    InvalidManifest(String),
    #[error("wasmtime engine set-up failed: {0}")]
    Setup(String),
    #[error("compiled-artifact cache at {path}: {message}")]
    Cache { path: PathBuf, message: String },
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where compiled artifacts are kept; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once (pool size).
    pub max_instances: u32,
    /// The largest memory any one instance may be given.
    pub max_memory_bytes: u64,
    /// Cap on JSON payloads crossing the boundary (input, output, params).
    pub max_payload_bytes: usize,
    /// Cap on what one instance may write to stdout + stderr; the rest is dropped.
    pub max_output_bytes: usize,
    /// How often running guests yield and have their deadline checked.
    pub epoch_tick: Duration,
    /// The budget of `describe()` at load: a manifest is a few KiB of JSON,
    /// so a component that needs more than this is broken or hostile.
    pub describe_limits: Limits,
    /// Cap on the manifest `describe()` returns.
    pub max_manifest_bytes: usize,
    /// Use the pooling allocator (fast instantiation); off uses on-demand mmap.
    pub pooling: bool,
    /// Count fuel and interrupt on epochs (the fuel and deadline limits).
    /// Always on in Weir; off only so the benchmark can show what metering costs.
    pub metering: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            max_payload_bytes: 16 << 20,
            max_output_bytes: 1 << 20,
            epoch_tick: Duration::from_millis(5),
            // Rust SDK components describe themselves in ~1M fuel; Python and JS
            // ones (interpreters) in well under 1G. Memory covers their heaps.
            describe_limits: Limits {
                fuel: 2_000_000_000,
                memory_bytes: 256 << 20,
                timeout: Some(Duration::from_secs(5)),
            },
            max_manifest_bytes: 1 << 20,
            pooling: true,
            metering: true,
        }
    }
}

/// The wasmtime engine, its linker and the ticker that drives deadlines.
pub struct Engine {
    wasmtime: wasmtime::Engine,
    /// The same settings without the instance pool: what compiles a
    /// component into the cache, in an engine dropped after (see `cache`).
    compile_config: Config,
    linker: Linker<Sandbox>,
    config: EngineConfig,
    ticker_stop: Arc<AtomicBool>,
    slots: InstanceSlots,
}

/// Admission to the instance pool. The pool refuses an instantiation when it
/// is full, which would fail a run only because others are busy; instead each
/// instance first waits, in arrival order (tokio's semaphore is fair), for a
/// slot of its class. Tasks never wait on anything while holding a slot, so
/// task slots always come free. Flow instances hold theirs while their tasks
/// run, so they get a separate quarter of the pool: tasks can never be starved
/// by flows. Subflows are not admitted (a parent holding a flow slot waiting for
/// a child that waits for one would deadlock); they use the quarter of the pool
/// that neither class is given.
struct InstanceSlots {
    tasks: Arc<tokio::sync::Semaphore>,
    flows: Arc<tokio::sync::Semaphore>,
}

impl InstanceSlots {
    fn new(max_instances: u32) -> Self {
        let n = max_instances.max(4) as usize;
        Self {
            tasks: Arc::new(tokio::sync::Semaphore::new(n / 2)),
            flows: Arc::new(tokio::sync::Semaphore::new(n / 4)),
        }
    }

    fn class(&self, entry: &Entry<'_>) -> Option<&Arc<tokio::sync::Semaphore>> {
        match entry {
            Entry::Task { .. } => Some(&self.tasks),
            Entry::Flow { nested: false, .. } => Some(&self.flows),
            Entry::Flow { nested: true, .. } => None,
        }
    }
}

/// A loaded, validated component, ready to instantiate.
#[derive(Clone)]
pub struct Component {
    pub digest: ComponentDigest,
    pub manifest: Arc<Manifest>,
    pub size_bytes: u64,
    /// How the compiled code was obtained.
    pub load: LoadKind,
    pre: bindings::FlowPre<Sandbox>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    Compiled { millis: u64 },
    Cached { millis: u64 },
}

/// The result of running one instance.
#[derive(Debug)]
pub struct Execution {
    pub result: Result<String, Failure>,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub duration: Duration,
}

/// What to call in a fresh instance.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    /// `nested` for a subflow: it is not admitted (see `InstanceSlots`).
    Flow {
        name: &'a str,
        params: &'a str,
        nested: bool,
    },
    Task {
        name: &'a str,
        input: &'a str,
    },
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let mut wasm = Config::new();
        wasm.consume_fuel(config.metering)
            .epoch_interruption(config.metering)
            .wasm_component_model(true)
            .memory_reservation(config.max_memory_bytes.max(64 << 20))
            .max_wasm_stack(2 << 20)
            .async_stack_size(4 << 20);
        let compile_config = wasm.clone();
        if config.pooling {
            let n = config.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(n)
                .total_core_instances(n.saturating_mul(8))
                .total_memories(n.saturating_mul(2))
                .total_tables(n.saturating_mul(4))
                .total_stacks(n)
                .max_core_instances_per_component(64)
                .max_memories_per_component(8)
                .max_tables_per_component(32)
                .max_core_instance_size(4 << 20)
                .max_component_instance_size(4 << 20)
                .table_elements(100_000)
                .max_memory_size(config.max_memory_bytes as usize)
                // A slot is reset, not unmapped, between instances: the
                // PAGEMAP_SCAN ioctl (Linux 6.7+; off elsewhere) finds the
                // pages the last instance dirtied in the first 1 MiB and
                // only those are restored; the rest is madvised away. A
                // trivial task so skips both the madvise and the page
                // faults that follow it: sandbox-only 32k -> 57k/s
                // (docs/performance.md). Without the ioctl, zeroing 1 MiB
                // a task costs more than it saves, hence 64 KiB there.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(if pagemap_scan_works() {
                    1 << 20
                } else {
                    64 << 10
                })
                .table_keep_resident(64 << 10);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let wasmtime =
            wasmtime::Engine::new(&wasm).map_err(|e| EngineError::Setup(e.to_string()))?;

        let mut linker = Linker::<Sandbox>::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        // Linked for every component, used by those that import it; each
        // request is checked against the run's allow-list (`http`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        bindings::Flow::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Setup(e.to_string()))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(wasmtime.clone(), config.epoch_tick, ticker_stop.clone());
        Ok(Self {
            wasmtime,
            compile_config,
            linker,
            slots: InstanceSlots::new(config.max_instances),
            config,
            ticker_stop,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Validates `bytes` as a Weir flow component, compiles it (or loads the
    /// cached artifact) and reads its manifest.
    pub async fn load(&self, bytes: &[u8]) -> Result<Component, EngineError> {
        check_header(bytes)?;
        let digest = ComponentDigest::from_sha256(Sha256::digest(bytes).into());
        let started = Instant::now();
        let (component, cached) = match &self.config.cache_dir {
            Some(dir) => {
                cache::load_or_compile(&self.wasmtime, &self.compile_config, dir, &digest, bytes)?
            }
            None => (compile(&self.wasmtime, bytes)?, false),
        };
        let millis = started.elapsed().as_millis() as u64;
        let load = if cached {
            LoadKind::Cached { millis }
        } else {
            LoadKind::Compiled { millis }
        };

        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| EngineError::WrongWorld(first_line(&e)))?;
        let pre = bindings::FlowPre::new(instance_pre)
            .map_err(|e| EngineError::WrongWorld(first_line(&e)))?;
        let mut component = Component {
            digest,
            manifest: Arc::new(Manifest::default()),
            size_bytes: bytes.len() as u64,
            load,
            pre,
        };
        component.manifest = Arc::new(self.describe(&component).await?);
        Ok(component)
    }

    /// Reads the manifest under `describe_limits`: a describe() that loops,
    /// allocates without end or answers with megabytes fails the load with a
    /// reason, and costs the host no more than that budget.
    async fn describe(&self, component: &Component) -> Result<Manifest, EngineError> {
        let host: Arc<dyn GuestHost> = Arc::new(DescribeHost);
        let limits = self.config.describe_limits;
        let deadline = limits.timeout.unwrap_or(Duration::from_secs(5));
        let _slot = self
            .admit(&self.slots.tasks, &CancellationToken::new())
            .await;
        let (mut store, output) = self.new_store(limits, host, CancellationToken::new());
        let result = async {
            let flow = component.pre.instantiate_async(&mut store).await?;
            flow.weir_flow_guest().call_describe(&mut store).await
        };
        let text = match tokio::time::timeout(deadline, result).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                let failure = classify_trap(&e, &store, &output);
                let hint = match failure.kind {
                    FailureKind::OutOfFuel | FailureKind::Memory => format!(
                        " (describe() may use {} fuel and {} of memory; it should only return the manifest)",
                        limits.fuel,
                        human_bytes(limits.memory_bytes)
                    ),
                    _ => String::new(),
                };
                return Err(EngineError::Describe(format!("{}{hint}", failure.message)));
            }
            Err(_) => {
                return Err(EngineError::Describe(format!(
                    "it did not return within {}; describe() should only return the manifest",
                    humantime::format_duration(deadline)
                )));
            }
        };
        if text.len() > self.config.max_manifest_bytes {
            return Err(EngineError::ManifestTooLarge {
                bytes: text.len(),
                limit: self.config.max_manifest_bytes,
            });
        }
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| EngineError::InvalidManifest(e.to_string()))?;
        validate_manifest(&manifest)?;
        Ok(manifest)
    }

    /// Waits for an instance slot of a class, unless `cancel` fires first.
    async fn admit(
        &self,
        class: &Arc<tokio::sync::Semaphore>,
        cancel: &CancellationToken,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::select! {
            // The semaphores are never closed.
            permit = class.clone().acquire_owned() => permit.ok(),
            _ = cancel.cancelled() => None,
        }
    }

    /// Checks a JSON payload a guest hands to the host against the size cap.
    pub fn check_payload(&self, what: &str, payload: &str) -> Result<(), Failure> {
        check_payload(what, payload, self.config.max_payload_bytes)
    }

    /// Runs one flow or task call in a fresh instance under `limits`.
    ///
    /// Stops the guest when `cancel` fires or the deadline passes; the instance
    /// is dropped afterwards whatever happened, so a broken guest is never reused.
    pub async fn run(
        &self,
        component: &Component,
        entry: Entry<'_>,
        limits: Limits,
        host: Arc<dyn GuestHost>,
        cancel: CancellationToken,
    ) -> Execution {
        let started = Instant::now();
        // Waiting for a slot is not the guest's fault: it is not charged to its deadline.
        let _slot = match self.slots.class(&entry) {
            Some(class) => match self.admit(class, &cancel).await {
                Some(slot) => Some(slot),
                None => {
                    return Execution {
                        result: Err(Failure::new(
                            FailureKind::Cancelled,
                            "the run was cancelled",
                        )),
                        fuel_used: 0,
                        peak_memory_bytes: 0,
                        duration: started.elapsed(),
                    };
                }
            },
            None => None,
        };
        let started = Instant::now();
        let (mut store, output) = self.new_store(limits, host, cancel.clone());
        let call = async {
            let flow = component.pre.instantiate_async(&mut store).await?;
            let guest = flow.weir_flow_guest();
            match entry {
                Entry::Flow { name, params, .. } => {
                    guest
                        .call_run_flow(&mut store, name, &params.to_string())
                        .await
                }
                Entry::Task { name, input } => {
                    guest
                        .call_run_task(&mut store, name, &input.to_string())
                        .await
                }
            }
        };
        let deadline = limits
            .timeout
            .unwrap_or(Duration::from_secs(100 * 365 * 86_400));
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Failure::new(FailureKind::Cancelled, "the run was cancelled")),
            finished = tokio::time::timeout(deadline, call) => match finished {
                Err(_) => Err(Failure::new(
                    FailureKind::Timeout,
                    format!("deadline of {} exceeded", humantime::format_duration(deadline)),
                )),
                Ok(Err(trap)) => Err(classify_trap(&trap, &store, &output)),
                Ok(Ok(Ok(json))) => self.check_output(json),
                Ok(Ok(Err(guest_error))) => Err(from_wit_error(guest_error)),
            },
        };
        output.flush();
        let fuel_left = store.get_fuel().unwrap_or(0);
        let data = store.data();
        Execution {
            result: outcome,
            fuel_used: limits.fuel.saturating_sub(fuel_left),
            peak_memory_bytes: data.limiter.peak_memory as u64,
            duration: started.elapsed(),
        }
    }

    fn new_store(
        &self,
        limits: Limits,
        host: Arc<dyn GuestHost>,
        cancel: CancellationToken,
    ) -> (Store<Sandbox>, OutputCapture) {
        let output = OutputCapture::new(host.clone(), self.config.max_output_bytes);
        let wasi = sandboxed_wasi(&output, host.capabilities());
        let data = Sandbox {
            wasi,
            table: ResourceTable::new(),
            http: None,
            host,
            limiter: MemoryLimiter {
                limit: limits.memory_bytes.min(self.config.max_memory_bytes) as usize,
                total: 0,
                peak_memory: 0,
                denied: false,
            },
            max_payload_bytes: self.config.max_payload_bytes,
            cancel,
            held_slots: HashMap::new(),
            next_slots_handle: 1,
        };
        let mut store = Store::new(&self.wasmtime, data);
        store.limiter(|s| &mut s.limiter);
        // Fuel is a u64 budget; setting it cannot fail with fuel enabled.
        if self.config.metering {
            store.set_fuel(limits.fuel).ok();
            store.epoch_deadline_async_yield_and_update(1);
        }
        (store, output)
    }

    fn check_output(&self, json: String) -> Result<String, Failure> {
        if json.len() > self.config.max_payload_bytes {
            return Err(Failure::new(
                FailureKind::InvalidOutput,
                format!(
                    "output is {} bytes, over the limit of {} bytes; store large data elsewhere and return a reference",
                    json.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        match serde_json::from_str::<serde::de::IgnoredAny>(&json) {
            Ok(_) => Ok(json),
            Err(e) => Err(Failure::new(
                FailureKind::InvalidOutput,
                format!("output is not JSON: {e}"),
            )),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Whether the kernel has the PAGEMAP_SCAN ioctl (Linux 6.7+), which lets
/// a slot's reset touch only the pages an instance dirtied. wasmtime falls
/// back by itself when the ioctl fails; this only picks how much memory a
/// reset may restore in place rather than madvise.
fn pagemap_scan_works() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    kernel_at_least(&release, (6, 7))
}

/// Whether a kernel release string ("6.18.0-foo") is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn spawn_epoch_ticker(engine: wasmtime::Engine, tick: Duration, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .expect("spawning the epoch ticker thread");
}

fn compile(
    engine: &wasmtime::Engine,
    bytes: &[u8],
) -> Result<wasmtime::component::Component, EngineError> {
    wasmtime::component::Component::new(engine, bytes)
        .map_err(|e| EngineError::Invalid(first_line(&e)))
}

/// Rejects what is plainly not a component before handing it to the compiler.
fn check_header(bytes: &[u8]) -> Result<(), EngineError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(EngineError::NotWasm);
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(EngineError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        _ => Err(EngineError::Invalid(
            "unknown WebAssembly version or layer".into(),
        )),
    }
}

fn validate_manifest(manifest: &Manifest) -> Result<(), EngineError> {
    if manifest.flows.is_empty() {
        return Err(EngineError::InvalidManifest("it declares no flows".into()));
    }
    let mut names = std::collections::HashSet::new();
    for name in manifest
        .flows
        .iter()
        .map(|f| &f.name)
        .chain(manifest.tasks.iter().map(|t| &t.name))
    {
        if name.is_empty() || name.len() > 200 {
            return Err(EngineError::InvalidManifest(format!("bad name '{name}'")));
        }
        if !names.insert(name) {
            return Err(EngineError::InvalidManifest(format!(
                "the name '{name}' is declared twice"
            )));
        }
    }
    Ok(())
}

fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or_default().to_string()
}

/// Turns a trap into a failure a user understands.
fn classify_trap(
    error: &wasmtime::Error,
    store: &Store<Sandbox>,
    output: &OutputCapture,
) -> Failure {
    let limiter = &store.data().limiter;
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::new(
            FailureKind::OutOfFuel,
            "ran out of fuel (its instruction budget); raise `fuel` in the task policy if this work is expected",
        ),
        Some(Trap::Interrupt) => Failure::new(FailureKind::Timeout, "interrupted at its deadline"),
        _ if limiter.denied => Failure::new(
            FailureKind::Memory,
            format!(
                "exceeded its memory limit of {}; raise `memory` in the task policy if this is expected",
                human_bytes(limiter.limit as u64)
            ),
        ),
        Some(Trap::StackOverflow) => Failure::new(
            FailureKind::Trap,
            "stack overflow (deep or endless recursion)",
        ),
        Some(trap) => match output.panic_message() {
            Some(panic) => Failure::new(FailureKind::Trap, format!("guest panicked: {panic}")),
            None => Failure::new(FailureKind::Trap, format!("guest trapped: {trap}")),
        },
        None => Failure::new(
            FailureKind::Trap,
            format!("guest trapped: {}", first_line(error)),
        ),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn from_wit_error(error: wit::TaskError) -> Failure {
    match error {
        wit::TaskError::Failed(message) => Failure::new(FailureKind::Failed, cap_text(message)),
        wit::TaskError::InvalidInput(message) => {
            Failure::new(FailureKind::InvalidInput, cap_text(message))
        }
        wit::TaskError::Cancelled => Failure::new(FailureKind::Cancelled, "cancelled"),
        wit::TaskError::Sandbox(failure) => {
            let kind = match failure.kind {
                wit::SandboxFailureKind::OutOfFuel => FailureKind::OutOfFuel,
                wit::SandboxFailureKind::DeadlineExceeded => FailureKind::Timeout,
                wit::SandboxFailureKind::MemoryLimit => FailureKind::Memory,
                wit::SandboxFailureKind::Trap => FailureKind::Trap,
                wit::SandboxFailureKind::InvalidOutput => FailureKind::InvalidOutput,
            };
            Failure::new(kind, cap_text(failure.message))
        }
    }
}

fn to_wit_error(failure: Failure) -> wit::TaskError {
    let sandbox = |kind| {
        wit::TaskError::Sandbox(wit::SandboxFailure {
            kind,
            message: failure.message.clone(),
        })
    };
    match failure.kind {
        FailureKind::Failed | FailureKind::Crashed => wit::TaskError::Failed(failure.message),
        FailureKind::InvalidInput => wit::TaskError::InvalidInput(failure.message),
        FailureKind::Cancelled => wit::TaskError::Cancelled,
        FailureKind::OutOfFuel => sandbox(wit::SandboxFailureKind::OutOfFuel),
        FailureKind::Timeout => sandbox(wit::SandboxFailureKind::DeadlineExceeded),
        FailureKind::Memory => sandbox(wit::SandboxFailureKind::MemoryLimit),
        FailureKind::Trap => sandbox(wit::SandboxFailureKind::Trap),
        FailureKind::InvalidOutput => sandbox(wit::SandboxFailureKind::InvalidOutput),
    }
}

/// Error messages from guests are kept to a readable size.
fn cap_text(mut text: String) -> String {
    const MAX: usize = 16 << 10;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" … (truncated)");
    }
    text
}

/// WASI with nothing granted but `granted` (directories at their own paths,
/// environment variables with this process's values): no network; stdio captured.
/// A granted directory that cannot be opened here is left out: the guest's
/// open fails, naming the path.
fn sandboxed_wasi(output: &OutputCapture, granted: &Capabilities) -> WasiCtx {
    let mut builder = WasiCtx::builder();
    for dir in &granted.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        if let Err(e) = builder.preopened_dir(&dir.path, &dir.path, perms) {
            tracing::warn!("granted directory {} cannot be opened here: {e}", dir.path);
        }
    }
    for name in &granted.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    builder
        .stdout(output.stream(LogLevel::Info))
        .stderr(output.stream(LogLevel::Warn))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}

/// Per-store data: WASI state, the host that serves imports, and limits.
struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Made on the guest's first wasi:http call.
    http: Option<http::HttpState>,
    host: Arc<dyn GuestHost>,
    limiter: MemoryLimiter,
    max_payload_bytes: usize,
    cancel: CancellationToken,
    /// `take-slots` handles not yet given back; dropped with the instance.
    held_slots: HashMap<u64, HeldSlots>,
    next_slots_handle: u64,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for Sandbox {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        let state = self
            .http
            .get_or_insert_with(|| http::HttpState::new(self.host.clone()));
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut state.ctx,
            hooks: &mut state.gate,
            table: &mut self.table,
        }
    }
}

impl Sandbox {
    fn check_payload(&self, what: &str, payload: &str) -> Result<(), Failure> {
        check_payload(what, payload, self.max_payload_bytes)
    }
}

fn check_payload(what: &str, payload: &str, max_payload_bytes: usize) -> Result<(), Failure> {
    if payload.len() > max_payload_bytes {
        return Err(Failure::new(
            FailureKind::InvalidInput,
            format!(
                "{what} is {} bytes, over the limit of {max_payload_bytes} bytes; pass large data by reference",
                payload.len(),
            ),
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map(|_| ())
        .map_err(|e| {
            Failure::new(
                FailureKind::InvalidInput,
                format!("{what} is not JSON: {e}"),
            )
        })
}

/// Waits for the host's answer, or for cancellation of the run.
///
/// Owns everything it needs: store data is not `Sync`, so the future must not borrow it.
async fn guarded(
    cancel: CancellationToken,
    call: impl Future<Output = Result<String, Failure>> + Send,
) -> wasmtime::Result<Result<String, wit::TaskError>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Ok(Err(wit::TaskError::Cancelled)),
        result = call => Ok(result.map_err(to_wit_error)),
    }
}

impl wit::Host for Sandbox {}

impl bindings::weir::flow::runtime::Host for Sandbox {
    async fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            wit::LogLevel::Trace => LogLevel::Trace,
            wit::LogLevel::Debug => LogLevel::Debug,
            wit::LogLevel::Info => LogLevel::Info,
            wit::LogLevel::Warn => LogLevel::Warn,
            wit::LogLevel::Error => LogLevel::Error,
        };
        self.host.log(level, &cap_text(message));
        Ok(())
    }

    async fn call_task(
        &mut self,
        name: String,
        input: String,
    ) -> wasmtime::Result<Result<String, wit::TaskError>> {
        if let Err(failure) = self.check_payload("task input", &input) {
            return Ok(Err(to_wit_error(failure)));
        }
        let host = self.host.clone();
        guarded(self.cancel.clone(), async move {
            host.call_task(name, input).await
        })
        .await
    }

    async fn submit_task(&mut self, name: String, input: String) -> wasmtime::Result<u64> {
        let host = self.host.clone();
        Ok(host.submit_task(name, input).await)
    }

    async fn await_task(
        &mut self,
        handle: u64,
    ) -> wasmtime::Result<Result<String, wit::TaskError>> {
        let host = self.host.clone();
        guarded(
            self.cancel.clone(),
            async move { host.await_task(handle).await },
        )
        .await
    }

    async fn call_flow(
        &mut self,
        name: String,
        params: String,
    ) -> wasmtime::Result<Result<String, wit::TaskError>> {
        if let Err(failure) = self.check_payload("flow params", &params) {
            return Ok(Err(to_wit_error(failure)));
        }
        let host = self.host.clone();
        guarded(self.cancel.clone(), async move {
            host.call_flow(name, params).await
        })
        .await
    }

    async fn get_secret(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.host.get_secret(&name))
    }

    async fn get_variable(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        if name.len() > 1000 {
            return Ok(None);
        }
        let host = self.host.clone();
        let read = async move { host.get_variable(name).await };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(wasmtime::Error::msg("the run was cancelled")),
            value = read => value.map_err(|failure| wasmtime::Error::msg(failure.message)),
        }
    }

    async fn pause(
        &mut self,
        timeout_seconds: u64,
        input_schema: String,
    ) -> wasmtime::Result<Result<String, wit::TaskError>> {
        if let Err(failure) = self.check_payload("pause input schema", &input_schema) {
            return Ok(Err(to_wit_error(failure)));
        }
        let host = self.host.clone();
        // Beyond ~a century a deadline means nothing; capping it keeps time arithmetic in range.
        let timeout = Duration::from_secs(timeout_seconds.min(100 * 365 * 86_400));
        let answer = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Ok(Err(wit::TaskError::Cancelled)),
            answer = host.pause(timeout, input_schema) => answer,
        };
        match answer {
            Ok(PauseAnswer::Input(input)) => Ok(Ok(input)),
            Ok(PauseAnswer::Suspend) => Err(wasmtime::Error::new(Suspended)),
            Err(failure) => Ok(Err(to_wit_error(failure))),
        }
    }

    async fn create_artifact(
        &mut self,
        artifact: bindings::weir::flow::runtime::Artifact,
    ) -> wasmtime::Result<Result<String, wit::TaskError>> {
        use bindings::weir::flow::runtime::ArtifactKind as WitKind;
        let artifact = NewArtifact {
            kind: match artifact.kind {
                WitKind::Markdown => ArtifactKind::Markdown,
                WitKind::Table => ArtifactKind::Table,
                WitKind::Link => ArtifactKind::Link,
            },
            key: artifact.key,
            description: artifact.description,
            data: artifact.data,
        };
        let host = self.host.clone();
        guarded(self.cancel.clone(), async move {
            host.create_artifact(artifact).await
        })
        .await
    }

    async fn run_deployment(
        &mut self,
        name: String,
        params: String,
        wait: bool,
    ) -> wasmtime::Result<Result<String, wit::TaskError>> {
        if let Err(failure) = self.check_payload("deployment params", &params) {
            return Ok(Err(to_wit_error(failure)));
        }
        let host = self.host.clone();
        guarded(self.cancel.clone(), async move {
            host.run_deployment(name, params, wait).await
        })
        .await
    }

    async fn take_slots(
        &mut self,
        names: Vec<String>,
        slots: u32,
        timeout_seconds: Option<u64>,
    ) -> wasmtime::Result<Result<u64, wit::TaskError>> {
        if self.held_slots.len() >= MAX_HELD_SLOTS {
            return Ok(Err(to_wit_error(Failure::new(
                FailureKind::Failed,
                format!(
                    "this instance holds {MAX_HELD_SLOTS} take-slots handles already; release some first"
                ),
            ))));
        }
        if names.is_empty() || names.len() > 64 || names.iter().any(|n| n.len() > 100) {
            return Ok(Err(to_wit_error(Failure::new(
                FailureKind::InvalidInput,
                "take-slots needs 1 to 64 limit names of at most 100 bytes each",
            ))));
        }
        let timeout = timeout_seconds.map(Duration::from_secs);
        let host = self.host.clone();
        let taken = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => {
                Err(Failure::new(FailureKind::Cancelled, "the run was cancelled"))
            }
            taken = host.take_slots(names, slots, timeout) => taken,
        };
        match taken {
            Ok(held) => {
                let handle = self.next_slots_handle;
                self.next_slots_handle += 1;
                self.held_slots.insert(handle, held);
                Ok(Ok(handle))
            }
            Err(failure) => Ok(Err(to_wit_error(failure))),
        }
    }

    async fn release_slots(&mut self, handle: u64) -> wasmtime::Result<()> {
        self.held_slots.remove(&handle);
        Ok(())
    }

    async fn info(&mut self) -> wasmtime::Result<wit::RunInfo> {
        let info = self.host.info();
        Ok(wit::RunInfo {
            flow_run_id: info.flow_run_id,
            task_run_id: info.task_run_id,
            attempt: info.attempt,
            flow_name: info.flow_name,
            task_name: info.task_name,
            deployment: info.deployment,
            scheduled_at: info.scheduled_at,
        })
    }
}

/// Caps the memory of an instance and remembers the peak and whether a
/// request was denied. The cap is on the sum of all the instance's linear
/// memories (a component may have several), not on each.
struct MemoryLimiter {
    limit: usize,
    /// Bytes of every memory of the instance together.
    total: usize,
    peak_memory: usize,
    denied: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.total = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Serves `describe()`: a component may log while describing itself, nothing more.
struct DescribeHost;

impl GuestHost for DescribeHost {
    fn log(&self, level: LogLevel, message: &str) {
        tracing::debug!(%level, "describe: {message}");
    }
    fn refusal(&self) -> Failure {
        Failure::new(
            FailureKind::Failed,
            "tasks and flows cannot be called from describe()",
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.18.0-cloud\n", (6, 7)));
        assert!(kernel_at_least("6.7.1", (6, 7)));
        assert!(kernel_at_least("7.0", (6, 7)));
        assert!(!kernel_at_least("6.6.30-lts", (6, 7)));
        assert!(!kernel_at_least("5.19.0", (6, 7)));
        assert!(!kernel_at_least("", (6, 7)));
        assert!(!kernel_at_least("garbage", (6, 7)));
    }

    use super::*;

    /// Components are compiled in a scratch engine without the instance
    /// pool and loaded into the pooling one; were their compatibility
    /// hashes to differ, every compile would silently fall back to the
    /// engine itself (and keep the compiler's memory).
    #[test]
    fn the_scratch_compile_engine_makes_artifacts_this_engine_takes() {
        let engine = Engine::new(EngineConfig::default()).unwrap();
        let scratch = wasmtime::Engine::new(&engine.compile_config).unwrap();
        assert_eq!(
            cache::compatibility_hash(&scratch),
            cache::compatibility_hash(&engine.wasmtime)
        );
    }

    #[test]
    fn header_check_names_the_problem() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(EngineError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(EngineError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn wit_errors_round_trip() {
        for kind in FailureKind::ALL {
            let failure = Failure::new(kind, "m");
            let back = from_wit_error(to_wit_error(failure.clone()));
            let expected = match kind {
                FailureKind::Crashed => FailureKind::Failed,
                other => other,
            };
            assert_eq!(back.kind, expected);
        }
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
    }
}
