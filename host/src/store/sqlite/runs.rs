//! The SQLite side of [`FlowRuns`]: flow runs: one, a page, the due, the held and the unfinished, and counts.

use super::*;

impl FlowRuns for SqliteStore {
    fn flow_run(&self, id: FlowRunId) -> Result<FlowRunRow, StoreError> {
        let mut row = self
            .read(|c| {
                c.query_row(
                    &format!("{FLOW_RUN_SELECT} WHERE id = ?1"),
                    [id.as_bytes()],
                    FlowRunRow::from_row,
                )
                .optional()
            })?
            .ok_or(StoreError::NotFound {
                what: "flow run",
                id: id.to_string(),
            })?;
        self.results.inflate(&mut row.params)?;
        if let Some(result) = row.result.as_mut() {
            self.results.inflate(result)?;
        }
        Ok(row)
    }

    /// Whether someone asked for this run to be cancelled.
    fn cancel_requested(&self, id: FlowRunId) -> Result<bool, StoreError> {
        let at: Option<Option<i64>> = self.read(|c| {
            c.query_row(
                "SELECT cancel_requested_us FROM flow_runs WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(matches!(at, Some(Some(_))))
    }

    /// Finds a flow run by a prefix of its id, as users type them.
    fn resolve_flow_run(&self, text: &str) -> Result<FlowRunId, StoreError> {
        let prefix = match RunIdText::parse(text)? {
            RunIdText::Whole(id) => return Ok(id),
            RunIdText::Prefix(prefix) => prefix,
        };
        let ids: Vec<Vec<u8>> = self.read(|c| {
            let mut stmt = c.prepare("SELECT id FROM flow_runs WHERE hex(id) LIKE ?1 LIMIT 2")?;
            stmt.query_map([format!("{}%", prefix.to_uppercase())], |r| r.get(0))?
                .collect()
        })?;
        let ids = ids
            .iter()
            .map(|id| blob16(id).map_err(StoreError::Corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        RunIdText::one(text, &ids)
    }

    fn list_flow_runs(&self, filter: &FlowRunFilter) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut sql = format!("{FLOW_RUN_SELECT} WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(state) = filter.state {
            sql.push_str(" AND state = ?");
            args.push(state.as_str().to_string().into());
        }
        if let Some(flow) = &filter.flow_name {
            sql.push_str(" AND flow_name = ?");
            args.push(flow.clone().into());
        }
        if let Some(deployment) = &filter.deployment {
            sql.push_str(" AND deployment = ?");
            args.push(deployment.clone().into());
        }
        if let Some(tag) = &filter.tag {
            sql.push_str(
                " AND tags IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?)",
            );
            args.push(tag.clone().into());
        }
        if let Some(since) = filter.since {
            sql.push_str(" AND created_us >= ?");
            args.push(since.into());
        }
        if let Some(until) = filter.until {
            sql.push_str(" AND created_us < ?");
            args.push(until.into());
        }
        if filter.top_level_only {
            sql.push_str(" AND parent_flow_run IS NULL");
        }
        if let Some(after) = filter.after {
            // The first test is what an index on created_us can seek to.
            sql.push_str(" AND created_us <= ? AND (created_us < ? OR id < ?)");
            args.push(after.created.into());
            args.push(after.created.into());
            args.push(after.id.as_bytes().to_vec().into());
        }
        sql.push_str(" ORDER BY created_us DESC, id DESC LIMIT ? OFFSET ?");
        args.push((filter.limit.max(1) as i64).into());
        args.push((filter.offset as i64).into());
        self.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            stmt.query_map(rusqlite::params_from_iter(args), FlowRunRow::from_row)?
                .collect()
        })
    }

    /// Scheduled runs still waiting though they were due before `before`.
    fn overdue_runs(
        &self,
        before: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE state = 'Scheduled' AND scheduled_us < ?1 ORDER BY scheduled_us LIMIT ?2"
            ))?;
            stmt.query_map(params![before, limit as i64], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// Scheduled runs of these pools due by `now`, and Late ones, oldest
    /// first. Filtered by pool in SQL, so runs waiting for other pools (or
    /// stuck behind a limit) never crowd out the ones asked for.
    fn due_runs(
        &self,
        pools: &[String],
        now: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        let pools = serde_json::to_string(pools).unwrap_or_else(|_| "[]".into());
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT * FROM ({FLOW_RUN_SELECT} WHERE state = 'Scheduled' AND scheduled_us <= ?1
                 UNION ALL {FLOW_RUN_SELECT} WHERE state = 'Late')
                 WHERE work_pool IN (SELECT value FROM json_each(?3))
                 ORDER BY scheduled_us LIMIT ?2"
            ))?;
            stmt.query_map(params![now, limit as i64, pools], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// Top-level runs that ended after `after` (up to `limit`, oldest first).
    fn runs_ended_after(
        &self,
        after: TimestampMicros,
        limit: usize,
    ) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE ended_us > ?1 AND parent_flow_run IS NULL ORDER BY ended_us LIMIT ?2"
            ))?;
            stmt.query_map(params![after, limit as i64], FlowRunRow::from_row)?
                .collect()
        })
    }

    /// Top-level runs in `state` created before `before` (Late ones, or
    /// Running ones that may be stuck).
    fn runs_in_state(&self, state: RunState, limit: usize) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE state = ?1 AND parent_flow_run IS NULL ORDER BY created_us LIMIT ?2"
            ))?;
            stmt.query_map(params![state.as_str(), limit as i64], FlowRunRow::from_row)?
                .collect()
        })
    }

    fn last_scheduled_at(&self, deployment: &str) -> Result<Option<TimestampMicros>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT max(scheduled_us) FROM flow_runs WHERE deployment = ?1",
                [deployment],
                |r| r.get(0),
            )
        })
    }

    /// Runs of a work pool (and, if given, one of its queues) that have not
    /// ended, for their concurrency limits.
    fn active_runs_of_pool(&self, pool: &str, queue: Option<&str>) -> Result<u64, StoreError> {
        self.count_unfinished(
            "work_pool = ?1 AND (?2 IS NULL OR work_queue = ?2)",
            params![pool, queue],
        )
    }

    /// Runs of a deployment that have not ended (for its concurrency limit).
    fn active_runs_of_deployment(&self, deployment: &str) -> Result<u64, StoreError> {
        self.count_unfinished("deployment = ?1", params![deployment])
    }

    /// Flow runs per state, for metrics.
    fn count_flow_runs_by_state(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self.read(|c| {
            // From the per-hour counts: a few hundred rows a day, not every run.
            let mut stmt = c.prepare_cached(
                "SELECT state, sum(n) FROM flow_run_counts GROUP BY state HAVING sum(n) > 0",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(state, n)| Ok((parse_state(&state)?, n as u64)))
            .collect()
    }

    fn count_flow_runs_per_hour_and_state_since(
        &self,
        since: TimestampMicros,
    ) -> Result<Vec<(i64, RunState, u64)>, StoreError> {
        let rows: Vec<(i64, String, i64)> = self.read(|c| {
            // Whole hours from the counts; the hour `since` falls in, which
            // counts only from `since` on, from the runs themselves.
            let mut stmt = c.prepare_cached(
                "SELECT hour, state, n FROM flow_run_counts
                 WHERE hour > ?1 / 3600000000 AND n > 0
                 UNION ALL
                 SELECT created_us / 3600000000, state, count(*) FROM flow_runs
                 WHERE created_us >= ?1 AND created_us < (?1 / 3600000000 + 1) * 3600000000
                 GROUP BY 1, 2
                 ORDER BY 1",
            )?;
            stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })?;
        rows.into_iter()
            .map(|(hour, state, n)| Ok((hour, parse_state(&state)?, n as u64)))
            .collect()
    }

    /// Unfinished runs that anyone holds (their holders may be checked for life).
    fn held_runs(&self) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{FLOW_RUN_SELECT} WHERE lease_holder IS NOT NULL AND {UNFINISHED} ORDER BY created_us"
            ))?;
            stmt.query_map([], FlowRunRow::from_row)?.collect()
        })
    }

    /// Subflow runs below `id`, at any depth, deepest last.
    fn descendants(&self, id: FlowRunId) -> Result<Vec<FlowRunRow>, StoreError> {
        let mut runs: Vec<FlowRunRow> = self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "WITH RECURSIVE tree (id, depth) AS (
                    SELECT id, 1 FROM flow_runs WHERE parent_flow_run = ?1
                    UNION ALL SELECT f.id, tree.depth + 1 FROM flow_runs f JOIN tree ON f.parent_flow_run = tree.id)
                 SELECT r.* FROM ({FLOW_RUN_SELECT}) AS r JOIN tree USING (id) ORDER BY tree.depth, r.created_us"
            ))?;
            stmt.query_map([id.as_bytes()], FlowRunRow::from_row)?
                .collect()
        })?;
        for run in &mut runs {
            self.results.inflate(&mut run.params)?;
            if let Some(result) = run.result.as_mut() {
                self.results.inflate(result)?;
            }
        }
        Ok(runs)
    }

    /// Runs that were left unfinished (for recovery after a crash).
    fn unfinished_flow_runs(&self) -> Result<Vec<FlowRunRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "{FLOW_RUN_SELECT} WHERE {UNFINISHED} ORDER BY created_us"
            ))?;
            stmt.query_map([], FlowRunRow::from_row)?.collect()
        })
    }
}

impl SqliteStore {
    fn count_unfinished(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<u64, StoreError> {
        let n: i64 = self.read(|c| {
            c.query_row(
                &format!("SELECT count(*) FROM flow_runs WHERE {filter} AND {UNFINISHED}"),
                args,
                |r| r.get(0),
            )
        })?;
        Ok(n as u64)
    }
}
