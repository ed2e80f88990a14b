//! Shared helpers for Weir's integration tests: the fixture components, a
//! throw-away `$WEIR_HOME`, and an in-process executor over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_host::clock::SystemClock;
use weir_host::config::Paths;
use weir_host::control::Control;
use weir_host::engine::{Component, Engine, EngineConfig};
use weir_host::store::Store;
use weir_host::worker::{Executor, ExecutorSettings, FlowRunOutcome, FlowRunRequest};

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

pub mod drills;
pub mod loopback;

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// An engine sized for tests, which run many at once in one process.
pub fn test_engine_config(cache_dir: Option<PathBuf>) -> EngineConfig {
    EngineConfig {
        cache_dir,
        max_instances: 200,
        max_memory_bytes: 1 << 30,
        ..EngineConfig::default()
    }
}

/// A temporary `$WEIR_HOME` with a store, an engine and an executor over it.
pub struct Harness {
    pub home: tempfile::TempDir,
    pub paths: Paths,
    pub store: Arc<Store>,
    pub engine: Arc<Engine>,
    pub executor: Arc<Executor>,
}

impl Harness {
    pub fn new() -> Harness {
        Self::with_settings(ExecutorSettings::default())
    }

    pub fn with_settings(settings: ExecutorSettings) -> Harness {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::at(home.path());
        let store = Arc::new(Store::open(&paths.database()).unwrap());
        let engine =
            Arc::new(Engine::new(test_engine_config(Some(paths.compile_cache()))).unwrap());
        let control = Arc::new(Control::new(store.clone(), Arc::new(SystemClock)));
        let executor = Executor::new(engine.clone(), control, settings);
        Harness {
            home,
            paths,
            store,
            engine,
            executor,
        }
    }

    pub async fn load(&self, wasm: &str) -> Component {
        let bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("reading {wasm}: {e}"));
        self.engine.load(&bytes).await.unwrap()
    }

    /// Runs a flow of a component to its end.
    pub async fn run(
        &self,
        component: &Component,
        flow: &str,
        params: serde_json::Value,
    ) -> FlowRunOutcome {
        let request = FlowRunRequest::new(component.clone(), flow, params.to_string());
        self.executor.run_flow(request).await.unwrap()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses a JSON result; panics with the text when it is not JSON.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Whether C guests can be built here: clang compiles and links a reactor
/// module for wasm32-wasi. Without it a test prints one SKIPPED line and
/// returns false; with `CI=true` it fails instead, since CI installs the
/// toolchain (`.ci/run`) and a skip there would hide a missing install.
pub fn c_toolchain_or_skip(test: &str) -> bool {
    toolchain_or_skip(
        test,
        "clang",
        "probe.c",
        "#include <stdlib.h>\nvoid *probe(void) { return malloc(1); }\n",
    )
}

/// Whether C++ guests can be built here: clang++ compiles and links libc++
/// for wasm32-wasi (else as [`c_toolchain_or_skip`]).
pub fn cpp_toolchain_or_skip(test: &str) -> bool {
    toolchain_or_skip(
        test,
        "clang++",
        "probe.cpp",
        "#include <string>\nextern \"C\" unsigned long probe(int n) { return std::to_string(n).size(); }\n",
    )
}

fn toolchain_or_skip(test: &str, compiler: &str, file: &str, source: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), source).unwrap();
    let built = std::process::Command::new(compiler)
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-fno-exceptions",
            file,
        ])
        .args(["-o", "probe.wasm"])
        .current_dir(dir.path())
        .output()
        .is_ok_and(|out| out.status.success());
    if !built {
        let install =
            "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 libc++-dev-wasm32";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {compiler} cannot build for wasm32-wasi here and CI=true; {install}");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: {compiler} for wasm32-wasi is not installed ({install})"
        );
    }
    built
}
