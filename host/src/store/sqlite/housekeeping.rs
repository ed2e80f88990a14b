//! The SQLite side of [`Housekeeping`]: pruning, retention and counts.

use super::*;

impl Housekeeping for SqliteStore {
    fn disk_sync(&self) -> Result<DiskSync, StoreError> {
        let conn = self.writer.conn.lock().unwrap_or_else(|p| p.into_inner());
        let level: u8 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        Ok(if level >= 2 {
            DiskSync::Full
        } else {
            DiskSync::Normal
        })
    }

    /// Deletes flow runs (with their tasks, attempts, states and logs) that
    /// ended before `ended_before`, then result files no row refers to.
    ///
    /// Files go only after the rows' deletion has committed (a crash in
    /// between leaves unreferenced files, never rows without their files),
    /// and only files that no row refers to, whether old or new, in any
    /// process: see [`Store::collect_result_files`].
    fn schema_version(&self) -> Result<(u64, u64), StoreError> {
        let current: i64 =
            self.read(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))?;
        Ok((current as u64, schema::newest()))
    }

    fn location(&self) -> String {
        self.path().display().to_string()
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
            let page_size: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
            Ok((pages * page_size) as u64)
        })
    }

    fn release_memory(&self) {
        // Connections busy now keep theirs: they are not idle.
        let idle = self
            .readers
            .iter()
            .chain(std::iter::once(&self.writer.conn))
            .filter_map(|conn| conn.try_lock().ok());
        for conn in idle {
            conn.flush_prepared_statement_cache();
            if let Err(e) = conn.release_memory() {
                tracing::debug!("sqlite kept its cache: {e}");
            }
        }
    }

    fn prune(&self, ended_before: TimestampMicros) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        {
            let mut conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS doomed (id BLOB PRIMARY KEY); DELETE FROM doomed;",
            )?;
            // Whole trees only: a child goes with its root.
            tx.execute(
                "INSERT INTO doomed SELECT id FROM flow_runs WHERE parent_flow_run IS NULL AND ended_us < ?1",
                [ended_before],
            )?;
            tx.execute_batch(
                "WITH RECURSIVE tree(id) AS (SELECT id FROM doomed UNION SELECT f.id FROM flow_runs f JOIN tree ON f.parent_flow_run = tree.id)
                 INSERT OR IGNORE INTO doomed SELECT id FROM tree;",
            )?;
            report.logs = tx.execute(
                "DELETE FROM logs WHERE flow_run IN (SELECT id FROM doomed)",
                [],
            )? as u64;
            tx.execute(
                "DELETE FROM run_states WHERE run_id IN (SELECT id FROM doomed)
                    OR run_id IN (SELECT id FROM task_runs WHERE flow_run IN (SELECT id FROM doomed))",
                [],
            )?;
            report.task_runs = tx.execute(
                "DELETE FROM task_runs WHERE flow_run IN (SELECT id FROM doomed)",
                [],
            )? as u64;
            report.flow_runs = tx.execute(
                "DELETE FROM flow_runs WHERE id IN (SELECT id FROM doomed)",
                [],
            )? as u64;
            tx.commit()?;
        }
        report.result_files = self.collect_result_files()?;
        Ok(report)
    }

    /// Deletes log lines written before `before`, whatever their run: the
    /// server's log retention. Runs and their records stay. Returns the lines deleted.
    fn prune_logs_older_than(&self, before: TimestampMicros) -> Result<u64, StoreError> {
        let conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn.execute("DELETE FROM logs WHERE at_us < ?1", [before])? as u64)
    }

    /// Counts rows per table, for `host version --verbose` and benchmarks.
    fn count(&self, table: StoreTable) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {}", table.name());
        self.read(|c| {
            c.query_row(&sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
    }
}

impl SqliteStore {
    /// Removes result files that no committed row refers to, and temp
    /// files left by a crash mid-write.
    ///
    /// Writers write (or find) a result file only inside their write
    /// transaction, which begins IMMEDIATE. Holding the write lock here, from
    /// reading the references to the last removal, means every writer in
    /// every process has either committed its rows (so they are read here)
    /// or not yet begun (so it writes the file again if it is gone); a temp
    /// file seen now belongs to no writer in progress.
    pub(super) fn collect_result_files(&self) -> Result<u64, StoreError> {
        let mut conn = self.readers[0].lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let referenced: std::collections::HashSet<String> = {
            let mut stmt = tx.prepare(
                "SELECT params FROM flow_runs UNION ALL SELECT result FROM flow_runs
                 UNION ALL SELECT input FROM task_runs UNION ALL SELECT output FROM task_runs",
            )?;
            let texts: Vec<Option<String>> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            texts
                .into_iter()
                .flatten()
                .filter_map(|t| ResultFiles::referenced(&t).map(str::to_string))
                .collect()
        };
        let Ok(entries) = std::fs::read_dir(self.results.dir()) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let unreferenced = name
                .strip_suffix(".json")
                .is_some_and(|digest| !referenced.contains(digest));
            if (unreferenced || name.starts_with(files::TEMP_PREFIX))
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        // Nothing was written; ending the transaction lets writers go on.
        tx.rollback()?;
        Ok(removed)
    }
}
