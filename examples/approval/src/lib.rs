//! A flow that asks a person before it acts: it prepares a change, leaves
//! a report of it as an artifact, pauses until someone approves or rejects
//! it (with a note), and then applies it or not.
//!
//! The run is `Paused` while it waits and holds no sandbox; `host flow-run
//! resume ID --input '{"approved": true}'` continues it. The tasks that ran
//! before the pause are replayed from their records, not run again.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use weir_sdk::{Artifact, Result, flow, info, task};

/// What the approver sends back.
#[derive(Debug, Deserialize, Serialize)]
struct Decision {
    approved: bool,
    note: Option<String>,
}

/// Works out what would change (here: a price increase per item).
#[task]
fn plan(percent: u32) -> Vec<serde_json::Value> {
    ["basic", "pro", "team"]
        .iter()
        .zip([10u32, 25, 60])
        .map(|(plan, price)| json!({"plan": plan, "from": price, "to": price + price * percent / 100}))
        .collect()
}

/// Applies the change.
#[task(retries = 2)]
fn apply(rows: Vec<serde_json::Value>) -> String {
    format!("applied {} price changes", rows.len())
}

/// Raises prices by `percent` (default: the variable `price-increase`, else
/// 5) once a person approves; waits up to `timeout_hours` for them.
#[flow]
fn approval(percent: Option<u32>, timeout_hours: Option<u64>) -> Result<String> {
    let percent = match percent {
        Some(p) => p,
        None => weir_sdk::variable::<u32>("price-increase")?.unwrap_or(5),
    };
    let rows = plan(percent)?;
    Artifact::table(&rows)
        .key("price-change")
        .description(format!("prices +{percent}%, waiting for approval"))
        .create()?;
    info!("asking for approval of {} changes", rows.len());
    let schema = json!({
        "type": "object",
        "required": ["approved"],
        "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
        "additionalProperties": false
    });
    let hours = timeout_hours.unwrap_or(24);
    let decision: Decision = weir_sdk::pause(Duration::from_secs(hours * 3600), &schema)?;
    let note = decision.note.unwrap_or_default();
    if !decision.approved {
        info!("rejected: {note}");
        return Ok(format!("rejected: {note}"));
    }
    let done = apply(rows)?;
    Ok(format!("approved ({note}): {done}"))
}

weir_sdk::export!(flows: [approval], tasks: [plan, apply]);
