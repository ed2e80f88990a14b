//! The one retry step of flow and task attempts: after a failed attempt,
//! retry or give up, after what delay, and the wait for it, which a cancel cuts short.

use super::Timer;
use crate::model::{EffectivePolicy, Failure, FailureKind};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What follows a failed attempt.
#[derive(Debug)]
pub(super) enum AfterFailure {
    /// The delay has passed: run the next attempt.
    RetryNow,
    /// The run was cancelled while it waited for its next attempt.
    CancelledWhileWaiting,
    /// No more attempts. The failure to record: Cancelled if the run was.
    GiveUp(Failure),
}

/// The step after attempt `attempt` failed with `failure`. A cancelled run,
/// or a failure the policy does not retry (its kind, or no attempts left),
/// gives up. Otherwise the policy picks the delay (with jitter), `announce`
/// records the wait before it starts (so a reader sees Retrying and when the
/// next attempt comes), and the wait runs on `timer` until it ends or the
/// run is cancelled.
pub(super) async fn after_failed_attempt<E>(
    timer: &dyn Timer,
    policy: &EffectivePolicy,
    attempt: u32,
    failure: Failure,
    cancel: &CancellationToken,
    announce: impl FnOnce(&Failure, Duration) -> Result<(), E>,
) -> Result<AfterFailure, E> {
    let cancelled = cancel.is_cancelled();
    if !cancelled && policy.should_retry(attempt, failure.kind) {
        let delay = policy.retry_delay(attempt, rand::random::<f64>());
        announce(&failure, delay)?;
        return Ok(match sleep_unless_cancelled(timer, delay, cancel).await {
            true => AfterFailure::CancelledWhileWaiting,
            false => AfterFailure::RetryNow,
        });
    }
    let kind = match cancelled {
        true => FailureKind::Cancelled,
        false => failure.kind,
    };
    Ok(AfterFailure::GiveUp(Failure::new(kind, failure.message)))
}

/// Sleeps for `delay` on `timer`; returns true if cancelled first.
async fn sleep_unless_cancelled(
    timer: &dyn Timer,
    delay: Duration,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = timer.sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HostFuture;
    use crate::model::{Policy, PolicyDefaults};
    use std::sync::Mutex;

    /// Answers every sleep at once and keeps the delays it was asked for.
    #[derive(Default)]
    struct Instant(Mutex<Vec<Duration>>);

    impl Timer for Instant {
        fn sleep(&self, delay: Duration) -> HostFuture<'static, ()> {
            self.0.lock().unwrap().push(delay);
            Box::pin(async {})
        }
    }

    /// A wait that only a cancel ends.
    struct Never;

    impl Timer for Never {
        fn sleep(&self, _delay: Duration) -> HostFuture<'static, ()> {
            Box::pin(std::future::pending())
        }
    }

    /// Two retries, 100 ms then 200 ms apart, of failures and timeouts only.
    fn two_retries() -> EffectivePolicy {
        let policy = Policy {
            retries: Some(2),
            retry_delay_ms: Some(vec![100, 200]),
            retry_on: Some(vec![FailureKind::Failed, FailureKind::Timeout]),
            ..Policy::default()
        };
        EffectivePolicy::resolve(&policy, &PolicyDefaults::unbounded(1, 1, None))
    }

    fn failed(kind: FailureKind) -> Failure {
        Failure::new(kind, "it broke")
    }

    /// Runs the step; answers what followed and the delays `announce` was given.
    async fn step(
        timer: &dyn Timer,
        attempt: u32,
        failure: Failure,
        cancel: &CancellationToken,
    ) -> (AfterFailure, Vec<Duration>) {
        let mut announced = Vec::new();
        let after = after_failed_attempt(
            timer,
            &two_retries(),
            attempt,
            failure,
            cancel,
            |_, delay| -> Result<(), ()> {
                announced.push(delay);
                Ok(())
            },
        )
        .await
        .unwrap();
        (after, announced)
    }

    #[tokio::test]
    async fn a_retry_announces_the_policy_delay_and_waits_exactly_that() {
        let timer = Instant::default();
        let cancel = CancellationToken::new();
        for (attempt, ms) in [(1, 100), (2, 200)] {
            let (after, announced) =
                step(&timer, attempt, failed(FailureKind::Timeout), &cancel).await;
            assert!(matches!(after, AfterFailure::RetryNow), "{after:?}");
            assert_eq!(announced, [Duration::from_millis(ms)]);
        }
        let waited = timer.0.lock().unwrap().clone();
        assert_eq!(
            waited,
            [Duration::from_millis(100), Duration::from_millis(200)]
        );
    }

    #[tokio::test]
    async fn the_last_attempt_and_unlisted_kinds_give_up_with_their_own_failure() {
        let timer = Instant::default();
        let cancel = CancellationToken::new();
        for (attempt, kind) in [(3, FailureKind::Failed), (1, FailureKind::OutOfFuel)] {
            let (after, announced) = step(&timer, attempt, failed(kind), &cancel).await;
            let AfterFailure::GiveUp(failure) = after else {
                panic!("attempt {attempt} of kind {kind:?} retried: {after:?}");
            };
            assert_eq!((failure.kind, failure.message.as_str()), (kind, "it broke"));
            assert!(announced.is_empty(), "a give-up announces no wait");
        }
        assert!(timer.0.lock().unwrap().is_empty(), "nothing waited");
    }

    #[tokio::test]
    async fn a_cancelled_run_gives_up_as_cancelled_though_retries_remain() {
        let timer = Instant::default();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (after, announced) = step(&timer, 1, failed(FailureKind::Failed), &cancel).await;
        let AfterFailure::GiveUp(failure) = after else {
            panic!("a cancelled run retried: {after:?}");
        };
        assert_eq!(failure.kind, FailureKind::Cancelled);
        assert_eq!(failure.message, "it broke", "the cause stays readable");
        assert!(announced.is_empty() && timer.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancel_ends_the_wait_that_the_timer_never_would() {
        let (cancel, policy) = (CancellationToken::new(), two_retries());
        let step = after_failed_attempt(
            &Never,
            &policy,
            1,
            failed(FailureKind::Failed),
            &cancel,
            // The cancel lands just as the wait is announced.
            |_, _| -> Result<(), ()> {
                cancel.cancel();
                Ok(())
            },
        );
        // A bound, not a timing: without the cancel this waits forever.
        let after = tokio::time::timeout(Duration::from_secs(30), step)
            .await
            .expect("the cancel did not end the wait")
            .unwrap();
        assert!(
            matches!(after, AfterFailure::CancelledWhileWaiting),
            "{after:?}"
        );
    }

    #[tokio::test]
    async fn a_wait_that_could_not_be_announced_is_not_taken() {
        let timer = Instant::default();
        let after = after_failed_attempt(
            &timer,
            &two_retries(),
            1,
            failed(FailureKind::Failed),
            &CancellationToken::new(),
            |_, _| Err("the store is gone"),
        )
        .await;
        assert_eq!(after.unwrap_err(), "the store is gone");
        assert!(
            timer.0.lock().unwrap().is_empty(),
            "no wait without its record"
        );
    }
}
