//! Store tests through the interface: writes, compare-and-set, reads back.
//! What only SQLite has (result files, pragmas) is tested in `sqlite::tests`.

use super::*;
use crate::model::{ComponentDigest, FailureKind};

/// Every test here runs against both backends (`sqlite::NAME`,
/// `postgres::NAME`). PostgreSQL is a throwaway cluster started once per
/// test process; where it is not installed the PostgreSQL half prints
/// SKIPPED, except under CI (`CI` set), where it fails.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

/// Where a test's database lives; it can be opened again.
pub(crate) enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Place {
    /// A new, empty database; `None` (after printing why) when PostgreSQL
    /// is not installed here and this is not CI.
    pub(crate) fn new(kind: Kind) -> Option<Place> {
        match kind {
            Kind::Sqlite => Some(Place::Sqlite(tempfile::tempdir().unwrap())),
            Kind::Postgres => {
                pg::testing::or_skip(pg::testing::TestCluster::shared().and_then(|c| c.database()))
                    .map(Place::Postgres)
            }
        }
    }

    pub(crate) fn open(&self) -> Store {
        match self {
            Place::Sqlite(dir) => Store::open(&dir.path().join("weir.db")).unwrap(),
            Place::Postgres(url) => Store::new(PostgresStore::open(url).unwrap()),
        }
    }
}

fn open(kind: Kind) -> Option<(Place, Store)> {
    let place = Place::new(kind)?;
    let store = place.open();
    Some((place, store))
}

/// Runs each named test, `async fn NAME(kind: Kind)`, on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Kind::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Kind::Postgres).await
            })*
        }
    };
}

pub(crate) fn new_flow_run(id: FlowRunId) -> Write {
    Write::NewFlowRun(NewFlowRun {
        id,
        parent_flow_run: None,
        component: ComponentDigest::from_sha256([7; 32]),
        flow_name: "etl".into(),
        params: "{}".into(),
        state: RunState::Running,
        attempt: 1,
        host: "test".into(),
        at: 1,
        deployment: None,
        tags: Vec::new(),
        scheduled_at: None,
        work_pool: None,
        work_queue: None,
        secret_grants: Vec::new(),
        lease: None,
        deployment_version: None,
    })
}

/// Call #0 of `flow`, task `load` with input `{}`, Running since 10.
pub(crate) fn new_task_run(id: TaskRunId, flow: FlowRunId, cache_key: Option<&str>) -> Write {
    Write::NewTaskRun(NewTaskRun {
        id,
        flow_run: flow,
        call_seq: 0,
        task_name: "load".into(),
        input: "{}".into(),
        input_sha256: "sha-of-input".into(),
        state: RunState::Running,
        cache_key: cache_key.map(str::to_string),
        cached_from: None,
        host: "test".into(),
        at: 10,
    })
}

async fn writes_are_visible_after_the_ticket_resolves(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let id = FlowRunId::new();
    store
        .submit(vec![new_flow_run(id)])
        .committed()
        .await
        .unwrap();
    let row = store.flow_run(id).unwrap();
    assert_eq!(row.state, RunState::Running);
    assert_eq!(row.started_at, Some(1));
}

async fn compare_and_set_rejects_a_stale_state_and_rolls_back_its_unit(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let id = FlowRunId::new();
    store
        .submit(vec![new_flow_run(id)])
        .committed()
        .await
        .unwrap();
    let mut done = StateChange::new(id.0, RunState::Running, RunState::Completed, 5);
    done.output = Some("42".into());
    store
        .submit(vec![Write::FlowRunState(done.clone())])
        .committed()
        .await
        .unwrap();

    // The same change again expects Running, which is no longer true; the log line
    // in the same unit must not be written either.
    let log = Write::Logs(vec![LogRecord {
        flow_run: id,
        task_run: None,
        at: 6,
        level: LogLevel::Info,
        message: "x".into(),
    }]);
    let err = store
        .submit(vec![log, Write::FlowRunState(done)])
        .committed()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: RunState::Running
            }
        ),
        "{err}"
    );
    assert!(store.logs(id, 0, 10).unwrap().is_empty());
    let row = store.flow_run(id).unwrap();
    assert_eq!(
        (row.state, row.result.as_deref(), row.ended_at),
        (RunState::Completed, Some("42"), Some(5))
    );
    let history: Vec<RunState> = store
        .state_history(id.0)
        .unwrap()
        .into_iter()
        .map(|h| h.1)
        .collect();
    assert_eq!(history, [RunState::Running, RunState::Completed]);
}

