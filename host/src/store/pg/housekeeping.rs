//! The PostgreSQL side of [`Housekeeping`]: pruning, retention and counts.

use super::*;

impl Housekeeping for PostgresStore {
    fn disk_sync(&self) -> Result<DiskSync, StoreError> {
        self.read(|c| {
            let setting: String = c.query_one("SHOW synchronous_commit", &[])?.try_get(0)?;
            // `off` may lose the last commits on a crash of the database
            // server; every other setting waits for the local WAL flush.
            Ok(if setting == "off" {
                DiskSync::Normal
            } else {
                DiskSync::Full
            })
        })
    }

    fn schema_version(&self) -> Result<(u64, u64), StoreError> {
        self.read(|c| {
            let exists: bool = c
                .query_one("SELECT to_regclass('weir_schema') IS NOT NULL", &[])?
                .try_get(0)?;
            if exists {
                super::schema::version(c)
            } else {
                Ok((0, super::schema::newest()))
            }
        })
    }

    fn location(&self) -> String {
        self.url().to_string()
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let bytes: i64 = c
                .query_one("SELECT pg_database_size(current_database())", &[])?
                .try_get(0)?;
            Ok(bytes as u64)
        })
    }

    fn prune(&self, ended_before: TimestampMicros) -> Result<PruneReport, StoreError> {
        self.read(move |c| {
            let mut tx = c.transaction()?;
            tx.batch_execute("CREATE TEMP TABLE doomed (id BYTEA PRIMARY KEY) ON COMMIT DROP")?;
            // Whole trees only: a child goes with its root.
            tx.execute(
                "INSERT INTO doomed
                 WITH RECURSIVE tree(id) AS (
                    SELECT id FROM flow_runs WHERE parent_flow_run IS NULL AND ended_us < $1
                    UNION SELECT f.id FROM flow_runs f JOIN tree ON f.parent_flow_run = tree.id)
                 SELECT id FROM tree",
                &[&ended_before],
            )?;
            let logs = tx.execute(
                "DELETE FROM logs WHERE flow_run IN (SELECT id FROM doomed)",
                &[],
            )?;
            tx.execute(
                "DELETE FROM run_states WHERE run_id IN (SELECT id FROM doomed)
                    OR run_id IN (SELECT id FROM task_runs WHERE flow_run IN (SELECT id FROM doomed))",
                &[],
            )?;
            let task_runs = tx.execute(
                "DELETE FROM task_runs WHERE flow_run IN (SELECT id FROM doomed)",
                &[],
            )?;
            let flow_runs = tx.execute(
                "DELETE FROM flow_runs WHERE id IN (SELECT id FROM doomed)",
                &[],
            )?;
            tx.commit()?;
            Ok(PruneReport {
                flow_runs,
                task_runs,
                logs,
                // Payloads live in their rows: there are no files to collect.
                result_files: 0,
            })
        })
    }

    fn prune_logs_older_than(&self, before: TimestampMicros) -> Result<u64, StoreError> {
        self.read(move |c| Ok(c.execute("DELETE FROM logs WHERE at_us < $1", &[&before])?))
    }

    fn count(&self, table: StoreTable) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {}", table.name());
        self.read(move |c| Ok(c.query_one(&sql, &[])?.try_get::<_, i64>(0)? as u64))
    }
}
