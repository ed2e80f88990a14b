//! The SQLite side of [`TaskRuns`]: task runs, their attempts, state histories, the cache, and log lines.

use super::*;

impl TaskRuns for SqliteStore {
    fn task_run(&self, id: TaskRunId) -> Result<TaskRunRow, StoreError> {
        let mut row = self
            .read(|c| {
                c.query_row(
                    &format!("{TASK_RUN_SELECT} WHERE id = ?1"),
                    [id.as_bytes()],
                    TaskRunRow::from_row,
                )
                .optional()
            })?
            .ok_or(StoreError::NotFound {
                what: "task run",
                id: id.to_string(),
            })?;
        self.results.inflate(&mut row.input)?;
        if let Some(output) = row.output.as_mut() {
            self.results.inflate(output)?;
        }
        Ok(row)
    }

    fn task_runs(&self, flow_run: FlowRunId) -> Result<Vec<TaskRunRow>, StoreError> {
        let mut rows: Vec<TaskRunRow> = self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "{TASK_RUN_SELECT} WHERE flow_run = ?1 ORDER BY call_seq, created_us"
            ))?;
            stmt.query_map([flow_run.as_bytes()], TaskRunRow::from_row)?
                .collect()
        })?;
        for row in &mut rows {
            self.results.inflate(&mut row.input)?;
            if let Some(output) = row.output.as_mut() {
                self.results.inflate(output)?;
            }
        }
        Ok(rows)
    }

    fn task_attempts(&self, task_run: TaskRunId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|c| {
            // A fast task's only attempt may live in its row (a task row
            // with no history: see `apply::attempt_is_in_row`).
            let mut stmt = c.prepare_cached(
                "SELECT attempt, started_us, ended_us, fuel_used, peak_memory, failure_kind, message
                 FROM task_attempts WHERE task_run = ?1
                 UNION ALL
                 SELECT 1, started_us, ended_us, fuel_used, peak_memory, failure_kind, message
                 FROM task_runs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM run_states WHERE run_id = ?1)
                 ORDER BY 1",
            )?;
            stmt.query_map([task_run.as_bytes()], |r| {
                let kind: Option<String> = r.get(5)?;
                let message: Option<String> = r.get(6)?;
                Ok(AttemptRecord {
                    task_run,
                    attempt: r.get(0)?,
                    started_at: r.get(1)?,
                    ended_at: r.get(2)?,
                    fuel_used: r.get::<_, i64>(3)? as u64,
                    peak_memory: r.get::<_, i64>(4)? as u64,
                    failure: kind
                        .and_then(|k| k.parse().ok())
                        .map(|k| (k, message.unwrap_or_default())),
                })
            })?
            .collect()
        })
    }

    /// The state history of a flow run or task run, oldest first.
    fn state_history(
        &self,
        run: uuid::Uuid,
    ) -> Result<Vec<(TimestampMicros, RunState, Option<String>)>, StoreError> {
        let rows: Vec<(i64, String, Option<String>)> = self.read(|c| {
            // A task row with no history entries holds them itself: Running
            // at its creation, its state at its end (`apply::attempt_is_in_row`).
            // Ties in time go by state, as the history's primary key orders them.
            let mut stmt = c.prepare_cached(
                "SELECT at_us, state, message FROM run_states WHERE run_id = ?1
                 UNION ALL
                 SELECT created_us, 'Running', NULL FROM task_runs
                    WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM run_states WHERE run_id = ?1)
                 UNION ALL
                 SELECT ended_us, state, message FROM task_runs
                    WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM run_states WHERE run_id = ?1)
                 ORDER BY 1, 2",
            )?;
            stmt.query_map([run.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(at, state, message)| Ok((at, parse_state(&state)?, message)))
            .collect()
    }

    /// The newest unexpired output recorded for a cache key.
    fn cached_output(
        &self,
        cache_key: &str,
        not_before: TimestampMicros,
    ) -> Result<Option<(TaskRunId, String)>, StoreError> {
        let row: Option<(Vec<u8>, String)> = self.read(|c| {
            // Prepared once: a cache hit is this lookup and little else.
            c.prepare_cached(
                "SELECT id, output FROM task_runs
                 WHERE cache_key = ?1 AND state = 'Completed' AND ended_us >= ?2
                 ORDER BY ended_us DESC LIMIT 1",
            )?
            .query_row(params![cache_key, not_before], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })?;
        row.map(|(id, mut out)| {
            self.results.inflate(&mut out)?;
            Ok((
                TaskRunId::from_bytes(blob16(&id).map_err(StoreError::Corrupt)?),
                out,
            ))
        })
        .transpose()
    }

    /// Log lines of a flow run (and its tasks) after `after_id`, oldest first.
    fn logs(
        &self,
        flow_run: FlowRunId,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<LogRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT l.id, l.task_run, l.at_us, l.level, l.message, t.task_name FROM logs l
                 LEFT JOIN task_runs t ON t.id = l.task_run
                 WHERE l.flow_run = ?1 AND l.id > ?2 ORDER BY l.id LIMIT ?3",
            )?;
            stmt.query_map(params![flow_run.as_bytes(), after_id, limit as i64], |r| {
                let task_run: Option<Vec<u8>> = r.get(1)?;
                Ok(LogRow {
                    id: r.get(0)?,
                    task_run: task_run
                        .and_then(|b| blob16(&b).ok())
                        .map(TaskRunId::from_bytes),
                    at: r.get(2)?,
                    level: LogLevel::from_u8(r.get::<_, i64>(3)? as u8),
                    message: r.get(4)?,
                    task_name: r.get(5)?,
                })
            })?
            .collect()
        })
    }
}