async fn task_runs_attempts_and_cache_lookups(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let flow = FlowRunId::new();
    let task = TaskRunId::new();
    let new_task = new_task_run(task, flow, Some("k1"));
    let mut done = StateChange::new(task.0, RunState::Running, RunState::Completed, 20);
    done.output = Some("\"ok\"".into());
    done.attempts = Some(1);
    let attempt = Write::TaskAttempt(AttemptRecord {
        task_run: task,
        attempt: 1,
        started_at: 10,
        ended_at: 20,
        fuel_used: 100,
        peak_memory: 65536,
        failure: None,
    });
    store
        .submit(vec![
            new_flow_run(flow),
            new_task,
            attempt,
            Write::TaskRunState(done),
        ])
        .committed()
        .await
        .unwrap();
    let tasks = store.task_runs(flow).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].output.as_deref(), Some("\"ok\""));
    // Replay matches on the hash of the raw input; it is read back, never sent.
    assert_eq!(tasks[0].input_sha256.as_deref(), Some("sha-of-input"));
    assert!(
        !serde_json::to_string(&tasks[0])
            .unwrap()
            .contains("sha-of-input")
    );
    assert_eq!(store.task_attempts(task).unwrap()[0].fuel_used, 100);
    assert_eq!(
        store.cached_output("k1", 15).unwrap(),
        Some((task, "\"ok\"".into()))
    );
    assert_eq!(store.cached_output("k1", 21).unwrap(), None, "expired");
    assert_eq!(store.cached_output("k2", 0).unwrap(), None);
}

async fn flow_runs_can_be_found_by_id_prefix(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let id = FlowRunId::new();
    store
        .submit(vec![new_flow_run(id)])
        .committed()
        .await
        .unwrap();
    let text = id.to_string();
    assert_eq!(store.resolve_flow_run(&text[..8]).unwrap(), id);
    assert!(matches!(
        store.resolve_flow_run("zzzz"),
        Err(StoreError::NotFound { .. })
    ));
}

async fn reopening_keeps_data_and_schema(kind: Kind) {
    let Some(place) = Place::new(kind) else {
        return;
    };
    let id = FlowRunId::new();
    {
        let store = place.open();
        store
            .submit(vec![new_flow_run(id)])
            .committed()
            .await
            .unwrap();
    }
    let store = place.open();
    assert_eq!(store.flow_run(id).unwrap().flow_name, "etl");
}

/// Flow and task runs share one state update; each must still write its own
/// table and columns: a task's wait for its next attempt, a flow's result.
async fn state_changes_write_the_table_of_their_run_kind_only(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let flow = FlowRunId::new();
    let task = TaskRunId::new();
    let new_task = new_task_run(task, flow, None);
    store
        .submit(vec![new_flow_run(flow), new_task])
        .committed()
        .await
        .unwrap();

    let mut retrying = StateChange::new(task.0, RunState::Running, RunState::Retrying, 20);
    retrying.message = Some("boom".into());
    retrying.attempts = Some(1);
    retrying.next_attempt_at = Some(30);
    // Aimed at the other table, the same change finds no such run and writes nothing.
    let err = store
        .submit(vec![Write::FlowRunState(retrying.clone())])
        .committed()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.state_history(task.0).unwrap().len(), 1);

    store
        .submit(vec![Write::TaskRunState(retrying)])
        .committed()
        .await
        .unwrap();
    let row = store.task_run(task).unwrap();
    assert_eq!(
        (
            row.state,
            row.attempts,
            row.next_attempt_at,
            row.message.as_deref()
        ),
        (RunState::Retrying, 1, Some(30), Some("boom"))
    );

    // The next attempt starts: the wait is over.
    let running = StateChange::new(task.0, RunState::Retrying, RunState::Running, 30);
    store
        .submit(vec![Write::TaskRunState(running)])
        .committed()
        .await
        .unwrap();
    let row = store.task_run(task).unwrap();
    assert_eq!((row.state, row.next_attempt_at), (RunState::Running, None));

    // A flow run has no next attempt column; a change that carries one still
    // writes the flow's result and attempt, and leaves its task alone.
    let mut done = StateChange::new(flow.0, RunState::Running, RunState::Completed, 40);
    done.output = Some("7".into());
    done.attempts = Some(2);
    done.next_attempt_at = Some(99);
    store
        .submit(vec![Write::FlowRunState(done)])
        .committed()
        .await
        .unwrap();
    let row = store.flow_run(flow).unwrap();
    assert_eq!(
        (row.state, row.result.as_deref(), row.attempt, row.ended_at),
        (RunState::Completed, Some("7"), 2, Some(40))
    );
    assert_eq!(store.task_run(task).unwrap().state, RunState::Running);
}

