//! The PostgreSQL side of [`FlowRuns`].

use super::rows::{all, flow_run, id16, state_of};
use super::*;

impl PostgresStore {
    fn flow_runs(
        &self,
        sql: String,
        args: Vec<Box<dyn postgres::types::ToSql + Sync + Send>>,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(move |c| {
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                args.iter().map(|a| &**a as _).collect();
            all(c.query(&sql, &refs)?, flow_run)
        })
    }

    fn count_unfinished(
        &self,
        filter: &'static str,
        args: Vec<Option<String>>,
    ) -> Result<u64, StoreError> {
        self.read(move |c| {
            let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                args.iter().map(|a| a as _).collect();
            let n: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM flow_runs WHERE {filter} AND {UNFINISHED}"),
                    &refs,
                )?
                .try_get(0)?;
            Ok(n as u64)
        })
    }

    fn counts_by_state(&self, since: TimestampMicros) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.read(move |c| {
            c.query(
                "SELECT state, count(*) FROM flow_runs WHERE created_us >= $1 GROUP BY state",
                &[&since],
            )?
            .iter()
            .map(|r| Ok((state_of(r.try_get(0)?)?, r.try_get::<_, i64>(1)? as u64)))
            .collect()
        })
    }
}

fn boxed<T: postgres::types::ToSql + Sync + Send + 'static>(
    value: T,
) -> Box<dyn postgres::types::ToSql + Sync + Send> {
    Box::new(value)
}

impl FlowRuns for PostgresStore {
    fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRow, StoreError> {
        self.flow_runs(
            format!("{FLOW_RUN_SELECT} WHERE id = $1"),
            vec![boxed(id.as_bytes().to_vec())],
        )?
        .pop()
        .ok_or(StoreError::NotFound {
            what: "flow run",
            id: id.to_string(),
        })
    }

    fn cancel_requested(&self, id: FlowRunId) -> Result<bool, StoreError> {
        self.read(move |c| {
            let row = c.query_opt(
                "SELECT cancel_requested_us FROM flow_runs WHERE id = $1",
                &[&&id.as_bytes()[..]],
            )?;
            Ok(match row {
                Some(r) => r.try_get::<_, Option<i64>>(0)?.is_some(),
                None => false,
            })
        })
    }

