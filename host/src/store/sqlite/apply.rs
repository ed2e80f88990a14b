//! Applying writes: one transaction per batch, one savepoint per unit, so a
//! failed compare-and-set rolls back its own unit alone.

use super::*;

pub(super) fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
    files: &ResultFiles,
) -> Vec<Result<(), StoreError>> {
    // IMMEDIATE takes the write lock before any unit runs, so result files
    // are written or found while the lock is held: `prune` cannot remove one
    // between then and the commit of the row that points at it.
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        return batch
            .iter()
            .map(|_| Err(batch_error("begin", &e)))
            .collect();
    }
    let results: Vec<Result<(), StoreError>> = match batch {
        // One unit (a sequential flow's commit): the transaction is its
        // savepoint, which saves two statements per commit.
        [job] => {
            let result = apply_unit(conn, &job.writes, files);
            if result.is_err() {
                let _ = run_cached(conn, "ROLLBACK");
                return vec![result];
            }
            vec![result]
        }
        _ => batch
            .iter()
            .map(|job| {
                run_cached(conn, "SAVEPOINT unit")?;
                let result = apply_unit(conn, &job.writes, files);
                let end = match result {
                    Ok(()) => "RELEASE unit",
                    Err(_) => "ROLLBACK TO unit",
                };
                let ended = run_cached(conn, end);
                if result.is_err() {
                    run_cached(conn, "RELEASE unit")?;
                }
                result.and(ended.map_err(StoreError::from))
            })
            .collect(),
    };
    if let Err(e) = run_cached(conn, "COMMIT") {
        let _ = run_cached(conn, "ROLLBACK");
        return batch
            .iter()
            .map(|_| Err(batch_error("commit", &e)))
            .collect();
    }
    results
}

/// Runs a statement that takes no parameters, prepared once per connection:
/// transaction control is a tenth of the statements of a fast task's commit.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Applies one unit's writes in order. A task run created and moved on in
/// the same unit (a fast task: created, attempted and completed in one
/// commit) is inserted as it ends, instead of inserted and then updated.
fn apply_unit(conn: &Connection, writes: &[Write], files: &ResultFiles) -> Result<(), StoreError> {
    // Writes already applied as part of a folded task run's insert.
    let mut folded: Vec<usize> = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        if folded.contains(&i) {
            continue;
        }
        if let Write::NewTaskRun(run) = write
            && let Some(j) = first_change_of_new_task_run(run, &writes[i + 1..])
            && let Write::TaskRunState(change) = &writes[i + 1 + j]
        {
            let attempts = &writes[i + 1..i + 1 + j];
            let in_row = attempt_is_in_row(run, attempts, change);
            insert_moved_task_run(conn, run, change, in_row, files)?;
            folded.push(i + 1 + j);
            if in_row {
                folded.extend(i + 1..i + 1 + j);
            }
            continue;
        }
        apply(conn, write, files)?;
    }
    Ok(())
}

/// Whether a fast task's only attempt says nothing its final row does not:
/// attempt 1, from the row's creation to its end, with the row's fuel,
/// memory and failure. Then neither that attempt nor the row's two history
/// entries (Running at creation, the final state at the end) are written:
/// a commit touches the task row and its index alone (two WAL pages, not
/// four), and [`super::tasks`] reads them back from the row. A task row
/// with no history entries is such a row (every other write records one).
fn attempt_is_in_row(run: &NewTaskRun, attempts: &[Write], change: &StateChange) -> bool {
    let [Write::TaskAttempt(attempt)] = attempts else {
        return false;
    };
    let failure_in_row = change
        .failure_kind
        .map(|kind| (kind, change.message.clone().unwrap_or_default()));
    change.to.is_terminal()
        && change.attempts == Some(1)
        && attempt.attempt == 1
        && attempt.started_at == run.at
        && attempt.ended_at == change.at
        && change.fuel_used == Some(attempt.fuel_used)
        && change.peak_memory == Some(attempt.peak_memory)
        && attempt.failure == failure_in_row
}

