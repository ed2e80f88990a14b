//! How the CLI shows things: live progress, summaries, tables, log lines,
//! how a followed run ended, and replies printed for scripts (`--json`).

use super::Exit;
use crate::clock::format_rfc3339;
use crate::engine::human_bytes;
use crate::model::{LogLevel, RunState};
use crate::worker::{RunEvent, RunSummary};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Events taken in one go that make the watcher wait a tick before the next.
const BUSY_BATCH: usize = 64;

/// How long a busy watcher lets events gather.
const BUSY_TICK: Duration = Duration::from_millis(20);

/// Renders run events: a live status line on a terminal, plain lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    quiet: bool,
}

#[derive(Default)]
struct Counts {
    running: u64,
    completed: u64,
    cached: u64,
    retrying: u64,
    failed: u64,
}

impl Progress {
    pub fn new(tty: bool, json: bool, quiet: bool) -> Progress {
        let bar = tty.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { bar, json, quiet }
    }

    /// Shows the events of one run until it finishes or `ended` fires.
    ///
    /// A busy run sends thousands of events a second, and waking for each
    /// one cost the run a thread hand-off per task (a sequential flow ran
    /// 18k tasks/s watched and 33k unwatched). So after a busy batch the
    /// watcher sleeps a tick and takes what came meanwhile in one go; the
    /// run's end (`ended`) cuts the tick short, so nothing waits for it.
    pub async fn watch(
        self,
        mut events: UnboundedReceiver<RunEvent>,
        ended: tokio_util::sync::CancellationToken,
    ) {
        let mut counts = Counts::default();
        let mut attempts: HashMap<crate::model::TaskRunId, u32> = HashMap::new();
        while let Some(first) = events.recv().await {
            let mut finished = self.show(first, &mut counts, &mut attempts);
            let mut taken = 1;
            while !finished && let Ok(event) = events.try_recv() {
                finished = self.show(event, &mut counts, &mut attempts);
                taken += 1;
            }
            if let Some(bar) = &self.bar {
                bar.set_message(format!(
                    "tasks: {} running · {} completed · {} cached · {} retrying · {} failed",
                    counts.running, counts.completed, counts.cached, counts.retrying, counts.failed
                ));
            }
            if finished {
                break;
            }
            if taken >= BUSY_BATCH {
                tokio::select! {
                    _ = tokio::time::sleep(BUSY_TICK) => {}
                    _ = ended.cancelled() => {}
                }
            }
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Counts or prints one event; true when it is the run's last.
    fn show(
        &self,
        event: RunEvent,
        counts: &mut Counts,
        attempts: &mut HashMap<crate::model::TaskRunId, u32>,
    ) -> bool {
        match event {
            RunEvent::FlowStarted {
                flow_name, attempt, ..
            } if attempt > 1 => {
                self.line(&format!("flow '{flow_name}' attempt {attempt}"));
            }
            RunEvent::FlowStarted { .. } => {}
            RunEvent::TaskStarted { id, attempt, .. } => {
                if attempt == 1 {
                    counts.running += 1;
                } else {
                    counts.retrying = counts.retrying.saturating_sub(1);
                }
                attempts.insert(id, attempt);
            }
            RunEvent::TaskRetrying { .. } => counts.retrying += 1,
            RunEvent::TaskFinished { id, state, .. } => {
                if attempts.remove(&id).is_some() {
                    counts.running = counts.running.saturating_sub(1);
                }
                match state {
                    RunState::Completed => counts.completed += 1,
                    RunState::Cached => counts.cached += 1,
                    _ => counts.failed += 1,
                }
            }
            RunEvent::Log {
                task,
                level,
                message,
            } => {
                if !self.quiet {
                    let who = task.map(|t| format!("[{t}] ")).unwrap_or_default();
                    self.line(&format!(
                        "{} {:<5} {who}{}",
                        now(),
                        level_label(level),
                        indent_continuation(&message)
                    ));
                }
            }
            RunEvent::FlowFinished { .. } => return true,
        }
        false
    }

    fn line(&self, text: &str) {
        if self.json {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

fn now() -> String {
    let micros = crate::clock::Clock::now_micros(&crate::clock::SystemClock);
    format_rfc3339(micros)[11..23].to_string()
}

/// A log record's later lines (a traceback, a stack, a panic's note),
/// indented under the first one's text: `HH:MM:SS.mmm LEVEL ` is 19 wide.
pub fn indent_continuation(message: &str) -> String {
    message.replace('\n', &format!("\n{:19}", ""))
}

pub fn level_label(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

pub fn print_summary(summary: &RunSummary) {
    eprintln!(
        "  tasks {} · attempts {} · cached {} · replayed {} · failed {} · fuel {} · peak memory {} · {}",
        summary.tasks,
        summary.attempts,
        summary.cached,
        summary.replayed,
        summary.failed,
        format_count(summary.fuel_used),
        human_bytes(summary.peak_memory_bytes),
        format_duration(summary.duration)
    );
}

pub fn format_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A plain text table with left-aligned columns.
/// Prints what the API answered for scripts (`--json`). Through a `Value`,
/// whose keys are sorted, so a reply read as a type prints as the server
/// sent it.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_value(value)?);
    Ok(())
}

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        line.join("  ").trim_end().to_string()
    };
    let mut out = vec![render(headers.to_vec())];
    for row in rows {
        out.push(render(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// `eprintln!` for the long-running commands (the server, a remote host,
/// `host serve`): a stderr that cannot be written (a full disk, a closed
/// pipe) loses the line instead of panicking the process.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

/// Prints the API's reply for scripts (`--json`), else a sentence for people.
pub fn said(reply: &Value, json: bool, sentence: impl FnOnce() -> String) {
    if json {
        println!("{reply}");
    } else {
        println!("{}", sentence());
    }
}

/// A time for people: "2026-01-05 09:00:00".
pub fn when(micros: i64) -> String {
    format_rfc3339(micros)[..19].replace('T', " ")
}

/// The first characters of a component digest, as tables show it.
pub fn short_digest(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// "paused" or "active".
pub fn paused_word(paused: bool) -> &'static str {
    if paused { "paused" } else { "active" }
}

/// A log line for people: time, level, the task that wrote it, message.
pub(crate) fn print_log_line(line: &crate::api::wire::LogLine) {
    let at = format_rfc3339(line.at)[11..23].to_string();
    let who = line
        .task_name
        .as_deref()
        .map(|n| format!("[{n}] "))
        .unwrap_or_default();
    println!(
        "{at} {:<5} {who}{}",
        level_label(line.level),
        indent_continuation(&line.message)
    );
}

/// Prints how a followed run ended; exit 1 unless it Completed.
pub(crate) fn finish(run: &crate::api::wire::FlowRun, json: bool) -> anyhow::Result<()> {
    let state = run.state.as_str();
    if json {
        println!(
            "{}",
            json!({
                "flow_run_id": run.id,
                "state": state,
                "result": run.result.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()),
                "message": run.message,
            })
        );
    } else {
        match run.result.as_deref() {
            Some(result) => println!("\n{state}: {result}"),
            None => println!(
                "\n{state}{}",
                run.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        }
    }
    // Paused for input is not a failure: the message says how to resume it.
    if matches!(run.state, RunState::Completed | RunState::Paused) {
        Ok(())
    } else {
        Err(Exit::code(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["a".into(), "Completed".into()],
                vec!["bbb".into(), "Failed".into()],
            ],
        );
        assert_eq!(t, "ID   STATE\na    Completed\nbbb  Failed");
    }

    #[test]
    fn counts_and_durations_read_well() {
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1_500_000), "1.5M");
        assert_eq!(format_duration(Duration::from_micros(250)), "250 µs");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500.0 ms");
    }
}