/// Followers hear of a commit without reading: through the store's change
/// feed (in-process with SQLite, LISTEN/NOTIFY with PostgreSQL, which
/// another server's store on the same database hears too).
async fn followers_hear_of_each_commit(kind: Kind) {
    let Some((place, store)) = open(kind) else {
        return;
    };
    let other = match kind {
        Kind::Postgres => Some(place.open()),
        Kind::Sqlite => None,
    };
    let mut mine = store.changes();
    let mut theirs = other.as_ref().map(|o| o.changes());
    let id = FlowRunId::new();
    let wait = std::time::Duration::from_secs(10);
    // Under PostgreSQL the listener may still be connecting: write until heard.
    let heard = tokio::time::timeout(wait, async {
        let mut seq = 0;
        loop {
            let write = if seq == 0 {
                new_flow_run(id)
            } else {
                Write::Logs(vec![LogRecord {
                    flow_run: id,
                    task_run: None,
                    at: seq,
                    level: crate::model::LogLevel::Info,
                    message: format!("line {seq}"),
                }])
            };
            store.submit(vec![write]).committed().await.unwrap();
            seq += 1;
            match tokio::time::timeout(std::time::Duration::from_millis(200), mine.recv()).await {
                Ok(Ok(change)) if change.run == id => return change,
                _ => continue,
            }
        }
    })
    .await
    .expect("no change was heard");
    assert_eq!(heard.run, id);
    if let Some(theirs) = theirs.as_mut() {
        // The other store's listener connects on a thread of its own and may
        // have missed the commits above: write until it hears one.
        let change = tokio::time::timeout(wait, async {
            let mut seq = 1_000;
            loop {
                let log = LogRecord {
                    flow_run: id,
                    task_run: None,
                    at: seq,
                    level: crate::model::LogLevel::Info,
                    message: format!("line {seq}"),
                };
                store
                    .submit(vec![Write::Logs(vec![log])])
                    .committed()
                    .await
                    .unwrap();
                seq += 1;
                let heard = tokio::time::timeout(std::time::Duration::from_millis(200), async {
                    loop {
                        match theirs.recv().await {
                            Ok(change) if change.run == id => return Some(change),
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                });
                if let Ok(Some(change)) = heard.await {
                    return change;
                }
            }
        })
        .await
        .expect("another server's store never heard of the commit");
        assert_eq!(change.run, id);
    }
}

/// Units committed together (a group commit) fail alone: the others of the
/// batch are recorded, and nothing of the failed unit is.
async fn a_failed_unit_in_a_busy_batch_takes_nothing_else_with_it(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let existing = FlowRunId::new();
    store
        .submit(vec![new_flow_run(existing)])
        .committed()
        .await
        .unwrap();
    // Submitted back to back without waiting, so they share batches.
    let mut tickets = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = FlowRunId::new();
        let mut unit = vec![new_flow_run(id)];
        if i == 100 {
            // The stale change fails the unit, and its run goes with it.
            unit.push(Write::FlowRunState(StateChange::new(
                existing.0,
                RunState::Pending,
                RunState::Completed,
                5,
            )));
        }
        ids.push(id);
        tickets.push(store.submit(unit));
    }
    for (i, ticket) in tickets.into_iter().enumerate() {
        let outcome = ticket.committed().await;
        if i == 100 {
            assert!(
                matches!(outcome, Err(StoreError::Conflict { .. })),
                "{outcome:?}"
            );
        } else {
            outcome.unwrap();
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let found = store.flow_run(*id);
        assert_eq!(found.is_ok(), i != 100, "run #{i}: {found:?}");
    }
    assert_eq!(store.flow_run(existing).unwrap().state, RunState::Running);
}

/// A unit of many new flow runs (PostgreSQL writes them as one statement)
/// reads back field for field as the same runs written one unit each; a
/// later write of the unit sees them; a duplicate id fails the unit whole.
async fn a_unit_of_many_new_runs_reads_back_as_runs_written_one_by_one(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let parent = FlowRunId::new();
    store
        .submit(vec![new_flow_run(parent)])
        .committed()
        .await
        .unwrap();
    let varied = |i: usize, id: FlowRunId| -> Write {
        let Write::NewFlowRun(mut run) = new_flow_run(id) else {
            unreachable!()
        };
        run.at = 100 + i as i64;
        run.state = [RunState::Running, RunState::Scheduled, RunState::Pending][i % 3];
        run.parent_flow_run = i.is_multiple_of(2).then_some(parent);
        run.params = format!("{{\"i\": {i}, \"quote\": \"a'b\\\"c\\n\"}}");
        run.deployment = i.is_multiple_of(4).then(|| format!("d{i}"));
        run.tags = match i % 3 {
            0 => vec!["a".into(), "b\"c".into()],
            _ => Vec::new(),
        };
        run.scheduled_at = i.is_multiple_of(5).then_some(500 + i as i64);
        run.work_pool = (i % 2 == 1).then(|| "wasm".into());
        run.work_queue = (i % 2 == 1).then(|| "fast".into());
        run.secret_grants = match i % 2 {
            0 => vec!["token".into()],
            _ => Vec::new(),
        };
        run.lease = (i % 3 == 1).then(|| Lease {
            holder: format!("h{i}"),
            expires_at: 900 + i as i64,
        });
        run.deployment_version = i.is_multiple_of(4).then_some(i as u32);
        Write::NewFlowRun(run)
    };
    let together: Vec<FlowRunId> = (0..12).map(|_| FlowRunId::new()).collect();
    let alone: Vec<FlowRunId> = (0..12).map(|_| FlowRunId::new()).collect();
    // The unit's last write moves its first run on: it must see the rows.
    let mut unit: Vec<Write> = together
        .iter()
        .enumerate()
        .map(|(i, id)| varied(i, *id))
        .collect();
    unit.push(Write::FlowRunState(StateChange::new(
        together[0].0,
        RunState::Running,
        RunState::Completed,
        200,
    )));
    store.submit(unit).committed().await.unwrap();
    for (i, id) in alone.iter().enumerate() {
        store
            .submit(vec![varied(i, *id)])
            .committed()
            .await
            .unwrap();
    }
    store
        .submit(vec![Write::FlowRunState(StateChange::new(
            alone[0].0,
            RunState::Running,
            RunState::Completed,
            200,
        ))])
        .committed()
        .await
        .unwrap();
    let read = |id: FlowRunId| {
        let mut row = serde_json::to_value(store.flow_run(id).unwrap()).unwrap();
        row["id"] = serde_json::Value::Null;
        let history = store.state_history(id.0).unwrap();
        (row, history)
    };
    for (i, (a, b)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(read(*a), read(*b), "run #{i}");
    }
    assert_eq!(
        store.flow_run(together[0]).unwrap().state,
        RunState::Completed
    );

    let (x, y) = (FlowRunId::new(), FlowRunId::new());
    let outcome = store
        .submit(vec![varied(1, x), varied(2, y), varied(3, x)])
        .committed()
        .await;
    assert!(outcome.is_err(), "a duplicate id was accepted");
    assert!(store.flow_run(x).is_err() && store.flow_run(y).is_err());
}

/// The size that `host db check` and the benchmarks report grows with the
/// rows written (PostgreSQL's counts every table's pages; SQLite's, the WAL's).
async fn the_database_size_grows_with_its_rows(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let empty = store.size_bytes().unwrap();
    assert!(empty > 0, "an empty, migrated database has pages");
    let writes: Vec<Write> = (0..2_000).map(|_| new_flow_run(FlowRunId::new())).collect();
    store.submit(writes).committed().await.unwrap();
    let full = store.size_bytes().unwrap();
    assert!(
        full >= empty + 2_000 * 64,
        "2,000 runs should take at least 64 bytes each: {empty} -> {full}"
    );
}

/// Runs created in the same microsecond are ordered by id, so a cursor
/// page boundary between them neither repeats nor skips one.
async fn cursor_pages_split_ties_in_creation_time_without_loss(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    // Every run gets the same created time (`at: 1`).
    let ids: Vec<FlowRunId> = (0..10).map(|_| FlowRunId::new()).collect();
    let writes = ids.iter().map(|id| new_flow_run(*id)).collect();
    store.submit(writes).committed().await.unwrap();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_flow_runs(&FlowRunFilter {
                limit: 3,
                after,
                ..FlowRunFilter::default()
            })
            .unwrap();
        listed.extend(page.iter().map(|r| r.id));
        match page.last() {
            Some(last) if page.len() == 3 => after = Some(RunCursor::after(last)),
            _ => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    assert_eq!(listed, expected, "newest first, ties by id, each once");
    let text = RunCursor::after(&store.flow_run(ids[0]).unwrap()).to_string();
    assert_eq!(text.parse::<RunCursor>().unwrap().id, ids[0]);
    for bad in [
        "",
        "1",
        "x.y",
        "1.",
        ".1",
        "1.2.3",
        "1.00000000-0000-0000-0000-00000000000g",
    ] {
        assert!(bad.parse::<RunCursor>().is_err(), "{bad:?} parsed");
    }
}

/// The dashboard's counts: per hour and state, from `since` on only.
async fn runs_are_counted_per_hour_and_state(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    const HOUR: i64 = 3_600_000_000;
    let runs = [
        (HOUR - 1, RunState::Completed), // before `since`: not counted
        (5 * HOUR, RunState::Completed),
        (5 * HOUR + 10, RunState::Completed),
        (5 * HOUR + 20, RunState::Running),
        (7 * HOUR, RunState::Completed),
    ];
    let writes = runs
        .iter()
        .map(|(at, state)| {
            let mut write = new_flow_run(FlowRunId::new());
            if let Write::NewFlowRun(run) = &mut write {
                run.at = *at;
                run.state = *state;
            }
            write
        })
        .collect();
    store.submit(writes).committed().await.unwrap();
    let mut counted = store
        .count_flow_runs_per_hour_and_state_since(HOUR)
        .unwrap();
    counted.sort_by_key(|(hour, state, _)| (*hour, state.as_str()));
    assert_eq!(
        counted,
        vec![
            (5, RunState::Completed, 2),
            (5, RunState::Running, 1),
            (7, RunState::Completed, 1)
        ]
    );
}

/// The counts stay true through every way a run's row changes: state
/// changes (one unit moving several runs), a refused stale change, a
/// forgotten run and a prune. They are compared with the runs listed one
/// by one.
async fn hourly_counts_follow_every_change_of_a_run(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    const HOUR: i64 = 3_600_000_000;
    let mut ids = Vec::new();
    let mut writes = Vec::new();
    for i in 0..12i64 {
        let id = FlowRunId::new();
        let mut write = new_flow_run(id);
        if let Write::NewFlowRun(run) = &mut write {
            run.at = (3 + i % 3) * HOUR + i;
        }
        writes.push(write);
        ids.push(id);
    }
    store.submit(writes).committed().await.unwrap();
    let end =
        |id: &FlowRunId, from, to, at| Write::FlowRunState(StateChange::new(id.0, from, to, at));
    // Several runs end in one unit.
    let unit = ids[..6]
        .iter()
        .map(|id| end(id, RunState::Running, RunState::Completed, 10 * HOUR))
        .collect();
    store.submit(unit).committed().await.unwrap();
    store
        .submit(vec![end(
            &ids[6],
            RunState::Running,
            RunState::Failed,
            10 * HOUR,
        )])
        .committed()
        .await
        .unwrap();
    // A stale change is refused and must not count.
    let stale = store
        .submit(vec![end(
            &ids[0],
            RunState::Running,
            RunState::Crashed,
            11 * HOUR,
        )])
        .committed()
        .await;
    assert!(stale.is_err(), "a change from a state the run left");
    // A run forgotten, and the seven ended ones pruned.
    store
        .submit(vec![Write::ForgetFlowRun(ids[11])])
        .committed()
        .await
        .unwrap();
    let pruned = store.prune(10 * HOUR + 1).unwrap();
    assert_eq!(pruned.flow_runs, 7, "{pruned:?}");

    let mut truth: std::collections::BTreeMap<(i64, String), u64> = Default::default();
    for run in store
        .list_flow_runs(&FlowRunFilter {
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
    {
        *truth
            .entry((run.created_at / HOUR, run.state.as_str().to_string()))
            .or_default() += 1;
    }
    assert_eq!(truth.values().sum::<u64>(), 4, "{truth:?}");
    let counted: std::collections::BTreeMap<(i64, String), u64> = store
        .count_flow_runs_per_hour_and_state_since(0)
        .unwrap()
        .into_iter()
        .map(|(hour, state, n)| ((hour, state.as_str().to_string()), n))
        .collect();
    assert_eq!(counted, truth);
    let mut by_state: Vec<(RunState, u64)> = store.count_flow_runs_by_state().unwrap();
    by_state.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(by_state, vec![(RunState::Running, 4)]);
}

/// A fast task is created, attempted and ended in one unit (one commit),
/// which a backend may write as one insert: the row, its history, its
/// attempt and its cache entry must read back exactly as when the same
/// task is created in one unit and ended in another. And a stale belief
/// about the new row is refused like any other.
async fn a_task_created_and_ended_in_one_unit_reads_back_as_in_two(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let endings = [
        (RunState::Completed, None, Some("\"ok\""), None),
        (RunState::Failed, Some(FailureKind::Failed), None, None),
        (
            RunState::Retrying,
            Some(FailureKind::Failed),
            None,
            Some(99),
        ),
    ];
    for (to, failure_kind, output, next_attempt_at) in endings {
        let mut seen = Vec::new();
        for in_one_unit in [true, false] {
            let (flow, task) = (FlowRunId::new(), TaskRunId::new());
            let key = format!("key-{to}-{in_one_unit}");
            let mut change = StateChange::new(task.0, RunState::Running, to, 20);
            change.output = output.map(str::to_string);
            change.failure_kind = failure_kind;
            change.message = failure_kind.map(|_| "it broke".to_string());
            change.attempts = Some(1);
            change.fuel_used = Some(123);
            change.peak_memory = Some(65536);
            change.next_attempt_at = next_attempt_at;
            let attempt = Write::TaskAttempt(AttemptRecord {
                task_run: task,
                attempt: 1,
                started_at: 10,
                ended_at: 20,
                fuel_used: 123,
                peak_memory: 65536,
                failure: failure_kind.map(|k| (k, "it broke".to_string())),
            });
            let created = new_task_run(task, flow, Some(&key));
            let units = match in_one_unit {
                true => vec![vec![
                    new_flow_run(flow),
                    created,
                    attempt,
                    Write::TaskRunState(change),
                ]],
                false => vec![
                    vec![new_flow_run(flow), created],
                    vec![attempt, Write::TaskRunState(change)],
                ],
            };
            for unit in units {
                store.submit(unit).committed().await.unwrap();
            }
            let rows = store.task_runs(flow).unwrap();
            assert_eq!(rows.len(), 1);
            let mut row = serde_json::to_value(&rows[0]).unwrap();
            row["id"] = serde_json::Value::Null;
            row["flow_run"] = serde_json::Value::Null;
            let attempts: Vec<_> = store
                .task_attempts(task)
                .unwrap()
                .into_iter()
                .map(|a| {
                    format!(
                        "{:?}",
                        AttemptRecord {
                            task_run: TaskRunId::from_bytes([0; 16]),
                            ..a
                        }
                    )
                })
                .collect();
            seen.push((
                row,
                rows[0].input_sha256.clone(),
                store.state_history(task.0).unwrap(),
                attempts,
                store.cached_output(&key, 0).unwrap().map(|(_, out)| out),
            ));
        }
        assert_eq!(seen[0], seen[1], "ending {to}: one unit against two");
    }

    // A change that expects the new row in another state than it is
    // created in fails its unit: neither the row nor its flow run is written.
    let (flow, task) = (FlowRunId::new(), TaskRunId::new());
    let stale = StateChange::new(task.0, RunState::Pending, RunState::Completed, 20);
    let err = store
        .submit(vec![
            new_flow_run(flow),
            new_task_run(task, flow, None),
            Write::TaskRunState(stale),
        ])
        .committed()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: RunState::Pending
            }
        ),
        "{err}"
    );
    assert!(store.flow_run(flow).is_err());
    assert!(store.state_history(task.0).unwrap().is_empty());
}

/// What a reader sees of a task run: its row (ids blanked), its history
/// and its attempts.
fn task_as_read(store: &Store, flow: FlowRunId, task: TaskRunId) -> String {
    let rows = store.task_runs(flow).unwrap();
    assert_eq!(rows.len(), 1);
    let mut row = serde_json::to_value(&rows[0]).unwrap();
    row["id"] = serde_json::Value::Null;
    row["flow_run"] = serde_json::Value::Null;
    let attempts: Vec<_> = store
        .task_attempts(task)
        .unwrap()
        .into_iter()
        .map(|a| AttemptRecord {
            task_run: TaskRunId::from_bytes([0; 16]),
            ..a
        })
        .collect();
    format!(
        "{row}\n{:?}\n{attempts:?}",
        store.state_history(task.0).unwrap()
    )
}

/// A fast task's one-unit commit may keep its attempt and history in its
/// row alone (SQLite does). Attacked where that could show: an end at the
/// very microsecond of the start (history ties), an attempt whose facts
/// differ from the row's (its failure kind, its start, its fuel), and later
/// changes to the row (a retry brings it back: Failed → Pending → Running
/// with a second attempt → Completed). Every reading must equal that of the
/// same task written in separate units, row by row.
async fn a_fast_tasks_attempt_and_history_read_back_whole_through_later_changes(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    // (ended at, attempt started at, attempt's failure kind, attempt's fuel)
    let cases = [
        (10, 10, Some(FailureKind::Failed), 123),
        (20, 10, Some(FailureKind::Failed), 123),
        (20, 12, Some(FailureKind::Failed), 123),
        (20, 10, Some(FailureKind::Trap), 123),
        (20, 10, Some(FailureKind::Failed), 7),
    ];
    for (ended_at, attempt_started, attempt_kind, attempt_fuel) in cases {
        let mut seen = Vec::new();
        for in_one_unit in [true, false] {
            let (flow, task) = (FlowRunId::new(), TaskRunId::new());
            let mut failed =
                StateChange::new(task.0, RunState::Running, RunState::Failed, ended_at);
            failed.failure_kind = Some(FailureKind::Failed);
            failed.message = Some("it broke".into());
            failed.attempts = Some(1);
            failed.fuel_used = Some(123);
            failed.peak_memory = Some(65536);
            let attempt = |n: u32, started_at, ended_at, failure| {
                Write::TaskAttempt(AttemptRecord {
                    task_run: task,
                    attempt: n,
                    started_at,
                    ended_at,
                    fuel_used: attempt_fuel,
                    peak_memory: 65536,
                    failure,
                })
            };
            let first = attempt(
                1,
                attempt_started,
                ended_at,
                attempt_kind.map(|k| (k, "it broke".to_string())),
            );
            let created = new_task_run(task, flow, None);
            let units = match in_one_unit {
                true => vec![vec![
                    new_flow_run(flow),
                    created,
                    first,
                    Write::TaskRunState(failed),
                ]],
                false => vec![
                    vec![new_flow_run(flow), created],
                    vec![first, Write::TaskRunState(failed)],
                ],
            };
            for unit in units {
                store.submit(unit).committed().await.unwrap();
            }
            let mut readings = vec![task_as_read(&store, flow, task)];
            // A retry brings the ended task back, then it runs again.
            let steps = [
                (RunState::Failed, RunState::Pending, 30),
                (RunState::Pending, RunState::Running, 40),
            ];
            for (from, to, at) in steps {
                store
                    .submit(vec![Write::TaskRunState(StateChange::new(
                        task.0, from, to, at,
                    ))])
                    .committed()
                    .await
                    .unwrap();
                readings.push(task_as_read(&store, flow, task));
            }
            let mut completed =
                StateChange::new(task.0, RunState::Running, RunState::Completed, 50);
            completed.attempts = Some(2);
            completed.output = Some("\"ok\"".into());
            store
                .submit(vec![
                    attempt(2, 40, 50, None),
                    Write::TaskRunState(completed),
                ])
                .committed()
                .await
                .unwrap();
            readings.push(task_as_read(&store, flow, task));
            seen.push(readings);
        }
        assert_eq!(
            seen[0], seen[1],
            "ended at {ended_at}, attempt from {attempt_started}, {attempt_kind:?}, fuel {attempt_fuel}: one unit against two"
        );
        assert_eq!(seen[0][0].matches("attempt: ").count(), 1, "{}", seen[0][0]);
        assert_eq!(seen[0][3].matches("attempt: ").count(), 2, "{}", seen[0][3]);
    }
}

fn deployment_version(version: u32, body: &str) -> Write {
    Write::DeploymentVersion {
        deployment: "etl".into(),
        version,
        body: body.into(),
        created_by: "admin".into(),
        note: None,
        at: i64::from(version),
    }
}

/// Versions read back in order; a version saved twice (two deploys at
/// once) fails the second unit whole, so its deployment is not replaced;
/// a run keeps the version that made it.
async fn deployment_versions_are_numbered_once_and_runs_keep_theirs(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    for (version, body) in [(1, "{\"v\":1}"), (2, "{\"v\":2}")] {
        store
            .submit(vec![deployment_version(version, body)])
            .committed()
            .await
            .unwrap();
    }
    let put = Write::PutObject {
        kind: ObjectKind::Deployment,
        name: "etl".into(),
        body: "{\"v\":\"loser\"}".into(),
        at: 9,
    };
    let err = store
        .submit(vec![put, deployment_version(2, "{\"v\":\"loser\"}")])
        .committed()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::VersionTaken { version: 2, .. }),
        "{err}"
    );
    assert!(
        store
            .object(ObjectKind::Deployment, "etl")
            .unwrap()
            .is_none()
    );
    let versions = store.deployment_versions("etl").unwrap();
    let seen: Vec<(u32, &str)> = versions
        .iter()
        .map(|v| (v.version, v.body.as_str()))
        .collect();
    assert_eq!(seen, [(1, "{\"v\":1}"), (2, "{\"v\":2}")]);
    assert!(store.deployment_versions("other").unwrap().is_empty());

    let id = FlowRunId::new();
    let Write::NewFlowRun(mut run) = new_flow_run(id) else {
        unreachable!()
    };
    run.deployment = Some("etl".into());
    run.deployment_version = Some(2);
    store
        .submit(vec![Write::NewFlowRun(run)])
        .committed()
        .await
        .unwrap();
    assert_eq!(store.flow_run(id).unwrap().deployment_version, Some(2));
}

