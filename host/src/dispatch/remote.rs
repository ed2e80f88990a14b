//! The dispatcher's side of the remote-host protocol: what a host sends and
//! receives, and how its claims, heartbeats and reports are applied.
//!
//! A remote host claims runs of its pools exactly as the embedded executor
//! does (admission, then a lease it holds), but it runs them against its own
//! store and ships what it recorded back in reports. Every report names the
//! lease epoch it was made under and is applied in one unit behind a check of
//! that lease, so a host that lost a run (its lease ran out and the run went
//! to another host) cannot write over the newer attempt. Reports are upserts
//! keyed by run and task-run ids (log lines by their origin), so a report
//! sent twice, after a lost reply or a reconnect, is applied once.

use super::{DispatchError, Dispatcher, parse_component, parse_object};
use crate::model::capabilities::Capabilities;
use crate::model::{FlowRunId, Policy, RunState, TimestampMicros};
use crate::store::{FlowRunRow, LogRecord, LogRow, ObjectKind, StoreError, TaskRunRow, Write};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A host's request for work: the first run of its pools that may start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The lease holder: "name pid=N boot=B", unique per host process.
    pub holder: String,
    pub pools: Vec<String>,
    /// Only runs of these queues; empty takes every queue of the pools.
    #[serde(default)]
    pub queues: Vec<String>,
    /// How long the server may hold the request open when nothing is ready.
    #[serde(default)]
    pub wait_ms: u64,
    /// What the host lets runs reach; it is handed only runs that need no more.
    #[serde(default)]
    pub allows: Capabilities,
    /// At most this many runs (1 to [`MAX_CLAIM_BATCH`]; absent is 1);
    /// only `/api/hosts/claims` hands over more than one. Not sent when 1,
    /// so a server from before batched claims reads the request as ever.
    #[serde(default = "one_run", skip_serializing_if = "is_one_run")]
    pub max_runs: u32,
}

fn one_run() -> u32 {
    1
}

fn is_one_run(n: &u32) -> bool {
    *n == 1
}

impl ClaimRequest {
    /// A refusal of a batch size out of range, which takes nothing.
    pub fn check_max_runs(&self) -> Result<(), DispatchError> {
        if (1..=MAX_CLAIM_BATCH).contains(&self.max_runs) {
            Ok(())
        } else {
            Err(DispatchError::BadClaimSize {
                asked: self.max_runs,
            })
        }
    }
}

/// The most runs one claim may take: a host asks for its free slots.
pub const MAX_CLAIM_BATCH: u32 = 64;

/// Runs handed to a remote host in one claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteClaims {
    pub claims: Vec<RemoteClaim>,
}

/// A run handed to a remote host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteClaim {
    pub run: FlowRunId,
    pub epoch: u64,
    /// sha256 of the component (hex); fetch it from `/api/components/{digest}/wasm`.
    pub component: String,
    pub flow: String,
    pub params: String,
    /// Attempts the run has had so far.
    pub attempt: u32,
    pub deployment: Option<String>,
    #[serde(default)]
    pub task_override: Policy,
    /// The secrets bound to the run when it was created, in clear.
    #[serde(default)]
    pub secrets: Vec<(String, String)>,
    /// Task calls earlier attempts completed: replayed, not run again.
    #[serde(default)]
    pub replay: Vec<ShippedTaskRun>,
    /// What its instances may reach (its deployment's needs).
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How long the lease lasts unless renewed (ms).
    pub lease_ttl_ms: u64,
}

/// A task run on the wire, with the hash replay matches calls by.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShippedTaskRun {
    #[serde(flatten)]
    pub row: TaskRunRow,
    pub input_sha256: Option<String>,
}

impl ShippedTaskRun {
    pub fn new(row: TaskRunRow) -> ShippedTaskRun {
        ShippedTaskRun {
            input_sha256: row.input_sha256.clone(),
            row,
        }
    }

    pub fn into_row(self) -> TaskRunRow {
        TaskRunRow {
            input_sha256: self.input_sha256,
            ..self.row
        }
    }
}

/// A log line on the wire, with its id in the host's store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShippedLog {
    pub flow_run: FlowRunId,
    #[serde(flatten)]
    pub line: LogRow,
}

