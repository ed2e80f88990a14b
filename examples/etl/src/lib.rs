//! Extract → fan-out transform → load, with a load that fails once and is retried.
//!
//! The Python and JavaScript twins (`examples/etl-python`, `examples/etl-js`)
//! compute exactly the same result for the same parameters.

use serde::{Deserialize, Serialize};
use weir_sdk::{Result, flow, info, task};

#[derive(Clone, Debug, Serialize, Deserialize, weir_sdk::schemars::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
struct Row {
    id: u32,
    value: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, weir_sdk::schemars::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
struct Summary {
    count: u32,
    sum: u64,
}

/// Reads `rows` rows from the source.
#[task(timeout = "30s")]
fn extract(rows: u32) -> Vec<Row> {
    (0..rows)
        .map(|i| Row {
            id: i,
            value: (i * 7919) % 1000,
        })
        .collect()
}

/// Cleans one chunk of rows and sums it.
#[task(retries = 2, retry_delay = "10ms")]
fn transform(chunk: Vec<Row>) -> Summary {
    Summary {
        count: chunk.len() as u32,
        sum: chunk.iter().map(|r| u64::from(r.value) * 2).sum(),
    }
}

/// Writes the totals to the warehouse, whose connection drops on the first try.
#[task(retries = 3, retry_delay = "50ms")]
fn load(summaries: Vec<Summary>) -> Result<u64> {
    if weir_sdk::run_info().attempt == 1 {
        weir_sdk::bail!("warehouse connection reset (simulated)");
    }
    Ok(summaries.iter().map(|s| s.sum).sum())
}

/// Extracts `rows` rows, transforms them in parallel chunks and loads the totals.
#[flow]
fn etl(#[default(100)] rows: u32, #[default(100)] chunk_size: u32) -> Result<serde_json::Value> {
    if chunk_size == 0 {
        weir_sdk::bail!("chunk_size must be at least 1");
    }
    info!("extracting {rows} rows");
    let data = extract(rows)?;
    let chunks: Vec<Vec<Row>> = data
        .chunks(chunk_size as usize)
        .map(<[Row]>::to_vec)
        .collect();
    info!(
        "transforming {} chunks of up to {chunk_size} rows",
        chunks.len()
    );
    let summaries = weir_sdk::wait_all(transform::map(chunks))
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;
    info!("loading {} summaries", summaries.len());
    let total = load(summaries.clone())?;
    info!("loaded: total {total}");
    Ok(serde_json::json!({ "rows": rows, "chunks": summaries.len(), "total": total }))
}

weir_sdk::export!(flows: [etl], tasks: [extract, transform, load]);