fn take(lease: uuid::Uuid, run: FlowRunId, limits: &[(&str, u32, Option<f64>)], now: i64) -> Write {
    Write::TakeSlots {
        lease,
        flow_run: run,
        limits: limits
            .iter()
            .map(|(name, limit, decay)| LimitAsk {
                name: name.to_string(),
                limit: *limit,
                decay_per_second: *decay,
            })
            .collect(),
        slots: 1,
        now,
    }
}

/// Slots are counted per limit, all or none; given back on release, when
/// their run ends and when its lease lapses; a rate limit's come back at
/// its rate, and a full one says how long to wait.
async fn slots_are_taken_all_or_none_and_come_back(kind: Kind) {
    let Some((_place, store)) = open(kind) else {
        return;
    };
    let (a, b) = (FlowRunId::new(), FlowRunId::new());
    let Write::NewFlowRun(mut leased) = new_flow_run(b) else {
        unreachable!()
    };
    leased.lease = Some(Lease {
        holder: "h1 pid=1".into(),
        expires_at: 1_000,
    });
    store
        .submit(vec![new_flow_run(a), Write::NewFlowRun(leased)])
        .committed()
        .await
        .unwrap();
    let db = [("db", 2, None)];
    let (l1, l2, l3) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    store
        .submit(vec![take(l1, a, &db, 10)])
        .committed()
        .await
        .unwrap();
    store
        .submit(vec![take(l2, b, &db, 10)])
        .committed()
        .await
        .unwrap();
    let full = store.submit(vec![take(l3, a, &db, 10)]).committed().await;
    assert!(
        matches!(&full, Err(StoreError::NoSlot { limit, retry_after_us: None }) if limit == "db"),
        "{full:?}"
    );
    // All or none: `api` is free but `db` is not, so neither is taken.
    let both = [("api", 1, None), ("db", 2, None)];
    assert!(
        store
            .submit(vec![take(l3, a, &both, 10)])
            .committed()
            .await
            .is_err()
    );
    let held: Vec<(String, FlowRunId)> = store
        .held_slots(10)
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.flow_run))
        .collect();
    assert_eq!(held, [("db".to_string(), a), ("db".to_string(), b)]);

    store
        .submit(vec![Write::ReleaseSlots { lease: l1 }])
        .committed()
        .await
        .unwrap();
    store
        .submit(vec![take(l3, a, &both, 10)])
        .committed()
        .await
        .unwrap();
    assert_eq!(store.held_slots(10).unwrap().len(), 3);
    // b's lease lapses at 1,000: its slot is free after, though b is Running.
    assert_eq!(store.held_slots(999).unwrap().len(), 3);
    assert_eq!(store.held_slots(1_000).unwrap().len(), 2);
    let l4 = uuid::Uuid::now_v7();
    store
        .submit(vec![take(l4, a, &db, 1_000)])
        .committed()
        .await
        .unwrap();
    // a ends: everything it held is free.
    let change = StateChange::new(a.0, RunState::Running, RunState::Completed, 2_000);
    store
        .submit(vec![Write::FlowRunState(change)])
        .committed()
        .await
        .unwrap();
    assert!(store.held_slots(2_000).unwrap().is_empty());

    // A rate limit of 2 slots, 10 back per second: one every 100,000 µs.
    let rate = [("calls", 2, Some(10.0))];
    let now = 5_000_000;
    for _ in 0..2 {
        let lease = uuid::Uuid::now_v7();
        store
            .submit(vec![take(lease, b, &rate, now)])
            .committed()
            .await
            .unwrap();
    }
    let full = store
        .submit(vec![take(uuid::Uuid::now_v7(), b, &rate, now)])
        .committed()
        .await;
    assert!(
        matches!(
            &full,
            Err(StoreError::NoSlot {
                retry_after_us: Some(100_000),
                ..
            })
        ),
        "{full:?}"
    );
    let later = store
        .submit(vec![take(uuid::Uuid::now_v7(), b, &rate, now + 100_000)])
        .committed()
        .await;
    assert!(later.is_ok(), "{later:?}");
    assert_eq!(
        store.rate_marks().unwrap(),
        [("calls".to_string(), now + 300_000)]
    );
    // Rate slots are spent, not held.
    assert!(
        store
            .held_slots(now)
            .unwrap()
            .iter()
            .all(|s| s.name != "calls")
    );
}

