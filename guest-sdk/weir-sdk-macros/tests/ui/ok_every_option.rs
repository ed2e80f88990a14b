use weir_sdk::{Result, flow, task};

/// Every option at once.
#[task(
    name = "renamed",
    retries = 3,
    retry_delay = ["1s", "10s"],
    backoff = 2.0,
    max_delay = "1m",
    jitter = 0.1,
    retry_on = ["failed", "timeout"],
    timeout = "30s",
    fuel = 1_000_000,
    memory = "64MiB",
    cache_ttl = "1h",
    cache_key = "input",
    tags = ["db", "slow"]
)]
fn everything(a: u32, b: Option<String>) -> Result<u32> {
    Ok(a + b.map_or(0, |s| s.len() as u32))
}

#[flow(retries = 1)]
fn main_flow(#[default(5)] n: u32) -> Result<u32> {
    Ok(everything(n, None)?)
}

weir_sdk::export!(flows: [main_flow], tasks: [everything]);

fn main() {}
