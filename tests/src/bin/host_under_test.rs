//! The `host` program, built inside the test package (see Cargo.toml).

fn main() {
    weir_host::cli::main()
}
