#[weir_sdk::flow]
async fn load() -> u32 {
    1
}

fn main() {}