/// What a host recorded for one run since its last report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub holder: String,
    pub epoch: u64,
    /// The run itself first, then its subflows.
    pub flow_runs: Vec<FlowRunRow>,
    #[serde(default)]
    pub task_runs: Vec<ShippedTaskRun>,
    #[serde(default)]
    pub logs: Vec<ShippedLog>,
}

/// A host's heartbeat: the runs it holds, and what it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub holder: String,
    pub name: String,
    pub version: String,
    pub pools: Vec<String>,
    #[serde(default)]
    pub queues: Vec<String>,
    pub slots: u32,
    /// (run, epoch) of every run it holds.
    pub runs: Vec<(FlowRunId, u64)>,
    #[serde(default)]
    pub allows: Capabilities,
}

/// What the server says back to a heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Runs the host no longer holds: stop them, report nothing more.
    pub lost: Vec<FlowRunId>,
    /// Runs someone asked to cancel.
    pub cancel: Vec<FlowRunId>,
    pub lease_ttl_ms: u64,
}

/// A host as the server last heard from it (stored as a `host` object).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub holder: String,
    pub version: String,
    pub pools: Vec<String>,
    pub queues: Vec<String>,
    pub slots: u32,
    pub runs_in_hand: usize,
    pub last_heartbeat: TimestampMicros,
    /// What it lets runs reach.
    #[serde(default)]
    pub allows: Capabilities,
}

impl Dispatcher {
    /// The first run of `request.pools` (and queues) that may start now,
    /// moved to `Pending` under a lease for `request.holder`.
    pub async fn claim_remote(
        self: &Arc<Self>,
        mut request: ClaimRequest,
    ) -> Result<Option<RemoteClaim>, DispatchError> {
        request.max_runs = 1;
        Ok(self.claim_remote_some(request).await?.pop())
    }

