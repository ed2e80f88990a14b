#[weir_sdk::task(retry_on = ["failed", "sometimes"])]
fn load() -> u32 {
    1
}

fn main() {}
