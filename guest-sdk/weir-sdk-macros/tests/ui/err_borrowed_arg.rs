#[weir_sdk::task]
fn load(name: &str) -> usize {
    name.len()
}

fn main() {}
