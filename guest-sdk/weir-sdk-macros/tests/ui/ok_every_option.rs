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

/// Cached with no expiry by input and code; its result is never recorded.
#[task(cache_ttl = "forever", cache_key = ["input", "code"], persist_result = false, result_storage = "big")]
fn kept_apart(n: u32) -> u32 {
    n
}

/// A state hook.
#[task]
fn notify(run: weir_sdk::HookRun) -> String {
    run.state
}

#[flow(
    retries = 1,
    on_completion = notify,
    on_failure = [notify, notify],
    on_cancellation = [notify],
    on_crashed = notify
)]
fn main_flow(#[default(5)] n: u32) -> Result<u32> {
    Ok(everything(n, None)?)
}

weir_sdk::export!(flows: [main_flow], tasks: [everything, notify, kept_apart]);

fn main() {}
