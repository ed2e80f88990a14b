//! SQLite-only tests: durability pragmas, result files and pruning them
//! while another process writes.

use super::*;
use crate::store::tests::new_flow_run;
use std::sync::Arc;

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("weir.db")).unwrap();
    (dir, store)
}

#[test]
fn durability_full_syncs_every_commit_and_normal_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    assert_eq!(
        SqliteStore::open(&path).unwrap().disk_sync().unwrap(),
        DiskSync::Normal
    );
    let full = StoreOptions {
        durability: DiskSync::Full,
        ..StoreOptions::default()
    };
    let store = Store::open_with_options(&path, full).unwrap();
    assert_eq!(
        store.disk_sync().unwrap(),
        DiskSync::Full,
        "synchronous=FULL"
    );
    assert!("sometimes".parse::<DiskSync>().is_err());
    assert_eq!("full".parse::<DiskSync>(), Ok(DiskSync::Full));
}

/// A queued write is committed by its caller's `commit_queued`, or taken
/// along by another writer's commit; either way its ticket resolves. (The
/// flusher may commit it too, at its next checkpoint: nothing queued is
/// left behind, so whether it was committed before a commit was asked for
/// depends on timing and is not asserted.)
#[tokio::test]
async fn a_queued_write_is_committed_by_its_callers_commit_or_any_other() {
    let (_dir, store) = open();
    let (a, b, c) = (FlowRunId::new(), FlowRunId::new(), FlowRunId::new());
    let queued = store.submit_queued(vec![new_flow_run(a)]);
    store.commit_queued();
    assert!(store.flow_run(a).is_ok());
    queued.committed().await.unwrap();

    let queued = store.submit_queued(vec![new_flow_run(b)]);
    store
        .submit(vec![new_flow_run(c)])
        .committed()
        .await
        .unwrap();
    assert!(store.flow_run(b).is_ok() && store.flow_run(c).is_ok());
    queued.committed().await.unwrap();
}

fn flow_run_with_params(id: FlowRunId, params: &str, at: TimestampMicros) -> Write {
    let Write::NewFlowRun(mut run) = new_flow_run(id) else {
        unreachable!()
    };
    run.params = params.into();
    run.at = at;
    run.state = RunState::Completed;
    Write::NewFlowRun(run)
}

/// A payload over the 64 KiB threshold: it lives in a result file.
fn large_params() -> String {
    format!("{{\"blob\": \"{}\"}}", "z".repeat(70_000))
}

