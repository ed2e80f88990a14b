//! Applying writes: one transaction per batch, one savepoint per unit, so a
//! failed compare-and-set rolls back its own unit alone. Every statement
//! that changes a state is a compare-and-set (`WHERE state = $2`); under
//! PostgreSQL's row locks a second writer waits, re-reads and finds the
//! state moved, so exactly one of two servers wins.

use super::*;
use postgres::Transaction;
use postgres::types::ToSql;

type Args<'a> = [&'a (dyn ToSql + Sync)];

/// How a batch went.
pub(super) enum Outcome {
    /// Committed (each unit's own result inside).
    Done(Vec<Result<(), StoreError>>),
    /// The connection was lost before the commit: nothing was recorded.
    LostBeforeCommit(StoreError),
    /// The connection was lost during the commit: it may have been recorded.
    LostAtCommit(StoreError),
}

/// Applies a batch. Units seldom fail (a lost compare-and-set), so the batch
/// is first applied without savepoints, two round trips fewer per unit;
/// only when a unit fails is it applied again, a savepoint per unit, so
/// that the failed unit alone is rolled back.
pub(super) fn apply_batch(client: &mut postgres::Client, batch: &[Job]) -> Outcome {
    if batch.len() > 1 {
        match apply_whole(client, batch) {
            Some(outcome) => return outcome,
            None => tracing::debug!("a unit of a batch failed; applying it unit by unit"),
        }
    }
    apply_units(client, batch)
}

/// The whole batch in one transaction; `None` (rolled back) if a unit failed.
fn apply_whole(client: &mut postgres::Client, batch: &[Job]) -> Option<Outcome> {
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(e) if connection_lost(&e) => return Some(Outcome::LostBeforeCommit(e.into())),
        Err(_) => return None,
    };
    for job in batch {
        match apply_unit(&mut tx, &job.writes) {
            Ok(()) => {}
            Err(StoreError::ConnectionLost(message)) => {
                return Some(Outcome::LostBeforeCommit(StoreError::ConnectionLost(
                    message,
                )));
            }
            Err(_) => return None,
        }
    }
    let results: Vec<Result<(), StoreError>> = batch.iter().map(|_| Ok(())).collect();
    Some(finish(tx, batch, results))
}

/// The batch with a savepoint per unit (a one-unit batch needs none).
fn apply_units(client: &mut postgres::Client, batch: &[Job]) -> Outcome {
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(e) if connection_lost(&e) => return Outcome::LostBeforeCommit(e.into()),
        Err(e) => return fail_all(batch, "begin", &e),
    };
    let mut results = Vec::with_capacity(batch.len());
    if let [job] = batch {
        // One unit (a sequential flow's usual batch): the transaction is its
        // savepoint, two round trips fewer.
        let unit = apply_unit(&mut tx, &job.writes);
        match unit {
            Err(StoreError::ConnectionLost(message)) => {
                return Outcome::LostBeforeCommit(StoreError::ConnectionLost(message));
            }
            // Dropping the transaction rolls it back.
            Err(e) => return Outcome::Done(vec![Err(e)]),
            Ok(()) => results.push(Ok(())),
        }
    }
    for job in batch.iter().skip(results.len()) {
        let unit = (|| -> Result<(), StoreError> {
            let mut sp = tx.savepoint("unit")?;
            apply_unit(&mut sp, &job.writes)?;
            sp.commit()?;
            Ok(())
        })();
        if let Err(StoreError::ConnectionLost(message)) = &unit {
            return Outcome::LostBeforeCommit(StoreError::ConnectionLost(message.clone()));
        }
        results.push(unit);
    }
    finish(tx, batch, results)
}

/// Tells followers of what committed units changed, and commits.
fn finish(mut tx: Transaction<'_>, batch: &[Job], results: Vec<Result<(), StoreError>>) -> Outcome {
    // Followers on every server hear of what this batch changed when (and
    // only if) it commits; PostgreSQL sends each distinct payload once.
    let changes: Vec<String> = batch
        .iter()
        .zip(&results)
        .filter(|(_, result)| result.is_ok())
        .flat_map(|(job, _)| Change::of(&job.writes))
        .map(Change::to_text)
        .collect();
    if !changes.is_empty()
        && let Err(e) = exec(
            &mut tx,
            "SELECT pg_notify($1, change) FROM unnest($2::text[]) AS change",
            &[&CHANGES_CHANNEL, &changes],
        )
    {
        if let StoreError::ConnectionLost(_) = e {
            return Outcome::LostBeforeCommit(e);
        }
        tracing::warn!("telling followers of changes: {e}");
    }
    match tx.commit() {
        Ok(()) => Outcome::Done(results),
        Err(e) if connection_lost(&e) => Outcome::LostAtCommit(e.into()),
        Err(e) => fail_all(batch, "commit", &e),
    }
}

