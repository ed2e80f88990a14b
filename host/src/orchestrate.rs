//! The one place that decides which state changes are allowed.
//!
//! Every transition of a flow run or task run is proposed here before the store
//! writes it (with compare-and-set, so a concurrent writer cannot slip past).
//! No IO, no async: a table of (from, to) → accept or reject, tested as a table.

use crate::model::RunState::{self, *};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {} to {to}", from.map(|s| s.as_str()).unwrap_or("nothing"))]
pub struct InvalidTransition {
    pub from: Option<RunState>,
    pub to: RunState,
}

/// Accepts or rejects a proposed transition. `from == None` creates a run.
pub fn decide(from: Option<RunState>, to: RunState) -> Result<(), InvalidTransition> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(InvalidTransition { from, to })
    }
}

fn allowed(from: Option<RunState>, to: RunState) -> bool {
    let Some(from) = from else {
        // A run is born waiting, running at once, or as a cache hit.
        return matches!(to, Scheduled | Pending | Running | Cached);
    };
    match from {
        Scheduled => matches!(to, Late | Pending | Running | Paused | Cancelled),
        Late => matches!(to, Pending | Running | Cancelled),
        Pending => matches!(to, Running | Cancelling | Cancelled | Crashed),
        Running => matches!(
            to,
            Completed | Failed | TimedOut | Crashed | Retrying | Paused | Cancelling | Cancelled
        ),
        Retrying => matches!(to, Running | Failed | Cancelling | Cancelled | Crashed),
        // A resume goes back to waiting for a slot (Scheduled) when none is free;
        // a pause nobody answered in time fails.
        Paused => matches!(
            to,
            Scheduled | Pending | Running | Cancelling | Cancelled | Failed
        ),
        // A run being cancelled may still finish on its own before the signal lands.
        Cancelling => matches!(to, Cancelled | Crashed | Completed | Failed | TimedOut),
        // Only a user's retry (or a resume after a crash) brings a finished run back.
        Failed | TimedOut | Crashed | Cancelled => matches!(to, Pending | Scheduled),
        Completed | Cached => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (from, to) pair, with the expected answer written out as a table.
    #[test]
    fn transition_table() {
        // Rows: from; columns in the order of RunState::ALL:
        // Sch Late Pend Run Retr Paus Canc'ing Comp Cach Fail TOut Crash Cancelled
        let table: [(Option<RunState>, [u8; 13]); 14] = [
            (None, [1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            (Some(Scheduled), [0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1]),
            (Some(Late), [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            (Some(Pending), [0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1]),
            (Some(Running), [0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1]),
            (Some(Retrying), [0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 1]),
            (Some(Paused), [1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]),
            (Some(Cancelling), [0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1]),
            (Some(Completed), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (Some(Cached), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (Some(Failed), [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (Some(TimedOut), [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (Some(Crashed), [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (Some(Cancelled), [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for (from, row) in table {
            for (to, expected) in RunState::ALL.into_iter().zip(row) {
                assert_eq!(
                    decide(from, to).is_ok(),
                    expected == 1,
                    "{from:?} -> {to:?} should be {}",
                    if expected == 1 {
                        "accepted"
                    } else {
                        "rejected"
                    }
                );
            }
        }
    }

    #[test]
    fn terminal_states_accept_nothing_but_a_retry() {
        for from in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RunState::ALL {
                if decide(Some(from), to).is_ok() {
                    assert!(matches!(to, Pending | Scheduled), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn rejection_names_both_states() {
        let err = decide(Some(Completed), Running).unwrap_err();
        assert_eq!(err.to_string(), "a run cannot go from Completed to Running");
        let err = decide(None, Completed).unwrap_err();
        assert_eq!(err.to_string(), "a run cannot go from nothing to Completed");
    }
}