/// Where in `rest` the state change of a just-created Running task run is,
/// when only its attempt records come between (nothing that could read the
/// row in its first state).
fn first_change_of_new_task_run(run: &NewTaskRun, rest: &[Write]) -> Option<usize> {
    if run.state != RunState::Running || run.cached_from.is_some() {
        return None;
    }
    for (j, write) in rest.iter().enumerate() {
        match write {
            Write::TaskAttempt(a) if a.task_run == run.id => {}
            Write::TaskRunState(change) if change.id == run.id.0 && change.from == run.state => {
                return Some(j);
            }
            _ => return None,
        }
    }
    None
}

/// A Running task run's creation and its next state change as one insert,
/// with the same row and history as the insert and compare-and-set update
/// would leave (the history left to be read from the row when
/// `attempt_in_row`: see [`attempt_is_in_row`]).
fn insert_moved_task_run(
    conn: &Connection,
    run: &NewTaskRun,
    change: &StateChange,
    attempt_in_row: bool,
    files: &ResultFiles,
) -> Result<(), StoreError> {
    let output = change
        .output
        .as_deref()
        .map(|o| files.deflate(o))
        .transpose()?;
    conn.prepare_cached(
        "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, failure_kind, message,
            attempts, fuel_used, peak_memory, created_us, started_us, ended_us, next_attempt_us, cache_key,
            host, input_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, CASE WHEN ?14 THEN ?15 END, ?16,
            ?17, ?18, ?19)",
    )?
    .execute(params![
        run.id.as_bytes(),
        run.flow_run.as_bytes(),
        run.call_seq as i64,
        run.task_name,
        files.deflate(&run.input)?,
        output,
        change.to.as_str(),
        change.failure_kind.map(|k| k.as_str()),
        change.message,
        change.attempts.unwrap_or(0),
        change.fuel_used.unwrap_or(0) as i64,
        change.peak_memory.unwrap_or(0) as i64,
        run.at,
        change.to.is_terminal(),
        change.at,
        change.next_attempt_at,
        run.cache_key,
        run.host,
        run.input_sha256,
    ])?;
    if attempt_in_row {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT OR IGNORE INTO run_states (run_id, at_us, state, message) VALUES (?1, ?2, ?3, NULL), (?1, ?4, ?5, ?6)",
    )?
    .execute(params![
        run.id.as_bytes(),
        run.at,
        run.state.as_str(),
        change.at,
        change.to.as_str(),
        change.message,
    ])?;
    Ok(())
}

/// What each job of a batch that could not begin or commit is told: a full
/// disk as such (the API answers 507), anything else as the database's words.
fn batch_error(step: &str, e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(format!("{step}: {e}")),
        _ => StoreError::Database(format!("{step} failed: {e}")),
    }
}

/// The two run tables whose state changes are written alike.
#[derive(Clone, Copy)]
enum RunTable {
    Flow = 0,
    Task = 1,
}

impl RunTable {
    /// The compare-and-set update of a run's state, with the table's column
    /// names; only task runs wait for a next attempt (`?12`). Built once:
    /// it is the statement cache's key on every state change.
    fn set_state_sql(self) -> &'static str {
        static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
            [RunTable::Flow, RunTable::Task].map(|table| {
                let (name, output, attempts, next_attempt) = match table {
                    RunTable::Flow => ("flow_runs", "result", "attempt", ""),
                    RunTable::Task => ("task_runs", "output", "attempts", ", next_attempt_us = ?12"),
                };
                format!(
                    "UPDATE {name} SET state = ?3, message = CASE WHEN ?3 IN ('Completed', 'Running') THEN ?4 ELSE coalesce(?4, message) END, failure_kind = ?5,
                {output} = coalesce(?6, {output}), {attempts} = coalesce(?7, {attempts}),
                fuel_used = coalesce(?8, fuel_used), peak_memory = coalesce(?9, peak_memory),
                started_us = CASE WHEN ?3 = 'Running' THEN coalesce(started_us, ?10) ELSE started_us END,
                ended_us = CASE WHEN ?11 THEN ?10 ELSE NULL END{next_attempt}
             WHERE id = ?1 AND state = ?2"
                )
            })
        });
        &SQL[self as usize]
    }

    /// How many of `set_state`'s parameters its update binds.
    fn set_state_parameters(self) -> usize {
        match self {
            RunTable::Flow => 11,
            RunTable::Task => 12,
        }
    }
}

