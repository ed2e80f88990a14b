//! Commands that change server state: `flow upload|ls`, `deploy`,
//! `deployment ...`, `secret ...`, `variable ...`, `work-pool ...`,
//! `work-queue ...`. Each is one or two API calls through [`Backend`], so it
//! works against a server or the local database alike.

use super::backend::Backend;
use super::output::{level_label, print_json, table};
use super::{Exit, JsonFlag};
use crate::api::wire::{
    ComponentDetail, DeploymentHistory, DeploymentInfo, DeploymentList, DeploymentSaved, FlowList,
    HostInfo, HostList, RunAction, SecretList, Uploaded, VariableList, WorkPoolList, WorkQueueList,
};
use crate::clock::format_rfc3339;
use crate::model::{Policy, RunState, Variable, WorkPool};
use crate::protocol::{build_params, parse_memory_size};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// Prints the API's reply for scripts (`--json`), else a sentence for people.
fn said(reply: &Value, json: bool, sentence: impl FnOnce() -> String) {
    if json {
        println!("{reply}");
    } else {
        println!("{}", sentence());
    }
}

/// A time for people: "2026-01-05 09:00:00".
fn when(micros: i64) -> String {
    format_rfc3339(micros)[..19].replace('T', " ")
}

/// The first characters of a component digest, as tables show it.
fn short_digest(digest: &str) -> String {
    digest.chars().take(12).collect()
}

// ---- host flow upload / host flow ls ----

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// A guest project folder (built first) or a .wasm component.
    path: PathBuf,
    #[command(flatten)]
    format: JsonFlag,
}

/// Builds `path` if it is a project and uploads the component; returns the reply.
fn upload_path(backend: &Backend, path: &Path, progress: bool) -> anyhow::Result<Value> {
    let built = super::flow::build_component(path, progress)?;
    let bytes =
        std::fs::read(&built.wasm).with_context(|| format!("reading {}", built.wasm.display()))?;
    backend.upload(bytes).map_err(|e| {
        // Name the file in a refusal, as `flow run` does.
        match e.downcast::<Exit>() {
            Ok(exit) => Exit::bad_input(format!("{}: {}", path.display(), exit.message)),
            Err(e) => e,
        }
    })
}

pub fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    let reply = upload_path(&backend, &args.path, !args.format.json)?;
    if args.format.json {
        println!("{reply}");
    } else {
        let uploaded: Uploaded = Backend::parse("/api/components", reply)?;
        let flows = &uploaded.flows;
        println!(
            "{} sha256:{} to {} (flows: {})",
            if uploaded.created {
                "Uploaded"
            } else {
                "Already stored:"
            },
            uploaded.digest,
            backend.describe(),
            flows.join(", ")
        );
    }
    Ok(())
}

pub fn list_flows(format: JsonFlag) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    let list: FlowList = backend.get_as("/api/flows")?;
    if format.json {
        return print_json(&list.flows);
    }
    let rows: Vec<Vec<String>> = list
        .flows
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.component.chars().take(12).collect(),
                f.description.lines().next().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("No flows uploaded yet. Upload one with: host flow upload examples/etl");
    } else {
        println!("{}", table(&["FLOW", "COMPONENT", "DESCRIPTION"], &rows));
    }
    Ok(())
}

// ---- host deploy ----

