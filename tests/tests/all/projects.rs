//! Guest projects as a new user meets them: `host init` for each language
//! gives a project that `host flow run` runs at once, and `host serve` runs a
//! flow on its schedule with live logs until SIGINT, then stops cleanly.
//!
//! The Python and JavaScript projects need python3, node and npm and reach
//! PyPI and npm on first use, so they run only with WEIR_POLYGLOT_TESTS=1 (CI
//! sets it), with the toolchains shared with `tests/polyglot.rs`. The C
//! project needs clang for wasm32-wasi (`c_toolchain_or_skip`), the C++ one
//! libc++ too (`cpp_toolchain_or_skip`).

use crate::common::text;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weir_tests::{FIXTURE_WASM, HELLO_WASM, c_toolchain_or_skip, cpp_toolchain_or_skip, workspace};

const HOST: &str = env!("CARGO_BIN_EXE_host-under-test");

fn polyglot_enabled(test: &str) -> bool {
    let on = std::env::var("WEIR_POLYGLOT_TESTS").is_ok_and(|v| v == "1");
    if !on {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: set WEIR_POLYGLOT_TESTS=1 to build and run Python and JavaScript guests"
        );
    }
    on
}

/// The test build's target dir: a Rust project made by `host init` builds into
/// its `weir-guests` folder, beside the fixtures, and reuses their dependencies.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn command(home: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(HOST);
    command
        .args(args)
        .env("WEIR_HOME", home)
        .env(
            "WEIR_TOOLCHAINS",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-toolchains"),
        )
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(cwd)
        .stdin(Stdio::null());
    command
}

fn host(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    command(home, cwd, args).output().expect("running the host")
}

fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&output.stdout), text(&output.stderr)))
}

