#[weir_sdk::task(timeout = "5 sex")]
fn load() -> u32 {
    1
}

fn main() {}
