//! Embedded, append-only migrations. Never edit one that has shipped; add another.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: components, flow runs, task runs, attempts, state history, logs.
    "
    CREATE TABLE components (
        digest      TEXT PRIMARY KEY,
        size_bytes  INTEGER NOT NULL,
        manifest    TEXT NOT NULL,
        created_us  INTEGER NOT NULL
    );
    CREATE TABLE flow_runs (
        id              BLOB PRIMARY KEY,
        parent_flow_run BLOB REFERENCES flow_runs (id) ON DELETE CASCADE,
        component       TEXT NOT NULL,
        flow_name       TEXT NOT NULL,
        params          TEXT NOT NULL,
        state           TEXT NOT NULL,
        message         TEXT,
        failure_kind    TEXT,
        result          TEXT,
        attempt         INTEGER NOT NULL DEFAULT 1,
        host            TEXT,
        created_us      INTEGER NOT NULL,
        started_us      INTEGER,
        ended_us        INTEGER,
        fuel_used       INTEGER NOT NULL DEFAULT 0,
        peak_memory     INTEGER NOT NULL DEFAULT 0,
        -- Set by `host flow-run cancel` in any process; the process running it polls.
        cancel_requested_us INTEGER
    );
    CREATE INDEX flow_runs_by_created ON flow_runs (created_us);
    CREATE INDEX flow_runs_by_state ON flow_runs (state, created_us);
    CREATE INDEX flow_runs_by_parent ON flow_runs (parent_flow_run) WHERE parent_flow_run IS NOT NULL;
    CREATE TABLE task_runs (
        id              BLOB PRIMARY KEY,
        flow_run        BLOB NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
        call_seq        INTEGER NOT NULL,
        task_name       TEXT NOT NULL,
        input           TEXT NOT NULL,
        output          TEXT,
        state           TEXT NOT NULL,
        failure_kind    TEXT,
        message         TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        fuel_used       INTEGER NOT NULL DEFAULT 0,
        peak_memory     INTEGER NOT NULL DEFAULT 0,
        created_us      INTEGER NOT NULL,
        started_us      INTEGER,
        ended_us        INTEGER,
        next_attempt_us INTEGER,
        cache_key       TEXT,
        cached_from     BLOB,
        host            TEXT
    ) WITHOUT ROWID;
    CREATE INDEX task_runs_by_flow ON task_runs (flow_run, call_seq);
    CREATE INDEX task_runs_by_cache_key ON task_runs (cache_key, ended_us) WHERE cache_key IS NOT NULL;
    CREATE TABLE task_attempts (
        task_run     BLOB NOT NULL REFERENCES task_runs (id) ON DELETE CASCADE,
        attempt      INTEGER NOT NULL,
        started_us   INTEGER NOT NULL,
        ended_us     INTEGER NOT NULL,
        fuel_used    INTEGER NOT NULL,
        peak_memory  INTEGER NOT NULL,
        failure_kind TEXT,
        message      TEXT,
        PRIMARY KEY (task_run, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE run_states (
        run_id  BLOB NOT NULL,
        at_us   INTEGER NOT NULL,
        state   TEXT NOT NULL,
        message TEXT,
        PRIMARY KEY (run_id, at_us, state)
    ) WITHOUT ROWID;
    CREATE TABLE logs (
        id       INTEGER PRIMARY KEY,
        flow_run BLOB NOT NULL,
        task_run BLOB,
        at_us    INTEGER NOT NULL,
        level    INTEGER NOT NULL,
        message  TEXT NOT NULL
    );
    CREATE INDEX logs_by_flow_run ON logs (flow_run, id);
    ",
    // 2: deployments, pools, queues, variables and secrets as named objects;
    // flow runs know their deployment, tags and scheduled time.
    "
    CREATE TABLE objects (
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        body        TEXT NOT NULL,
        created_us  INTEGER NOT NULL,
        updated_us  INTEGER NOT NULL,
        PRIMARY KEY (kind, name)
    ) WITHOUT ROWID;
    ALTER TABLE flow_runs ADD COLUMN deployment TEXT;
    ALTER TABLE flow_runs ADD COLUMN tags TEXT;
    ALTER TABLE flow_runs ADD COLUMN scheduled_us INTEGER;
    ALTER TABLE flow_runs ADD COLUMN work_pool TEXT;
    ALTER TABLE flow_runs ADD COLUMN work_queue TEXT;
    CREATE INDEX flow_runs_due ON flow_runs (scheduled_us) WHERE state = 'Scheduled';
    CREATE INDEX flow_runs_by_deployment ON flow_runs (deployment, created_us) WHERE deployment IS NOT NULL;
    ",
    // 3: the secrets a run may read, bound when it is created; waiting runs by pool.
    "
    ALTER TABLE flow_runs ADD COLUMN secret_grants TEXT;
    CREATE INDEX flow_runs_waiting_by_pool ON flow_runs (work_pool, scheduled_us) WHERE state IN ('Scheduled', 'Late');
    ",
    // 4: task inputs are recorded redacted; replay matches a call by the hash
    // of its input before redaction.
    "
    ALTER TABLE task_runs ADD COLUMN input_sha256 TEXT;
    ",
    // 5: leases. Whoever runs a flow run holds it until `lease_expires_us`
    // and renews it while alive; a run whose lease ran out is crashed. The
    // epoch grows with every claim, so a holder that lost the run is fenced.
    "
    ALTER TABLE flow_runs ADD COLUMN lease_holder TEXT;
    ALTER TABLE flow_runs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE flow_runs ADD COLUMN lease_expires_us INTEGER;
    CREATE INDEX flow_runs_by_lease ON flow_runs (lease_expires_us)
        WHERE lease_holder IS NOT NULL AND state IN ('Pending', 'Running', 'Retrying', 'Cancelling');
    ",
    // 6: log lines shipped from a remote host carry where they came from, so
    // a batch sent twice is stored once.
    "
    ALTER TABLE logs ADD COLUMN origin TEXT;
    CREATE UNIQUE INDEX logs_by_origin ON logs (flow_run, origin) WHERE origin IS NOT NULL;
    ",
    // 7: the times each schedule made a run for. The key makes materializing
    // idempotent: a restarted or second scheduler cannot make a run twice.
    "
    CREATE TABLE schedule_slots (
        deployment   TEXT NOT NULL,
        schedule_key TEXT NOT NULL,
        scheduled_us INTEGER NOT NULL,
        flow_run     BLOB NOT NULL,
        PRIMARY KEY (deployment, schedule_key, scheduled_us)
    ) WITHOUT ROWID;
    ",
    // 8: the automations' outbox: one delivery per (automation, run, event),
    // retried until delivered; and runs by end time, for finding new events.
    "
    CREATE TABLE automation_deliveries (
        id              INTEGER PRIMARY KEY,
        automation      TEXT NOT NULL,
        flow_run        BLOB NOT NULL,
        event           TEXT NOT NULL,
        payload         TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_us INTEGER NOT NULL,
        last_error      TEXT,
        response_code   INTEGER,
        created_us      INTEGER NOT NULL,
        delivered_us    INTEGER,
        UNIQUE (automation, flow_run, event)
    );
    CREATE INDEX automation_deliveries_due ON automation_deliveries (next_attempt_us) WHERE status = 'pending';
    CREATE INDEX flow_runs_by_end ON flow_runs (ended_us) WHERE ended_us IS NOT NULL;
    ",
    // The dashboard counts a day of runs by state and by hour: with the
    // state in the index, from the index alone (no row read per run).
    "
    CREATE INDEX flow_runs_by_created_state ON flow_runs (created_us, state);
    DROP INDEX flow_runs_by_created;
    ",
    // deployment versions: every deploy that changes a deployment saves
    // its definition under the next number; a run records the one that made it.
    "
    CREATE TABLE deployment_versions (
        deployment  TEXT NOT NULL,
        version     INTEGER NOT NULL,
        body        TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        note        TEXT,
        created_us  INTEGER NOT NULL,
        PRIMARY KEY (deployment, version)
    ) WITHOUT ROWID;
    ALTER TABLE flow_runs ADD COLUMN deployment_version INTEGER;
    ",
    // concurrency and rate limits: the slots each acquisition holds (free
    // again when released, or when their run ends or its lease lapses),
    // and each rate limit's mark (when its bucket would be empty).
    "
    CREATE TABLE limit_slots (
        lease      BLOB NOT NULL,
        name       TEXT NOT NULL,
        slots      INTEGER NOT NULL,
        flow_run   BLOB NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
        taken_us   INTEGER NOT NULL,
        PRIMARY KEY (lease, name)
    );
    CREATE INDEX limit_slots_by_name ON limit_slots (name);
    CREATE INDEX limit_slots_by_run ON limit_slots (flow_run);
    CREATE TABLE limit_rates (
        name    TEXT PRIMARY KEY,
        tat_us  INTEGER NOT NULL
    );
    ",
    // The dashboard's day of runs by hour and state, kept as counts that
    // follow every insert, state change and delete in the same transaction
    // (triggers: no write path can forget them), so reading a day is 24
    // hours × a few states, not a scan of every run in it.
    "
    CREATE TABLE flow_run_counts (
        hour   INTEGER NOT NULL,
        state  TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (hour, state)
    ) WITHOUT ROWID;
    INSERT INTO flow_run_counts (hour, state, n)
        SELECT created_us / 3600000000, state, count(*) FROM flow_runs GROUP BY 1, 2;
    CREATE TRIGGER flow_run_counts_insert AFTER INSERT ON flow_runs BEGIN
        INSERT INTO flow_run_counts (hour, state, n) VALUES (new.created_us / 3600000000, new.state, 1)
            ON CONFLICT (hour, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER flow_run_counts_update AFTER UPDATE OF state, created_us ON flow_runs
        WHEN old.state IS NOT new.state OR old.created_us IS NOT new.created_us BEGIN
        UPDATE flow_run_counts SET n = n - 1
            WHERE hour = old.created_us / 3600000000 AND state = old.state;
        INSERT INTO flow_run_counts (hour, state, n) VALUES (new.created_us / 3600000000, new.state, 1)
            ON CONFLICT (hour, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER flow_run_counts_delete AFTER DELETE ON flow_runs BEGIN
        UPDATE flow_run_counts SET n = n - 1
            WHERE hour = old.created_us / 3600000000 AND state = old.state;
    END;
    ",
];

/// The newest schema version this host knows.
pub fn newest() -> u64 {
    MIGRATIONS.len() as u64
}

/// Brings the database up to the newest schema, one transaction per migration.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), String> {
    migrate_inner(conn).map_err(|e| e.to_string())?
}

fn migrate_inner(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    loop {
        // IMMEDIATE takes the write lock first, so two processes opening a new
        // database at once do not both apply the same migration.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: usize =
            tx.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
        if current > MIGRATIONS.len() {
            return Ok(Err(format!(
                "the database is at schema version {current}, newer than this host knows ({}); use a newer host",
                MIGRATIONS.len()
            )));
        }
        let Some(sql) = MIGRATIONS.get(current) else {
            return Ok(Ok(()));
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (current + 1) as i64)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_connections_migrating_at_once_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.db");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut conn = Connection::open(&path).unwrap();
                    conn.busy_timeout(std::time::Duration::from_secs(10))
                        .unwrap();
                    migrate(&mut conn)
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Ok(()));
        }
    }
}
