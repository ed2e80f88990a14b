//! Cost growth: how each figure moves when tasks, flows or history grow 10×.
//!
//! Read from figures the scenarios measured at two sizes; 1.00× means the
//! cost per unit stayed flat (total cost grew 10× with the work), above that
//! each unit got dearer as the size grew.

use crate::report::{Figure, Report};

const S: &str = "growth";

pub fn summarize(report: &mut Report) {
    let mut rows = Vec::new();
    for flow in ["sequential", "fan_out"] {
        for (small, big) in [(1_000, 10_000), (10_000, 100_000)] {
            rows.push((
                format!("per-task cost, {flow} {small} → {big} tasks"),
                ("recording", format!("recorded {flow}, {small} tasks")),
                ("recording", format!("recorded {flow}, {big} tasks")),
                true,
            ));
        }
    }
    for what in ["first page", "deep page", "by state", "by deployment"] {
        rows.push((
            format!("list latency, {what}, 100k → 1M runs"),
            ("list", format!("list 100 of 100000, {what} (p99 of 100)")),
            ("list", format!("list 100 of 1000000, {what} (p99 of 100)")),
            false,
        ));
    }
    for (name, (sa, a), (sb, b), is_rate) in rows {
        let (Some(a), Some(b)) = (report.find(sa, &a), report.find(sb, &b)) else {
            continue;
        };
        let factor = if is_rate {
            a.median() / b.median()
        } else {
            b.median() / a.median()
        };
        let figure: Figure = Figure::new(S, name, "×").one(factor);
        report.push(figure);
    }
}
