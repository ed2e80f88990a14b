#[weir_sdk::task(retrys = 3)]
fn load() -> u32 {
    1
}

fn main() {}
