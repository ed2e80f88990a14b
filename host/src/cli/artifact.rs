//! `host artifact ls|inspect`: the reports, tables and links runs left,
//! read through the API (the server's, or in-process over the local database).

use super::JsonFlag;
use super::backend::Backend;
use super::output::{print_json, table};
use crate::api::wire::{ArtifactList, ArtifactVersions};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// List artifacts, newest first.
    Ls(LsArgs),
    /// Show the newest version of an artifact key (or one artifact by id) and its history.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only the versions of this key.
    #[arg(long)]
    key: Option<String>,
    /// Only the artifacts of this flow run (its full id).
    #[arg(long)]
    flow_run: Option<String>,
    /// How many to show.
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    format: JsonFlag,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// An artifact key, or an artifact's id.
    key: String,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: ArtifactCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        ArtifactCommand::Ls(args) => {
            let mut query = vec![format!("limit={}", args.limit)];
            query.extend(args.key.map(|k| format!("key={k}")));
            query.extend(args.flow_run.map(|r| format!("flow_run={r}")));
            let path = format!("/api/artifacts?{}", query.join("&"));
            let list: ArtifactList = backend.get_as(&path)?;
            if args.format.json {
                return print_json(&list.artifacts);
            }
            let rows: Vec<Vec<String>> = list
                .artifacts
                .iter()
                .map(|a| {
                    vec![
                        a.key.clone().unwrap_or_else(|| "-".into()),
                        a.version.to_string(),
                        a.kind.as_str().to_string(),
                        a.flow_run.clone(),
                        a.created_at.clone(),
                        a.description.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(
                    &[
                        "KEY",
                        "VERSION",
                        "KIND",
                        "FLOW RUN",
                        "CREATED",
                        "DESCRIPTION"
                    ],
                    &rows
                )
            );
        }
        ArtifactCommand::Inspect(args) => {
            let path = format!("/api/artifacts/{}", args.key);
            if args.format.json {
                println!("{}", backend.get(&path)?);
                return Ok(());
            }
            let reply: ArtifactVersions = backend.get_as(&path)?;
            let latest = &reply.artifact;
            println!(
                "{} v{} ({}) from flow run {} at {}",
                latest.key.as_deref().unwrap_or("(no key)"),
                latest.version,
                latest.kind.as_str(),
                latest.flow_run,
                latest.created_at,
            );
            if let Some(description) = &latest.description {
                println!("{description}");
            }
            println!();
            match &latest.data {
                Value::String(s) => println!("{s}"),
                rows => println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default()),
            }
            let versions = reply.versions.len();
            if versions > 1 {
                println!("\n{versions} versions; `host artifact ls --key KEY` lists them");
            }
        }
    }
    Ok(())
}
