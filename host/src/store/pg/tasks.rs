//! The PostgreSQL side of [`TaskRuns`].

use super::rows::{all, id16, state_of, task_run};
use super::*;

impl TaskRuns for PostgresStore {
    fn task_run(&self, id: TaskRunId) -> Result<TaskRunRow, StoreError> {
        self.read(move |c| {
            let row = c.query_opt(
                &format!("{TASK_RUN_SELECT} WHERE id = $1"),
                &[&&id.as_bytes()[..]],
            )?;
            row.as_ref().map(task_run).transpose()
        })?
        .ok_or(StoreError::NotFound {
            what: "task run",
            id: id.to_string(),
        })
    }

    fn task_runs(&self, flow_run: FlowRunId) -> Result<Vec<TaskRunRow>, StoreError> {
        self.read(move |c| {
            all(
                c.query(
                    &format!("{TASK_RUN_SELECT} WHERE flow_run = $1 ORDER BY call_seq, created_us"),
                    &[&&flow_run.as_bytes()[..]],
                )?,
                task_run,
            )
        })
    }

    fn task_attempts(&self, task_run: TaskRunId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(move |c| {
            c.query(
                "SELECT attempt, started_us, ended_us, fuel_used, peak_memory, failure_kind, message
                 FROM task_attempts WHERE task_run = $1 ORDER BY attempt",
                &[&&task_run.as_bytes()[..]],
            )?
            .iter()
            .map(|r| {
                let kind: Option<String> = r.try_get(5)?;
                let message: Option<String> = r.try_get(6)?;
                Ok(AttemptRecord {
                    task_run,
                    attempt: r.try_get::<_, i64>(0)? as u32,
                    started_at: r.try_get(1)?,
                    ended_at: r.try_get(2)?,
                    fuel_used: r.try_get::<_, i64>(3)? as u64,
                    peak_memory: r.try_get::<_, i64>(4)? as u64,
                    failure: kind
                        .and_then(|k| k.parse().ok())
                        .map(|k| (k, message.unwrap_or_default())),
                })
            })
            .collect()
        })
    }

    fn state_history(
        &self,
        run: uuid::Uuid,
    ) -> Result<Vec<(TimestampMicros, RunState, Option<String>)>, StoreError> {
        self.read(move |c| {
            c.query(
                "SELECT at_us, state, message FROM run_states WHERE run_id = $1 ORDER BY at_us",
                &[&&run.as_bytes()[..]],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, state_of(r.try_get(1)?)?, r.try_get(2)?)))
            .collect()
        })
    }

    fn cached_output(
        &self,
        cache_key: &str,
        not_before: TimestampMicros,
    ) -> Result<Option<(TaskRunId, String)>, StoreError> {
        let cache_key = cache_key.to_string();
        self.read(move |c| {
            let row = c.query_opt(
                "SELECT id, output FROM task_runs
                 WHERE cache_key = $1 AND state = 'Completed' AND ended_us >= $2
                 ORDER BY ended_us DESC LIMIT 1",
                &[&cache_key, &not_before],
            )?;
            row.map(|r| {
                Ok((
                    TaskRunId::from_bytes(id16(r.try_get(0)?)?),
                    r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })
            .transpose()
        })
    }

    fn logs(
        &self,
        flow_run: FlowRunId,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<LogRow>, StoreError> {
        self.read(move |c| {
            c.query(
                "SELECT l.id, l.task_run, l.at_us, l.level, l.message, t.task_name FROM logs l
                 LEFT JOIN task_runs t ON t.id = l.task_run
                 WHERE l.flow_run = $1 AND l.id > $2 ORDER BY l.id LIMIT $3",
                &[&&flow_run.as_bytes()[..], &after_id, &(limit as i64)],
            )?
            .iter()
            .map(|r| {
                Ok(LogRow {
                    id: r.try_get(0)?,
                    task_run: r
                        .try_get::<_, Option<&[u8]>>(1)?
                        .map(id16)
                        .transpose()?
                        .map(TaskRunId::from_bytes),
                    at: r.try_get(2)?,
                    level: LogLevel::from_u8(r.try_get::<_, i64>(3)? as u8),
                    message: r.try_get(4)?,
                    task_name: r.try_get(5)?,
                })
            })
            .collect()
        })
    }
}