/// Every job of a batch that could not begin or commit is told why: a full
/// disk as such (the API answers 507), anything else in the database's words.
fn fail_all(batch: &[Job], step: &str, e: &postgres::Error) -> Outcome {
    let full = e.code() == Some(&postgres::error::SqlState::DISK_FULL);
    let message = format!("{step} failed: {}", one_line(e));
    Outcome::Done(
        batch
            .iter()
            .map(|_| {
                Err(if full {
                    StoreError::Full(message.clone())
                } else {
                    StoreError::Database(message.clone())
                })
            })
            .collect(),
    )
}

fn bytes(id: &uuid::Uuid) -> &[u8] {
    &id.as_bytes()[..]
}

/// Runs `sql` as a statement prepared once per connection: a statement
/// given as text costs a parse round trip every time.
fn exec(tx: &mut Transaction<'_>, sql: &str, args: &Args<'_>) -> Result<u64, StoreError> {
    let prepared = PREPARED.with(|p| p.borrow().get(sql).cloned());
    let statement = match prepared {
        Some(statement) => statement,
        None => {
            let statement = tx.prepare(sql)?;
            PREPARED.with(|p| p.borrow_mut().insert(sql.to_string(), statement.clone()));
            statement
        }
    };
    Ok(tx.execute(&statement, args)?)
}

thread_local! {
    /// The writer thread's prepared statements, for its current connection.
    static PREPARED: std::cell::RefCell<std::collections::HashMap<String, postgres::Statement>> =
        Default::default();
}

/// Forgets the prepared statements: they belonged to a connection now gone.
pub(super) fn forget_prepared() {
    PREPARED.with(|p| p.borrow_mut().clear());
}

fn not_found(what: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

/// Writes a state change to a flow or task run if the run is still in
/// `change.from`, and adds it to the run's state history.
fn set_state(tx: &mut Transaction<'_>, task: bool, c: &StateChange) -> Result<(), StoreError> {
    let (table, output, attempts, next_attempt) = if task {
        (
            "task_runs",
            "output",
            "attempts",
            ", next_attempt_us = $12::bigint",
        )
    } else {
        ("flow_runs", "result", "attempt", "")
    };
    let sql = format!(
        "UPDATE {table} SET state = $3::text,
            message = CASE WHEN $3::text IN ('Completed', 'Running') THEN $4::text ELSE coalesce($4::text, message) END,
            failure_kind = $5::text,
            {output} = coalesce($6::text, {output}), {attempts} = coalesce($7::bigint, {attempts}),
            fuel_used = coalesce($8::bigint, fuel_used), peak_memory = coalesce($9::bigint, peak_memory),
            started_us = CASE WHEN $3::text = 'Running' THEN coalesce(started_us, $10::bigint) ELSE started_us END,
            ended_us = CASE WHEN $11::bool THEN $10::bigint ELSE NULL END{next_attempt}
         WHERE id = $1 AND state = $2::text"
    );
    let attempts_value = c.attempts.map(i64::from);
    let fuel = c.fuel_used.map(|v| v as i64);
    let memory = c.peak_memory.map(|v| v as i64);
    let args: [&(dyn ToSql + Sync); 12] = [
        &bytes(&c.id),
        &c.from.as_str(),
        &c.to.as_str(),
        &c.message,
        &c.failure_kind.map(|k| k.as_str()),
        &c.output,
        &attempts_value,
        &fuel,
        &memory,
        &c.at,
        &c.to.is_terminal(),
        &c.next_attempt_at,
    ];
    let n = exec(tx, &sql, &args[..if task { 12 } else { 11 }])?;
    if n != 1 {
        return Err(StoreError::Conflict { expected: c.from });
    }
    record_state(tx, c.id, c.at, c.to, c.message.as_deref())
}

fn record_state(
    tx: &mut Transaction<'_>,
    run: uuid::Uuid,
    at: TimestampMicros,
    state: RunState,
    message: Option<&str>,
) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO run_states (run_id, at_us, state, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &[&bytes(&run), &at, &state.as_str(), &message],
    )?;
    Ok(())
}

