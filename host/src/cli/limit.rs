//! `host concurrency-limit ...`: named limits shared by every run on every
//! host. A task takes a slot of each limit named like one of its tags;
//! flows and tasks take slots by name from code (`weir_sdk::limit`).

use super::JsonFlag;
use super::NameArgs;
use super::backend::Backend;
use super::output::{print_json, table};
use crate::api::limits::{LimitBody, LimitInfo, LimitList};
use crate::clock::format_rfc3339;
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum LimitCommand {
    /// Create a limit, or change its slots or rate.
    ///
    /// A concurrency limit: at most SLOTS held at once, across every run on
    /// every host. A task tagged NAME holds one while it runs; code takes
    /// them with `limit("NAME", n)`. With --slot-decay-per-second it is a
    /// rate limit: taken slots come back at that rate instead.
    #[command(after_help = "Examples:\n  \
        host concurrency-limit create db 3\n  \
        host concurrency-limit create github-api 10 --slot-decay-per-second 1")]
    Create(CreateArgs),
    /// List limits with the slots in use now.
    Ls(JsonFlag),
    /// Show a limit and the runs holding its slots.
    Inspect(NameArgs),
    /// Delete a limit (its holders keep what they took until they give it back).
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The limit's name; tasks tagged with it take its slots.
    name: String,
    /// How many slots it has (1 to 1,000,000).
    slots: u32,
    /// Make it a rate limit: slots come back at this many per second.
    #[arg(long, value_name = "RATE")]
    slot_decay_per_second: Option<f64>,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: LimitCommand) -> anyhow::Result<()> {
    let backend = Backend::open()?;
    match command {
        LimitCommand::Create(args) => {
            let path = format!("/api/concurrency-limits/{}", args.name);
            let reply = backend.send(
                "PUT",
                &path,
                &LimitBody {
                    slots: args.slots,
                    slot_decay_per_second: args.slot_decay_per_second,
                },
            )?;
            let limit: LimitInfo = Backend::parse(&path, reply.clone())?;
            if args.format.json {
                println!("{reply}");
            } else {
                println!("Limit '{}': {}.", limit.name, capacity(&limit));
            }
        }
        LimitCommand::Ls(format) => {
            let list: LimitList = backend.get_as("/api/concurrency-limits")?;
            if format.json {
                return print_json(&list.limits);
            }
            let rows: Vec<Vec<String>> = list
                .limits
                .iter()
                .map(|l| {
                    vec![
                        l.name.clone(),
                        kind(l).into(),
                        l.slots.to_string(),
                        l.slot_decay_per_second
                            .map_or("-".into(), |r| format!("{r}/s")),
                        l.in_use.to_string(),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(&["NAME", "KIND", "SLOTS", "DECAY", "IN USE"], &rows)
            );
        }
        LimitCommand::Inspect(args) => {
            let path = format!("/api/concurrency-limits/{}", args.name);
            let reply = backend.get(&path)?;
            let limit: LimitInfo = Backend::parse(&path, reply.clone())?;
            if args.format.json {
                println!("{reply}");
                return Ok(());
            }
            println!("Limit '{}': {}.", limit.name, capacity(&limit));
            println!("In use: {} of {}.", limit.in_use, limit.slots);
            if !limit.holders.is_empty() {
                let rows: Vec<Vec<String>> = limit
                    .holders
                    .iter()
                    .map(|h| {
                        vec![
                            h.flow_run.clone(),
                            h.slots.to_string(),
                            format_rfc3339(h.taken_at)[..19].replace('T', " "),
                        ]
                    })
                    .collect();
                println!("{}", table(&["FLOW RUN", "SLOTS", "TAKEN AT"], &rows));
            }
        }
        LimitCommand::Delete(args) => {
            let reply: Value = backend.delete(&format!("/api/concurrency-limits/{}", args.name))?;
            if args.format.json {
                println!("{reply}");
            } else {
                println!("Limit '{}' deleted.", args.name);
            }
        }
    }
    Ok(())
}

fn kind(limit: &LimitInfo) -> &'static str {
    match limit.slot_decay_per_second {
        Some(_) => "rate",
        None => "concurrency",
    }
}

fn capacity(limit: &LimitInfo) -> String {
    match limit.slot_decay_per_second {
        Some(rate) => format!(
            "a rate limit of {} slots, {rate} back per second",
            limit.slots
        ),
        None => format!("{} slots held at once", limit.slots),
    }
}
