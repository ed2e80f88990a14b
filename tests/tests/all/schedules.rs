//! The scheduler driven tick by tick on a clock the test moves: runs made
//! ahead, catch-up after downtime by each policy, no duplicates from a
//! restarted scheduler or two racing ones, and runs of edited schedules
//! removed. No executor runs, so the runs stay where the scheduler put them.

use std::collections::BTreeMap;
use std::time::Duration;
use weir_host::clock::ManualClock;
use weir_host::config::Paths;
use weir_host::control::Durability;
use weir_host::model::{RunState, TimestampMicros};
use weir_host::schedule::{Zone, parse_instant};
use weir_host::scheduler::{Scheduler, TickReport};
use weir_host::server::{Server, ServerConfig};
use weir_host::store::{FlowRunFilter, ObjectKind, Write};
use weir_tests::{FIXTURE_WASM, test_engine_config};

/// A server without an executor on a manual clock at 2026-06-01T10:00:00Z,
/// making runs one minute ahead.
struct Fixture {
    server: Server,
    clock: ManualClock,
    digest: String,
    runtime: tokio::runtime::Runtime,
    _home: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::at(home.path());
        let clock = ManualClock::starting_at(parse_instant("2026-06-01T10:00:00Z").unwrap());
        let mut config = ServerConfig::new(paths.clone());
        config.engine = test_engine_config(Some(paths.compile_cache()));
        config.executor = None;
        config.clock = Some(clock.clone());
        config.schedule_ahead = Duration::from_secs(60);
        let server = Server::open(config).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bytes = std::fs::read(FIXTURE_WASM).unwrap();
        let (component, _) = runtime
            .block_on(server.dispatcher.store_component(bytes.into()))
            .unwrap();
        Fixture {
            digest: component.digest.to_string(),
            server,
            clock,
            runtime,
            _home: home,
        }
    }

    fn now(&self) -> TimestampMicros {
        self.server.dispatcher.control().now()
    }

    /// Creates or replaces a deployment of the fixture's `sequential` flow.
    fn deploy(&self, name: &str, extra: serde_json::Value) {
        let mut body = serde_json::json!({
            "name": name, "component": self.digest, "flow": "sequential",
            "params": {"n": 1},
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let deployment: weir_host::model::Deployment = serde_json::from_value(body).unwrap();
        deployment.validate().unwrap();
        let put = Write::PutObject {
            kind: ObjectKind::Deployment,
            name: name.to_string(),
            body: serde_json::to_string(&deployment).unwrap(),
            at: self.now(),
        };
        let ticket = self
            .server
            .dispatcher
            .control()
            .record(vec![put], Durability::Committed)
            .unwrap();
        ticket.wait_blocking().unwrap();
    }

    fn scheduler(&self) -> Scheduler {
        Scheduler::new(
            self.server.dispatcher.clone(),
            self.server.scheduler_settings(),
        )
    }

    fn tick(&self, scheduler: &mut Scheduler) -> TickReport {
        self.runtime.block_on(scheduler.tick())
    }

    /// A deployment's runs: scheduled time (HH:MM in UTC) → (state, params).
    fn runs(&self, deployment: &str) -> BTreeMap<String, (RunState, serde_json::Value)> {
        let rows = self
            .server
            .store
            .list_flow_runs(&FlowRunFilter {
                deployment: Some(deployment.to_string()),
                limit: 1000,
                ..FlowRunFilter::default()
            })
            .unwrap();
        let mut runs = BTreeMap::new();
        for row in rows {
            let at = Zone::utc().format(row.scheduled_at.unwrap())[11..16].to_string();
            let params = serde_json::from_str(&row.params).unwrap();
            assert!(
                runs.insert(at.clone(), (row.state, params)).is_none(),
                "two runs of '{deployment}' at {at}"
            );
        }
        runs
    }

    fn times(&self, deployment: &str) -> Vec<String> {
        self.runs(deployment).into_keys().collect()
    }
}

const EVERY_MINUTE: &str = "* * * * *";

#[test]
fn ten_minutes_of_downtime_are_caught_up_by_each_policy() {
    let f = Fixture::new();
    let every_minute = serde_json::json!([{ "cron": EVERY_MINUTE }]);
    f.deploy("skip", serde_json::json!({ "schedules": every_minute }));
    f.deploy(
        "latest",
        serde_json::json!({ "schedules": every_minute, "catchup": "latest" }),
    );
    f.deploy(
        "all",
        serde_json::json!({ "schedules": every_minute, "catchup": "all", "catchup_limit": 3 }),
    );
    f.deploy(
        "all-unbounded",
        serde_json::json!({ "schedules": every_minute, "catchup": "all", "catchup_limit": 100 }),
    );
    let mut scheduler = f.scheduler();
    assert_eq!(f.tick(&mut scheduler).made, 4, "10:01 for each");
    for name in ["skip", "latest", "all", "all-unbounded"] {
        assert_eq!(f.times(name), ["10:01"]);
    }

    // The server is down from 10:00 to 10:10:30: the scheduler that comes
    // back is a new one, with nothing but the store to go by.
    f.clock.advance(Duration::from_secs(10 * 60 + 30));
    let mut restarted = f.scheduler();
    f.tick(&mut restarted);
    // 10:02-10:09 were missed; 10:10 is due (30 s ago); 10:11 is ahead.
    assert_eq!(f.times("skip"), ["10:01", "10:10", "10:11"]);
    assert_eq!(f.times("latest"), ["10:01", "10:09", "10:10", "10:11"]);
    assert_eq!(
        f.times("all"),
        ["10:01", "10:07", "10:08", "10:09", "10:10", "10:11"]
    );
    assert_eq!(
        f.times("all-unbounded"),
        [
            "10:01", "10:02", "10:03", "10:04", "10:05", "10:06", "10:07", "10:08", "10:09",
            "10:10", "10:11"
        ]
    );
    // Late marking keeps working: what waited past a minute is Late.
    let all = f.runs("all");
    for late in ["10:01", "10:07", "10:08", "10:09"] {
        assert_eq!(all[late].0, RunState::Late, "{late}");
    }
    for waiting in ["10:10", "10:11"] {
        assert_eq!(all[waiting].0, RunState::Scheduled, "{waiting}");
    }
}

#[test]
fn a_restarted_scheduler_and_two_racing_ones_make_each_run_once() {
    let f = Fixture::new();
    f.deploy(
        "minutely",
        serde_json::json!({ "schedules": [{ "cron": EVERY_MINUTE }], "catchup": "all" }),
    );
    let mut first = f.scheduler();
    assert_eq!(f.tick(&mut first).made, 1);
    assert_eq!(
        f.tick(&mut first).made,
        0,
        "the same tick again makes nothing"
    );
    let mut restarted = f.scheduler();
    assert_eq!(
        f.tick(&mut restarted).made,
        0,
        "nor does a restarted scheduler"
    );

    f.clock.advance(Duration::from_secs(5 * 60));
    // Two schedulers that know nothing tick at once, many times over.
    let (mut a, mut b) = (f.scheduler(), f.scheduler());
    let (ra, rb) = f
        .runtime
        .block_on(async { tokio::join!(a.tick(), b.tick()) });
    let made = ra.made + rb.made;
    assert_eq!(
        f.times("minutely"),
        ["10:01", "10:02", "10:03", "10:04", "10:05", "10:06"]
    );
    assert_eq!(made, 5, "{ra:?} {rb:?}");
    f.clock.advance(Duration::from_secs(60));
    let racers: Vec<Scheduler> = (0..4).map(|_| f.scheduler()).collect();
    let reports = f.runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for mut racer in racers {
            set.spawn(async move { racer.tick().await });
        }
        let mut reports = Vec::new();
        while let Some(report) = set.join_next().await {
            reports.push(report.unwrap());
        }
        reports
    });
    assert_eq!(
        reports.iter().map(|r| r.made).sum::<usize>(),
        1,
        "{reports:?}"
    );
    assert_eq!(f.times("minutely").last().unwrap(), "10:07");
}