/// `host init demo-LANG --lang LANG`, then `host flow run demo-LANG`, from
/// the folder a user would be in; the hello flow greets the world.
fn init_then_run(lang: &str) {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let name = format!("demo-{lang}");
    let out = host(home.path(), work.path(), &["init", &name, "--lang", lang]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let project = work.path().join(&name);
    for file in ["README.md", "weir.yaml"] {
        assert!(project.join(file).is_file(), "{file} missing");
    }
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.lines().count() <= 4, "a short README: {readme}");

    let out = host(home.path(), work.path(), &["flow", "run", &name, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = json_out(&out);
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"], "Hello, world!", "{run}");
    let out = host(
        home.path(),
        work.path(),
        &[
            "flow", "run", &name, "hello", "--param", "name=Ada", "--json",
        ],
    );
    assert_eq!(json_out(&out)["result"], "Hello, Ada!");

    // Its weir.yaml deploys as it is.
    let out = host(
        home.path(),
        &project,
        &["deploy", "-f", "weir.yaml", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        json_out(&out)["deployments"][0]["deployment"]["flow"],
        "hello"
    );

    // Running init again over it changes nothing.
    let before = std::fs::read_to_string(project.join("weir.yaml")).unwrap();
    let out = host(home.path(), work.path(), &["init", &name, "--lang", lang]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(project.join("weir.yaml")).unwrap(),
        before
    );
}

#[test]
fn a_rust_project_from_init_runs_at_once() {
    init_then_run("rust");
}

#[test]
fn a_python_project_from_init_runs_at_once() {
    if polyglot_enabled("a_python_project_from_init_runs_at_once") {
        init_then_run("python");
    }
}

#[test]
fn a_js_project_from_init_runs_at_once() {
    if polyglot_enabled("a_js_project_from_init_runs_at_once") {
        init_then_run("js");
    }
}

#[test]
fn a_c_project_from_init_runs_at_once() {
    if c_toolchain_or_skip("a_c_project_from_init_runs_at_once") {
        init_then_run("c");
    }
}

#[test]
fn a_cpp_project_from_init_runs_at_once() {
    if !cpp_toolchain_or_skip("a_cpp_project_from_init_runs_at_once") {
        return;
    }
    init_then_run("cpp");
    // `c++` names the same language.
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(home.path(), work.path(), &["init", "plus", "--lang", "c++"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest = std::fs::read_to_string(work.path().join("plus/weir.toml")).unwrap();
    assert!(manifest.contains("language = \"cpp\""), "{manifest}");
    assert!(work.path().join("plus/app.cpp").is_file());
}

#[test]
fn init_refuses_names_no_package_manager_takes_and_unknown_languages() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    for args in [
        &["init", "1demo"][..],
        &["init", "my demo"],
        &["init", "demo", "--lang", "cobol"],
    ] {
        let out = host(home.path(), work.path(), args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "nothing was written"
    );
}

/// A `host serve` process whose output lines arrive on a channel.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    fn start(home: &Path, args: &[&str]) -> Served {
        let mut child = command(home, &workspace(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting host serve");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Served {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) until `count` lines satisfy `wanted`.
    fn wait_for(&mut self, count: usize, limit: Duration, wanted: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        while self.seen.iter().filter(|l| wanted(l)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "waited {limit:?} for {count} such lines; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn interrupt(&self) {
        // SAFETY: signalling a child process this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
    }

    /// Waits (bounded) for the process to end and returns its exit code and all it printed.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("host serve did not stop:\n{}", self.seen.join("\n"));
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line);
            }
        };
        // The readers end with the pipes.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.join("\n"))
    }
}

fn runs_of(home: &Path, deployment: &str) -> Vec<Value> {
    let out = host(
        home,
        &workspace(),
        &["flow-run", "ls", "--limit", "1000", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = json_out(&out);
    runs.as_array()
        .or_else(|| runs["flow_runs"].as_array())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["deployment"] == deployment)
        .collect()
}

#[test]
fn serve_runs_a_flow_every_second_with_live_logs_and_stops_cleanly_on_sigint() {
    let home = tempfile::tempdir().unwrap();
    let mut served = Served::start(
        home.path(),
        &[
            "serve",
            HELLO_WASM,
            "--flow",
            "hello",
            "--name",
            "every-second",
            "--interval",
            "1s",
            "--param",
            "name=serve",
            "--addr",
            "127.0.0.1:0",
        ],
    );
    let completed = |l: &str| l.contains("Completed flow run") && l.contains("HELLO, SERVE!");
    served.wait_for(2, Duration::from_secs(90), completed);
    // Each run's own log lines were shown too, not only how it ended.
    assert!(
        served
            .seen
            .iter()
            .filter(|l| l.contains("INFO  greeting serve"))
            .count()
            >= 2,
        "{}",
        served.seen.join("\n")
    );
    served.interrupt();
    let (code, output) = served.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("Stopped."), "{output}");

    let runs = runs_of(home.path(), "every-second");
    assert!(runs.len() >= 2, "{runs:#?}");
    for run in &runs {
        // A run whose time came as the signal did is cancelled before it starts.
        if run["state"] == "Cancelled" && run["started_at"].is_null() {
            continue;
        }
        assert_eq!(
            run["state"], "Completed",
            "every run made was finished, none left running, waiting ahead or crashed: {run}\n{output}"
        );
    }
    assert_paused(home.path(), "every-second");
}

fn assert_paused(home: &Path, deployment: &str) {
    let out = host(
        home,
        &workspace(),
        &["deployment", "inspect", deployment, "--json"],
    );
    let inspected = json_out(&out);
    let paused = inspected["paused"]
        .as_bool()
        .or_else(|| inspected["deployment"]["paused"].as_bool());
    assert_eq!(
        paused,
        Some(true),
        "paused on the way out, so no other server takes its schedule up: {inspected}"
    );
}

#[test]
fn a_run_in_flight_when_serve_is_interrupted_finishes_before_it_stops() {
    let home = tempfile::tempdir().unwrap();
    let ready = home.path().join("ready.json");
    // Each run takes about two seconds (20 tasks of 100 ms).
    let served = Served::start(
        home.path(),
        &[
            "serve",
            FIXTURE_WASM,
            "--flow",
            "slow_sequential",
            "--name",
            "slow",
            "--interval",
            "1s",
            "--param",
            "n=20",
            "--param",
            "ms=100",
            "--addr",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let ready: Value = serde_json::from_str(&text).unwrap();
            break ready["url"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "host serve never got ready");
        std::thread::sleep(Duration::from_millis(20));
    };
    let running = loop {
        let page: Value = ureq::get(format!("{url}/api/flow-runs?deployment=slow&state=Running"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        if let Some(run) = page["flow_runs"].as_array().and_then(|a| a.first()) {
            break run["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no run started");
        std::thread::sleep(Duration::from_millis(20));
    };
    served.interrupt();
    let (code, output) = served.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("Completed flow run {running}")),
        "the run in flight was followed to its end: {output}"
    );
    let runs = runs_of(home.path(), "slow");
    let run = runs.iter().find(|r| r["id"] == running.as_str()).unwrap();
    assert_eq!(run["state"], "Completed", "{run}");
    assert_eq!(run["result"], "2000", "{run}");
    assert!(
        runs.iter().all(|r| r["state"] == "Completed"
            || (r["state"] == "Cancelled" && r["started_at"].is_null())),
        "{runs:#?}"
    );
    assert_paused(home.path(), "slow");
}

#[test]
fn serve_refuses_before_listening_when_the_project_or_schedule_is_bad() {
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_string_lossy().into_owned();
    for args in [
        // Not a project: nothing is built, nothing listens.
        &["serve", &path, "--flow", "hello", "--addr", "127.0.0.1:0"][..],
        &[
            "serve",
            FIXTURE_WASM,
            "--flow",
            "hello",
            "--cron",
            "* * * * *",
            "--interval",
            "1s",
        ],
        &[
            "serve",
            FIXTURE_WASM,
            "--flow",
            "fan_out",
            "--interval",
            "0s",
        ],
    ] {
        let out = host(home.path(), &workspace(), args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("Weir server on"), "{args:?}");
    }
    // A flow the component does not have: refused when deploying, and the
    // server it started is stopped again (the command ends).
    let out = host(
        home.path(),
        &workspace(),
        &[
            "serve",
            FIXTURE_WASM,
            "--flow",
            "no_such_flow",
            "--interval",
            "1s",
            "--addr",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no_such_flow"),
        "{}",
        text(&out.stderr)
    );
}

/// A new project, with `edit` applied to its entry file, built with a
/// backtrace asked for (as a developer's shell may): what does the user see?
fn build_error(lang: &str, entry: &str, edit: impl Fn(&str) -> String) -> String {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(
        home.path(),
        work.path(),
        &["init", "broken", "--lang", lang],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = work.path().join("broken").join(entry);
    let source = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, edit(&source)).unwrap();
    let out = command(home.path(), work.path(), &["build", "broken"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for noise in [
        "Stack backtrace",
        "anyhow",
        "componentize_py::",
        "Traceback (most recent call last)",
        "node_modules",
        ".tmp-",
    ] {
        assert!(!stderr.contains(noise), "{noise:?} shown:\n{stderr}");
    }
    stderr
}

#[test]
fn python_build_errors_show_the_file_line_message_and_advice_only() {
    if !polyglot_enabled("python_build_errors_show_the_file_line_message_and_advice_only") {
        return;
    }
    let stderr = build_error("python", "app.py", |s| format!("import json5\n{s}"));
    assert!(
        stderr.contains(
            "broken/app.py:1: ModuleNotFoundError: No module named 'json5'\n    import json5\nhint: add `json5` to [project] dependencies in pyproject.toml"
        ),
        "{stderr}"
    );
    let stderr = build_error("python", "app.py", |s| format!("{s}\ndef oops(:\n"));
    assert!(stderr.contains("SyntaxError: invalid syntax"), "{stderr}");
    assert!(stderr.contains("def oops(:"), "{stderr}");
}

#[test]
fn js_build_errors_show_the_file_line_message_and_advice_only() {
    if !polyglot_enabled("js_build_errors_show_the_file_line_message_and_advice_only") {
        return;
    }
    let stderr = build_error("js", "app.js", |s| {
        format!("import JSON5 from \"json5\";\n{s}\nexport const x = JSON5;\n")
    });
    assert!(
        stderr.contains("broken/app.js:1:19: cannot find the module 'json5'\n    import JSON5 from \"json5\";\nhint: add \"json5\" to \"dependencies\" in package.json"),
        "{stderr}"
    );
    let stderr = build_error("js", "app.js", |s| {
        format!("{s}\nconst x = null;\nx.boom();\n")
    });
    assert!(
        stderr.contains("Error: cannot read property 'boom' of null\nhint:"),
        "{stderr}"
    );
}

#[test]
fn c_build_errors_show_clangs_file_line_message_and_advice_only() {
    if !c_toolchain_or_skip("c_build_errors_show_clangs_file_line_message_and_advice_only") {
        return;
    }
    // A missing semicolon on the first line, and a second error further on.
    let stderr = build_error("c", "app.c", |s| {
        format!("int broken(void) {{ return 1 }}\n{s}\nint later(void) {{ return nope; }}\n")
    });
    assert!(
        stderr.contains(
            "broken/app.c:1:28: expected ';' after return statement\n    int broken(void) { return 1 }\nhint: fix the code at that line (1 more error after this one"
        ),
        "{stderr}"
    );
    for noise in ["errors generated", "clang: error", "wasm-ld", "^"] {
        assert!(!stderr.contains(noise), "{noise:?} shown:\n{stderr}");
    }
    // A symbol no file defines fails at the link, named.
    let stderr = build_error("c", "app.c", |s| {
        let called = s.replacen("weir_info(", "undefined_helper();\n    weir_info(", 1);
        format!("void undefined_helper(void);\n{called}")
    });
    assert!(
        stderr.contains("undefined symbol: undefined_helper\nhint: define `undefined_helper`"),
        "{stderr}"
    );
}

/// C++ goes through the same reading of clang's output as C: file, line,
/// message and the line of code; a `throw` (C++ guests have no exceptions)
/// says what to write instead.
#[test]
fn cpp_build_errors_show_clangs_file_line_message_and_advice_only() {
    if !cpp_toolchain_or_skip("cpp_build_errors_show_clangs_file_line_message_and_advice_only") {
        return;
    }
    let stderr = build_error("cpp", "app.cpp", |s| {
        format!("#include <vector>\nint broken() {{ std::vector<int> v{{1}}; return v[0] }}\n{s}")
    });
    assert!(
        stderr.contains(
            "the C++ guest failed to build:\nbroken/app.cpp:2:50: expected ';' after return statement\n    int broken() { std::vector<int> v{1}; return v[0] }\nhint: fix the code at that line"
        ),
        "{stderr}"
    );
    for noise in [
        "errors generated",
        "clang: error",
        "clang++",
        "wasm-ld",
        "^",
    ] {
        assert!(!stderr.contains(noise), "{noise:?} shown:\n{stderr}");
    }
    let stderr = build_error("cpp", "app.cpp", |s| {
        format!("int thrower(int n) {{ if (n) throw n; return 0; }}\n{s}")
    });
    assert!(
        stderr.contains("broken/app.cpp:1:29: cannot use 'throw' with exceptions disabled\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: C++ guests are built with -fno-exceptions")
            && stderr.contains("weir_fail"),
        "{stderr}"
    );
}

/// A C++ file in a project that says `language = "c"` is refused before any
/// compile, with the line to change; a weir.toml naming neither is refused too.
#[test]
fn a_cpp_file_in_a_c_project_names_the_language_to_declare() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(home.path(), work.path(), &["init", "mixed", "--lang", "c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let project = work.path().join("mixed");
    std::fs::create_dir(project.join("src")).unwrap();
    std::fs::write(project.join("src/extra.cc"), "int extra() { return 1; }\n").unwrap();
    let out = host(home.path(), work.path(), &["build", "mixed"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("src/extra.cc is C++ but language = \"c\"; say language = \"cpp\""),
        "{stderr}"
    );
    std::fs::write(project.join("weir.toml"), "language = \"c#\"\n").unwrap();
    let out = host(home.path(), work.path(), &["build", "mixed"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("use \"c\" or \"cpp\""),
        "{}",
        text(&out.stderr)
    );
}

/// A clang++ that finds no libc++ fails a C++ build with one line naming
/// the apt packages, not with `'string' file not found` in the user's code;
/// a build already made is reused without asking.
#[test]
fn a_cpp_build_without_libcxx_names_the_apt_packages() {
    if !c_toolchain_or_skip("a_cpp_build_without_libcxx_names_the_apt_packages") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(home.path(), work.path(), &["init", "demo", "--lang", "cpp"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bin = tempfile::tempdir().unwrap();
    let real_path = std::env::var("PATH").unwrap_or_default();
    let fake = bin.path().join("clang++");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nPATH='{real_path}' exec clang++ --sysroot=/nonexistent \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = command(home.path(), work.path(), &["build", "demo"])
        .env("PATH", format!("{}:{real_path}", bin.path().display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("libc++.a (the C++ standard library for wasm32-wasi) is missing here")
            && stderr.contains(
                "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 libc++-dev-wasm32"
            ),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // Built once with libc++ there, the project is a cache hit without
    // asking clang++ again (two clang++ runs took a hit to 148 ms).
    let out = host(home.path(), work.path(), &["build", "demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = command(home.path(), work.path(), &["build", "demo", "--json"])
        .env("PATH", format!("{}:{real_path}", bin.path().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["reused_build"], true);
}

/// A C build is reused while nothing in the project changes (rewriting a
/// file with the same bytes included), and made again when a header the
/// code includes changes, with a new component.
#[test]
fn a_c_build_is_reused_until_a_file_changes() {
    if !c_toolchain_or_skip("a_c_build_is_reused_until_a_file_changes") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(home.path(), work.path(), &["init", "cache", "--lang", "c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let project = work.path().join("cache");
    std::fs::write(project.join("greeting.h"), "#define GREETING \"Hello\"\n").unwrap();
    let app = std::fs::read_to_string(project.join("app.c"))
        .unwrap()
        .replace(
            "#include \"weir.h\"",
            "#include \"weir.h\"\n#include \"greeting.h\"",
        )
        .replace("\"Hello, %s!\", name", "\"%s, %s!\", GREETING, name");
    std::fs::write(project.join("app.c"), &app).unwrap();
    let build = || {
        let out = host(home.path(), work.path(), &["build", "cache", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json_out(&out)
    };
    let first = build();
    assert_eq!(first["reused_build"], false, "{first}");
    std::fs::write(project.join("app.c"), &app).unwrap();
    let second = build();
    assert_eq!(second["reused_build"], true, "{second}");
    assert_eq!(second["digest"], first["digest"]);

    std::fs::write(project.join("greeting.h"), "#define GREETING \"Howdy\"\n").unwrap();
    let third = build();
    assert_eq!(third["reused_build"], false, "{third}");
    assert_ne!(third["digest"], first["digest"]);
    let out = host(
        home.path(),
        work.path(),
        &["flow", "run", "cache", "--json"],
    );
    assert_eq!(json_out(&out)["result"], "Howdy, world!");
}

/// A project saying `language = "c++"` (the alias of "cpp") builds its C++
/// files with the C SDK's header and macros (classes, namespaces).
#[test]
fn a_cpp_file_builds_and_runs_with_the_c_sdk() {
    if !cpp_toolchain_or_skip("a_cpp_file_builds_and_runs_with_the_c_sdk") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("cpp");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("weir.toml"), "language = \"c++\"\n").unwrap();
    std::fs::write(
        project.join("app.cpp"),
        r#"#include "weir.h"

namespace {
class Greeter {
  public:
    explicit Greeter(const char *word) : word_(word) {}
    char *greet(const char *name) const { return weir_json_printf("\"%s, %s!\"", word_, name); }
  private:
    const char *word_;
};
} // namespace

static char *hello(weir_json params) {
    static const Greeter greeter("Hello");
    char *name = weir_json_string(weir_json_get(params, "name"));
    char *out = greeter.greet(name != nullptr ? name : "world");
    free(name);
    return out;
}
WEIR_FLOW(hello, .description = "Greets from C++.");
"#,
    )
    .unwrap();
    let out = host(
        home.path(),
        work.path(),
        &["flow", "run", "cpp", "--param", "name=C++", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["result"], "Hello, C++!");
}

/// Without clang (or with clang but no wasi-libc) a C build fails with one
/// line naming the apt packages, not a compiler's wall of text.
#[test]
fn a_c_build_without_the_toolchain_names_the_apt_packages() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(home.path(), work.path(), &["init", "demo", "--lang", "c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let install = "install them with `apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 libc++-dev-wasm32`";
    // The build's progress line aside, the error is one line.
    let error_lines = |stderr: &str| {
        stderr
            .trim()
            .lines()
            .filter(|l| !l.starts_with("Building "))
            .count()
    };
    let empty_path = tempfile::tempdir().unwrap();
    let out = command(home.path(), work.path(), &["build", "demo"])
        .env("PATH", empty_path.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("clang is missing here") && stderr.contains(install),
        "{stderr}"
    );
    assert_eq!(error_lines(&stderr), 1, "one line: {stderr}");

    // A clang that finds no wasi-libc (its sysroot points nowhere).
    if !c_toolchain_or_skip("a_c_build_without_wasi_libc_names_the_apt_packages") {
        return;
    }
    let real_path = std::env::var("PATH").unwrap_or_default();
    let fake = empty_path.path().join("clang");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nPATH='{real_path}' exec clang --sysroot=/nonexistent \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = command(home.path(), work.path(), &["build", "demo"])
        .env(
            "PATH",
            format!("{}:{real_path}", empty_path.path().display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("wasi-libc is missing here") && stderr.contains(install),
        "{stderr}"
    );
    assert_eq!(error_lines(&stderr), 1, "one line: {stderr}");
}

/// `host init NAME --lang LANG` in a fresh folder, with files replaced.
fn project_with(lang: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = host(home.path(), work.path(), &["init", "deps", "--lang", lang]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (name, body) in files {
        std::fs::write(work.path().join("deps").join(name), body).unwrap();
    }
    (home, work)
}

#[test]
fn python_dependencies_come_from_pypi_run_in_the_sandbox_and_lock_pins_win() {
    if !polyglot_enabled("python_dependencies_come_from_pypi") {
        return;
    }
    let app = "import humanize\nfrom weir_sdk import flow, task\n\n\n@task\ndef fmt(n: int) -> str:\n    return humanize.intcomma(n)\n\n\n@flow\ndef hello(n: int = 1234567) -> str:\n    return f\"{humanize.__version__} {fmt(n)}\"\n";
    // The range alone would take the newest humanize; the lock says 4.11.0.
    let pyproject =
        "[project]\nname = \"deps\"\nversion = \"0.1.0\"\ndependencies = [\"humanize>=4\"]\n";
    let lock = "version = 1\n\n[[package]]\nname = \"deps\"\nversion = \"0.1.0\"\nsource = { virtual = \".\" }\n\n[[package]]\nname = \"humanize\"\nversion = \"4.11.0\"\nsource = { registry = \"https://pypi.org/simple\" }\n";
    let (home, work) = project_with(
        "python",
        &[
            ("app.py", app),
            ("pyproject.toml", pyproject),
            ("uv.lock", lock),
        ],
    );
    let out = host(home.path(), work.path(), &["flow", "run", "deps", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["result"], "4.11.0 1,234,567");

    let out = host(home.path(), work.path(), &["build", "deps", "--json"]);
    let again = json_out(&out);
    assert_eq!(again["reused_build"], true, "{again}");
    assert_eq!(again["load"], "cached", "{again}");
    eprintln!(
        "python with one dependency: second build (cache hit) {} ms, cached load {} ms",
        again["build_ms"], again["load_ms"]
    );

    // Without the lock the range is resolved: a different set, a different build.
    std::fs::remove_file(work.path().join("deps/uv.lock")).unwrap();
    let out = host(home.path(), work.path(), &["flow", "run", "deps", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result = json_out(&out)["result"].as_str().unwrap().to_string();
    assert!(
        result.ends_with(" 1,234,567") && !result.starts_with("4.11.0"),
        "{result}"
    );
}

#[test]
fn a_python_package_with_only_native_wheels_fails_the_build_in_one_line() {
    if !polyglot_enabled("a_python_package_with_only_native_wheels_fails_the_build_in_one_line") {
        return;
    }
    let pyproject = "[project]\nname = \"deps\"\nversion = \"0.1.0\"\ndependencies = [\"humanize>=4\", \"markupsafe==3.0.2\"]\n";
    let (home, work) = project_with("python", &[("pyproject.toml", pyproject)]);
    let out = host(home.path(), work.path(), &["build", "deps"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("`markupsafe`"), "{stderr}");
    assert!(errors[0].contains("only native wheels"), "{stderr}");
    assert!(
        stderr.lines().count() <= 2,
        "pip's own chatter is not shown:\n{stderr}"
    );
    // Nothing half-installed is kept for the next build to trust.
    let builds = std::fs::read_dir(home.path().join("builds")).unwrap();
    assert_eq!(builds.count(), 0);
}

#[test]
fn js_dependencies_from_npm_esm_and_commonjs_are_bundled_and_run() {
    if !polyglot_enabled("js_dependencies_from_npm_esm_and_commonjs_are_bundled_and_run") {
        return;
    }
    let package = r#"{"name": "deps", "private": true, "type": "module", "main": "app.js",
        "dependencies": {"pretty-bytes": "6.1.1", "humanize-plus": "1.8.2"}}"#;
    let app = r#"import prettyBytes from "pretty-bytes"; // an ES module
import Humanize from "humanize-plus"; // CommonJS
import { flow, task } from "weir-sdk";

export const fmt = task(function fmt(n) {
  return `${prettyBytes(n)} ${Humanize.formatNumber(n)}`;
});

export const hello = flow(function hello(n = 1337000) {
  return fmt(n);
});
"#;
    let (home, work) = project_with("js", &[("package.json", package), ("app.js", app)]);
    let out = host(home.path(), work.path(), &["flow", "run", "deps", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_out(&out)["result"], "1.34 MB 1,337,000");
    assert!(
        !work.path().join("deps/node_modules").exists(),
        "installed into the build cache, not the project"
    );
    let out = host(home.path(), work.path(), &["build", "deps", "--json"]);
    let again = json_out(&out);
    assert_eq!(again["reused_build"], true, "{again}");
    eprintln!(
        "js with two dependencies: second build (cache hit) {} ms, cached load {} ms",
        again["build_ms"], again["load_ms"]
    );

    let missing = r#"{"name": "deps", "private": true, "type": "module", "main": "app.js",
        "dependencies": {"no-such-package-weir-xyz": "1.0.0"}}"#;
    let (home, work) = project_with("js", &[("package.json", missing)]);
    let out = host(home.path(), work.path(), &["build", "deps"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: cannot bundle the npm package `no-such-package-weir-xyz`: it is not on the npm registry"),
        "{stderr}"
    );
}

/// A fake build folder (or compiled artifact pair) written `seconds_ago`.
fn aged_entry(dir: &Path, name: &str, seconds_ago: u64) {
    let when = std::time::SystemTime::now() - Duration::from_secs(seconds_ago);
    let path = dir.join(name);
    if name.ends_with(".cwasm") || name.ends_with(".crc32") {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&path, vec![0u8; 1000]).unwrap();
    } else {
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("component.wasm"), vec![0u8; 1000]).unwrap();
    }
    std::fs::File::open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn build_prune_keeps_the_newest_builds_and_compiled_components_and_removes_the_rest() {
    let home = tempfile::tempdir().unwrap();
    let builds = home.path().join("builds");
    let cache = home.path().join("cache");
    for (i, name) in ["python-a", "js-b", "python-deps-c", "python-d"]
        .iter()
        .enumerate()
    {
        aged_entry(&builds, name, 1000 - 100 * i as u64); // python-d is the newest
    }
    aged_entry(&builds, ".python-e.tmp-1-x", 1); // a build in progress elsewhere
    for (i, name) in ["x", "y", "z"].iter().enumerate() {
        for ext in ["cwasm", "crc32"] {
            aged_entry(&cache, &format!("{name}.{ext}"), 1000 - 100 * i as u64);
        }
    }
    // A link planted in the builds folder: removed as a link, its target untouched.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), builds.join("aaa-link")).unwrap();

    let out = host(
        home.path(),
        &workspace(),
        &["build", "--prune", "--keep", "2", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pruned = json_out(&out);
    assert_eq!(pruned["builds"]["kept"], 2, "{pruned}");
    assert_eq!(
        entries(&builds),
        [".python-e.tmp-1-x", "python-d", "python-deps-c"]
    );
    assert_eq!(
        entries(&cache),
        ["y.crc32", "y.cwasm", "z.crc32", "z.cwasm"]
    );
    assert!(outside.path().join("precious").is_file());

    // By size: 1000 bytes each, so 1500 bytes keep one.
    let out = host(
        home.path(),
        &workspace(),
        &["build", "--prune", "--max-size", "1500B"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(entries(&builds), [".python-e.tmp-1-x", "python-d"]);

    // Every build prunes to the settings on its own.
    aged_entry(&builds, "js-old", 5000);
    let out = command(home.path(), &workspace(), &["build", HELLO_WASM_PROJECT])
        .env("WEIR_BUILDS_KEEP", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(entries(&builds), [".python-e.tmp-1-x", "python-d"]);

    // A bad setting is refused, not taken for zero.
    let out = host(
        home.path(),
        &workspace(),
        &["build", "--prune", "--keep", "-1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

const HELLO_WASM_PROJECT: &str = "examples/hello";

#[test]
fn a_panic_on_stderr_is_one_log_record_shown_indented() {
    let home = tempfile::tempdir().unwrap();
    let out = host(
        home.path(),
        &workspace(),
        &[
            "flow",
            "run",
            FIXTURE_WASM,
            "call",
            "--param",
            "task=panics",
            "--param",
            "input={}",
            "--json",
        ],
    );
    let run = json_out(&out);
    let id = run["flow_run_id"].as_str().unwrap();
    let out = host(
        home.path(),
        &workspace(),
        &["flow-run", "logs", id, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let panics: Vec<&str> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .filter(|m| {
            m.contains("panicked at") || m.contains("fixture panic: boom") || m.starts_with("note:")
        })
        .filter(|m| !m.contains("failed"))
        .collect();
    assert_eq!(panics.len(), 1, "one record for the panic: {records:#?}");
    let panic = panics[0];
    assert!(
        panic.contains("panicked at") && panic.contains("\nfixture panic: boom\nnote:"),
        "{panic}"
    );
    // Shown with its later lines indented under the first.
    let out = host(home.path(), &workspace(), &["flow-run", "logs", id]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("\n{:19}fixture panic: boom\n", "")),
        "{shown}"
    );
}
