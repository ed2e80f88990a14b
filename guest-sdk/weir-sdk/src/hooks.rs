//! What a state hook is given: how the flow or task run it watches ended.
//! A hook is a task of the same component named in `#[flow(on_failure = ..)]`
//! or `#[task(on_completion = ..)]`; it takes one argument, `run: HookRun`.

/// How the run a hook watches ended. Unknown fields are ignored, so a newer
/// host may say more.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct HookRun {
    pub flow_run_id: String,
    pub flow_name: String,
    /// The task whose end this is, for a task's hook; `None` for a flow's.
    #[serde(default)]
    pub task_name: Option<String>,
    /// The state it ended in: `Completed`, `Cached`, `Failed`, `TimedOut`,
    /// `Cancelled` or `Crashed`.
    pub state: String,
    /// Why it did not complete, when it did not.
    #[serde(default)]
    pub message: Option<String>,
    /// The flow's params, or the task's input.
    #[serde(default)]
    pub input: serde_json::Value,
    /// Its result, when it completed.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// The attempt it ended on (1 for the first).
    #[serde(default)]
    pub attempt: u32,
}
