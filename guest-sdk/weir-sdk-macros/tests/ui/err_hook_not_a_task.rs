#[weir_sdk::flow(on_failure = "notify")]
fn etl() -> u32 {
    1
}

fn main() {}