#[derive(Args, Debug)]
#[command(after_help = "A deployment file (weir.yaml):

  deployments:
    - name: etl-nightly
      component: examples/etl      # a guest project, a .wasm file or sha256:<digest>
      flow: etl
      params: {rows: 500}
      work_pool: wasm              # default; served by `host server start`
      schedules:
        - cron: \"0 3 * * *\"        # UTC unless a timezone is given
          timezone: Europe/Berlin  # IANA name; DST-correct
        - interval: 1h
          anchor: 2026-01-01T00:30:00+01:00   # the grid passes through it
          params: {rows: 10}       # laid over the deployment's params
        - rrule: FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;BYMINUTE=0
          anchor: 2026-01-05T09:00:00+01:00   # its start
          timezone: Europe/Berlin
          active: false            # kept, but makes no runs
      limits: {timeout: 30s, memory: 256MiB, fuel: 5000000000, retries: 2}
      tags: [nightly]
      secrets: [warehouse-password]
      concurrency_limit: 1
      capabilities:                # only hosts that allow these take its runs
        dirs: [/data/in:ro]        # read-only unless :rw
        env: [TZ]
        http: [api.example.com, \"127.0.0.1:8080\"]   # wasi:http hosts; a name alone is ports 80/443
      catchup: latest              # after downtime: skip (default), latest or all
      catchup_limit: 10            # with all: at most this many missed times

  automations:                     # optional: webhooks on their runs
    - name: etl-failed
      on: failed                   # failed, crashed, late, cancelled, completed, stuck
      deployment: etl-nightly
      webhook: http://127.0.0.1:9000/hook
      headers: {Authorization: Bearer TOKEN}
      template: slack.json         # optional JSON body with {{flow}}, {{state}}, {{reason}}, {{link}}, ...

Paths are relative to the file. Deploying again replaces the deployment and, when
anything changed, saves it as the next version (host deployment history NAME).")]
pub struct DeployArgs {
    /// The deployment file.
    #[arg(long, short = 'f', default_value = "weir.yaml")]
    file: PathBuf,
    /// Deploy only these (by name); all when left out.
    #[arg(long = "name", short = 'n')]
    names: Vec<String>,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DeployFile {
    deployments: Vec<DeploySpec>,
    /// Webhooks on the deployments' runs (see `host automation create --help`).
    #[serde(default)]
    automations: Vec<AutomationSpec>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AutomationSpec {
    name: String,
    on: crate::model::AutomationEvent,
    deployment: Option<String>,
    tag: Option<String>,
    flow: Option<String>,
    /// e.g. 10m, with `on: stuck`.
    stuck_after: Option<String>,
    webhook: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// A file with the JSON body, relative to the deployment file.
    template: Option<PathBuf>,
    #[serde(default)]
    paused: bool,
}

impl AutomationSpec {
    fn automation(&self, base: &Path) -> anyhow::Result<crate::model::Automation> {
        let bad = |what: String| Exit::bad_input(format!("automation '{}': {what}", self.name));
        let stuck_after_seconds = self
            .stuck_after
            .as_deref()
            .map(|t| humantime::parse_duration(t).map(|d| d.as_secs()))
            .transpose()
            .map_err(|e| bad(format!("stuck_after: {e}")))?;
        let template = self
            .template
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(base.join(path))
                    .map_err(|e| bad(format!("template {}: {e}", path.display())))
            })
            .transpose()?;
        let automation = crate::model::Automation {
            name: self.name.clone(),
            on: self.on,
            deployment: self.deployment.clone(),
            tag: self.tag.clone(),
            flow: self.flow.clone(),
            stuck_after_seconds,
            webhook: self.webhook.clone(),
            headers: self.headers.clone(),
            template,
            paused: self.paused,
        };
        automation.validate().map_err(|e| bad(e.to_string()))?;
        Ok(automation)
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DeploySpec {
    name: String,
    component: String,
    flow: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    work_pool: Option<String>,
    #[serde(default)]
    work_queue: Option<String>,
    #[serde(default)]
    schedules: Vec<ScheduleSpec>,
    #[serde(default)]
    limits: LimitSpec,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    concurrency_limit: Option<u32>,
    /// skip, latest or all: fire times missed while no server ran.
    #[serde(default)]
    catchup: Option<String>,
    #[serde(default)]
    catchup_limit: Option<u32>,
    #[serde(default)]
    capabilities: CapabilitySpec,
}

/// `capabilities: {dirs: [/data/in:ro, /data/out:rw], env: [TZ], http: [api.example.com]}`
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct CapabilitySpec {
    #[serde(default)]
    dirs: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    cron: Option<String>,
    /// e.g. 10m, 1h
    interval: Option<String>,
    /// An RFC 5545 rule, e.g. FREQ=WEEKLY;BYDAY=MO;BYHOUR=9
    rrule: Option<String>,
    /// RFC 3339 with an offset: the interval's grid passes through it, or
    /// the rrule starts there.
    anchor: Option<String>,
    /// IANA name the cron or rrule is read in; UTC when absent.
    timezone: Option<String>,
    /// Laid over the deployment's params for this schedule's runs.
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    timeout: Option<String>,
    memory: Option<String>,
    fuel: Option<u64>,
    retries: Option<u32>,
}

impl LimitSpec {
    fn policy(&self, name: &str) -> anyhow::Result<Policy> {
        let bad = |what: &str, e: String| {
            Exit::bad_input(format!("deployment '{name}': limits.{what}: {e}"))
        };
        Ok(Policy {
            timeout_ms: self
                .timeout
                .as_deref()
                .map(|t| humantime::parse_duration(t).map(|d| d.as_millis() as u64))
                .transpose()
                .map_err(|e| bad("timeout", e.to_string()))?,
            memory_bytes: self
                .memory
                .as_deref()
                .map(parse_memory_size)
                .transpose()
                .map_err(|e| bad("memory", e.to_string()))?,
            fuel: self.fuel,
            retries: self.retries,
            ..Policy::default()
        })
    }
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
        Exit::bad_input(format!(
            "cannot read {}: {e}; pass the deployment file with -f (see `host deploy --help`)",
            args.file.display()
        ))
    })?;
    let base = args.file.parent().unwrap_or(Path::new("."));
    apply_document(
        &text,
        &args.file,
        base,
        &args.names,
        args.format.json,
        Backend::open,
    )
}

/// Deploys what a weir.yaml document (`text`, read from `file`; paths in it
/// relative to `base`) describes, through the backend `open` gives once the
/// document is valid. `host deploy` and `host serve` (which writes its
/// document itself) both come here.
pub(super) fn apply_document(
    text: &str,
    file: &Path,
    base: &Path,
    names: &[String],
    json_output: bool,
    open: impl FnOnce() -> anyhow::Result<Backend>,
) -> anyhow::Result<()> {
    let file_shown = file;
    let file: DeployFile = serde_yaml::from_str(text)
        .map_err(|e| Exit::bad_input(format!("{}: {e}", file_shown.display())))?;
    let chosen: Vec<&DeploySpec> = file
        .deployments
        .iter()
        .filter(|d| names.is_empty() || names.contains(&d.name))
        .collect();
    if chosen.is_empty() {
        return Err(Exit::bad_input(format!(
            "{} has no deployments{}",
            file_shown.display(),
            if names.is_empty() {
                String::new()
            } else {
                format!(" named {}", names.join(", "))
            }
        )));
    }
    let backend = open()?;
    let mut replies = Vec::new();
    for spec in chosen {
        let digest = if let Some(digest) = spec.component.strip_prefix("sha256:") {
            digest.to_string()
        } else {
            let path = base.join(&spec.component);
            let reply = upload_path(&backend, &path, !json_output)?;
            Backend::parse::<Uploaded>("/api/components", reply)?.digest
        };
        let schedules = spec
            .schedules
            .iter()
            .map(|s| {
                let interval_seconds = s
                    .interval
                    .as_deref()
                    .map(|i| humantime::parse_duration(i).map(|d| d.as_secs()))
                    .transpose()
                    .map_err(|e| {
                        Exit::bad_input(format!(
                            "deployment '{}': schedule interval: {e}",
                            spec.name
                        ))
                    })?;
                let params = (!s.params.is_empty())
                    .then(|| {
                        resolve_param_templates(
                            &backend,
                            &spec.name,
                            &Value::Object(s.params.clone()),
                        )
                    })
                    .transpose()?;
                // Absent fields are left out (`strip_nulls`): the server fills in its defaults.
                Ok(json!({
                    "cron": s.cron,
                    "interval_seconds": interval_seconds,
                    "active": s.active,
                    "rrule": s.rrule,
                    "anchor": s.anchor,
                    "timezone": s.timezone,
                    "params": params,
                }))
            })
            .collect::<anyhow::Result<Vec<Value>>>()?;
        let params =
            resolve_param_templates(&backend, &spec.name, &Value::Object(spec.params.clone()))?;
        let task_policy = spec.limits.policy(&spec.name)?;
        let dirs = spec
            .capabilities
            .dirs
            .iter()
            .map(|d| crate::model::capabilities::DirGrant::parse(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Exit::bad_input(format!("deployment '{}': capabilities: {e}", spec.name))
            })?;
        for host in &spec.capabilities.http {
            crate::model::capabilities::HttpHost::parse(host).map_err(|e| {
                Exit::bad_input(format!("deployment '{}': capabilities: {e}", spec.name))
            })?;
        }
        let capabilities = (!dirs.is_empty()
            || !spec.capabilities.env.is_empty()
            || !spec.capabilities.http.is_empty())
        .then(|| {
            json!({
                "dirs": dirs,
                "env": spec.capabilities.env,
                "http": spec.capabilities.http,
            })
        });
        let mut body = json!({
            "name": spec.name,
            "component": digest,
            "flow": spec.flow,
            "description": spec.description,
            "params": params,
            "schedules": schedules,
            "task_policy": task_policy,
            "tags": spec.tags,
            "secrets": spec.secrets,
            "paused": spec.paused,
            "concurrency_limit": spec.concurrency_limit,
            "capabilities": capabilities,
            "work_pool": spec.work_pool,
            "work_queue": spec.work_queue,
            "catchup": spec.catchup,
            "catchup_limit": spec.catchup_limit,
        });
        strip_nulls(&mut body);
        let path = format!("/api/deployments/{}", spec.name);
        let reply = backend.send("PUT", &path, &body)?;
        if !json_output {
            let saved: DeploymentSaved = Backend::parse(&path, reply.clone())?;
            println!(
                "{} deployment '{}' (flow {}, component sha256:{}, pool {}) on {}",
                if saved.created {
                    "Created"
                } else if !saved.changed {
                    "Unchanged"
                } else {
                    "Updated"
                },
                spec.name,
                spec.flow,
                &digest[..12.min(digest.len())],
                saved.deployment.work_pool,
                backend.describe()
            );
            if let Some(version) = saved.deployment.version {
                println!(
                    "  version {version} (host deployment history {})",
                    spec.name
                );
            }
            for warning in &saved.warnings {
                println!("  warning: {warning}");
            }
            println!("  run it with: host deployment run {}", spec.name);
        }
        replies.push(reply);
    }
    // Automations of the chosen deployments (all of them when none is named).
    let mut automation_replies = Vec::new();
    for spec in file
        .automations
        .iter()
        .filter(|a| names.is_empty() || a.deployment.as_ref().is_some_and(|d| names.contains(d)))
    {
        let automation = spec.automation(base)?;
        let reply = backend.send(
            "PUT",
            &format!("/api/automations/{}", automation.name),
            &json!(automation),
        )?;
        if !json_output {
            println!(
                "Automation '{}': on {} POST {}",
                automation.name,
                automation.on.as_str(),
                automation.webhook
            );
        }
        automation_replies.push(reply);
    }
    if json_output {
        let mut out = Map::new();
        out.insert("deployments".into(), Value::Array(replies));
        if !automation_replies.is_empty() {
            out.insert("automations".into(), Value::Array(automation_replies));
        }
        println!("{}", Value::Object(out));
    }
    Ok(())
}

fn strip_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    } else if let Value::Array(items) = value {
        items.iter_mut().for_each(strip_nulls);
    }
}

