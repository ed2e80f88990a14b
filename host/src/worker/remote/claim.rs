//! Claims: how a remote host takes a run from the server, with its
//! component and a local copy of its records.

use super::{CLAIM_WAIT_MS, Held, RemoteHost, Shipped, server_message};
use crate::dispatch::remote::{ClaimRequest, RemoteClaim};
use crate::dispatch::{Claim, DispatchError};
use crate::engine::Component;
use crate::model::{ComponentDigest, FlowRunId, GrantedSecrets, RunState};
use crate::store::{NewFlowRun, StoreError, Write};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

impl RemoteHost {
    pub(super) async fn claim_one(self: &Arc<Self>) -> Result<Option<Claim>, DispatchError> {
        let request = ClaimRequest {
            holder: self.holder.clone(),
            pools: self.config.pools.clone(),
            queues: self.config.queues.clone(),
            wait_ms: CLAIM_WAIT_MS,
            allows: self.config.allows.clone(),
        };
        let (status, body) = self
            .post("/api/hosts/claim".into(), &request)
            .await
            .map_err(|e| DispatchError::Join(e.to_string()))?;
        match status {
            204 => return Ok(None),
            200 => {}
            _ => return Err(DispatchError::Join(server_message(status, &body))),
        }
        let claim: RemoteClaim =
            serde_json::from_slice(&body).map_err(|e| DispatchError::Corrupt {
                what: "claim",
                message: e.to_string(),
            })?;
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
            Ok(component) => Ok(Some(Claim {
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
            })),
            Err(why) => {
                // Leased to us and unrunnable here: end it so nobody waits for it.
                tracing::error!("flow run {id} cannot run on this host: {why}");
                let this = self.clone();
                let _ =
                    tokio::task::spawn_blocking(move || this.record_unrunnable(&claim, &why)).await;
                if let Some(h) = self.held().get_mut(&id) {
                    h.ended = true;
                }
                Ok(None)
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

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<ComponentDigest, Component>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}
