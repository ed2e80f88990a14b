#[weir_sdk::task]
struct Load;

fn main() {}
