#[weir_sdk::task(memory = "99999999999GiB")]
fn load() -> u32 {
    1
}

fn main() {}
