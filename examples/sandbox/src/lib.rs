//! What the sandbox stops: each task misbehaves in its own way, the host turns
//! it into a clear failure, and the flow goes on and reports all of them.

use serde_json::{Value, json};
use weir_sdk::{Result, TaskError, flow, task, warn};

/// Computes for far longer than its fuel allows.
#[task(fuel = 5_000_000)]
fn burn_fuel() -> u64 {
    let mut x = 0u64;
    for i in 0..10_000_000_000u64 {
        x = std::hint::black_box(x ^ i);
    }
    x
}

/// Allocates far more than its 16 MiB.
#[task(memory = "16MiB")]
fn hog_memory() -> usize {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![7u8; 1 << 20]);
        std::hint::black_box(&blocks);
    }
}

/// Never returns; its 1 s deadline stops it.
#[task(timeout = "1s", fuel = 1_000_000_000_000)]
fn spin_forever() -> u64 {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Tries to read the host's /etc/passwd; no directory is granted.
#[task]
fn read_passwd() -> Result<String> {
    Ok(std::fs::read_to_string("/etc/passwd")?)
}

fn outcome<T>(task: &str, result: std::result::Result<T, TaskError>) -> Value {
    match result {
        Ok(_) => json!(format!("{task} was not stopped!")),
        Err(error) => {
            warn!("{task}: {error}");
            json!(error.to_string())
        }
    }
}

/// Runs four misbehaving tasks and reports how the sandbox stopped each.
#[flow]
fn sandbox() -> Result<Value> {
    Ok(json!({
        "burn_fuel": outcome("burn_fuel", burn_fuel()),
        "hog_memory": outcome("hog_memory", hog_memory()),
        "spin_forever": outcome("spin_forever", spin_forever()),
        "read_passwd": outcome("read_passwd", read_passwd()),
    }))
}

weir_sdk::export!(flows: [sandbox], tasks: [burn_fuel, hog_memory, spin_forever, read_passwd]);
