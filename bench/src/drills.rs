//! `drills` (not part of `all`): the full versions of the drills whose short
//! versions run in CI (`tests/tests/all/drills.rs`): 100 flows killed mid-run,
//! 1,000 concurrent triggers, every endpoint fuzzed for longer, a full disk.

use crate::report::{Figure, Report, at_most};
use std::path::Path;
use weir_tests::drills::{self, DrillReport};

const S: &str = "drills";

pub fn run(report: &mut Report, host: &Path) {
    let add = |drill: DrillReport, report: &mut Report| {
        drill.print();
        for c in &drill.checked {
            report.notes.push(format!("drill {}: ok: {c}", drill.name));
        }
        for (name, value) in &drill.figures {
            let mut figure = Figure::new(S, format!("{}: {name}", drill.name), "").one(*value);
            if name.starts_with("health p99") {
                figure = figure.target(at_most(50.0));
            }
            report.push(figure);
        }
    };
    add(drills::kill_mid_flows(host, 100, 20, 5), report);
    add(drills::concurrent_triggers(host, 1000, 32), report);
    add(drills::fuzz_api(host, 20, 0xbe7c4), report);
    match drills::disk_full(host) {
        Ok(drill) => add(drill, report),
        Err(why) => report
            .notes
            .push(format!("drill disk full: SKIPPED: {why}")),
    }
}