/// Two stores on one database (two servers) racing 40 takers for a limit
/// of 3: exactly 3 get a slot.
async fn racing_takers_on_two_stores_get_exactly_the_slots_there_are(kind: Kind) {
    let Some((place, first)) = open(kind) else {
        return;
    };
    let second = place.open();
    let run = FlowRunId::new();
    first
        .submit(vec![new_flow_run(run)])
        .committed()
        .await
        .unwrap();
    let tickets: Vec<Ticket> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { &first } else { &second };
            store.submit(vec![take(
                uuid::Uuid::now_v7(),
                run,
                &[("db", 3, None)],
                10,
            )])
        })
        .collect();
    let mut granted = 0;
    for ticket in tickets {
        match ticket.committed().await {
            Ok(()) => granted += 1,
            Err(StoreError::NoSlot { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(granted, 3);
    assert_eq!(second.held_slots(10).unwrap().len(), 3);
}

on_both_backends!(
    a_unit_of_many_new_runs_reads_back_as_runs_written_one_by_one,
    a_task_created_and_ended_in_one_unit_reads_back_as_in_two,
    a_fast_tasks_attempt_and_history_read_back_whole_through_later_changes,
    racing_takers_on_two_stores_get_exactly_the_slots_there_are,
    slots_are_taken_all_or_none_and_come_back,
    runs_are_counted_per_hour_and_state,
    hourly_counts_follow_every_change_of_a_run,
    cursor_pages_split_ties_in_creation_time_without_loss,
    the_database_size_grows_with_its_rows,
    deployment_versions_are_numbered_once_and_runs_keep_theirs,
    a_failed_unit_in_a_busy_batch_takes_nothing_else_with_it,
    followers_hear_of_each_commit,
    writes_are_visible_after_the_ticket_resolves,
    compare_and_set_rejects_a_stale_state_and_rolls_back_its_unit,
    task_runs_attempts_and_cache_lookups,
    flow_runs_can_be_found_by_id_prefix,
    state_changes_write_the_table_of_their_run_kind_only,
    reopening_keeps_data_and_schema,
);
