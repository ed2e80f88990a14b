//! Claims: how a remote host takes a run from the server, with its
//! component and a local copy of its records.

use super::{CLAIM_WAIT_MS, Held, MAX_BACKOFF, RemoteHost, Shipped, server_message};
use crate::dispatch::remote::{ClaimRequest, RemoteClaim, RemoteClaims};
use crate::dispatch::{Claim, DispatchError};
use crate::engine::Component;
use crate::model::{ComponentDigest, FlowRunId, GrantedSecrets, RunState};
use crate::store::{NewFlowRun, StoreError, Write};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl RemoteHost {
    /// Claims up to `max` runs in one round trip and makes each ready to
    /// run here; runs that cannot run here are ended and left out.
    pub(super) async fn claim_up_to(
        self: &Arc<Self>,
        max: u32,
    ) -> Result<Vec<Claim>, DispatchError> {
        let claims = loop {
            let single = max <= 1 || self.single_claims.load(Ordering::Relaxed);
            let request = ClaimRequest {
                holder: self.holder.clone(),
                pools: self.config.pools.clone(),
                queues: self.config.queues.clone(),
                wait_ms: CLAIM_WAIT_MS,
                allows: self.config.allows.clone(),
                max_runs: if single { 1 } else { max },
            };
            let path = if single {
                "/api/hosts/claim"
            } else {
                "/api/hosts/claims"
            };
            let (status, body) = self
                .post(path.into(), &request)
                .await
                .map_err(|e| DispatchError::ClaimFailed(e.to_string()))?;
            let corrupt = |e: serde_json::Error| DispatchError::Corrupt {
                what: "claim",
                message: e.to_string(),
            };
            match status {
                204 => return Ok(Vec::new()),
                200 if single => {
                    break vec![serde_json::from_slice::<RemoteClaim>(&body).map_err(corrupt)?];
                }
                200 => {
                    break serde_json::from_slice::<RemoteClaims>(&body)
                        .map_err(corrupt)?
                        .claims;
                }
                // A server from before batched claims: one run per claim.
                404 if !single => {
                    tracing::info!("the server takes one run per claim (an older version)");
                    self.single_claims.store(true, Ordering::Relaxed);
                }
                // Neither endpoint: not a Weir server's API. Batches are
                // tried first again next time, in case it is fixed or
                // upgraded meanwhile; the caller backs off in between.
                404 => {
                    self.single_claims.store(false, Ordering::Relaxed);
                    return Err(DispatchError::NoClaimEndpoint {
                        api: self.config.api.clone(),
                    });
                }
                _ => return Err(DispatchError::ClaimFailed(server_message(status, &body))),
            }
        };
        let mut taken = Vec::with_capacity(claims.len());
        for claim in claims {
            if let Some(claim) = self.accept(claim).await {
                taken.push(claim);
            }
        }
        Ok(taken)
    }

    /// Holds a claimed run and makes its local copy; `None` when it cannot
    /// run here (it is then ended, so nobody waits for it).
    async fn accept(self: &Arc<Self>, claim: RemoteClaim) -> Option<Claim> {
        let id = claim.run;
        // Held at once, so heartbeats renew its lease while the component is
        // fetched and compiled; reports wait for its local copy.
        self.held().insert(
            id,
            Held {
                epoch: claim.epoch,
                copied: false,
                ended: false,
                shipped: Shipped::default(),
            },
        );
        let taken = match self.stop_earlier_attempt(id).await {
            Ok(()) => self.take(&claim).await,
            Err(why) => Err(why),
        };
        if let Some(h) = self.held().get_mut(&id) {
            h.copied = true;
        }
        match taken {
            Ok(component) => Some(Claim {
                run: id,
                component,
                flow: claim.flow,
                params: claim.params,
                attempt: claim.attempt,
                state: RunState::Pending,
                epoch: claim.epoch,
                deployment: claim.deployment,
                task_override: claim.task_override,
                secrets: GrantedSecrets::new(claim.secrets),
                capabilities: claim.capabilities,
            }),
            Err(why) => {
                tracing::error!("flow run {id} cannot run on this host: {why}");
                let this = self.clone();
                let _ =
                    tokio::task::spawn_blocking(move || this.record_unrunnable(&claim, &why)).await;
                if let Some(h) = self.held().get_mut(&id) {
                    h.ended = true;
                }
                None
            }
        }
    }

    /// Waits for a free slot, then claims as many runs as there are free
    /// slots (at most `limit`) in one round trip, retrying while the server
    /// is away. Empty when nothing became ready or the host is stopping.
    pub(super) async fn claim_with_room(&self, limit: u32) -> Result<Vec<Claim>, DispatchError> {
        let this = self.arc();
        // A slot first: a host never takes more runs than it has room for.
        let mut permit = tokio::select! {
            permit = this.slots.clone().acquire_owned() => permit.map_err(|e| DispatchError::Join(e.to_string()))?,
            _ = this.stop.cancelled() => return Ok(Vec::new()),
        };
        // Every other free slot too, in the same round trip.
        let extra = (this.slots.available_permits() as u32).min(limit.saturating_sub(1));
        if extra > 0
            && let Ok(more) = this.slots.clone().try_acquire_many_owned(extra)
        {
            permit.merge(more);
        }
        let room = permit.num_permits();
        let mut backoff = Duration::from_millis(100);
        loop {
            if this.stop.is_cancelled() {
                return Ok(Vec::new());
            }
            match this.claim_up_to(room as u32).await {
                Ok(claims) => {
                    // A run's slot comes back in `run_ended`; unused ones now.
                    permit.forget();
                    this.slots.add_permits(room - claims.len());
                    let mut running = this.running.lock().unwrap_or_else(|p| p.into_inner());
                    running.extend(claims.iter().map(|c| c.run));
                    return Ok(claims);
                }
                Err(e) => {
                    if matches!(e, DispatchError::NoClaimEndpoint { .. }) {
                        // A setup mistake, not a hiccup: said louder; the
                        // same bounded backoff keeps it from flooding anyone.
                        tracing::error!("{e}; trying again in {backoff:?}");
                    } else {
                        tracing::warn!("{e}; trying again in {backoff:?}");
                    }
                    tokio::select! {
                        _ = this.stop.cancelled() => return Ok(Vec::new()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A run handed to this host again while an earlier attempt of it still
    /// runs here (this host lost its lease, say, in a network partition):
    /// the earlier attempt is cancelled and must end before the new one starts.
    async fn stop_earlier_attempt(&self, id: FlowRunId) -> Result<(), String> {
        if !self.is_running(id) {
            return Ok(());
        }
        self.cancel_locally(id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.is_running(id) {
            if tokio::time::Instant::now() >= deadline {
                return Err("an earlier attempt of it on this host did not stop".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn is_running(&self, id: FlowRunId) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Makes the local copy of a claimed run (with the task calls to replay)
    /// and returns its component, fetched and checked if it is new here.
    async fn take(self: &Arc<Self>, claim: &RemoteClaim) -> Result<Component, String> {
        let component = self.component(&claim.component).await?;
        let this = self.clone();
        let claim = claim.clone();
        tokio::task::spawn_blocking(move || {
            this.copy_run(&claim, &component.digest, RunState::Pending, None)
                .map(|()| component)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    fn copy_run(
        &self,
        claim: &RemoteClaim,
        digest: &ComponentDigest,
        state: RunState,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut unit = vec![
            Write::ForgetFlowRun(claim.run),
            Write::NewFlowRun(NewFlowRun {
                id: claim.run,
                parent_flow_run: None,
                component: digest.clone(),
                flow_name: claim.flow.clone(),
                params: claim.params.clone(),
                state: RunState::Pending,
                attempt: claim.attempt,
                host: self.holder.clone(),
                at: self.control.now(),
                deployment: claim.deployment.clone(),
                tags: Vec::new(),
                scheduled_at: None,
                work_pool: None,
                work_queue: None,
                secret_grants: Vec::new(),
                lease: None,
                deployment_version: None,
            }),
        ];
        unit.extend(
            claim
                .replay
                .iter()
                .cloned()
                .map(|t| Write::UpsertTaskRun(Box::new(t.into_row()))),
        );
        if state != RunState::Pending {
            let mut change = crate::store::StateChange::new(
                claim.run.0,
                RunState::Pending,
                state,
                self.control.now(),
            );
            change.message = message.map(str::to_string);
            change.failure_kind = Some(crate::model::FailureKind::Crashed);
            unit.push(Write::FlowRunState(change));
        }
        self.store.submit(unit).wait_blocking()
    }

    /// Records a claimed run that cannot run here as `Crashed`, with why.
    fn record_unrunnable(&self, claim: &RemoteClaim, why: &str) {
        let digest = ComponentDigest::parse(&claim.component)
            .unwrap_or_else(|| ComponentDigest::from_sha256([0; 32]));
        let message = format!("host {} could not start it: {why}", self.config.name);
        if let Err(e) = self.copy_run(claim, &digest, RunState::Crashed, Some(&message)) {
            tracing::error!("recording flow run {}: {e}", claim.run);
        }
    }

    /// The component `digest`: loaded already, or from this host's copy, or
    /// fetched from the server and checked against its digest.
    async fn component(self: &Arc<Self>, digest: &str) -> Result<Component, String> {
        let digest = ComponentDigest::parse(digest)
            .ok_or_else(|| format!("the server named no valid component digest ('{digest}')"))?;
        if let Some(component) = self.loaded().get(&digest) {
            return Ok(component.clone());
        }
        let bytes = match self.files.get(&digest) {
            Ok(bytes) => bytes,
            Err(_) => {
                let client = self.client.clone();
                let path = format!("/api/components/{}/wasm", digest.as_str());
                let (status, bytes) = tokio::task::spawn_blocking(move || {
                    client.request("GET", &path, None, "application/json")
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                if status != 200 {
                    return Err(format!(
                        "downloading component sha256:{}: {}",
                        digest.short(),
                        server_message(status, &bytes)
                    ));
                }
                let got = hex::encode(Sha256::digest(&bytes));
                if got != digest.as_str() {
                    return Err(format!(
                        "the component downloaded for sha256:{} has sha256:{}; refusing to run it (tampered or damaged in transit)",
                        digest.as_str(),
                        got
                    ));
                }
                self.files.put(&bytes).map_err(|e| e.to_string())?;
                bytes
            }
        };
        let component = self.engine.load(&bytes).await.map_err(|e| e.to_string())?;
        self.loaded().insert(digest, component.clone());
        Ok(component)
    }

    /// Drops what only runs need, while none is held: the compiled
    /// components (a claim loads its component again from this host's
    /// compiled cache: a map of the artifact and `describe()`, no compile)
    /// and what the store's connections cache. A run that holds a component
    /// holds its own handle, so one claimed meanwhile is not affected.
    /// Returns how many components were dropped.
    pub(super) fn drop_idle_state(&self) -> usize {
        let dropped = std::mem::take(&mut *self.loaded()).len();
        self.store.release_memory();
        dropped
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<ComponentDigest, Component>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}