// ---- host deployment ... ----

#[derive(Subcommand, Debug)]
pub enum DeploymentCommand {
    /// List deployments.
    Ls(JsonFlag),
    /// Show a deployment: flow, component, params, schedules, limits, secrets.
    Inspect(NameArgs),
    /// Start a run; --watch follows its log until it ends.
    #[command(after_help = "Examples:
  host deployment run etl-nightly --param rows=50 --watch
  host deployment run etl-nightly --params-json '{\"rows\": 10}' --json")]
    Run(DeploymentRunArgs),
    /// Stop its schedules and refuse new runs.
    Pause(NameArgs),
    /// Undo pause.
    Resume(NameArgs),
    /// Delete it (its runs stay).
    Delete(NameArgs),
    /// List its saved versions: each deploy that changed it, and rollbacks.
    History(NameArgs),
    /// Restore an earlier version's definition (saved as a new version).
    #[command(after_help = "Example:
  host deployment history etl-nightly
  host deployment rollback etl-nightly --to 2")]
    Rollback(RollbackArgs),
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    name: String,
    /// The version to restore (see `host deployment history NAME`).
    #[arg(long, value_name = "VERSION")]
    to: u32,
    #[command(flatten)]
    format: JsonFlag,
}

/// A name and `--json`: the arguments of most `inspect`/`delete` commands.
#[derive(Args, Debug)]
pub struct NameArgs {
    pub(super) name: String,
    #[command(flatten)]
    pub(super) format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct DeploymentRunArgs {
    name: String,
    /// A parameter as key=value, laid over the deployment's defaults.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Parameters as one JSON object; --param values override its keys.
    #[arg(long, value_name = "JSON")]
    params_json: Option<String>,
    /// Follow the run's log until it ends; exit 1 unless it Completed.
    #[arg(long, short)]
    watch: bool,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn deployment(command: DeploymentCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        DeploymentCommand::Ls(format) => {
            let list: DeploymentList = backend.get_as("/api/deployments")?;
            if format.json {
                return print_json(&list.deployments);
            }
            let rows: Vec<Vec<String>> = list
                .deployments
                .iter()
                .map(|info| {
                    let d = &info.deployment;
                    let schedules: Vec<String> =
                        d.schedules.iter().map(describe_schedule).collect();
                    vec![
                        d.name.clone(),
                        d.flow.clone(),
                        short_digest(&d.component),
                        d.work_pool.clone(),
                        paused_word(d.paused).into(),
                        schedules.join(", "),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No deployments yet. Create one with: host deploy -f weir.yaml");
            } else {
                println!(
                    "{}",
                    table(
                        &["NAME", "FLOW", "COMPONENT", "POOL", "STATUS", "SCHEDULES"],
                        &rows
                    )
                );
            }
        }
        DeploymentCommand::Inspect(args) => {
            let info: DeploymentInfo =
                backend.get_as(&format!("/api/deployments/{}", args.name))?;
            let schedules = next_fire_times(&info.deployment.schedules);
            if args.format.json {
                print_json(&with_next_fire_times(&info, &schedules)?)?;
            } else {
                let d = &info.deployment;
                println!("deployment {}", d.name);
                match d.version {
                    Some(v) => println!("version    {v} (host deployment history to see all)"),
                    None => println!("version    none saved yet (deploy it again to save one)"),
                }
                println!("flow       {}", d.flow);
                println!("component  sha256:{}", d.component);
                println!("params     {}", Value::Object(d.params.clone()));
                println!("pool       {} / queue {}", d.work_pool, d.work_queue);
                println!("status     {}", paused_word(d.paused));
                if schedules.is_empty() {
                    println!("schedules  none");
                }
                for (i, shown) in schedules.iter().enumerate() {
                    println!(
                        "{}{}",
                        if i == 0 { "schedules  " } else { "           " },
                        shown.what
                    );
                    println!("             next: {}", shown.next_line);
                }
                println!("limits     {}", serde_json::to_value(&d.task_policy)?);
                println!("tags       {}", json!(d.tags));
                println!("secrets    {}", json!(d.secrets));
                println!("updated    {} UTC", when(info.updated_at));
            }
        }
        DeploymentCommand::Run(args) => run_deployment(&backend, args)?,
        DeploymentCommand::Pause(args) => {
            let reply = backend.send(
                "POST",
                &format!("/api/deployments/{}/pause", args.name),
                &json!({}),
            )?;
            report(&args, &reply, "paused");
        }
        DeploymentCommand::Resume(args) => {
            let reply = backend.send(
                "POST",
                &format!("/api/deployments/{}/resume", args.name),
                &json!({}),
            )?;
            report(&args, &reply, "resumed");
        }
        DeploymentCommand::Delete(args) => {
            let reply = backend.delete(&format!("/api/deployments/{}", args.name))?;
            report(&args, &reply, "deleted");
        }
        DeploymentCommand::History(args) => {
            let history: DeploymentHistory =
                backend.get_as(&format!("/api/deployments/{}/versions", args.name))?;
            if args.format.json {
                return print_json(&history.versions);
            }
            let rows: Vec<Vec<String>> = history
                .versions
                .iter()
                .map(|v| {
                    let d = &v.deployment;
                    vec![
                        v.version.to_string(),
                        format!("{} UTC", when(v.created_at)),
                        v.created_by.clone(),
                        short_digest(&d.component),
                        d.flow.clone(),
                        Value::Object(d.params.clone()).to_string(),
                        v.note.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!(
                    "Deployment {} has no saved versions yet; the next `host deploy` saves one.",
                    args.name
                );
            } else {
                println!(
                    "{}",
                    table(
                        &[
                            "VERSION",
                            "SAVED",
                            "BY",
                            "COMPONENT",
                            "FLOW",
                            "PARAMS",
                            "NOTE"
                        ],
                        &rows
                    )
                );
            }
        }
        DeploymentCommand::Rollback(args) => {
            let path = format!("/api/deployments/{}/rollback", args.name);
            let reply = backend.send("POST", &path, &json!({ "to": args.to }))?;
            if args.format.json {
                println!("{reply}");
                return Ok(());
            }
            let saved: DeploymentSaved = Backend::parse(&path, reply)?;
            if saved.changed {
                println!(
                    "Rolled {} back to version {}: saved as version {}",
                    args.name,
                    args.to,
                    json!(saved.deployment.version)
                );
            } else {
                println!(
                    "{} is already at version {}'s definition; nothing changed",
                    args.name, args.to
                );
            }
        }
    }
    Ok(())
}

/// A schedule as `deployment inspect` shows it.
struct ShownSchedule {
    /// What it is, for people.
    what: String,
    /// Its next fire times, or why there are none.
    next_line: String,
    /// Its next 5 fire times, when they could be worked out.
    next: Option<Vec<String>>,
}

fn next_fire_times(schedules: &[crate::model::Schedule]) -> Vec<ShownSchedule> {
    schedules
        .iter()
        .map(|schedule| {
            let (next_line, next) = match super::schedule::next_times(schedule, 5) {
                Ok(times) if times.is_empty() => ("never".to_string(), Some(times)),
                Ok(times) => (times.join(", "), Some(times)),
                Err(e) => (e.to_string(), None),
            };
            ShownSchedule {
                what: describe_schedule(schedule),
                next_line,
                next,
            }
        })
        .collect()
}

/// `deployment inspect --json`: the reply with each schedule's next fire
/// times added as `next`, beside the fields the server sent.
fn with_next_fire_times(info: &DeploymentInfo, shown: &[ShownSchedule]) -> anyhow::Result<Value> {
    #[derive(Serialize)]
    struct ScheduleWithNext<'a> {
        #[serde(flatten)]
        schedule: &'a crate::model::Schedule,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a Vec<String>>,
    }
    let schedules: Vec<ScheduleWithNext> = info
        .deployment
        .schedules
        .iter()
        .zip(shown)
        .map(|(schedule, shown)| ScheduleWithNext {
            schedule,
            next: shown.next.as_ref(),
        })
        .collect();
    let Value::Object(mut deployment) = serde_json::to_value(&info.deployment)? else {
        anyhow::bail!("a deployment serialized to something other than an object");
    };
    // Replaces the schedules the typed deployment wrote, key for key.
    deployment.insert("schedules".into(), serde_json::to_value(&schedules)?);
    Ok(json!({
        "deployment": deployment,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
    }))
}

fn describe_schedule(s: &crate::model::Schedule) -> String {
    let mut text = match (&s.cron, s.interval_seconds) {
        _ if s.rrule.is_some() => format!(
            "rrule '{}' in {}",
            s.rrule.as_deref().unwrap_or_default(),
            s.timezone.as_deref().unwrap_or("UTC")
        ),
        (Some(cron), _) => format!(
            "cron '{cron}' in {}",
            s.timezone.as_deref().unwrap_or("UTC")
        ),
        (_, Some(every)) => format!(
            "every {}{}",
            humantime::format_duration(std::time::Duration::from_secs(every)),
            s.anchor
                .as_deref()
                .map(|a| format!(" from {a}"))
                .unwrap_or_default()
        ),
        _ => "(empty)".to_string(),
    };
    if !s.params.is_empty() {
        text.push_str(&format!(" with params {}", Value::Object(s.params.clone())));
    }
    if !s.active {
        text.push_str(" (inactive)");
    }
    text
}

fn report(args: &NameArgs, reply: &Value, what: &str) {
    said(reply, args.format.json, || {
        format!("Deployment '{}' {what}.", args.name)
    });
}

fn run_deployment(backend: &Backend, args: DeploymentRunArgs) -> anyhow::Result<()> {
    let info: DeploymentInfo = backend.get_as(&format!("/api/deployments/{}", args.name))?;
    let deployment = info.deployment;
    let component: ComponentDetail =
        backend.get_as(&format!("/api/components/{}", deployment.component))?;
    let schema = component
        .manifest
        .flows
        .into_iter()
        .find(|f| f.name == deployment.flow)
        .and_then(|f| f.params_schema);
    let params = build_params(args.params_json.as_deref(), &args.params, schema.as_ref())
        .map_err(|e| Exit::bad_input(e.to_string()))?;
    let path = format!("/api/deployments/{}/runs", args.name);
    let reply = backend.send("POST", &path, &json!({ "params": params }))?;
    let started: RunAction = Backend::parse(&path, reply.clone())?;
    let id = started.flow_run_id;
    // Without a server the run lives in this process: it must be followed.
    let follow = args.watch || !backend.is_remote();
    if !follow {
        said(&reply, args.format.json, || {
            format!(
                "Started flow run {id} of deployment '{}' ({}). Follow it with: host flow-run logs -f {id}",
                args.name,
                started.state.as_str()
            )
        });
        return Ok(());
    }
    if !args.format.json {
        eprintln!(
            "Flow run {id} of deployment '{}' on {}",
            args.name,
            backend.describe()
        );
    }
    let run = backend.follow(&id, args.format.json, print_log_line)?;
    finish(&run, args.format.json)
}

pub(crate) fn print_log_line(line: &crate::api::wire::LogLine) {
    let at = format_rfc3339(line.at)[11..23].to_string();
    let who = line
        .task_name
        .as_deref()
        .map(|n| format!("[{n}] "))
        .unwrap_or_default();
    println!(
        "{at} {:<5} {who}{}",
        level_label(line.level),
        super::output::indent_continuation(&line.message)
    );
}

/// Prints how a followed run ended; exit 1 unless it Completed.
pub(crate) fn finish(run: &crate::api::wire::FlowRun, json: bool) -> anyhow::Result<()> {
    let state = run.state.as_str();
    if json {
        println!(
            "{}",
            json!({
                "flow_run_id": run.id,
                "state": state,
                "result": run.result.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()),
                "message": run.message,
            })
        );
    } else {
        match run.result.as_deref() {
            Some(result) => println!("\n{state}: {result}"),
            None => println!(
                "\n{state}{}",
                run.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        }
    }
    // Paused for input is not a failure: the message says how to resume it.
    if matches!(run.state, RunState::Completed | RunState::Paused) {
        Ok(())
    } else {
        Err(Exit::code(1))
    }
}

// ---- host secret ... ----

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret; the value is read from --value, or else from standard input.
    #[command(after_help = "Examples:
  printf %s \"$PASSWORD\" | host secret set warehouse-password
  host secret set api-token --value abc123")]
    Set(SecretSetArgs),
    /// List secret names (values are never shown).
    Ls(JsonFlag),
    /// Delete a secret.
    Rm(NameArgs),
}

#[derive(Args, Debug)]
pub struct SecretSetArgs {
    name: String,
    /// The value (visible in your shell history; prefer standard input).
    #[arg(long)]
    value: Option<String>,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn secret(command: SecretCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        SecretCommand::Set(args) => {
            let value = match args.value {
                Some(v) => v,
                None => {
                    use std::io::{IsTerminal, Read};
                    if std::io::stdin().is_terminal() {
                        eprintln!("Value for secret '{}' (end with Ctrl-D):", args.name);
                    }
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            if value.is_empty() {
                return Err(Exit::bad_input("the secret's value is empty"));
            }
            let reply = backend.send(
                "PUT",
                &format!("/api/secrets/{}", args.name),
                &json!({ "value": value }),
            )?;
            said(&reply, args.format.json, || {
                format!("Secret '{}' set on {}.", args.name, backend.describe())
            });
        }
        SecretCommand::Ls(format) => {
            let list: SecretList = backend.get_as("/api/secrets")?;
            if format.json {
                print_json(&list.secrets)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .secrets
                    .iter()
                    .map(|s| vec![s.name.clone(), when(s.updated_at)])
                    .collect();
                println!("{}", table(&["NAME", "UPDATED (UTC)"], &rows));
            }
        }
        SecretCommand::Rm(args) => {
            let reply = backend.delete(&format!("/api/secrets/{}", args.name))?;
            said(&reply, args.format.json, || {
                format!("Secret '{}' deleted.", args.name)
            });
        }
    }
    Ok(())
}

/// Params with `{{ variables.NAME }}` replaced by the variables' values now
/// (deploy time, as Prefect does): a run's params are what the deployment says.
fn resolve_param_templates(
    backend: &Backend,
    deployment: &str,
    params: &Value,
) -> anyhow::Result<Value> {
    if !params.to_string().contains("{{") {
        return Ok(params.clone());
    }
    let listed: VariableList = backend.get_as("/api/variables")?;
    let mut lookup = |name: &str| -> Result<Option<Value>, String> {
        Ok(listed
            .variables
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.value.clone()))
    };
    crate::model::template::resolve_variables(params, &mut lookup)
        .map_err(|e| Exit::bad_input(format!("deployment '{deployment}': {e}")))
}

// ---- host variable ... ----

#[derive(Subcommand, Debug)]
pub enum VariableCommand {
    /// Set a variable; VALUE is read as JSON when it parses, else as text.
    Set(VariableSetArgs),
    /// Print a variable's value (as JSON).
    Get(NameArgs),
    /// List variables.
    Ls(JsonFlag),
    /// Delete a variable.
    Rm(NameArgs),
}

#[derive(Args, Debug)]
pub struct VariableSetArgs {
    name: String,
    value: String,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn variable(command: VariableCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        VariableCommand::Set(args) => {
            let value: Value =
                serde_json::from_str(&args.value).unwrap_or(Value::String(args.value.clone()));
            let path = format!("/api/variables/{}", args.name);
            let reply = backend.send("PUT", &path, &json!({ "value": value }))?;
            let saved: Variable = Backend::parse(&path, reply.clone())?;
            said(&reply, args.format.json, || {
                format!("Variable '{}' = {}", args.name, saved.value)
            });
        }
        VariableCommand::Get(args) => {
            let path = format!("/api/variables/{}", args.name);
            let reply = backend.get(&path)?;
            let variable: Variable = Backend::parse(&path, reply.clone())?;
            said(&reply, args.format.json, || variable.value.to_string());
        }
        VariableCommand::Ls(format) => {
            let list: VariableList = backend.get_as("/api/variables")?;
            if format.json {
                print_json(&list.variables)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .variables
                    .iter()
                    .map(|v| vec![v.name.clone(), v.value.to_string()])
                    .collect();
                println!("{}", table(&["NAME", "VALUE"], &rows));
            }
        }
        VariableCommand::Rm(args) => {
            let reply = backend.delete(&format!("/api/variables/{}", args.name))?;
            said(&reply, args.format.json, || {
                format!("Variable '{}' deleted.", args.name)
            });
        }
    }
    Ok(())
}

// ---- host work-pool / work-queue ----

#[derive(Subcommand, Debug)]
pub enum WorkPoolCommand {
    /// Create a pool (it gets a `default` queue).
    Create(PoolCreateArgs),
    /// List pools.
    Ls(JsonFlag),
    /// Show a pool and its queues.
    Inspect(NameArgs),
    /// Runs for a paused pool wait in Scheduled.
    Pause(NameArgs),
    /// Undo pause.
    Resume(NameArgs),
    /// Delete a pool no deployment uses.
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub struct PoolCreateArgs {
    name: String,
    #[arg(long, default_value = "")]
    description: String,
    /// At most N runs of this pool at once.
    #[arg(long)]
    concurrency_limit: Option<u32>,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Subcommand, Debug)]
pub enum WorkQueueCommand {
    /// Create (or replace) a queue in a pool.
    Create(QueueCreateArgs),
    /// List a pool's queues, by priority.
    Ls(QueueLsArgs),
    /// Delete a queue.
    Delete(QueueDeleteArgs),
}

#[derive(Args, Debug)]
pub struct QueueCreateArgs {
    name: String,
    #[arg(long, default_value = crate::model::deploy::DEFAULT_POOL)]
    pool: String,
    /// Lower numbers are served first.
    #[arg(long, default_value_t = 1)]
    priority: u32,
    #[arg(long)]
    concurrency_limit: Option<u32>,
    /// Also take the pool's runs whose tags include this one (repeatable;
    /// all must match), e.g. `--tag demo`; hosts started with `--queue NAME`
    /// then serve them.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct QueueLsArgs {
    #[arg(long, default_value = crate::model::deploy::DEFAULT_POOL)]
    pool: String,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct QueueDeleteArgs {
    name: String,
    #[arg(long, default_value = crate::model::deploy::DEFAULT_POOL)]
    pool: String,
    #[command(flatten)]
    format: JsonFlag,
}

fn queue_rows(list: &WorkQueueList) -> Vec<Vec<String>> {
    list.work_queues
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                q.priority.to_string(),
                q.concurrency_limit
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                paused_word(q.paused).into(),
                q.tags.join(", "),
            ]
        })
        .collect()
}

/// "paused" or "active".
fn paused_word(paused: bool) -> &'static str {
    if paused { "paused" } else { "active" }
}

pub fn work_pool(command: WorkPoolCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    let simple = |args: &NameArgs, method: &str, suffix: &str, what: &str| -> anyhow::Result<()> {
        let reply = backend.call(
            method,
            &format!("/api/work-pools/{}{suffix}", args.name),
            None,
            "application/json",
        )?;
        said(&reply, args.format.json, || {
            format!("Work pool '{}' {what}.", args.name)
        });
        Ok(())
    };
    match command {
        WorkPoolCommand::Create(args) => {
            let reply = backend.send(
                "POST",
                "/api/work-pools",
                &json!({ "name": args.name, "description": args.description, "concurrency_limit": args.concurrency_limit }),
            )?;
            said(&reply, args.format.json, || {
                format!("Work pool '{}' created with queue 'default'.", args.name)
            });
        }
        WorkPoolCommand::Ls(format) => {
            let list: WorkPoolList = backend.get_as("/api/work-pools")?;
            if format.json {
                print_json(&list.work_pools)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .work_pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            paused_word(p.paused).into(),
                            p.concurrency_limit
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| "-".into()),
                            p.description.clone(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(&["NAME", "STATUS", "LIMIT", "DESCRIPTION"], &rows)
                );
            }
        }
        WorkPoolCommand::Inspect(args) => {
            let pool: WorkPool = backend.get_as(&format!("/api/work-pools/{}", args.name))?;
            let queues: WorkQueueList =
                backend.get_as(&format!("/api/work-pools/{}/queues", args.name))?;
            let hosts: Vec<HostInfo> = backend
                .get_as::<HostList>("/api/hosts")?
                .hosts
                .into_iter()
                .filter(|h| h.host.pools.contains(&args.name))
                .collect();
            if args.format.json {
                print_json(&json!({
                    "work_pool": pool,
                    "work_queues": queues.work_queues,
                    "hosts": hosts,
                }))?;
            } else {
                println!("work pool  {}", args.name);
                println!("status     {}", paused_word(pool.paused));
                println!(
                    "\n{}",
                    table(
                        &["QUEUE", "PRIORITY", "LIMIT", "STATUS", "TAGS"],
                        &queue_rows(&queues)
                    )
                );
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.host.name.clone(),
                            if h.online { "online" } else { "offline" }.to_string(),
                            format!("{}/{}", h.host.runs_in_hand, h.host.slots),
                            h.host.version.clone(),
                            crate::clock::format_rfc3339(h.host.last_heartbeat),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    println!(
                        "\nno remote hosts (start one with `host run --pool {}`)",
                        args.name
                    );
                } else {
                    println!(
                        "\n{}",
                        table(
                            &["HOST", "STATUS", "RUNS/SLOTS", "VERSION", "LAST HEARTBEAT"],
                            &rows
                        )
                    );
                }
            }
        }
        WorkPoolCommand::Pause(args) => simple(&args, "POST", "/pause", "paused")?,
        WorkPoolCommand::Resume(args) => simple(&args, "POST", "/resume", "resumed")?,
        WorkPoolCommand::Delete(args) => simple(&args, "DELETE", "", "deleted")?,
    }
    Ok(())
}

