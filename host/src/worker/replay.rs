//! Replay: calls a flow run completed in an earlier attempt are answered
//! from their records instead of running again.

use super::cache_key::input_sha256;
use super::{FlowRun, WorkerError, result_storage};
use crate::control::ControlError;
use crate::model::LogLevel;

/// A completed call from an earlier attempt of this flow run.
pub(super) struct Recorded {
    task_name: String,
    /// sha256 of the input as the flow passed it (rows from before the
    /// hash was kept have none: their recorded input is compared instead).
    input_sha256: Option<String>,
    input: String,
    output: String,
}

impl FlowRun {
    pub(super) fn load_replay(&self) -> Result<(), WorkerError> {
        let rows = self
            .control()
            .store()
            .task_runs(self.id)
            .map_err(ControlError::from)?;
        let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        replay.clear();
        for row in rows.into_iter().filter(|r| r.state.is_success()) {
            if let Some(output) = row.output {
                let output = match self.stored_result(&row.task_name, &output) {
                    Some(Ok(output)) => output,
                    Some(Err(e)) => {
                        drop(replay);
                        self.log(
                            None,
                            LogLevel::Warn,
                            &format!("call #{} runs again: {e}", row.call_seq),
                        );
                        replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                    None => output,
                };
                replay.insert(
                    row.call_seq,
                    Recorded {
                        task_name: row.task_name,
                        input_sha256: row.input_sha256,
                        input: row.input,
                        output,
                    },
                );
            }
        }
        Ok(())
    }

    /// A recorded output of task `task` as the flow should see it: read back
    /// from its result storage when its policy names one (`None`: the record
    /// is the output itself).
    pub(super) fn stored_result(
        &self,
        task: &str,
        recorded: &str,
    ) -> Option<Result<String, result_storage::ResultStorageError>> {
        self.component
            .manifest
            .task(task)?
            .policy
            .result_storage
            .as_ref()?;
        result_storage::read_back(&self.executor.settings.result_storages, recorded)
    }

    pub(super) fn replayed(&self, seq: u64, name: &str, input: &str) -> Option<String> {
        let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        let recorded = replay.remove(&seq)?;
        // Inputs are recorded redacted, so a secret-bearing input is matched
        // by the hash of what the flow passed, not by its recorded text.
        let same_input = match &recorded.input_sha256 {
            Some(hash) => *hash == input_sha256(input),
            None => recorded.input == input,
        };
        if recorded.task_name == name && same_input {
            Some(recorded.output)
        } else {
            drop(replay);
            let what = if recorded.task_name == name {
                format!("'{name}' had another input in an earlier attempt")
            } else {
                format!(
                    "was '{}' in an earlier attempt and is '{name}' now",
                    recorded.task_name
                )
            };
            self.log(
                None,
                LogLevel::Warn,
                &format!(
                    "call #{seq} {what}: the flow is not deterministic, so the task runs again"
                ),
            );
            None
        }
    }
}
