use weir_sdk::{Result, flow, task};

#[task]
fn notify(run: weir_sdk::HookRun) -> String {
    run.state
}

#[flow(on_failure = notfy)]
fn etl() -> Result<u32> {
    Ok(1)
}

fn main() {}