pub fn work_queue(command: WorkQueueCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        WorkQueueCommand::Create(args) => {
            let reply = backend.send(
                "POST",
                &format!("/api/work-pools/{}/queues", args.pool),
                &json!({ "name": args.name, "priority": args.priority,
                         "concurrency_limit": args.concurrency_limit, "tags": args.tags }),
            )?;
            said(&reply, args.format.json, || {
                format!(
                    "Work queue '{}' in pool '{}' (priority {}).",
                    args.name, args.pool, args.priority
                )
            });
        }
        WorkQueueCommand::Ls(args) => {
            let list: WorkQueueList =
                backend.get_as(&format!("/api/work-pools/{}/queues", args.pool))?;
            if args.format.json {
                print_json(&list.work_queues)?;
            } else {
                println!(
                    "{}",
                    table(
                        &["QUEUE", "PRIORITY", "LIMIT", "STATUS", "TAGS"],
                        &queue_rows(&list)
                    )
                );
            }
        }
        WorkQueueCommand::Delete(args) => {
            let reply = backend.delete(&format!(
                "/api/work-pools/{}/queues/{}",
                args.pool, args.name
            ))?;
            said(&reply, args.format.json, || {
                format!(
                    "Work queue '{}' deleted from pool '{}'.",
                    args.name, args.pool
                )
            });
        }
    }
    Ok(())
}
