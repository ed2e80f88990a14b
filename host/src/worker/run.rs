//! A flow run in progress: its summary, secrets, and the calls it waits for.

use super::host::Submitted;
use super::{FlowRun, RunSummary, crashed};
use crate::control::Control;
use crate::engine::HostFuture;
use crate::model::{Failure, FailureKind, LogLevel, RunInfo, TaskRunId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

impl FlowRun {
    pub(super) fn control(&self) -> &Control {
        &self.executor.control
    }

    pub(super) fn summary(&self, duration: Duration) -> RunSummary {
        RunSummary {
            tasks: self.stats.tasks.load(Ordering::Relaxed),
            attempts: self.stats.attempts.load(Ordering::Relaxed),
            cached: self.stats.cached.load(Ordering::Relaxed),
            replayed: self.stats.replayed.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            fuel_used: self.stats.fuel.load(Ordering::Relaxed),
            peak_memory_bytes: self.stats.peak_memory.load(Ordering::Relaxed),
            duration,
        }
    }

    /// Logs, once per name, what the server's ceilings lowered in a policy.
    pub(super) fn note_clamps(&self, name: &str, clamped: &[String]) {
        if clamped.is_empty() {
            return;
        }
        let first = self
            .clamps_noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        if first {
            self.log(
                None,
                LogLevel::Warn,
                &format!("policy of {name}: {}", clamped.join("; ")),
            );
        }
    }

    /// Stops every call still running for this attempt: dropped, a call's
    /// `CallGuard` records it Cancelled.
    pub(super) fn abort_in_flight(&self) {
        for handle in self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Submitted::Started(join) = handle {
                join.abort();
            }
        }
        for join in self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            join.abort();
        }
    }

    pub(super) async fn drain_handles(&self) {
        let handles: Vec<_> = {
            let mut map = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, h)| h).collect()
        };
        for handle in handles {
            if let Submitted::Started(join) = handle {
                let _ = join.await;
            }
        }
        let background: Vec<_> =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in background {
            let _ = handle.await;
        }
    }

    /// Runs a call the flow waits for as a task of its own, so that it ends
    /// (and records how) even when the flow instance is dropped mid-call by a
    /// cancel or a deadline. The flow run waits for these before it ends.
    pub(super) fn in_background(
        &self,
        call: impl Future<Output = Result<String, Failure>> + Send + 'static,
    ) -> HostFuture<'static, Result<String, Failure>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let join = tokio::spawn(async move {
            let _ = tx.send(call.await);
        });
        let mut background = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if background.len() >= 1024 {
            background.retain(|j| !j.is_finished());
        }
        background.push(join);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(crashed("the call ended without a result")))
        })
    }

    /// Runs a call the flow waits for inside the flow's own tokio task: no
    /// hand-off to another worker thread and back for each call of a
    /// sequential flow (the wake-ups cost more than the commit). If the flow
    /// instance is dropped mid-call (a cancel, a deadline), the rest of the
    /// call moves to a task of its own, as [`Self::in_background`] would have
    /// run it, so it still ends and records how, and the run waits for it.
    pub(super) fn in_place(
        self: &Arc<Self>,
        call: impl Future<Output = Result<String, Failure>> + Send + 'static,
    ) -> HostFuture<'static, Result<String, Failure>> {
        Box::pin(InPlace {
            call: Some(Box::pin(call)),
            run: self.clone(),
        })
    }

    /// A slot among the tasks of this run that may run at once.
    pub(super) async fn concurrency_permit(&self) -> Result<OwnedSemaphorePermit, Failure> {
        tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.map_err(|_| crashed("the run is shutting down")),
            _ = self.cancel.cancelled() => Err(Failure::new(FailureKind::Cancelled, "the run was cancelled")),
        }
    }
    /// Secrets are granted per deployment; a run started by hand has none.
    pub(super) fn get_secret(&self, name: &str) -> Option<String> {
        self.secrets.get(name).map(str::to_string)
    }

    pub(super) fn run_info(&self, task: Option<(&TaskRunId, &str, u32)>) -> RunInfo {
        RunInfo {
            flow_run_id: self.id.to_string(),
            task_run_id: task.map(|t| t.0.to_string()),
            attempt: task
                .map(|t| t.2)
                .unwrap_or_else(|| self.attempt.load(Ordering::SeqCst)),
            flow_name: self.flow_name.clone(),
            task_name: task.map(|t| t.1.to_string()),
            deployment: self.deployment.clone(),
            scheduled_at: None,
        }
    }
}

/// A call polled where its caller is, until the caller lets go of it unfinished.
struct InPlace {
    call: Option<HostFuture<'static, Result<String, Failure>>>,
    run: Arc<FlowRun>,
}

impl Future for InPlace {
    type Output = Result<String, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(Err(crashed("the call was polled after it ended")));
        };
        let outcome = call.as_mut().poll(cx);
        if outcome.is_ready() {
            self.call = None;
        }
        outcome
    }
}

impl Drop for InPlace {
    /// Dropped unfinished: the call goes on as a task of the run's own. With
    /// no runtime left (the process is ending) it is dropped, and its
    /// `CallGuard` records it Cancelled.
    fn drop(&mut self) {
        let (Some(call), Ok(runtime)) = (self.call.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let join = runtime.spawn(async move {
            let _ = call.await;
        });
        self.run
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(join);
    }
}