    /// Up to `request.max_runs` runs of `request.pools` that may start now,
    /// each moved to `Pending` under a lease for `request.holder`, in one
    /// admission pass. A run that cannot be handed over is failed; the
    /// others are still returned.
    pub async fn claim_remote_some(
        self: &Arc<Self>,
        request: ClaimRequest,
    ) -> Result<Vec<RemoteClaim>, DispatchError> {
        request.check_max_runs()?;
        let max = request.max_runs;
        self.blocking(move |d| {
            // Admitted in one pass, so the batch is the best `max` runs
            // waiting now, whoever else claims at the same moment.
            let admitted = d.admit_some_for(
                &request.pools,
                &request.queues,
                &request.holder,
                &request.allows,
                max as usize,
            )?;
            let mut claims = Vec::with_capacity(admitted.len());
            let mut first_error = None;
            for id in admitted {
                match d.remote_claim_of(id) {
                    Ok(claim) => claims.push(claim),
                    Err(e) => {
                        // Every run admitted is leased to this host: one
                        // that cannot be handed over is ended, not stranded.
                        d.fail_claim(id, &e);
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) if claims.is_empty() => Err(e),
                _ => Ok(claims),
            }
        })
        .await
    }

    fn remote_claim_of(&self, id: FlowRunId) -> Result<RemoteClaim, DispatchError> {
        let run = self.run(id)?;
        let deployment = match &run.deployment {
            Some(name) => self.deployment_named(name)?,
            None => None,
        };
        let component = parse_component(&run.component)?;
        let replay = self
            .store
            .task_runs(id)?
            .into_iter()
            .filter(|t| t.state.is_success() && t.output.is_some())
            .map(ShippedTaskRun::new)
            .collect();
        Ok(RemoteClaim {
            run: id,
            epoch: run.lease_epoch,
            component: component.as_str().to_string(),
            flow: run.flow_name,
            params: run.params,
            attempt: run.attempt,
            deployment: run.deployment,
            capabilities: deployment
                .as_ref()
                .map(|d| d.capabilities.clone())
                .unwrap_or_default(),
            task_override: deployment.map(|d| d.task_policy).unwrap_or_default(),
            secrets: self.secret_values(&run.secret_grants)?,
            replay,
            lease_ttl_ms: self.lease_ttl.as_millis() as u64,
        })
    }

    /// Renews the leases a host holds and records that it is alive.
    pub async fn heartbeat(
        self: &Arc<Self>,
        beat: Heartbeat,
    ) -> Result<HeartbeatReply, DispatchError> {
        self.blocking(move |d| {
            let now = d.control.now();
            let expires_at = d.lease_until(now);
            let mut reply = HeartbeatReply {
                lease_ttl_ms: d.lease_ttl.as_millis() as u64,
                ..HeartbeatReply::default()
            };
            for (id, epoch) in &beat.runs {
                let renewed = d
                    .store
                    .submit(vec![Write::RenewLease {
                        id: *id,
                        holder: beat.holder.clone(),
                        epoch: *epoch,
                        expires_at,
                    }])
                    .wait_blocking();
                match renewed {
                    Ok(()) => {
                        if d.store.cancel_requested(*id).unwrap_or(false) {
                            reply.cancel.push(*id);
                        }
                    }
                    Err(StoreError::LeaseLost { .. }) => reply.lost.push(*id),
                    Err(e) => return Err(e.into()),
                }
            }
            let record = HostRecord {
                name: beat.name.clone(),
                holder: beat.holder,
                version: beat.version,
                pools: beat.pools,
                queues: beat.queues,
                slots: beat.slots,
                runs_in_hand: beat.runs.len() - reply.lost.len(),
                last_heartbeat: now,
                allows: beat.allows,
            };
            d.store
                .submit(vec![Write::PutObject {
                    kind: ObjectKind::Host,
                    name: beat.name,
                    body: serde_json::to_string(&record).map_err(|e| DispatchError::Corrupt {
                        what: "host record",
                        message: e.to_string(),
                    })?,
                    at: now,
                }])
                .wait_blocking()?;
            Ok(reply)
        })
        .await
    }

    /// The hosts that have said hello, with whether each is online (heard
    /// from within two leases).
    pub async fn hosts(self: &Arc<Self>) -> Result<Vec<(HostRecord, bool)>, DispatchError> {
        self.blocking(|d| {
            let now = d.control.now();
            let fresh = 2 * d.lease_ttl.as_micros() as i64;
            d.store
                .objects(ObjectKind::Host)?
                .into_iter()
                .map(|row| {
                    let host: HostRecord = parse_object("host record", &row.body)?;
                    let online = now - host.last_heartbeat <= fresh;
                    Ok((host, online))
                })
                .collect()
        })
        .await
    }

    /// Applies a host's report on run `id`, behind a check of its lease.
    pub async fn apply_report(
        self: &Arc<Self>,
        id: FlowRunId,
        report: Report,
    ) -> Result<(), DispatchError> {
        self.blocking(move |d| {
            let ended = report
                .flow_runs
                .first()
                .is_some_and(|run| run.id == id && run.state.is_terminal());
            let mut unit = vec![Write::CheckLease {
                id,
                holder: report.holder.clone(),
                epoch: report.epoch,
            }];
            for run in report.flow_runs {
                let belongs = run.id == id || run.parent_flow_run.is_some();
                if belongs {
                    unit.push(Write::UpsertFlowRun(Box::new(run)));
                }
            }
            for task in report.task_runs {
                unit.push(Write::UpsertTaskRun(Box::new(task.into_row())));
            }
            if !report.logs.is_empty() {
                let origin = |line: &LogRow| format!("{}.{}", report.epoch, line.id);
                unit.push(Write::ImportLogs(
                    report
                        .logs
                        .iter()
                        .map(|l| {
                            (
                                origin(&l.line),
                                LogRecord {
                                    flow_run: l.flow_run,
                                    task_run: l.line.task_run,
                                    at: l.line.at,
                                    level: l.line.level,
                                    message: l.line.message.clone(),
                                },
                            )
                        })
                        .collect(),
                ));
            }
            match d.store.submit(unit).wait_blocking() {
                Ok(()) => {}
                // The same final report again (its reply was lost): applied already.
                Err(StoreError::LeaseLost { .. })
                    if d.already_ended_under(id, &report.holder, report.epoch) => {}
                Err(e) => return Err(e.into()),
            }
            if ended {
                // A slot or a limit may have room now.
                d.wake.notify_waiters();
            }
            Ok(())
        })
        .await
    }

    /// Whether run `id` ended while `holder` held it at `epoch`.
    fn already_ended_under(&self, id: FlowRunId, holder: &str, epoch: u64) -> bool {
        self.store.flow_run(id).is_ok_and(|run| {
            run.state.is_terminal()
                && run.state != RunState::Crashed
                && run.lease_holder.as_deref() == Some(holder)
                && run.lease_epoch == epoch
        })
    }
}
