//! Every integration test of the workspace, in one binary.
//!
//! One binary links the host library once instead of once per file (each
//! link is about 600 MB of debug output and half a minute of the build), and
//! lets the files share `common`. Run one area with its module path:
//! `cargo test -p weir-tests --test all -- api::`, or one test by name.

mod common;

mod api;
mod c_sdk;
mod cli;
mod contract;
mod drills;
mod hooks;
mod http;
mod policies;
mod polyglot;
mod postgres;
mod projects;
mod recording;
mod sandbox;
mod schedules;
mod tidy;
mod ui;
mod versions;
