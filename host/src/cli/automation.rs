//! `host automation ...`: webhooks on run events (failed, crashed, late,
//! cancelled, completed, stuck), and the record of their deliveries.

use super::backend::Backend;
use super::output::{print_json, table};
use super::{Exit, JsonFlag};
use crate::api::wire::{AutomationInfo, AutomationList, DeliveryList};
use crate::model::{Automation, AutomationEvent};
use clap::{Args, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AutomationCommand {
    /// POST a webhook when a run fails, crashes, is late, is cancelled,
    /// completes, or is stuck in Running.
    #[command(after_help = "Examples:
  host automation create etl-failed --on failed --deployment etl-nightly --webhook http://127.0.0.1:9000/hook
  host automation create stuck --on stuck --stuck-after 10m --tag nightly --webhook http://alerts.local/weir \\
      --header 'Authorization=Bearer TOKEN' --template slack.json

A template is a JSON body with {{automation}}, {{event}}, {{flow_run_id}}, {{flow}},
{{deployment}}, {{state}}, {{reason}} and {{link}}, e.g. {\"text\": \"{{flow}} {{state}}: {{reason}} {{link}}\"}.")]
    Create(CreateArgs),
    /// Automations and what they watch.
    Ls(JsonFlag),
    /// One automation (header values are never shown).
    Inspect(NameArgs),
    /// Stop queueing and sending its deliveries.
    Pause(NameArgs),
    Resume(NameArgs),
    Delete(NameArgs),
    /// Its deliveries: status, attempts, last error, response code.
    Deliveries(DeliveriesArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum On {
    Failed,
    Crashed,
    Late,
    Cancelled,
    Completed,
    Stuck,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    name: String,
    #[arg(long, value_enum)]
    on: On,
    /// Only runs of this deployment.
    #[arg(long)]
    deployment: Option<String>,
    /// Only runs carrying this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only runs of this flow.
    #[arg(long)]
    flow: Option<String>,
    /// With --on stuck: Running longer than this (e.g. 10m) is stuck.
    #[arg(long, value_name = "DURATION")]
    stuck_after: Option<humantime::Duration>,
    /// The http:// URL to POST to.
    #[arg(long)]
    webhook: String,
    /// A header sent with each delivery, NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// A file with the JSON body to send, with {{placeholders}}.
    #[arg(long)]
    template: Option<PathBuf>,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct DeliveriesArgs {
    name: String,
    /// At most this many, newest first.
    #[arg(short = 'n', long, default_value_t = 20)]
    limit: usize,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: AutomationCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        AutomationCommand::Create(args) => create(&backend, args),
        AutomationCommand::Ls(format) => {
            let path = "/api/automations";
            let list: AutomationList = backend.get_as(path)?;
            if format.json {
                return print_json(&list.automations);
            }
            let rows: Vec<Vec<String>> = list
                .automations
                .iter()
                .map(|info| {
                    let a = &info.automation;
                    vec![
                        a.name.clone(),
                        a.on.as_str().into(),
                        watched(a),
                        a.webhook.clone(),
                        status(a).into(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!(
                    "No automations yet. Create one with: host automation create NAME --on failed --webhook URL"
                );
            } else {
                println!(
                    "{}",
                    table(&["NAME", "ON", "RUNS", "WEBHOOK", "STATUS"], &rows)
                );
            }
            Ok(())
        }
        AutomationCommand::Inspect(args) => {
            let path = format!("/api/automations/{}", args.name);
            let reply = backend.get(&path)?;
            if args.format.json {
                println!("{reply}");
            } else {
                let info: AutomationInfo = Backend::parse(&path, reply)?;
                let a = &info.automation;
                println!("automation {}", a.name);
                println!("on         {}", a.on.as_str());
                println!("runs       {}", watched(a));
                println!("webhook    {}", a.webhook);
                println!("headers    {}", serde_json::to_string(&a.headers)?);
                println!(
                    "template   {}",
                    a.template
                        .as_deref()
                        .map(str::trim_end)
                        .unwrap_or("(default JSON payload)")
                );
                println!("status     {}", status(a));
            }
            Ok(())
        }
        AutomationCommand::Pause(args) => action(&backend, &args, "pause", "paused"),
        AutomationCommand::Resume(args) => action(&backend, &args, "resume", "resumed"),
        AutomationCommand::Delete(args) => {
            let reply = backend.delete(&format!("/api/automations/{}", args.name))?;
            if args.format.json {
                println!("{reply}");
            } else {
                println!("Automation '{}' deleted.", args.name);
            }
            Ok(())
        }
        AutomationCommand::Deliveries(args) => {
            let path = format!(
                "/api/automations/{}/deliveries?limit={}",
                args.name, args.limit
            );
            let list: DeliveryList = backend.get_as(&path)?;
            if args.format.json {
                return print_json(&list.deliveries);
            }
            let rows: Vec<Vec<String>> = list
                .deliveries
                .iter()
                .map(|d| {
                    vec![
                        d.created_at.clone(),
                        d.flow_run_id.clone(),
                        d.event.clone(),
                        d.status.clone(),
                        d.attempts.to_string(),
                        d.response_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        d.last_error.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No deliveries yet for '{}'.", args.name);
            } else {
                println!(
                    "{}",
                    table(
                        &[
                            "CREATED",
                            "FLOW RUN",
                            "EVENT",
                            "STATUS",
                            "ATTEMPTS",
                            "CODE",
                            "LAST ERROR"
                        ],
                        &rows
                    )
                );
            }
            Ok(())
        }
    }
}

fn create(backend: &Backend, args: CreateArgs) -> anyhow::Result<()> {
    let mut headers = BTreeMap::new();
    for header in &args.headers {
        let Some((name, value)) = header.split_once('=') else {
            return Err(Exit::bad_input(format!(
                "--header '{header}' is not NAME=VALUE"
            )));
        };
        headers.insert(name.trim().to_string(), value.trim().to_string());
    }
    let template = args
        .template
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|e| {
                Exit::bad_input(format!("cannot read template {}: {e}", path.display()))
            })
        })
        .transpose()?;
    let on = match args.on {
        On::Failed => AutomationEvent::Failed,
        On::Crashed => AutomationEvent::Crashed,
        On::Late => AutomationEvent::Late,
        On::Cancelled => AutomationEvent::Cancelled,
        On::Completed => AutomationEvent::Completed,
        On::Stuck => AutomationEvent::Stuck,
    };
    let automation = Automation {
        name: args.name.clone(),
        on,
        deployment: args.deployment,
        tag: args.tag,
        flow: args.flow,
        stuck_after_seconds: args.stuck_after.map(|d| d.as_secs()),
        webhook: args.webhook,
        headers,
        template,
        paused: false,
    };
    // Checked here too, so a mistake is one line before anything is sent.
    automation
        .validate()
        .map_err(|e| Exit::bad_input(e.to_string()))?;
    let path = format!("/api/automations/{}", args.name);
    let reply = backend.send("PUT", &path, &automation)?;
    if args.format.json {
        println!("{reply}");
    } else {
        let saved: AutomationInfo = Backend::parse(&path, reply)?;
        println!(
            "Automation '{}' created: on {} of {}, POST {}. See its deliveries with: host automation deliveries {}",
            args.name,
            on.as_str(),
            watched(&saved.automation),
            automation.webhook,
            args.name
        );
    }
    Ok(())
}

fn action(backend: &Backend, args: &NameArgs, verb: &str, done: &str) -> anyhow::Result<()> {
    let reply = backend.act(&format!("/api/automations/{}/{verb}", args.name))?;
    if args.format.json {
        println!("{reply}");
    } else {
        println!("Automation '{}' {done}.", args.name);
    }
    Ok(())
}

fn status(a: &Automation) -> &'static str {
    if a.paused { "paused" } else { "active" }
}

/// Which runs an automation watches, in words.
fn watched(a: &Automation) -> String {
    let mut parts = Vec::new();
    for (value, what) in [
        (&a.deployment, "deployment"),
        (&a.flow, "flow"),
        (&a.tag, "tag"),
    ] {
        if let Some(v) = value {
            parts.push(format!("{what} {v}"));
        }
    }
    if let Some(s) = a.stuck_after_seconds {
        parts.push(format!(
            "running over {}",
            humantime::format_duration(std::time::Duration::from_secs(s))
        ));
    }
    if parts.is_empty() {
        "all runs".into()
    } else {
        parts.join(", ")
    }
}