/// Writes a state change to a flow or task run if the run is still in
/// `change.from`, and adds it to the run's state history.
fn set_state(
    conn: &Connection,
    table: RunTable,
    change: &StateChange,
    files: &ResultFiles,
) -> Result<(), StoreError> {
    let output = change
        .output
        .as_deref()
        .map(|o| files.deflate(o))
        .transpose()?;
    let args = params![
        change.id.as_bytes(),
        change.from.as_str(),
        change.to.as_str(),
        change.message,
        change.failure_kind.map(|k| k.as_str()),
        output,
        change.attempts,
        change.fuel_used.map(|v| v as i64),
        change.peak_memory.map(|v| v as i64),
        change.at,
        change.to.is_terminal(),
        change.next_attempt_at,
    ];
    if let RunTable::Task = table
        && change.from.is_terminal()
    {
        write_out_task_in_row(conn, change.id)?;
    }
    let n = conn
        .prepare_cached(table.set_state_sql())?
        .execute(&args[..table.set_state_parameters()])?;
    if n != 1 {
        return Err(StoreError::Conflict {
            expected: change.from,
        });
    }
    record_state(
        conn,
        change.id,
        change.at,
        change.to,
        change.message.as_deref(),
    )?;
    Ok(())
}

fn apply(conn: &Connection, write: &Write, files: &ResultFiles) -> Result<(), StoreError> {
    match write {
        Write::Component {
            digest,
            size_bytes,
            manifest,
            at,
            wasm: _,
        } => {
            conn.prepare_cached(
                "INSERT INTO components (digest, size_bytes, manifest, created_us) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest) DO UPDATE SET manifest = excluded.manifest",
            )?
            .execute(params![digest.as_str(), *size_bytes as i64, manifest, at])?;
        }
        Write::NewFlowRun(run) => {
            conn.prepare_cached(
                "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, attempt, host, created_us, started_us,
                    deployment, tags, scheduled_us, work_pool, work_queue, secret_grants, lease_holder, lease_epoch, lease_expires_us,
                    deployment_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, CASE WHEN ?6 = 'Running' THEN ?9 END, ?10, ?11, ?12, ?13, ?14, ?15,
                    ?16, CASE WHEN ?16 IS NULL THEN 0 ELSE 1 END, ?17, ?18)",
            )?
            .execute(params![
                run.id.as_bytes(),
                run.parent_flow_run.as_ref().map(|p| p.as_bytes().to_vec()),
                run.component.as_str(),
                run.flow_name,
                files.deflate(&run.params)?,
                run.state.as_str(),
                run.attempt,
                run.host,
                run.at,
                run.deployment,
                tags_text(&run.tags),
                run.scheduled_at,
                run.work_pool,
                run.work_queue,
                tags_text(&run.secret_grants),
                run.lease.as_ref().map(|l| l.holder.as_str()),
                run.lease.as_ref().map(|l| l.expires_at),
                run.deployment_version,
            ])?;
            record_state(conn, run.id.0, run.at, run.state, None)?;
        }
        Write::NewTaskRun(run) => {
            let (cached_from, output) = match &run.cached_from {
                Some((from, output)) => (Some(from.as_bytes().to_vec()), Some(output.as_str())),
                None => (None, None),
            };
            conn.prepare_cached(
                "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, cache_key, cached_from,
                    host, created_us, started_us, ended_us, input_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
                    CASE WHEN ?7 = 'Running' THEN ?11 END, CASE WHEN ?7 = 'Cached' THEN ?11 END, ?12)",
            )?
            .execute(params![
                run.id.as_bytes(),
                run.flow_run.as_bytes(),
                run.call_seq as i64,
                run.task_name,
                files.deflate(&run.input)?,
                output.map(|o| files.deflate(o)).transpose()?,
                run.state.as_str(),
                run.cache_key,
                cached_from,
                run.host,
                run.at,
                run.input_sha256,
            ])?;
            record_state(conn, run.id.0, run.at, run.state, None)?;
        }
        Write::FlowRunState(change) => set_state(conn, RunTable::Flow, change, files)?,
        Write::TaskRunState(change) => set_state(conn, RunTable::Task, change, files)?,
        Write::TaskAttempt(a) => {
            write_out_task_in_row(conn, a.task_run.0)?;
            let (kind, message) = match &a.failure {
                Some((kind, message)) => (Some(kind.as_str()), Some(message.as_str())),
                None => (None, None),
            };
            conn.prepare_cached(
                "INSERT INTO task_attempts (task_run, attempt, started_us, ended_us, fuel_used, peak_memory, failure_kind, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                a.task_run.as_bytes(),
                a.attempt,
                a.started_at,
                a.ended_at,
                a.fuel_used as i64,
                a.peak_memory as i64,
                kind,
                message,
            ])?;
        }
        Write::PutObject {
            kind,
            name,
            body,
            at,
        } => {
            conn.prepare_cached(
                "INSERT INTO objects (kind, name, body, created_us, updated_us) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, updated_us = excluded.updated_us",
            )?
            .execute(params![kind.as_str(), name, body, at])?;
        }
        Write::DeploymentVersion {
            deployment,
            version,
            body,
            created_by,
            note,
            at,
        } => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO deployment_versions (deployment, version, body, created_by, note, created_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                )?
                .execute(params![deployment, version, body, created_by, note, at])?;
            if inserted == 0 {
                return Err(StoreError::VersionTaken {
                    deployment: deployment.clone(),
                    version: *version,
                });
            }
        }
        Write::DeleteObject { kind, name } => {
            let n = conn
                .prepare_cached("DELETE FROM objects WHERE kind = ?1 AND name = ?2")?
                .execute(params![kind.as_str(), name])?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    what: kind.what(),
                    id: name.clone(),
                });
            }
        }
        Write::PlaceRun {
            id,
            work_pool,
            work_queue,
            scheduled_at,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE flow_runs SET work_pool = ?2, work_queue = ?3, scheduled_us = ?4 WHERE id = ?1",
                )?
                .execute(params![id.as_bytes(), work_pool, work_queue, scheduled_at])?;
            if n != 1 {
                return Err(StoreError::NotFound {
                    what: "flow run",
                    id: id.to_string(),
                });
            }
        }
        Write::EnqueueDelivery {
            automation,
            flow_run,
            event,
            payload,
            at,
        } => {
            conn.prepare_cached(
                "INSERT INTO automation_deliveries (automation, flow_run, event, payload, status, next_attempt_us, created_us)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![automation, flow_run.as_bytes(), event, payload, at])?;
        }
        Write::DeliveryAttempt {
            id,
            status,
            next_attempt_at,
            error,
            response_code,
            at,
        } => {
            conn.prepare_cached(
                "UPDATE automation_deliveries SET status = ?2, attempts = attempts + 1, next_attempt_us = ?3,
                    last_error = ?4, response_code = ?5,
                    delivered_us = CASE WHEN ?2 = 'delivered' THEN ?6 END
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![id, status.as_str(), next_attempt_at, error, response_code, at])?;
        }
        Write::ScheduleSlot {
            deployment,
            schedule_key,
            at,
            flow_run,
        } => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO schedule_slots (deployment, schedule_key, scheduled_us, flow_run) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![deployment, schedule_key, at, flow_run.as_bytes()])?;
            if inserted == 0 {
                return Err(StoreError::SlotTaken {
                    deployment: deployment.clone(),
                    schedule_key: schedule_key.clone(),
                    at: *at,
                });
            }
        }
        Write::TakeSlots {
            lease,
            flow_run,
            limits,
            slots,
            now,
        } => {
            for ask in limits {
                if ask.interval_us().is_some() {
                    let tat: Option<i64> = conn
                        .prepare_cached("SELECT tat_us FROM limit_rates WHERE name = ?1")?
                        .query_row(params![ask.name], |r| r.get(0))
                        .optional()?;
                    let next =
                        ask.next_mark(tat, *slots, *now)
                            .map_err(|wait| StoreError::NoSlot {
                                limit: ask.name.clone(),
                                retry_after_us: Some(wait),
                            })?;
                    conn.prepare_cached(
                        "INSERT INTO limit_rates (name, tat_us) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET tat_us = excluded.tat_us",
                    )?
                    .execute(params![ask.name, next])?;
                    continue;
                }
                conn.prepare_cached(&format!(
                    "DELETE FROM limit_slots WHERE name = ?1 AND NOT {}",
                    super::super::sql::live_slot("?2")
                ))?
                .execute(params![ask.name, now])?;
                let used: i64 = conn
                    .prepare_cached(
                        "SELECT coalesce(sum(slots), 0) FROM limit_slots WHERE name = ?1",
                    )?
                    .query_row(params![ask.name], |r| r.get(0))?;
                if used + i64::from(*slots) > i64::from(ask.limit) {
                    return Err(StoreError::NoSlot {
                        limit: ask.name.clone(),
                        retry_after_us: None,
                    });
                }
                conn.prepare_cached(
                    "INSERT INTO limit_slots (lease, name, slots, flow_run, taken_us)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    lease.as_bytes(),
                    ask.name,
                    slots,
                    flow_run.as_bytes(),
                    now
                ])?;
            }
        }
        Write::ReleaseSlots { lease } => {
            conn.prepare_cached("DELETE FROM limit_slots WHERE lease = ?1")?
                .execute(params![lease.as_bytes()])?;
        }
        Write::DropScheduledRuns {
            deployment,
            keep,
            after,
        } => {
            let keep = serde_json::to_string(keep).unwrap_or_else(|_| "[]".into());
            let doomed =
                "SELECT s.flow_run FROM schedule_slots s JOIN flow_runs f ON f.id = s.flow_run
                 WHERE s.deployment = ?1 AND s.scheduled_us > ?3 AND f.state = 'Scheduled'
                   AND s.schedule_key NOT IN (SELECT value FROM json_each(?2))";
            for sql in [
                format!("DELETE FROM run_states WHERE run_id IN ({doomed})"),
                format!("DELETE FROM flow_runs WHERE id IN ({doomed})"),
            ] {
                conn.prepare_cached(&sql)?
                    .execute(params![deployment, keep, after])?;
            }
            // Slots whose runs are gone: the schedule may make them again.
            conn.prepare_cached(
                "DELETE FROM schedule_slots WHERE deployment = ?1 AND scheduled_us > ?3
                   AND schedule_key NOT IN (SELECT value FROM json_each(?2))
                   AND NOT EXISTS (SELECT 1 FROM flow_runs f WHERE f.id = schedule_slots.flow_run)",
            )?
            .execute(params![deployment, keep, after])?;
        }
        Write::RequestCancel { id, at } => {
            let n = conn
                .prepare_cached("UPDATE flow_runs SET cancel_requested_us = coalesce(cancel_requested_us, ?2) WHERE id = ?1")?
                .execute(params![id.as_bytes(), at])?;
            if n != 1 {
                return Err(StoreError::NotFound {
                    what: "flow run",
                    id: id.to_string(),
                });
            }
        }
        Write::TakeLease {
            id,
            holder,
            expires_at,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE flow_runs SET lease_holder = ?2, lease_epoch = lease_epoch + 1, lease_expires_us = ?3 WHERE id = ?1",
                )?
                .execute(params![id.as_bytes(), holder, expires_at])?;
            if n != 1 {
                return Err(StoreError::NotFound {
                    what: "flow run",
                    id: id.to_string(),
                });
            }
        }
        Write::RenewLeases { holder, expires_at } => {
            conn.prepare_cached(&format!(
                "UPDATE flow_runs SET lease_expires_us = ?2 WHERE lease_holder = ?1 AND {UNFINISHED}"
            ))?
            .execute(params![holder, expires_at])?;
        }
        Write::ExtendLeases { ids, until } => {
            let mut stmt = conn.prepare_cached(
                "UPDATE flow_runs SET lease_expires_us = max(coalesce(lease_expires_us, 0), ?2) WHERE id = ?1",
            )?;
            for id in ids {
                stmt.execute(params![id.as_bytes(), until])?;
            }
        }
        Write::RenewLease {
            id,
            holder,
            epoch,
            expires_at,
        } => {
            let n = conn
                .prepare_cached(&format!(
                    "UPDATE flow_runs SET lease_expires_us = ?4
                     WHERE id = ?1 AND lease_holder = ?2 AND lease_epoch = ?3 AND {UNFINISHED}"
                ))?
                .execute(params![id.as_bytes(), holder, *epoch as i64, expires_at])?;
            if n != 1 {
                return Err(StoreError::LeaseLost {
                    id: *id,
                    holder: holder.clone(),
                    epoch: *epoch,
                });
            }
        }
        Write::CheckLease { id, holder, epoch } => {
            let held: Option<(Option<String>, i64, String)> = conn
                .prepare_cached(
                    "SELECT lease_holder, lease_epoch, state FROM flow_runs WHERE id = ?1",
                )?
                .query_row([id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let holds = held.is_some_and(|(h, e, state)| {
                h.as_deref() == Some(holder.as_str())
                    && e as u64 == *epoch
                    && state.parse::<RunState>().is_ok_and(|s| !s.is_terminal())
            });
            if !holds {
                return Err(StoreError::LeaseLost {
                    id: *id,
                    holder: holder.clone(),
                    epoch: *epoch,
                });
            }
        }
        Write::UpsertFlowRun(run) => {
            let params_text = files.deflate(&run.params)?;
            let result = run
                .result
                .as_deref()
                .map(|r| files.deflate(r))
                .transpose()?;
            conn.prepare_cached(
                "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, message, failure_kind,
                    result, attempt, host, created_us, started_us, ended_us, fuel_used, peak_memory,
                    deployment, tags, scheduled_us, work_pool, work_queue)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, message = excluded.message,
                    failure_kind = excluded.failure_kind, result = excluded.result, attempt = excluded.attempt,
                    host = excluded.host, started_us = excluded.started_us, ended_us = excluded.ended_us,
                    fuel_used = excluded.fuel_used, peak_memory = excluded.peak_memory
                 WHERE flow_runs.state NOT IN ('Completed', 'Cached', 'Failed', 'Cancelled', 'Crashed', 'TimedOut')",
            )?
            .execute(params![
                run.id.as_bytes(),
                run.parent_flow_run.as_ref().map(|p| p.as_bytes().to_vec()),
                run.component,
                run.flow_name,
                params_text,
                run.state.as_str(),
                run.message,
                run.failure_kind.map(|k| k.as_str()),
                result,
                run.attempt,
                run.host,
                run.created_at,
                run.started_at,
                run.ended_at,
                run.fuel_used as i64,
                run.peak_memory as i64,
                run.deployment,
                tags_text(&run.tags),
                run.scheduled_at,
                run.work_pool,
                run.work_queue,
            ])?;
            let at = run.ended_at.or(run.started_at).unwrap_or(run.created_at);
            record_state(conn, run.id.0, at, run.state, run.message.as_deref())?;
        }
        Write::UpsertTaskRun(task) => {
            write_out_task_in_row(conn, task.id.0)?;
            let input = files.deflate(&task.input)?;
            let output = task
                .output
                .as_deref()
                .map(|o| files.deflate(o))
                .transpose()?;
            conn.prepare_cached(
                "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, failure_kind, message,
                    attempts, fuel_used, peak_memory, created_us, started_us, ended_us, next_attempt_us, cached_from,
                    host, input_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                 ON CONFLICT (id) DO UPDATE SET output = excluded.output, state = excluded.state,
                    failure_kind = excluded.failure_kind, message = excluded.message, attempts = excluded.attempts,
                    fuel_used = excluded.fuel_used, peak_memory = excluded.peak_memory,
                    started_us = excluded.started_us, ended_us = excluded.ended_us,
                    next_attempt_us = excluded.next_attempt_us, host = excluded.host",
            )?
            .execute(params![
                task.id.as_bytes(),
                task.flow_run.as_bytes(),
                task.call_seq as i64,
                task.task_name,
                input,
                output,
                task.state.as_str(),
                task.failure_kind.map(|k| k.as_str()),
                task.message,
                task.attempts,
                task.fuel_used as i64,
                task.peak_memory as i64,
                task.created_at,
                task.started_at,
                task.ended_at,
                task.next_attempt_at,
                task.cached_from.map(|c| c.as_bytes().to_vec()),
                task.host,
                task.input_sha256,
            ])?;
            let at = task.ended_at.or(task.started_at).unwrap_or(task.created_at);
            record_state(conn, task.id.0, at, task.state, task.message.as_deref())?;
        }
        Write::ImportLogs(lines) => {
            let mut stmt = conn.prepare_cached(
                "INSERT OR IGNORE INTO logs (flow_run, task_run, at_us, level, message, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (origin, line) in lines {
                stmt.execute(params![
                    line.flow_run.as_bytes(),
                    line.task_run.as_ref().map(|t| t.as_bytes().to_vec()),
                    line.at,
                    line.level as u8,
                    line.message,
                    origin,
                ])?;
            }
        }
        Write::ForgetFlowRun(id) => {
            conn.prepare_cached("DELETE FROM logs WHERE flow_run = ?1")?
                .execute([id.as_bytes()])?;
            conn.prepare_cached("DELETE FROM flow_runs WHERE id = ?1")?
                .execute([id.as_bytes()])?;
        }
        Write::Logs(lines) => {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO logs (flow_run, task_run, at_us, level, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for line in lines {
                stmt.execute(params![
                    line.flow_run.as_bytes(),
                    line.task_run.as_ref().map(|t| t.as_bytes().to_vec()),
                    line.at,
                    line.level as u8,
                    line.message,
                ])?;
            }
        }
    }
    Ok(())
}

