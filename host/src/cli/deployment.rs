//! `host deployment ls|inspect|run|pause|resume|delete|history|rollback`:
//! one deployment at a time, through the API.

use super::backend::Backend;
use super::output::{
    finish, paused_word, print_json, print_log_line, said, short_digest, table, when,
};
use super::{Exit, JsonFlag, NameArgs};
use crate::api::wire::{
    ComponentDetail, DeploymentHistory, DeploymentInfo, DeploymentList, DeploymentSaved,
    RunStarted, StartRun,
};
use crate::protocol::build_params;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

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
                println!("tags       {}", serde_json::to_string(&d.tags)?);
                println!("secrets    {}", serde_json::to_string(&d.secrets)?);
                println!("updated    {} UTC", when(info.updated_at));
            }
        }
        DeploymentCommand::Run(args) => run_deployment(&backend, args)?,
        DeploymentCommand::Pause(args) => {
            let reply = backend.act(&format!("/api/deployments/{}/pause", args.name))?;
            report(&args, &reply, "paused");
        }
        DeploymentCommand::Resume(args) => {
            let reply = backend.act(&format!("/api/deployments/{}/resume", args.name))?;
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
            let reply = backend.send("POST", &path, &crate::api::wire::Rollback { to: args.to })?;
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
                    serde_json::to_string(&saved.deployment.version)?
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
    let start = StartRun {
        params: Some(params),
        tags: None,
    };
    let reply = backend.send("POST", &path, &start)?;
    let started: RunStarted = Backend::parse(&path, reply.clone())?;
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
