//! Time as the rest of the host sees it: a `Clock` that can be replaced in tests.
//!
//! No IO and no async. Waiting is the worker's business; it asks a clock what
//! time it is and records that, so tests can drive time by hand.

use crate::model::TimestampMicros;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> TimestampMicros;
}

/// The machine's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> TimestampMicros {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn starting_at(micros: TimestampMicros) -> Self {
        Self(Arc::new(AtomicI64::new(micros)))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> TimestampMicros {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 text for a timestamp, in UTC with millisecond precision.
pub fn format_rfc3339(micros: TimestampMicros) -> String {
    crate::schedule::format_utc_millis(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(951_782_400_123_000),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            format_rfc3339(1_795_000_000_000_000),
            "2026-11-18T11:06:40.000Z"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_at(10);
        assert_eq!(clock.now_micros(), 10);
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.now_micros(), 2010);
    }
}
