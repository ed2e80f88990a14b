#[weir_sdk::task(memory = "lots")]
fn load() -> u32 {
    1
}

fn main() {}