#[test]
fn editing_a_schedule_removes_its_runs_made_ahead_and_params_override() {
    let f = Fixture::new();
    let clock = &f.clock;
    f.deploy(
        "hourly",
        serde_json::json!({ "schedules": [
            { "cron": "0 * * * *" },
            { "cron": "30 * * * *", "params": { "n": 3 } },
        ] }),
    );
    let settings_ahead = Duration::from_secs(3 * 3600);
    let mut scheduler = Scheduler::new(f.server.dispatcher.clone(), {
        let mut s = f.server.scheduler_settings();
        s.look_ahead = settings_ahead;
        s
    });
    f.tick(&mut scheduler);
    let runs = f.runs("hourly");
    assert_eq!(
        runs.keys().collect::<Vec<_>>(),
        ["10:30", "11:00", "11:30", "12:00", "12:30", "13:00"]
    );
    assert_eq!(runs["11:00"].1, serde_json::json!({"n": 1}));
    assert_eq!(
        runs["11:30"].1,
        serde_json::json!({"n": 3}),
        "the schedule's params win"
    );

    // The half-past schedule moves to quarter past; the hourly one is kept.
    clock.advance(Duration::from_secs(60));
    f.deploy(
        "hourly",
        serde_json::json!({ "schedules": [
            { "cron": "0 * * * *" },
            { "cron": "15 * * * *", "params": { "n": 3 } },
        ] }),
    );
    f.tick(&mut scheduler);
    assert_eq!(
        f.times("hourly"),
        ["10:15", "11:00", "11:15", "12:00", "12:15", "13:00"]
    );
    // Deactivated: its runs ahead go; the other schedule's stay.
    f.deploy(
        "hourly",
        serde_json::json!({ "schedules": [
            { "cron": "0 * * * *" },
            { "cron": "15 * * * *", "params": { "n": 3 }, "active": false },
        ] }),
    );
    f.tick(&mut scheduler);
    assert_eq!(f.times("hourly"), ["11:00", "12:00", "13:00"]);
    // Deleted: every run made ahead goes.
    let ticket = f
        .server
        .dispatcher
        .control()
        .record(
            vec![Write::DeleteObject {
                kind: ObjectKind::Deployment,
                name: "hourly".into(),
            }],
            Durability::Committed,
        )
        .unwrap();
    ticket.wait_blocking().unwrap();
    f.tick(&mut scheduler);
    assert!(f.times("hourly").is_empty(), "{:?}", f.times("hourly"));
}

