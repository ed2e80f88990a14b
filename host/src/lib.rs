//! Weir's host: API server, scheduler, executor and CLI for flows written as
//! WebAssembly components. See ARCHITECTURE.md for the map.

pub mod clock;
pub mod engine;
pub mod model;
pub mod orchestrate;
pub mod store;
pub mod control;
pub mod worker;
pub mod config;
pub mod protocol;
pub mod builder;
pub mod cli;