/// Before a task run whose attempt and history live in its row (see
/// [`attempt_is_in_row`]) gets another attempt or state, writes them out as
/// the rows they stand for, so that what is read back stays whole. Nothing
/// for any other task run.
fn write_out_task_in_row(conn: &Connection, task_run: uuid::Uuid) -> rusqlite::Result<()> {
    // The attempt first: it is found by the history being absent.
    conn.prepare_cached(
        "INSERT OR IGNORE INTO task_attempts (task_run, attempt, started_us, ended_us, fuel_used, peak_memory,
            failure_kind, message)
         SELECT id, 1, started_us, ended_us, fuel_used, peak_memory, failure_kind,
            CASE WHEN failure_kind IS NOT NULL THEN coalesce(message, '') END
         FROM task_runs WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM run_states WHERE run_id = ?1)",
    )?
    .execute([task_run.as_bytes()])?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO run_states (run_id, at_us, state, message)
         SELECT id, created_us, 'Running', NULL FROM task_runs
            WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM run_states WHERE run_id = ?1)
         UNION ALL
         SELECT id, ended_us, state, message FROM task_runs
            WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM run_states WHERE run_id = ?1)",
    )?
    .execute([task_run.as_bytes()])?;
    Ok(())
}

fn record_state(
    conn: &Connection,
    run: uuid::Uuid,
    at: TimestampMicros,
    state: RunState,
    message: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO run_states (run_id, at_us, state, message) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![run.as_bytes(), at, state.as_str(), message])?;
    Ok(())
}
