# Everyday recipes. The README's two commands do not need `just`.

# Run every test (what CI runs after fmt and clippy).
test:
    cargo test --workspace

# fmt, clippy and tests, exactly as CI does.
ci:
    bash .ci/run

# Run an example flow, e.g. `just example etl --param rows=500`.
example NAME *ARGS:
    cargo run --release -p host -- flow run examples/{{NAME}} {{ARGS}}

# Start the API server with the embedded executor on 127.0.0.1:4200.
serve *ARGS:
    cargo run --release -p host -- server start {{ARGS}}

# Benchmarks, Prefect side by side: one table, JSON under bench/results/.
# `just bench server` runs one scenario; `just bench drills` the full drills.
bench *ARGS="all":
    cargo build --release -p host -p bench
    cargo run --release -p bench -- {{ARGS}}

# Format everything.
fmt:
    cargo fmt --all
