//! Embedded, append-only migrations for PostgreSQL. Never edit one that has
//! shipped; add another. The first is SQLite's eight migrations at once.
//!
//! Migrating takes a transaction-scoped advisory lock, so servers starting
//! together against one database apply each migration exactly once.

use super::StoreError;

/// The advisory lock key migrations take ("weir" in ASCII).
const MIGRATION_LOCK: i64 = 0x7765_6972;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE components (
        digest      TEXT PRIMARY KEY,
        size_bytes  BIGINT NOT NULL,
        manifest    TEXT NOT NULL,
        created_us  BIGINT NOT NULL
    );
    CREATE TABLE component_blobs (
        digest      TEXT PRIMARY KEY,
        wasm        BYTEA NOT NULL
    );
    CREATE TABLE flow_runs (
        id              BYTEA PRIMARY KEY,
        parent_flow_run BYTEA REFERENCES flow_runs (id) ON DELETE CASCADE,
        component       TEXT NOT NULL,
        flow_name       TEXT NOT NULL,
        params          TEXT NOT NULL,
        state           TEXT NOT NULL,
        message         TEXT,
        failure_kind    TEXT,
        result          TEXT,
        attempt         BIGINT NOT NULL DEFAULT 1,
        host            TEXT,
        created_us      BIGINT NOT NULL,
        started_us      BIGINT,
        ended_us        BIGINT,
        fuel_used       BIGINT NOT NULL DEFAULT 0,
        peak_memory     BIGINT NOT NULL DEFAULT 0,
        cancel_requested_us BIGINT,
        deployment      TEXT,
        tags            TEXT,
        scheduled_us    BIGINT,
        work_pool       TEXT,
        work_queue      TEXT,
        secret_grants   TEXT,
        lease_holder    TEXT,
        lease_epoch     BIGINT NOT NULL DEFAULT 0,
        lease_expires_us BIGINT
    );
    CREATE INDEX flow_runs_by_created ON flow_runs (created_us);
    CREATE INDEX flow_runs_by_state ON flow_runs (state, created_us);
    CREATE INDEX flow_runs_by_parent ON flow_runs (parent_flow_run) WHERE parent_flow_run IS NOT NULL;
    CREATE INDEX flow_runs_due ON flow_runs (scheduled_us) WHERE state = 'Scheduled';
    CREATE INDEX flow_runs_by_deployment ON flow_runs (deployment, created_us) WHERE deployment IS NOT NULL;
    CREATE INDEX flow_runs_waiting_by_pool ON flow_runs (work_pool, scheduled_us) WHERE state IN ('Scheduled', 'Late');
    CREATE INDEX flow_runs_by_lease ON flow_runs (lease_expires_us)
        WHERE lease_holder IS NOT NULL AND state IN ('Pending', 'Running', 'Retrying', 'Cancelling');
    CREATE INDEX flow_runs_by_end ON flow_runs (ended_us) WHERE ended_us IS NOT NULL;
    CREATE TABLE task_runs (
        id              BYTEA PRIMARY KEY,
        flow_run        BYTEA NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
        call_seq        BIGINT NOT NULL,
        task_name       TEXT NOT NULL,
        input           TEXT NOT NULL,
        output          TEXT,
        state           TEXT NOT NULL,
        failure_kind    TEXT,
        message         TEXT,
        attempts        BIGINT NOT NULL DEFAULT 0,
        fuel_used       BIGINT NOT NULL DEFAULT 0,
        peak_memory     BIGINT NOT NULL DEFAULT 0,
        created_us      BIGINT NOT NULL,
        started_us      BIGINT,
        ended_us        BIGINT,
        next_attempt_us BIGINT,
        cache_key       TEXT,
        cached_from     BYTEA,
        host            TEXT,
        input_sha256    TEXT
    );
    CREATE INDEX task_runs_by_flow ON task_runs (flow_run, call_seq);
    CREATE INDEX task_runs_by_cache_key ON task_runs (cache_key, ended_us) WHERE cache_key IS NOT NULL;
    CREATE TABLE task_attempts (
        task_run     BYTEA NOT NULL REFERENCES task_runs (id) ON DELETE CASCADE,
        attempt      BIGINT NOT NULL,
        started_us   BIGINT NOT NULL,
        ended_us     BIGINT NOT NULL,
        fuel_used    BIGINT NOT NULL,
        peak_memory  BIGINT NOT NULL,
        failure_kind TEXT,
        message      TEXT,
        PRIMARY KEY (task_run, attempt)
    );
    CREATE TABLE run_states (
        run_id  BYTEA NOT NULL,
        at_us   BIGINT NOT NULL,
        state   TEXT NOT NULL,
        message TEXT,
        PRIMARY KEY (run_id, at_us, state)
    );
    CREATE TABLE logs (
        id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        flow_run BYTEA NOT NULL,
        task_run BYTEA,
        at_us    BIGINT NOT NULL,
        level    BIGINT NOT NULL,
        message  TEXT NOT NULL,
        origin   TEXT
    );
    CREATE INDEX logs_by_flow_run ON logs (flow_run, id);
    CREATE UNIQUE INDEX logs_by_origin ON logs (flow_run, origin) WHERE origin IS NOT NULL;
    CREATE TABLE objects (
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        body        TEXT NOT NULL,
        created_us  BIGINT NOT NULL,
        updated_us  BIGINT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE schedule_slots (
        deployment   TEXT NOT NULL,
        schedule_key TEXT NOT NULL,
        scheduled_us BIGINT NOT NULL,
        flow_run     BYTEA NOT NULL,
        PRIMARY KEY (deployment, schedule_key, scheduled_us)
    );
    CREATE TABLE automation_deliveries (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        automation      TEXT NOT NULL,
        flow_run        BYTEA NOT NULL,
        event           TEXT NOT NULL,
        payload         TEXT NOT NULL,
        status          TEXT NOT NULL,
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_us BIGINT NOT NULL,
        last_error      TEXT,
        response_code   BIGINT,
        created_us      BIGINT NOT NULL,
        delivered_us    BIGINT,
        UNIQUE (automation, flow_run, event)
    );
    CREATE INDEX automation_deliveries_due ON automation_deliveries (next_attempt_us) WHERE status = 'pending';
",
// The dashboard counts a day of runs by state and by hour: with the state
// in the index, from the index alone.
"
    CREATE INDEX flow_runs_by_created_state ON flow_runs (created_us, state);
    DROP INDEX flow_runs_by_created;
", "
    CREATE TABLE deployment_versions (
        deployment  TEXT NOT NULL,
        version     BIGINT NOT NULL,
        body        TEXT NOT NULL,
        created_by  TEXT NOT NULL,
        note        TEXT,
        created_us  BIGINT NOT NULL,
        PRIMARY KEY (deployment, version)
    );
    ALTER TABLE flow_runs ADD COLUMN deployment_version BIGINT;
", "
    CREATE TABLE limit_slots (
        lease      BYTEA NOT NULL,
        name       TEXT NOT NULL,
        slots      BIGINT NOT NULL,
        flow_run   BYTEA NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
        taken_us   BIGINT NOT NULL,
        PRIMARY KEY (lease, name)
    );
    CREATE INDEX limit_slots_by_name ON limit_slots (name);
    CREATE INDEX limit_slots_by_run ON limit_slots (flow_run);
    CREATE TABLE limit_rates (
        name    TEXT PRIMARY KEY,
        tat_us  BIGINT NOT NULL
    );
"];

/// Brings the database up to the newest schema, one transaction per migration.
pub fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS weir_schema (version BIGINT NOT NULL);
             INSERT INTO weir_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM weir_schema);",
        )?;
        let current: i64 = tx.query_one("SELECT version FROM weir_schema", &[])?.get(0);
        let current = current as usize;
        if current > MIGRATIONS.len() {
            return Err(StoreError::Database(format!(
                "the database is at schema version {current}, newer than this host knows ({}); use a newer host",
                MIGRATIONS.len()
            )));
        }
        let Some(sql) = MIGRATIONS.get(current) else {
            return Ok(());
        };
        tx.batch_execute(sql)?;
        tx.execute(
            "UPDATE weir_schema SET version = $1",
            &[&((current + 1) as i64)],
        )?;
        tx.commit()?;
    }
}

/// The newest schema version this host knows.
pub fn newest() -> u64 {
    MIGRATIONS.len() as u64
}

/// The schema version the database is at, and the newest this host knows.
pub fn version(client: &mut postgres::Client) -> Result<(u64, u64), StoreError> {
    let current: i64 = client
        .query_opt("SELECT version FROM weir_schema", &[])?
        .map(|r| r.get(0))
        .unwrap_or(0);
    Ok((current as u64, MIGRATIONS.len() as u64))
}