#[tokio::test]
async fn prune_keeps_a_result_file_that_a_newer_row_shares() {
    let (dir, store) = open();
    let params = large_params();
    let (old, new) = (FlowRunId::new(), FlowRunId::new());
    store
        .submit(vec![
            flow_run_with_params(old, &params, 1_000),
            flow_run_with_params(new, &params, 9_000),
        ])
        .committed()
        .await
        .unwrap();
    // Completed runs need an end time to be pruned.
    store
        .read(|c| {
            c.execute(
                "UPDATE flow_runs SET ended_us = created_us WHERE id IN (?1, ?2)",
                params![old.as_bytes(), new.as_bytes()],
            )
        })
        .unwrap();
    let files = || {
        std::fs::read_dir(dir.path().join("results"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 1, "both rows point at one content-addressed file");
    let report = store.prune(5_000).unwrap();
    assert_eq!(
        (report.flow_runs, report.result_files),
        (1, 0),
        "{report:?}"
    );
    assert!(store.flow_run(old).is_err());
    assert_eq!(store.flow_run(new).unwrap().params, params);
    let report = store.prune(10_000).unwrap();
    assert_eq!(
        (report.flow_runs, report.result_files),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(files(), 0);
}

/// Set by the other writer's busy handler when it first waits for the lock.
static OTHER_WRITER_WAITS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn note_wait_and_retry(_attempt: i32) -> bool {
    OTHER_WRITER_WAITS.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(1));
    true
}

#[test]
fn pruning_files_never_removes_one_that_a_writer_in_progress_points_at() {
    let (dir, store) = open();
    let path = dir.path().join("weir.db");
    let params = large_params();
    // The file is there but no committed row refers to it (its run was
    // pruned, or the unit that wrote it rolled back).
    store.results.deflate(&params).unwrap();
    // A writer of another process, which notes when it waits for the lock.
    let other = Arc::new(SqliteStore::open(&path).unwrap());
    other
        .writer
        .conn
        .lock()
        .unwrap()
        .busy_handler(Some(note_wait_and_retry))
        .unwrap();
    // A third connection holds the write lock, so that writer must wait.
    let lock = Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let id = FlowRunId::new();
    let writing = {
        let (other, params) = (other.clone(), params.clone());
        std::thread::spawn(move || {
            other
                .submit(vec![flow_run_with_params(id, &params, 1)])
                .wait_blocking()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !OTHER_WRITER_WAITS.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The writer waits for the lock: had it already looked at the file, the
    // file must now stay until its row commits.
    let store = Arc::new(store);
    let collecting = {
        let store = store.clone();
        std::thread::spawn(move || store.collect_result_files())
    };
    lock.execute_batch("ROLLBACK").unwrap();
    collecting.join().unwrap().unwrap();
    writing.join().unwrap().unwrap();
    assert_eq!(store.flow_run(id).unwrap().params, params);
}

/// A database made before the per-hour counts gets them from its runs when
/// it migrates, and they follow changes from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_counts_are_filled_from_the_runs_a_database_had() {
    const HOUR: i64 = 3_600_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.db");
    let store = SqliteStore::open(&path).unwrap();
    let ids: Vec<FlowRunId> = (0..5).map(|_| FlowRunId::new()).collect();
    let writes = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut write = new_flow_run(*id);
            if let Write::NewFlowRun(run) = &mut write {
                run.at = (2 + i as i64 % 2) * HOUR;
            }
            write
        })
        .collect();
    store.submit(writes).committed().await.unwrap();
    drop(store);
    // Back to the schema before the counts, as an older host left it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    conn.execute_batch(
        "DROP TRIGGER flow_run_counts_insert; DROP TRIGGER flow_run_counts_update;
         DROP TRIGGER flow_run_counts_delete; DROP TABLE flow_run_counts;",
    )
    .unwrap();
    conn.pragma_update(None, "user_version", version - 1)
        .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    let mut counted = store.count_flow_runs_per_hour_and_state_since(0).unwrap();
    counted.sort_by_key(|(hour, _, _)| *hour);
    assert_eq!(
        counted,
        vec![(2, RunState::Running, 3), (3, RunState::Running, 2)]
    );
    let change = StateChange::new(ids[0].0, RunState::Running, RunState::Completed, 9 * HOUR);
    store
        .submit(vec![Write::FlowRunState(change)])
        .committed()
        .await
        .unwrap();
    let mut counted = store.count_flow_runs_per_hour_and_state_since(0).unwrap();
    counted.sort_by_key(|(hour, state, _)| (*hour, state.as_str()));
    assert_eq!(
        counted,
        vec![
            (2, RunState::Completed, 1),
            (2, RunState::Running, 2),
            (3, RunState::Running, 2)
        ]
    );
}

/// A fast task (created, attempted once and ended in one unit) is one row:
/// no attempt row and no history rows, so its commit writes the task table
/// and its index alone. A task whose attempt says more than its row (here
/// a start after the row's creation) keeps both, as before.
#[tokio::test]
async fn a_fast_task_is_its_row_alone_and_a_slower_one_keeps_its_attempt_and_history() {
    let (_dir, store) = open();
    let flow = FlowRunId::new();
    store
        .submit(vec![new_flow_run(flow)])
        .committed()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (seq, attempt_started) in [(0u64, 10), (1, 11)] {
        let task = TaskRunId::new();
        let Write::NewTaskRun(mut created) = crate::store::tests::new_task_run(task, flow, None)
        else {
            unreachable!()
        };
        created.call_seq = seq;
        let mut change = StateChange::new(task.0, RunState::Running, RunState::Completed, 20);
        change.attempts = Some(1);
        change.fuel_used = Some(5);
        change.peak_memory = Some(6);
        change.output = Some("1".into());
        store
            .submit(vec![
                Write::NewTaskRun(created),
                Write::TaskAttempt(AttemptRecord {
                    task_run: task,
                    attempt: 1,
                    started_at: attempt_started,
                    ended_at: 20,
                    fuel_used: 5,
                    peak_memory: 6,
                    failure: None,
                }),
                Write::TaskRunState(change),
            ])
            .committed()
            .await
            .unwrap();
        tasks.push(task);
    }
    let rows_of = |task: TaskRunId| {
        store
            .read(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM run_states WHERE run_id = ?1),
                            (SELECT count(*) FROM task_attempts WHERE task_run = ?1)",
                    [task.as_bytes()],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
            })
            .unwrap()
    };
    assert_eq!(rows_of(tasks[0]), (0, 0), "the fast task is its row alone");
    assert_eq!(rows_of(tasks[1]), (2, 1), "history and attempt written");
    for (task, started_at) in tasks.iter().zip([10, 11]) {
        let attempts = store.task_attempts(*task).unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (
                attempts[0].started_at,
                attempts[0].ended_at,
                attempts[0].fuel_used
            ),
            (started_at, 20, 5)
        );
        let states: Vec<_> = store
            .state_history(task.0)
            .unwrap()
            .into_iter()
            .map(|(at, state, _)| (at, state))
            .collect();
        assert_eq!(states, [(10, RunState::Running), (20, RunState::Completed)]);
    }
}