/// Applies a unit's writes in order. Consecutive new flow runs (a backfill,
/// a schedule's burst) go in as two statements, their rows and their first
/// states, instead of two round trips each: 1M runs in batches of 10,000
/// were written in 206 s one by one.
fn apply_unit(tx: &mut Transaction<'_>, writes: &[Write]) -> Result<(), StoreError> {
    let mut rest = writes;
    while let Some(first) = rest.first() {
        let runs: Vec<&NewFlowRun> = rest
            .iter()
            .map_while(|w| match w {
                Write::NewFlowRun(run) => Some(run),
                _ => None,
            })
            .collect();
        if runs.len() < 2 {
            apply(tx, first)?;
            rest = &rest[1..];
            continue;
        }
        insert_flow_runs(tx, &runs)?;
        rest = &rest[runs.len()..];
    }
    Ok(())
}

/// Many `Write::NewFlowRun`s at once, as [`apply`] writes each: one
/// `INSERT ... SELECT FROM UNNEST` for the rows and one for their states.
fn insert_flow_runs(tx: &mut Transaction<'_>, runs: &[&NewFlowRun]) -> Result<(), StoreError> {
    fn column<'r, T>(runs: &[&'r NewFlowRun], f: impl Fn(&'r NewFlowRun) -> T) -> Vec<T> {
        runs.iter().map(|r| f(r)).collect()
    }
    let ids = column(runs, |r| bytes(&r.id.0));
    let parents = column(runs, |r| r.parent_flow_run.map(|p| p.as_bytes().to_vec()));
    let components = column(runs, |r| r.component.as_str());
    let flow_names = column(runs, |r| r.flow_name.as_str());
    let params = column(runs, |r| r.params.as_str());
    let states = column(runs, |r| r.state.as_str());
    let attempts = column(runs, |r| i64::from(r.attempt));
    let hosts = column(runs, |r| r.host.as_str());
    let created = column(runs, |r| r.at);
    let deployments = column(runs, |r| r.deployment.as_deref());
    let tags = column(runs, |r| tags_text(&r.tags));
    let scheduled = column(runs, |r| r.scheduled_at);
    let pools = column(runs, |r| r.work_pool.as_deref());
    let queues = column(runs, |r| r.work_queue.as_deref());
    let grants = column(runs, |r| tags_text(&r.secret_grants));
    let holders = column(runs, |r| r.lease.as_ref().map(|l| l.holder.as_str()));
    let expires = column(runs, |r| r.lease.as_ref().map(|l| l.expires_at));
    let versions = column(runs, |r| r.deployment_version.map(i64::from));
    exec(
        tx,
        "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, attempt, host, created_us, started_us,
            deployment, tags, scheduled_us, work_pool, work_queue, secret_grants, lease_holder, lease_epoch, lease_expires_us,
            deployment_version)
         SELECT id, parent, component, flow_name, params, state, attempt, host, created, CASE WHEN state = 'Running' THEN created END,
            deployment, tags, scheduled, pool, queue, grants, holder, CASE WHEN holder IS NULL THEN 0 ELSE 1 END, expires, version
         FROM UNNEST($1::bytea[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[],
            $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::text[],
            $17::bigint[], $18::bigint[])
            AS r (id, parent, component, flow_name, params, state, attempt, host, created, deployment, tags, scheduled,
            pool, queue, grants, holder, expires, version)",
        &[
            &ids,
            &parents,
            &components,
            &flow_names,
            &params,
            &states,
            &attempts,
            &hosts,
            &created,
            &deployments,
            &tags,
            &scheduled,
            &pools,
            &queues,
            &grants,
            &holders,
            &expires,
            &versions,
        ],
    )?;
    exec(
        tx,
        "INSERT INTO run_states (run_id, at_us, state, message)
         SELECT id, at, state, NULL FROM UNNEST($1::bytea[], $2::bigint[], $3::text[]) AS r (id, at, state)
         ON CONFLICT DO NOTHING",
        &[&ids, &created, &states],
    )?;
    Ok(())
}

