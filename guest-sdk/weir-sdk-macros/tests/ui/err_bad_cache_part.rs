#[weir_sdk::task(cache_ttl = "1h", cache_key = ["input", "flow_params"])]
fn load(n: u32) -> u32 {
    n
}

fn main() {}
