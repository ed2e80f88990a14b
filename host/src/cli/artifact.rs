//! `host artifact ls|inspect`: the reports, tables and links runs left,
//! read through the API (the server's, or in-process over the local database).

use super::JsonFlag;
use super::backend::Backend;
use super::output::table;
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

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

pub fn run(command: ArtifactCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        ArtifactCommand::Ls(args) => {
            let mut query = vec![format!("limit={}", args.limit)];
            query.extend(args.key.map(|k| format!("key={k}")));
            query.extend(args.flow_run.map(|r| format!("flow_run={r}")));
            let reply = backend.get(&format!("/api/artifacts?{}", query.join("&")))?;
            if args.format.json {
                println!("{}", reply["artifacts"]);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = reply["artifacts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        a["key"].as_str().unwrap_or("-").to_string(),
                        a["version"].to_string(),
                        text(&a["kind"]),
                        text(&a["flow_run"]),
                        text(&a["created_at"]),
                        text(&a["description"]),
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
            let reply = backend.get(&format!("/api/artifacts/{}", args.key))?;
            if args.format.json {
                println!("{reply}");
                return Ok(());
            }
            let latest = &reply["artifact"];
            println!(
                "{} v{} ({}) from flow run {} at {}",
                latest["key"].as_str().unwrap_or("(no key)"),
                latest["version"],
                text(&latest["kind"]),
                text(&latest["flow_run"]),
                text(&latest["created_at"]),
            );
            if let Some(description) = latest["description"].as_str() {
                println!("{description}");
            }
            println!();
            match &latest["data"] {
                Value::String(s) => println!("{s}"),
                rows => println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default()),
            }
            let versions = reply["versions"].as_array().map_or(0, Vec::len);
            if versions > 1 {
                println!("\n{versions} versions; `host artifact ls --key KEY` lists them");
            }
        }
    }
    Ok(())
}
