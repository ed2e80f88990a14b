//! A flow run's log: the budget that caps it, and the writes of each line.

use super::{FlowRun, RunEvent, send};
use crate::control::Durability;
use crate::model::{LogLevel, TaskRunId};
use crate::store::{LogRecord, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Caps the log of one flow run and its subflows, in lines and in bytes.
/// Once a line does not fit, the budget is closed: later lines are only
/// counted, and the run's end records one line saying how many were dropped.
pub(super) struct LogBudget {
    max_lines: u64,
    max_bytes: u64,
    lines: AtomicU64,
    bytes: AtomicU64,
    closed: AtomicBool,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl LogBudget {
    pub(super) fn new(max_lines: u64, max_bytes: u64) -> Self {
        Self {
            max_lines,
            max_bytes,
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// Whether to keep a line of this text.
    pub(super) fn admit(&self, message: &str) -> bool {
        let size = message.len() as u64;
        if !self.closed.load(Ordering::Relaxed) {
            let lines = self.lines.fetch_add(1, Ordering::Relaxed);
            let bytes = self.bytes.fetch_add(size, Ordering::Relaxed);
            if lines < self.max_lines && bytes.saturating_add(size) <= self.max_bytes {
                return true;
            }
            self.closed.store(true, Ordering::Relaxed);
        }
        self.dropped_lines.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(size, Ordering::Relaxed);
        false
    }

    /// The line that says what was dropped, if anything was.
    pub(super) fn dropped_note(&self) -> Option<String> {
        let lines = self.dropped_lines.load(Ordering::Relaxed);
        (lines > 0).then(|| {
            format!(
                "{lines} log lines ({}) dropped: this run and its subflows reached the log limit of {} lines or {} per run; log less, or ask the server's operator to raise the limit",
                crate::engine::human_bytes(self.dropped_bytes.load(Ordering::Relaxed)),
                self.max_lines,
                crate::engine::human_bytes(self.max_bytes),
            )
        })
    }
}

impl FlowRun {
    pub(super) fn log(&self, task: Option<(TaskRunId, &str)>, level: LogLevel, message: &str) {
        let message = self.secrets.redact(message);
        if !self.logs.admit(&message) {
            return;
        }
        self.write_log(task, level, message.into_owned());
    }

    /// Records a log line, outside the budget.
    pub(super) fn write_log(
        &self,
        task: Option<(TaskRunId, &str)>,
        level: LogLevel,
        message: String,
    ) {
        self.control().record(
            vec![Write::Logs(vec![LogRecord {
                flow_run: self.id,
                task_run: task.map(|t| t.0),
                at: self.control().now(),
                level,
                message: message.to_string(),
            }])],
            Durability::Detached,
        );
        send(
            &self.events,
            RunEvent::Log {
                task: task.map(|t| t.1.to_string()),
                level,
                message,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_keeps_max_lines_then_counts_what_it_drops() {
        let budget = LogBudget::new(2, 1000);
        assert!(budget.admit("a") && budget.admit("b"));
        assert!(budget.dropped_note().is_none());
        assert!(!budget.admit("c") && !budget.admit("d"));
        let note = budget.dropped_note().unwrap();
        assert!(note.starts_with("2 log lines (2 B) dropped"), "{note}");
    }

    #[test]
    fn log_budget_keeps_at_most_max_bytes_and_closes_at_the_first_misfit() {
        let budget = LogBudget::new(100, 10);
        assert!(budget.admit("12345678"));
        assert!(!budget.admit("123"), "would make 11 bytes");
        assert!(!budget.admit("1"), "closed: lines stay in order");
        assert!(
            budget
                .dropped_note()
                .unwrap()
                .starts_with("2 log lines (4 B)")
        );
    }
}