/// The WAL header's checkpoint sequence: SQLite adds one each time the WAL
/// starts over.
fn wal_generation(db: &std::path::Path) -> Option<u32> {
    use std::io::Read;
    let mut header = [0u8; 16];
    let mut wal = std::fs::File::open(db.with_extension("db-wal")).ok()?;
    wal.read_exact(&mut header).ok()?;
    Some(u32::from_be_bytes(header[12..16].try_into().ok()?))
}

/// Under commits that never pause, a checkpoint never catches up with the
/// WAL by itself, and SQLite starts a WAL over only once all of it was
/// copied back: a 100,000-task flow left a 1.2 GB WAL. The flusher's
/// second pass holds the commits so that the WAL starts over while they
/// go on. Two writers commit back to back until the WAL's header says it
/// started over (bounded: 60 s or 30,000 commits each, ~1 GB of WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_while_commits_never_pause() {
    let (dir, store) = open();
    let store = Arc::new(store);
    let db = dir.path().join("weir.db");
    let params = format!("{{\"pad\": \"{}\"}}", "p".repeat(1500));
    store
        .submit(vec![flow_run_with_params(FlowRunId::new(), &params, 1)])
        .committed()
        .await
        .unwrap();
    let first = wal_generation(&db).expect("a WAL with a header");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (store, params, stop) = (store.clone(), params.clone(), stop.clone());
            tokio::spawn(async move {
                let mut commits = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && commits < 30_000 {
                    let run = flow_run_with_params(FlowRunId::new(), &params, 1);
                    store.submit(vec![run]).committed().await.unwrap();
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut largest = 0u64;
    let restarted = loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let wal = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
        largest = largest.max(wal);
        if wal_generation(&db) != Some(first) {
            break true;
        }
        if started.elapsed() > std::time::Duration::from_secs(60)
            || writers.iter().all(|w| w.is_finished())
        {
            break false;
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut commits = 0;
    for writer in writers {
        commits += writer.await.unwrap();
    }
    assert!(
        restarted,
        "the WAL never started over: {commits} commits in {:?}, WAL {} MB",
        started.elapsed(),
        largest >> 20
    );
}