fn apply(tx: &mut Transaction<'_>, write: &Write) -> Result<(), StoreError> {
    match write {
        Write::Component {
            digest,
            size_bytes,
            manifest,
            at,
            wasm,
        } => {
            exec(
                tx,
                "INSERT INTO components (digest, size_bytes, manifest, created_us) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO UPDATE SET manifest = excluded.manifest",
                &[&digest.as_str(), &(*size_bytes as i64), manifest, at],
            )?;
            if let Some(Wasm(bytes)) = wasm {
                exec(
                    tx,
                    "INSERT INTO component_blobs (digest, wasm) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                    &[&digest.as_str(), &&bytes[..]],
                )?;
            }
        }
        Write::NewFlowRun(run) => {
            let parent = run.parent_flow_run.map(|p| p.as_bytes().to_vec());
            let holder = run.lease.as_ref().map(|l| l.holder.as_str());
            let expires = run.lease.as_ref().map(|l| l.expires_at);
            exec(
                tx,
                "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, attempt, host, created_us, started_us,
                    deployment, tags, scheduled_us, work_pool, work_queue, secret_grants, lease_holder, lease_epoch, lease_expires_us,
                    deployment_version)
                 VALUES ($1, $2, $3, $4, $5, $6::text, $7, $8, $9::bigint, CASE WHEN $6::text = 'Running' THEN $9::bigint END, $10, $11, $12, $13, $14, $15,
                    $16::text, CASE WHEN $16::text IS NULL THEN 0 ELSE 1 END, $17, $18)",
                &[
                    &bytes(&run.id.0),
                    &parent,
                    &run.component.as_str(),
                    &run.flow_name,
                    &run.params,
                    &run.state.as_str(),
                    &i64::from(run.attempt),
                    &run.host,
                    &run.at,
                    &run.deployment,
                    &tags_text(&run.tags),
                    &run.scheduled_at,
                    &run.work_pool,
                    &run.work_queue,
                    &tags_text(&run.secret_grants),
                    &holder,
                    &expires,
                    &run.deployment_version.map(i64::from),
                ],
            )?;
            record_state(tx, run.id.0, run.at, run.state, None)?;
        }
        Write::NewTaskRun(run) => {
            let (cached_from, output) = match &run.cached_from {
                Some((from, output)) => (Some(from.as_bytes().to_vec()), Some(output.as_str())),
                None => (None, None),
            };
            exec(
                tx,
                "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, cache_key, cached_from,
                    host, created_us, started_us, ended_us, input_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text, $8, $9, $10, $11::bigint,
                    CASE WHEN $7::text = 'Running' THEN $11::bigint END, CASE WHEN $7::text = 'Cached' THEN $11::bigint END, $12)",
                &[
                    &bytes(&run.id.0),
                    &bytes(&run.flow_run.0),
                    &(run.call_seq as i64),
                    &run.task_name,
                    &run.input,
                    &output,
                    &run.state.as_str(),
                    &run.cache_key,
                    &cached_from,
                    &run.host,
                    &run.at,
                    &run.input_sha256,
                ],
            )?;
            record_state(tx, run.id.0, run.at, run.state, None)?;
        }
        Write::FlowRunState(change) => set_state(tx, false, change)?,
        Write::TaskRunState(change) => set_state(tx, true, change)?,
        Write::TaskAttempt(a) => {
            let (kind, message) = match &a.failure {
                Some((kind, message)) => (Some(kind.as_str()), Some(message.as_str())),
                None => (None, None),
            };
            exec(
                tx,
                "INSERT INTO task_attempts (task_run, attempt, started_us, ended_us, fuel_used, peak_memory, failure_kind, message)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &bytes(&a.task_run.0),
                    &i64::from(a.attempt),
                    &a.started_at,
                    &a.ended_at,
                    &(a.fuel_used as i64),
                    &(a.peak_memory as i64),
                    &kind,
                    &message,
                ],
            )?;
        }
        Write::PutObject {
            kind,
            name,
            body,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO objects (kind, name, body, created_us, updated_us) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body, updated_us = excluded.updated_us",
                &[&kind.as_str(), name, body, at],
            )?;
        }
        Write::DeploymentVersion {
            deployment,
            version,
            body,
            created_by,
            note,
            at,
        } => {
            let inserted = exec(
                tx,
                "INSERT INTO deployment_versions (deployment, version, body, created_by, note, created_us)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[deployment, &(*version as i64), body, created_by, note, at],
            )?;
            if inserted == 0 {
                return Err(StoreError::VersionTaken {
                    deployment: deployment.clone(),
                    version: *version,
                });
            }
        }
        Write::DeleteObject { kind, name } => {
            let n = exec(
                tx,
                "DELETE FROM objects WHERE kind = $1 AND name = $2",
                &[&kind.as_str(), name],
            )?;
            if n == 0 {
                return Err(not_found(kind.what(), name));
            }
        }
        Write::PlaceRun {
            id,
            work_pool,
            work_queue,
            scheduled_at,
        } => {
            let n = exec(
                tx,
                "UPDATE flow_runs SET work_pool = $2, work_queue = $3, scheduled_us = $4 WHERE id = $1",
                &[&bytes(&id.0), work_pool, work_queue, scheduled_at],
            )?;
            if n != 1 {
                return Err(not_found("flow run", id));
            }
        }
        Write::EnqueueDelivery {
            automation,
            flow_run,
            event,
            payload,
            at,
        } => {
            exec(
                tx,
                "INSERT INTO automation_deliveries (automation, flow_run, event, payload, status, next_attempt_us, created_us)
                 VALUES ($1, $2, $3, $4, 'pending', $5, $5) ON CONFLICT DO NOTHING",
                &[automation, &bytes(&flow_run.0), event, payload, at],
            )?;
        }
        Write::DeliveryAttempt {
            id,
            status,
            next_attempt_at,
            error,
            response_code,
            at,
        } => {
            let code = response_code.map(i64::from);
            exec(
                tx,
                "UPDATE automation_deliveries SET status = $2::text, attempts = attempts + 1, next_attempt_us = $3,
                    last_error = $4, response_code = $5,
                    delivered_us = CASE WHEN $2::text = 'delivered' THEN $6::bigint END
                 WHERE id = $1 AND status = 'pending'",
                &[id, &status.as_str(), next_attempt_at, error, &code, at],
            )?;
        }
        Write::ScheduleSlot {
            deployment,
            schedule_key,
            at,
            flow_run,
        } => {
            let inserted = exec(
                tx,
                "INSERT INTO schedule_slots (deployment, schedule_key, scheduled_us, flow_run) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[deployment, schedule_key, at, &bytes(&flow_run.0)],
            )?;
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
            let wanted = i64::from(*slots);
            for ask in limits {
                // One taker of a limit at a time across servers; names are
                // taken in the order given (sorted), so two never deadlock.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(2001, hashtext($1))",
                    &[&ask.name],
                )?;
                if ask.interval_us().is_some() {
                    let tat: Option<i64> = tx
                        .query_opt(
                            "SELECT tat_us FROM limit_rates WHERE name = $1",
                            &[&ask.name],
                        )?
                        .map(|r| r.get(0));
                    let next =
                        ask.next_mark(tat, *slots, *now)
                            .map_err(|wait| StoreError::NoSlot {
                                limit: ask.name.clone(),
                                retry_after_us: Some(wait),
                            })?;
                    exec(
                        tx,
                        "INSERT INTO limit_rates (name, tat_us) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET tat_us = excluded.tat_us",
                        &[&ask.name, &next],
                    )?;
                    continue;
                }
                exec(
                    tx,
                    &format!(
                        "DELETE FROM limit_slots WHERE name = $1 AND NOT {}",
                        super::super::sql::live_slot("$2")
                    ),
                    &[&ask.name, now],
                )?;
                let used: i64 = tx
                    .query_one(
                        "SELECT coalesce(sum(slots), 0)::BIGINT FROM limit_slots WHERE name = $1",
                        &[&ask.name],
                    )?
                    .get(0);
                if used + wanted > i64::from(ask.limit) {
                    return Err(StoreError::NoSlot {
                        limit: ask.name.clone(),
                        retry_after_us: None,
                    });
                }
                exec(
                    tx,
                    "INSERT INTO limit_slots (lease, name, slots, flow_run, taken_us)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&bytes(lease), &ask.name, &wanted, &bytes(&flow_run.0), now],
                )?;
            }
        }
        Write::ReleaseSlots { lease } => {
            exec(
                tx,
                "DELETE FROM limit_slots WHERE lease = $1",
                &[&bytes(lease)],
            )?;
        }
        Write::DropScheduledRuns {
            deployment,
            keep,
            after,
        } => {
            let doomed =
                "SELECT s.flow_run FROM schedule_slots s JOIN flow_runs f ON f.id = s.flow_run
                 WHERE s.deployment = $1 AND s.scheduled_us > $3 AND f.state = 'Scheduled'
                   AND NOT (s.schedule_key = ANY($2))";
            for sql in [
                format!("DELETE FROM run_states WHERE run_id IN ({doomed})"),
                format!("DELETE FROM flow_runs WHERE id IN ({doomed})"),
            ] {
                exec(tx, &sql, &[deployment, keep, after])?;
            }
            // Slots whose runs are gone: the schedule may make them again.
            exec(
                tx,
                "DELETE FROM schedule_slots WHERE deployment = $1 AND scheduled_us > $3
                   AND NOT (schedule_key = ANY($2))
                   AND NOT EXISTS (SELECT 1 FROM flow_runs f WHERE f.id = schedule_slots.flow_run)",
                &[deployment, keep, after],
            )?;
        }
        Write::RequestCancel { id, at } => {
            let n = exec(
                tx,
                "UPDATE flow_runs SET cancel_requested_us = coalesce(cancel_requested_us, $2) WHERE id = $1",
                &[&bytes(&id.0), at],
            )?;
            if n != 1 {
                return Err(not_found("flow run", id));
            }
        }
        Write::TakeLease {
            id,
            holder,
            expires_at,
        } => {
            let n = exec(
                tx,
                "UPDATE flow_runs SET lease_holder = $2, lease_epoch = lease_epoch + 1, lease_expires_us = $3 WHERE id = $1",
                &[&bytes(&id.0), holder, expires_at],
            )?;
            if n != 1 {
                return Err(not_found("flow run", id));
            }
        }
        Write::RenewLeases { holder, expires_at } => {
            exec(
                tx,
                &format!(
                    "UPDATE flow_runs SET lease_expires_us = $2 WHERE lease_holder = $1 AND {UNFINISHED}"
                ),
                &[holder, expires_at],
            )?;
        }
        Write::ExtendLeases { ids, until } => {
            for id in ids {
                exec(
                    tx,
                    "UPDATE flow_runs SET lease_expires_us = greatest(coalesce(lease_expires_us, 0), $2) WHERE id = $1",
                    &[&bytes(&id.0), until],
                )?;
            }
        }
        Write::RenewLease {
            id,
            holder,
            epoch,
            expires_at,
        } => {
            let n = exec(
                tx,
                &format!(
                    "UPDATE flow_runs SET lease_expires_us = $4
                     WHERE id = $1 AND lease_holder = $2 AND lease_epoch = $3 AND {UNFINISHED}"
                ),
                &[&bytes(&id.0), holder, &(*epoch as i64), expires_at],
            )?;
            if n != 1 {
                return Err(StoreError::LeaseLost {
                    id: *id,
                    holder: holder.clone(),
                    epoch: *epoch,
                });
            }
        }
        Write::CheckLease { id, holder, epoch } => {
            // FOR UPDATE: the report this check guards is applied before
            // anyone else may take the lease.
            let held = tx.query_opt(
                "SELECT lease_holder, lease_epoch, state FROM flow_runs WHERE id = $1 FOR UPDATE",
                &[&bytes(&id.0)],
            )?;
            let holds = held.is_some_and(|r| {
                r.get::<_, Option<&str>>(0) == Some(holder.as_str())
                    && r.get::<_, i64>(1) as u64 == *epoch
                    && r.get::<_, &str>(2)
                        .parse::<RunState>()
                        .is_ok_and(|s| !s.is_terminal())
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
            let parent = run.parent_flow_run.map(|p| p.as_bytes().to_vec());
            exec(
                tx,
                "INSERT INTO flow_runs (id, parent_flow_run, component, flow_name, params, state, message, failure_kind,
                    result, attempt, host, created_us, started_us, ended_us, fuel_used, peak_memory,
                    deployment, tags, scheduled_us, work_pool, work_queue)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, message = excluded.message,
                    failure_kind = excluded.failure_kind, result = excluded.result, attempt = excluded.attempt,
                    host = excluded.host, started_us = excluded.started_us, ended_us = excluded.ended_us,
                    fuel_used = excluded.fuel_used, peak_memory = excluded.peak_memory
                 WHERE flow_runs.state NOT IN ('Completed', 'Cached', 'Failed', 'Cancelled', 'Crashed', 'TimedOut')",
                &[
                    &bytes(&run.id.0),
                    &parent,
                    &run.component,
                    &run.flow_name,
                    &run.params,
                    &run.state.as_str(),
                    &run.message,
                    &run.failure_kind.map(|k| k.as_str()),
                    &run.result,
                    &i64::from(run.attempt),
                    &run.host,
                    &run.created_at,
                    &run.started_at,
                    &run.ended_at,
                    &(run.fuel_used as i64),
                    &(run.peak_memory as i64),
                    &run.deployment,
                    &tags_text(&run.tags),
                    &run.scheduled_at,
                    &run.work_pool,
                    &run.work_queue,
                ],
            )?;
            let at = run.ended_at.or(run.started_at).unwrap_or(run.created_at);
            record_state(tx, run.id.0, at, run.state, run.message.as_deref())?;
        }
        Write::UpsertTaskRun(task) => {
            let cached_from = task.cached_from.map(|c| c.as_bytes().to_vec());
            exec(
                tx,
                "INSERT INTO task_runs (id, flow_run, call_seq, task_name, input, output, state, failure_kind, message,
                    attempts, fuel_used, peak_memory, created_us, started_us, ended_us, next_attempt_us, cached_from,
                    host, input_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
                 ON CONFLICT (id) DO UPDATE SET output = excluded.output, state = excluded.state,
                    failure_kind = excluded.failure_kind, message = excluded.message, attempts = excluded.attempts,
                    fuel_used = excluded.fuel_used, peak_memory = excluded.peak_memory,
                    started_us = excluded.started_us, ended_us = excluded.ended_us,
                    next_attempt_us = excluded.next_attempt_us, host = excluded.host",
                &[
                    &bytes(&task.id.0),
                    &bytes(&task.flow_run.0),
                    &(task.call_seq as i64),
                    &task.task_name,
                    &task.input,
                    &task.output,
                    &task.state.as_str(),
                    &task.failure_kind.map(|k| k.as_str()),
                    &task.message,
                    &i64::from(task.attempts),
                    &(task.fuel_used as i64),
                    &(task.peak_memory as i64),
                    &task.created_at,
                    &task.started_at,
                    &task.ended_at,
                    &task.next_attempt_at,
                    &cached_from,
                    &task.host,
                    &task.input_sha256,
                ],
            )?;
            let at = task.ended_at.or(task.started_at).unwrap_or(task.created_at);
            record_state(tx, task.id.0, at, task.state, task.message.as_deref())?;
        }
        Write::ImportLogs(lines) => {
            for (origin, line) in lines {
                insert_log(tx, line, Some(origin))?;
            }
        }
        Write::ForgetFlowRun(id) => {
            exec(tx, "DELETE FROM logs WHERE flow_run = $1", &[&bytes(&id.0)])?;
            exec(tx, "DELETE FROM flow_runs WHERE id = $1", &[&bytes(&id.0)])?;
        }
        Write::Logs(lines) => {
            for line in lines {
                insert_log(tx, line, None)?;
            }
        }
    }
    Ok(())
}

fn insert_log(
    tx: &mut Transaction<'_>,
    line: &LogRecord,
    origin: Option<&String>,
) -> Result<(), StoreError> {
    let task_run = line.task_run.map(|t| t.as_bytes().to_vec());
    exec(
        tx,
        "INSERT INTO logs (flow_run, task_run, at_us, level, message, origin) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
        &[
            &bytes(&line.flow_run.0),
            &task_run,
            &line.at,
            &i64::from(line.level as u8),
            &line.message,
            &origin,
        ],
    )?;
    Ok(())
}
