//! `host work-pool ...` and `host work-queue ...`: where runs wait and
//! which hosts take them.

use super::backend::Backend;
use super::output::{paused_word, print_json, said, table};
use super::{JsonFlag, NameArgs};
use crate::api::wire::{HostInfo, HostList, WorkPoolList, WorkQueueList};
use crate::model::{WorkPool, WorkQueue};
use clap::{Args, Subcommand};
use serde_json::json;

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
                &WorkPool {
                    name: args.name.clone(),
                    description: args.description.clone(),
                    paused: false,
                    concurrency_limit: args.concurrency_limit,
                },
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
                &WorkQueue {
                    name: args.name.clone(),
                    work_pool: args.pool.clone(),
                    priority: args.priority,
                    concurrency_limit: args.concurrency_limit,
                    paused: false,
                    tags: args.tags.clone(),
                },
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
