//! The command line: the only module (with `main`) that names clap and anyhow.
//!
//! Commands that read or change server state go to the API server named by
//! `api.url` (a profile or `WEIR_API_URL`), else to the local `$WEIR_HOME`
//! database through the same API in-process. Exit codes: 0 when
//! the command (and the run it started) succeeded, 1 when a run ended in any
//! state but Completed, 2 when the command could not start (bad input).

mod artifact;
mod automation;
mod backend;
mod component;
mod db;
mod deploy;
mod deployment;
mod flow;
mod init;
mod limit;
mod local;
mod output;
mod pool;
mod profile;
mod remote;
mod runs;
mod schedule;
mod secret;
mod serve;
mod server;
mod variable;

use crate::config::Paths;
use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Weir runs workflows whose flows and tasks are WebAssembly components.

Every task runs in its own sandbox with fuel, memory and deadline limits, and every
state change and log line is recorded in $WEIR_HOME (default ~/.weir).";

const AFTER_HELP: &str = "Examples:
  host init demo --lang python                    start a project with a hello flow
  host flow run examples/etl --param rows=500     build, run and watch a flow
  host serve demo --flow hello --interval 10s     serve a flow on a schedule, with live logs
  host flow inspect examples/etl                  show its flows, tasks and policies
  host flow-run ls                                recent runs
  host flow-run inspect <ID>                      a run's tasks, attempts and limits
  host flow-run logs <ID>                         a run's log
  host server start                               the API and an executor on 127.0.0.1:4200
  host config set api.url http://127.0.0.1:4200   talk to that server from now on
  host deploy -f weir.yaml                        upload and deploy flows
  host deployment run etl-nightly --watch         run a deployment and follow its log
  host run --pool wasm --api http://SERVER:4200   take a pool's runs on this machine
  host schedule preview --cron '0 2 * * *' --tz Europe/Berlin   next fire times";

#[derive(Parser, Debug)]
#[command(name = "host", version, about = ABOUT, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines go to stderr: `text` for people, `json` (one object a
    /// line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEIR_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run, inspect and build flows.
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// Compile a guest project (a folder with Cargo.toml) to a component.
    Build(flow::BuildArgs),
    /// Start a new guest project (Rust, Python or JavaScript) with a hello flow.
    Init(init::InitArgs),
    /// Build a project, deploy one of its flows and run it on a schedule in
    /// the foreground, with live logs, until Ctrl-C (Prefect's flow.serve()).
    Serve(serve::ServeArgs),
    /// Look at recorded flow runs.
    #[command(name = "flow-run", subcommand)]
    FlowRun(runs::FlowRunCommand),
    /// Run the API server with the embedded executor.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Upload and create or update deployments from a file (weir.yaml).
    Deploy(deploy::DeployArgs),
    /// List, inspect, run, pause, resume and delete deployments.
    #[command(subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// Secrets for flows: encrypted at rest, given only to deployments that grant them.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Named JSON values.
    #[command(subcommand)]
    Variable(variable::VariableCommand),
    /// Reports, tables and links that runs left.
    #[command(subcommand)]
    Artifact(artifact::ArtifactCommand),
    /// Concurrency and rate limits shared by every run on every host.
    #[command(name = "concurrency-limit", subcommand)]
    ConcurrencyLimit(limit::LimitCommand),
    /// Work pools: which executors may run a deployment's runs.
    #[command(name = "work-pool", subcommand)]
    WorkPool(pool::WorkPoolCommand),
    /// Queues inside a work pool, with priorities and limits.
    #[command(name = "work-queue", subcommand)]
    WorkQueue(pool::WorkQueueCommand),
    /// Schedules: preview when a deployment's runs will be made.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Automations: webhooks called when runs end.
    #[command(subcommand)]
    Automation(automation::AutomationCommand),
    /// Named sets of settings (profiles.toml).
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Settings of the active profile: api.url, api.key, logging.level, server.addr.
    #[command(subcommand)]
    Config(profile::ConfigCommand),
    /// Take runs of a server's work pool on this machine (a remote host).
    Run(remote::RunArgs),
    /// The database runs are kept in: check it, migrate it.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Print the version of the host and its WebAssembly runtime.
    Version(JsonFlag),
}

#[derive(Args, Debug, Clone, Copy)]
pub struct JsonFlag {
    /// Print JSON instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

/// A name and `--json`: the arguments of most `inspect`/`delete` commands.
#[derive(Args, Debug)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    format: JsonFlag,
}

/// An error that carries the exit code it should end the process with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    /// The command could not start: what was wrong with the input.
    pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
        Exit {
            code: 2,
            message: message.into(),
        }
        .into()
    }
    /// Silent exit with a code (the output already said why).
    pub fn code(code: i32) -> anyhow::Error {
        Exit {
            code,
            message: String::new(),
        }
        .into()
    }
}

/// The whole program: parse the command line, run it, print errors with their
/// causes and exit with the command's code. `main.rs` only calls this.
pub fn main() -> ! {
    restore_sigpipe();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("error: {}", exit.message);
                }
                std::process::exit(exit.code);
            }
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(1);
        }
    }
}

/// `host flow-run ls | head` should end quietly, as Unix tools do, rather than
/// panic on a closed pipe: restore the default SIGPIPE action Rust ignores.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default at start-up,
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `logging.level` (or `WEIR_LOG`) takes tracing filter directives (e.g.
/// `debug`, `weir_host=trace`).
fn init_tracing(format: LogFormat) {
    let level = backend::settings()
        .ok()
        .and_then(|settings| settings.get("logging.level").map(str::to_string))
        .unwrap_or_else(|| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // By default a line that cannot be written (stderr on a full disk,
        // a closed pipe) is reported with `eprintln!`, which panics the
        // thread that logged: a request, or the store's writer.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version(flags) => version(flags),
        Command::Run(args) => remote::run(args),
        Command::Db(command) => db::run(command),
        Command::Build(args) => flow::build(args),
        Command::Init(args) => init::init(args),
        Command::Serve(args) => serve::serve(args),
        Command::Flow(command) => flow::run(command),
        Command::FlowRun(command) => runs::run(command),
        Command::Server(command) => server::run(command),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Deployment(command) => deployment::deployment(command),
        Command::Schedule(command) => schedule::run(command),
        Command::Automation(command) => automation::run(command),
        Command::Secret(command) => secret::secret(command),
        Command::Variable(command) => variable::variable(command),
        Command::ConcurrencyLimit(command) => limit::run(command),
        Command::Artifact(command) => artifact::run(command),
        Command::WorkPool(command) => pool::work_pool(command),
        Command::WorkQueue(command) => pool::work_queue(command),
        Command::Profile(command) => profile::profile(command),
        Command::Config(command) => profile::config(command),
    }
}

fn version(flags: JsonFlag) -> anyhow::Result<()> {
    let host = env!("CARGO_PKG_VERSION");
    let runtime = "wasmtime 48";
    let wit = "weir:flow@0.1.2";
    if flags.json {
        println!(
            "{}",
            serde_json::json!({"host": host, "runtime": runtime, "wit": wit})
        );
    } else {
        println!("host {host} ({runtime}, world {wit})");
    }
    Ok(())
}

/// `$WEIR_HOME`, or `~/.weir`.
pub(crate) fn paths() -> Paths {
    Paths::resolve(
        std::env::var("WEIR_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    )
}