    fn resolve_flow_run(&self, text: &str) -> Result<FlowRunId, StoreError> {
        let prefix = match RunIdText::parse(text)? {
            RunIdText::Whole(id) => return Ok(id),
            RunIdText::Prefix(prefix) => prefix,
        };
        let ids: Vec<Vec<u8>> = self.read(move |c| {
            Ok(c.query(
                "SELECT id FROM flow_runs WHERE encode(id, 'hex') LIKE $1 LIMIT 2",
                &[&format!("{prefix}%")],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })?;
        let ids = ids
            .iter()
            .map(|id| id16(id))
            .collect::<Result<Vec<_>, _>>()?;
        RunIdText::one(text, &ids)
    }

    fn list_flow_runs(&self, filter: &FlowRunFilter) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut sql = format!("{FLOW_RUN_SELECT} WHERE 1 = 1");
        let mut args: Vec<Box<dyn postgres::types::ToSql + Sync + Send>> = Vec::new();
        let mut push = |sql: &mut String, clause: &str, arg| {
            args.push(arg);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(state) = filter.state {
            push(&mut sql, " AND state = ?", boxed(state.as_str()));
        }
        if let Some(flow) = &filter.flow_name {
            push(&mut sql, " AND flow_name = ?", boxed(flow.clone()));
        }
        if let Some(deployment) = &filter.deployment {
            push(&mut sql, " AND deployment = ?", boxed(deployment.clone()));
        }
        if let Some(tag) = &filter.tag {
            push(
                &mut sql,
                " AND tags IS NOT NULL AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(tags::jsonb) t WHERE t = ?)",
                boxed(tag.clone()),
            );
        }
        if let Some(since) = filter.since {
            push(&mut sql, " AND created_us >= ?", boxed(since));
        }
        if let Some(until) = filter.until {
            push(&mut sql, " AND created_us < ?", boxed(until));
        }
        if filter.top_level_only {
            sql.push_str(" AND parent_flow_run IS NULL");
        }
        if let Some(after) = filter.after {
            // The first test is what an index on created_us can seek to.
            push(&mut sql, " AND created_us <= ?", boxed(after.created));
            push(&mut sql, " AND (created_us < ?", boxed(after.created));
            push(&mut sql, " OR id < ?)", boxed(after.id.as_bytes().to_vec()));
        }
        push(
            &mut sql,
            " ORDER BY created_us DESC, id DESC LIMIT ?",
            boxed(filter.limit.max(1) as i64),
        );
        push(&mut sql, " OFFSET ?", boxed(filter.offset as i64));
        self.flow_runs(sql, args)
    }

    fn overdue_runs(
        &self,
        before: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!(
                "{FLOW_RUN_SELECT} WHERE state = 'Scheduled' AND scheduled_us < $1 ORDER BY scheduled_us LIMIT $2"
            ),
            vec![boxed(before), boxed(limit as i64)],
        )
    }

    fn due_runs(
        &self,
        pools: &[String],
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!(
                "SELECT * FROM ({FLOW_RUN_SELECT} WHERE state = 'Scheduled' AND scheduled_us <= $1
                 UNION ALL {FLOW_RUN_SELECT} WHERE state = 'Late') AS due
                 WHERE work_pool = ANY($3)
                 ORDER BY scheduled_us LIMIT $2"
            ),
            vec![boxed(now), boxed(limit as i64), boxed(pools.to_vec())],
        )
    }

    fn runs_ended_after(
        &self,
        after: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!(
                "{FLOW_RUN_SELECT} WHERE ended_us > $1 AND parent_flow_run IS NULL ORDER BY ended_us LIMIT $2"
            ),
            vec![boxed(after), boxed(limit as i64)],
        )
    }

    fn runs_in_state(&self, state: RunState, limit: usize) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!(
                "{FLOW_RUN_SELECT} WHERE state = $1 AND parent_flow_run IS NULL ORDER BY created_us LIMIT $2"
            ),
            vec![boxed(state.as_str()), boxed(limit as i64)],
        )
    }

    fn last_scheduled_at(&self, deployment: &str) -> Result<Option<TimestampMicros>, StoreError> {
        let deployment = deployment.to_string();
        self.read(move |c| {
            Ok(c.query_one(
                "SELECT max(scheduled_us) FROM flow_runs WHERE deployment = $1",
                &[&deployment],
            )?
            .try_get(0)?)
        })
    }

    fn active_runs_of_pool(&self, pool: &str, queue: Option<&str>) -> Result<u64, StoreError> {
        self.count_unfinished(
            "work_pool = $1 AND ($2::text IS NULL OR work_queue = $2::text)",
            vec![Some(pool.to_string()), queue.map(str::to_string)],
        )
    }

    fn active_runs_of_deployment(&self, deployment: &str) -> Result<u64, StoreError> {
        self.count_unfinished("deployment = $1", vec![Some(deployment.to_string())])
    }

    fn count_flow_runs_by_state(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        self.counts_by_state(i64::MIN)
    }

    fn count_flow_runs_per_hour_and_state_since(
        &self,
        since: TimestampMicros,
    ) -> Result<Vec<(i64, RunState, u64)>, StoreError> {
        self.read(move |c| {
            c.query(
                "SELECT created_us / 3600000000 AS hour, state, count(*) FROM flow_runs
                 WHERE created_us >= $1 GROUP BY hour, state ORDER BY hour",
                &[&since],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    state_of(r.try_get(1)?)?,
                    r.try_get::<_, i64>(2)? as u64,
                ))
            })
            .collect()
        })
    }

    fn held_runs(&self) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!(
                "{FLOW_RUN_SELECT} WHERE lease_holder IS NOT NULL AND {UNFINISHED} ORDER BY created_us"
            ),
            vec![],
        )
    }

    fn descendants(&self, id: FlowRunId) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!(
                "WITH RECURSIVE tree (id, depth) AS (
                    SELECT id, 1 FROM flow_runs WHERE parent_flow_run = $1
                    UNION ALL SELECT f.id, tree.depth + 1 FROM flow_runs f JOIN tree ON f.parent_flow_run = tree.id)
                 SELECT r.* FROM ({FLOW_RUN_SELECT}) AS r JOIN tree USING (id) ORDER BY tree.depth, r.created_us"
            ),
            vec![boxed(id.as_bytes().to_vec())],
        )
    }

    fn unfinished_flow_runs(&self) -> Result<Vec<FlowRunRow>, StoreError> {
        self.flow_runs(
            format!("{FLOW_RUN_SELECT} WHERE {UNFINISHED} ORDER BY created_us"),
            vec![],
        )
    }
}
