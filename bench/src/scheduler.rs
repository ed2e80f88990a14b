//! `scheduler`: one tick over N deployments (1,000; 100 in a quick run),
//! each on an every-minute cron in a time zone, on a clock the benchmark
//! moves: a tick that makes one run per deployment (the top of a minute)
//! and the ticks in between, which make none (most ticks).

use crate::Options;
use crate::report::{Figure, Report};
use std::time::{Duration, Instant};
use weir_host::clock::{Clock, ManualClock};
use weir_host::config::Paths;
use weir_host::control::Durability;
use weir_host::model::Deployment;
use weir_host::schedule::parse_instant;
use weir_host::scheduler::Scheduler;
use weir_host::server::{Server, ServerConfig};
use weir_host::store::{ObjectKind, Write};

const S: &str = "scheduler";

pub fn run(options: &Options, report: &mut Report) {
    let deployments: usize = if options.quick { 100 } else { 1000 };
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::at(home.path());
    let clock = ManualClock::starting_at(parse_instant("2026-06-01T10:00:00Z").unwrap());
    let mut config = ServerConfig::new(paths);
    config.executor = None;
    config.clock = Some(clock.clone());
    // Each minute's run is made a minute ahead: one new run per deployment
    // per minute, as in steady state with any look-ahead.
    config.schedule_ahead = Duration::from_secs(60);
    let server = Server::open(config).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bytes = std::fs::read(weir_tests::FIXTURE_WASM).unwrap();
    let (component, _) = runtime
        .block_on(server.dispatcher.store_component(bytes.into()))
        .unwrap();
    let writes = (0..deployments)
        .map(|i| {
            let deployment: Deployment = serde_json::from_value(serde_json::json!({
                "name": format!("d{i}"), "component": component.digest.to_string(),
                "flow": "sequential", "params": {"n": 1},
                "schedules": [{"cron": "* * * * *", "timezone": "Europe/Berlin"}],
            }))
            .unwrap();
            Write::PutObject {
                kind: ObjectKind::Deployment,
                name: deployment.name.clone(),
                body: serde_json::to_string(&deployment).unwrap(),
                at: clock.now_micros(),
            }
        })
        .collect();
    server
        .dispatcher
        .control()
        .record(writes, Durability::Committed)
        .unwrap()
        .wait_blocking()
        .unwrap();
    let mut scheduler = Scheduler::new(server.dispatcher.clone(), server.scheduler_settings());
    let first = timed(&runtime, &mut scheduler);
    report.push(
        Figure::new(
            S,
            format!("first tick, {deployments} schedules compiled"),
            "ms",
        )
        .one(first.0.as_secs_f64() * 1e3),
    );
    let mut quiet = Vec::new();
    let mut making = Vec::new();
    for _ in 0..5 {
        for _ in 0..10 {
            clock.advance(Duration::from_millis(500));
            quiet.push(timed(&runtime, &mut scheduler).0.as_secs_f64() * 1e3);
        }
        clock.advance(Duration::from_secs(55));
        let (elapsed, report) = timed(&runtime, &mut scheduler);
        assert_eq!(
            report.made, deployments,
            "one run per deployment per minute"
        );
        making.push(elapsed.as_secs_f64() * 1e3);
    }
    report.push(
        Figure::new(
            S,
            format!("tick making no run ({deployments} deployments)"),
            "ms",
        )
        .samples(quiet),
    );
    report.push(Figure::new(S, format!("tick making {deployments} runs"), "ms").samples(making));
}

fn timed(
    runtime: &tokio::runtime::Runtime,
    scheduler: &mut Scheduler,
) -> (Duration, weir_host::scheduler::TickReport) {
    let started = Instant::now();
    let report = runtime.block_on(scheduler.tick());
    (started.elapsed(), report)
}
