//! The `host` binary: parses the command line, sets up logging, prints errors
//! with their causes, and exits with the code the command chose.

use clap::Parser;
use weir_host::cli::{Cli, Exit};

fn main() {
    let cli = Cli::parse();
    init_tracing();
    match weir_host::cli::run(cli) {
        Ok(()) => {}
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("error: {}", exit.message);
                }
                std::process::exit(exit.code);
            }
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(1);
        }
    }
}

/// `WEIR_LOG` takes tracing filter directives (e.g. `debug`, `weir_host=trace`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
