//! The `host` binary. Everything it does lives in the library's `cli` module,
//! so the integration tests can run the very same program.

fn main() {
    weir_host::cli::main()
}
