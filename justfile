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

# Benchmarks: print a table and write JSON under target/bench/.
bench *ARGS:
    cargo build --release -p host
    cargo run --release -p bench -- {{ARGS}}
    cargo run --release -p bench --bin server -- {{ARGS}}

# Format everything.
fmt:
    cargo fmt --all
