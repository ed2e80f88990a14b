//! Weir's host: API server, scheduler, executor and CLI for flows written as
//! WebAssembly components. See ARCHITECTURE.md for the map.

pub mod api;
pub mod automations;
pub mod builder;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod engine;
pub mod model;
pub mod orchestrate;
pub mod protocol;
pub mod schedule;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod store;
pub mod ui;
pub mod worker;
