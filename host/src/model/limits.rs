//! Named limits shared by every run on every host: a concurrency limit
//! (`slots` held at once) or a rate limit (`slots` that come back at
//! `slot_decay_per_second`). Tasks take a slot of each limit named like one
//! of their tags; flows and tasks take them by name from code (`limit`).

use serde::{Deserialize, Serialize};

/// The most slots a limit may have, and the most one call may ask for.
pub const MAX_SLOTS: u32 = 1_000_000;

/// A named limit, as `host concurrency-limit create` makes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    pub name: String,
    pub slots: u32,
    /// Makes it a rate limit: a taken slot is not given back, it comes back
    /// by itself at this rate (a bucket of `slots` that drains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_decay_per_second: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("{0}")]
    BadName(String),
    #[error("a limit needs 1 to {MAX_SLOTS} slots, not {0}")]
    BadSlots(u64),
    #[error("--slot-decay-per-second must be a number above 0 and at most {MAX_SLOTS}, not {0}")]
    BadDecay(String),
}

impl ConcurrencyLimit {
    pub fn check(&self) -> Result<(), LimitError> {
        super::deploy::validate_name("concurrency limit", &self.name)
            .map_err(|e| LimitError::BadName(e.to_string()))?;
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(LimitError::BadSlots(u64::from(self.slots)));
        }
        if let Some(rate) = self.slot_decay_per_second
            && !(rate.is_finite() && rate > 0.0 && rate <= f64::from(MAX_SLOTS))
        {
            return Err(LimitError::BadDecay(rate.to_string()));
        }
        Ok(())
    }

    pub fn is_rate(&self) -> bool {
        self.slot_decay_per_second.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, slots: u32, decay: Option<f64>) -> ConcurrencyLimit {
        ConcurrencyLimit {
            name: name.into(),
            slots,
            slot_decay_per_second: decay,
        }
    }

    #[test]
    fn names_slots_and_rates_are_checked() {
        assert_eq!(limit("db", 3, None).check(), Ok(()));
        assert_eq!(limit("api.calls", 10, Some(0.5)).check(), Ok(()));
        assert!(limit("a b", 1, None).check().is_err());
        assert!(limit("x\"\n", 1, None).check().is_err());
        assert_eq!(limit("db", 0, None).check(), Err(LimitError::BadSlots(0)));
        assert!(limit("db", MAX_SLOTS + 1, None).check().is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            assert!(limit("db", 1, Some(bad)).check().is_err(), "{bad}");
        }
    }
}
