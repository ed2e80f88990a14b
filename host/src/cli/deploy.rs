//! `host deploy`: a weir.yaml document made into deployments (and their
//! automations), each one `PUT` through [`Backend`]; `host serve` writes its
//! own document and comes here too.

use super::backend::Backend;
use super::component::upload_path;
use super::{Exit, JsonFlag};
use crate::api::wire::{DeploymentSaved, Uploaded, VariableList};
use crate::model::capabilities::Capabilities;
use crate::model::deploy::{DEFAULT_CATCHUP_LIMIT, DEFAULT_POOL, DEFAULT_QUEUE};
use crate::model::{Catchup, Deployment, Policy, Schedule};
use crate::protocol::parse_memory_size;
use clap::Args;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

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
    catchup: Catchup,
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
                Ok(Schedule {
                    cron: s.cron.clone(),
                    interval_seconds,
                    rrule: s.rrule.clone(),
                    anchor: s.anchor.clone(),
                    timezone: s.timezone.clone(),
                    params: resolve_param_templates(&backend, &spec.name, &s.params)?,
                    active: s.active,
                })
            })
            .collect::<anyhow::Result<Vec<Schedule>>>()?;
        let params = resolve_param_templates(&backend, &spec.name, &spec.params)?;
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
        // What the file leaves out is what the server would fill in.
        let body = Deployment {
            name: spec.name.clone(),
            component: digest.clone(),
            flow: spec.flow.clone(),
            description: spec.description.clone(),
            params,
            work_pool: (spec.work_pool.as_deref())
                .unwrap_or(DEFAULT_POOL)
                .to_string(),
            work_queue: (spec.work_queue.as_deref())
                .unwrap_or(DEFAULT_QUEUE)
                .to_string(),
            schedules,
            task_policy,
            tags: spec.tags.clone(),
            secrets: spec.secrets.clone(),
            paused: spec.paused,
            concurrency_limit: spec.concurrency_limit,
            capabilities: Capabilities {
                dirs,
                env: spec.capabilities.env.clone(),
                http: spec.capabilities.http.clone(),
            },
            catchup: spec.catchup,
            catchup_limit: spec.catchup_limit.unwrap_or(DEFAULT_CATCHUP_LIMIT),
            // The server numbers versions; what a client sends is ignored.
            version: None,
        };
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
            &automation,
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

/// Params with `{{ variables.NAME }}` replaced by the variables' values now
/// (deploy time, as Prefect does): a run's params are what the deployment says.
fn resolve_param_templates(
    backend: &Backend,
    deployment: &str,
    params: &Map<String, Value>,
) -> anyhow::Result<Map<String, Value>> {
    let params = Value::Object(params.clone());
    if !params.to_string().contains("{{") {
        return Ok(object_of(params));
    }
    let listed: VariableList = backend.get_as("/api/variables")?;
    let mut lookup = |name: &str| -> Result<Option<Value>, String> {
        Ok(listed
            .variables
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.value.clone()))
    };
    crate::model::template::resolve_variables(&params, &mut lookup)
        .map(object_of)
        .map_err(|e| Exit::bad_input(format!("deployment '{deployment}': {e}")))
}

/// An object stays one when templates are resolved in its values.
fn object_of(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
