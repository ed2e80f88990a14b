//! The executor's claim loop: takes admitted runs from a [`RunSource`] and
//! runs each on this executor, until stopped.
//!
//! The loop does not know whether its source is the dispatcher in this
//! process or a server across the network. It claims until nothing is left,
//! then waits for the source to say work is ready, for a run of its own to
//! end (a limit may have room now), or for a tick (runs scheduled for later
//! come due).

use super::{Executor, ExistingRun, FlowRunRequest};
use crate::dispatch::{Claim, RunSource};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an idle executor looks for runs that came due.
pub const CLAIM_TICK: Duration = Duration::from_millis(500);

/// Claims runs of `pools` from `source` and runs them on `runtime` until
/// `stop` is cancelled. Runs already started are not waited for.
pub async fn serve(
    executor: Arc<Executor>,
    source: Arc<dyn RunSource>,
    pools: Vec<String>,
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
) {
    loop {
        // Register interest before claiming, so a wake-up between the last
        // empty claim and the wait is not lost.
        let ready = source.work_ready();
        loop {
            if stop.is_cancelled() {
                return;
            }
            match source.claim_some(&pools).await {
                Ok(claims) if claims.is_empty() => break,
                // Every run claimed starts, even if `stop` came meanwhile:
                // it is leased to this executor now.
                Ok(claims) => {
                    for claim in claims {
                        start(&executor, &source, &runtime, claim);
                    }
                }
                Err(e) => {
                    tracing::warn!("claiming runs of {}: {e}", pools.join(", "));
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ready => {}
            _ = tokio::time::sleep(CLAIM_TICK) => {}
        }
    }
}

fn start(
    executor: &Arc<Executor>,
    source: &Arc<dyn RunSource>,
    runtime: &tokio::runtime::Handle,
    claim: Claim,
) {
    let id = claim.run;
    let mut request = FlowRunRequest::new(claim.component, claim.flow, claim.params);
    request.existing = Some(ExistingRun {
        id,
        state: claim.state,
        attempt: claim.attempt,
    });
    request.secrets = Arc::new(claim.secrets);
    request.capabilities = Arc::new(claim.capabilities);
    request.deployment = claim.deployment;
    request.task_override = claim.task_override;
    if source.wants_starts() {
        let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
        request.events = Some(events);
        let source = source.clone();
        runtime.spawn(async move {
            // The first start is all the source wants: the receiver then
            // goes, so task events cost a failed send, not a wake-up each.
            while let Some(event) = seen.recv().await {
                if let super::RunEvent::FlowStarted { id, .. } = event {
                    source.run_started(id);
                    break;
                }
            }
        });
    }
    let executor = executor.clone();
    let source = source.clone();
    runtime.spawn(async move {
        if let Err(e) = executor.run_flow(request).await {
            tracing::error!("flow run {id} could not run: {e}");
        }
        source.run_ended(id);
    });
}
