//! `host schedule preview`: the next fire times of a schedule before it is
//! deployed, computed here by the same code the server's scheduler uses.

use super::{Exit, JsonFlag};
use crate::clock::{Clock, SystemClock};
use crate::model::Schedule;
use crate::schedule::parse_instant;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Print a schedule's next fire times in RFC 3339 with the zone's offset.
    #[command(after_help = "Examples:
  host schedule preview --cron '0 2 * * *' --timezone Europe/Berlin -n 3
  host schedule preview --cron '30 2 * * *' --timezone America/New_York --from 2026-03-07T00:00:00-05:00
  host schedule preview --interval 90m --anchor 2026-01-01T03:00:00+01:00 --json
  host schedule preview --rrule 'FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4' --anchor 2026-01-05T09:00:00+01:00 --tz Europe/Berlin")]
    Preview(PreviewArgs),
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("kind").required(true).multiple(false))]
pub struct PreviewArgs {
    /// A cron pattern: 5 fields, 6 with seconds first, or @hourly/@daily/...
    #[arg(long, group = "kind")]
    cron: Option<String>,
    /// A fixed interval (e.g. 15m, 1h, 1day).
    #[arg(long, group = "kind")]
    interval: Option<String>,
    /// An RFC 5545 rule, e.g. 'FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;COUNT=4' (with --anchor
    /// as its start) or with its own DTSTART line.
    #[arg(long, group = "kind")]
    rrule: Option<String>,
    /// IANA time zone a cron or rrule is read in (default UTC).
    #[arg(long, visible_alias = "tz")]
    timezone: Option<String>,
    /// RFC 3339 instant an interval's grid passes through (default the Unix
    /// epoch), or an rrule's start.
    #[arg(long)]
    anchor: Option<String>,
    /// Start after this RFC 3339 instant (default now).
    #[arg(long)]
    from: Option<String>,
    /// How many times to print.
    #[arg(short = 'n', long = "count", default_value_t = 5)]
    count: usize,
    #[command(flatten)]
    format: JsonFlag,
}

pub fn run(command: ScheduleCommand) -> anyhow::Result<()> {
    match command {
        ScheduleCommand::Preview(args) => preview(args),
    }
}

fn preview(args: PreviewArgs) -> anyhow::Result<()> {
    const MOST: usize = 1000;
    if args.count == 0 || args.count > MOST {
        return Err(Exit::bad_input(format!(
            "-n {} is out of range: ask for 1 to {MOST} times",
            args.count
        )));
    }
    let interval_seconds = args
        .interval
        .as_deref()
        .map(|text| {
            humantime::parse_duration(text)
                .map(|d| d.as_secs())
                .map_err(|e| Exit::bad_input(format!("--interval '{text}': {e} (e.g. 15m, 1h)")))
        })
        .transpose()?;
    let schedule = Schedule {
        cron: args.cron,
        interval_seconds,
        rrule: args.rrule,
        anchor: args.anchor,
        timezone: args.timezone,
        ..Schedule::default()
    };
    let timetable = schedule
        .timetable()
        .map_err(|e| Exit::bad_input(e.to_string()))?;
    let from = match args.from.as_deref() {
        Some(text) => parse_instant(text).map_err(|e| Exit::bad_input(format!("--from: {e}")))?,
        None => SystemClock.now_micros(),
    };
    let zone = schedule.zone();
    let times: Vec<String> = timetable
        .upcoming(from, args.count)
        .into_iter()
        .map(|t| zone.format(t))
        .collect();
    if args.format.json {
        println!("{}", json!({ "times": times }));
    } else if times.is_empty() {
        println!(
            "No fire time after {}: a rule with COUNT or UNTIL may have ended, and an rrule is walked at most 100000 occurrences from its start.",
            zone.format(from)
        );
    } else {
        for time in times {
            println!("{time}");
        }
    }
    Ok(())
}

/// A schedule's next `count` fire times after now, in its own zone, or why
/// there are none.
pub fn next_times(
    schedule: &Schedule,
    count: usize,
) -> Result<Vec<String>, crate::model::deploy::DeploymentError> {
    schedule.next_times(SystemClock.now_micros(), count)
}