#[test]
fn pausing_a_deployment_drops_its_runs_ahead_and_resuming_goes_on_from_then() {
    let f = Fixture::new();
    let schedules = serde_json::json!([{ "cron": EVERY_MINUTE }]);
    f.deploy(
        "minutely",
        serde_json::json!({ "schedules": schedules, "catchup": "latest" }),
    );
    let mut scheduler = f.scheduler();
    f.tick(&mut scheduler);
    assert_eq!(f.times("minutely"), ["10:01"]);
    f.clock.advance(Duration::from_secs(30));
    f.deploy(
        "minutely",
        serde_json::json!({ "schedules": schedules, "catchup": "latest", "paused": true }),
    );
    f.tick(&mut scheduler);
    assert!(f.times("minutely").is_empty(), "{:?}", f.times("minutely"));
    // Paused through 10:05; the skipped times are not caught up.
    f.clock.advance(Duration::from_secs(5 * 60));
    f.tick(&mut scheduler);
    assert!(f.times("minutely").is_empty());
    f.deploy(
        "minutely",
        serde_json::json!({ "schedules": schedules, "catchup": "latest" }),
    );
    f.tick(&mut scheduler);
    assert_eq!(f.times("minutely"), ["10:06"]);
}

#[test]
fn changing_a_deployments_params_remakes_its_runs_ahead_with_them() {
    let f = Fixture::new();
    let schedules = serde_json::json!([{ "cron": "*/20 * * * *" }]);
    f.deploy("thirds", serde_json::json!({ "schedules": schedules }));
    let mut scheduler = Scheduler::new(f.server.dispatcher.clone(), {
        let mut s = f.server.scheduler_settings();
        s.look_ahead = Duration::from_secs(3600);
        s
    });
    f.tick(&mut scheduler);
    let before = f.runs("thirds");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["10:20", "10:40", "11:00"]
    );
    assert!(before.values().all(|(_, p)| p["n"] == 1));
    f.clock.advance(Duration::from_secs(60));
    f.deploy(
        "thirds",
        serde_json::json!({ "schedules": schedules, "params": { "n": 5 } }),
    );
    f.tick(&mut scheduler);
    let after = f.runs("thirds");
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["10:20", "10:40", "11:00"]
    );
    assert!(after.values().all(|(_, p)| p["n"] == 5), "{after:?}");
}
