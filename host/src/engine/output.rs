//! A guest's stdout and stderr, turned into log lines.
//!
//! Writes never fail (a guest whose `println!` fails would panic), but only the
//! first `cap` bytes are kept; one line says how much was dropped. Partial lines
//! are flushed when the instance ends. The tail of stderr is kept so that a
//! panic message can be put into the failure.
//!
//! A Python traceback or a Rust panic printed to stderr is one log record,
//! not one per line: from its first line (`Traceback (most recent call
//! last):`, `... panicked at FILE:LINE:COL:`) the lines are held and joined
//! until the record ends (the exception line after the indented frames; the
//! `note:` line after a panic's message) or another kind of line comes.

use super::GuestHost;
use crate::model::LogLevel;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

const STDERR_TAIL: usize = 4096;
const MAX_LINE: usize = 8192;

#[derive(Clone)]
pub struct OutputCapture {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    host: Arc<dyn GuestHost>,
    cap: usize,
    written: usize,
    dropped: usize,
    stdout_line: Vec<u8>,
    stderr_line: Vec<u8>,
    stderr_tail: Vec<u8>,
    /// Multi-line stderr records being gathered.
    stderr_records: StderrRecords,
}

impl OutputCapture {
    pub fn new(host: Arc<dyn GuestHost>, cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                host,
                cap,
                written: 0,
                dropped: 0,
                stdout_line: Vec::new(),
                stderr_line: Vec::new(),
                stderr_tail: Vec::new(),
                stderr_records: StderrRecords::default(),
            })),
        }
    }

    pub(super) fn stream(&self, level: LogLevel) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            level,
        }
    }

    fn write(&self, level: LogLevel, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.write(level, bytes);
    }

    /// Emits partial lines and the note on dropped output.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.flush_line(LogLevel::Info);
        inner.flush_line(LogLevel::Warn);
        inner.flush_record();
        if inner.dropped > 0 {
            let note = format!(
                "output truncated: {} more bytes of stdout/stderr were dropped (limit {} bytes per instance)",
                inner.dropped, inner.cap
            );
            inner.dropped = 0;
            inner.host.log(LogLevel::Warn, &note);
        }
    }

    /// The message of a Rust-style panic printed to stderr, if any.
    pub fn panic_message(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tail = String::from_utf8_lossy(&inner.stderr_tail).into_owned();
        let at = tail.rfind("panicked at")?;
        let after = &tail[at..];
        // "panicked at src/lib.rs:10:5:\nmessage\nnote: run with ..."
        let mut lines = after.lines();
        let location = lines
            .next()?
            .trim_start_matches("panicked at ")
            .trim_end_matches(':');
        let message: Vec<&str> = lines.take_while(|l| !l.starts_with("note:")).collect();
        Some(format!("{} (at {location})", message.join("\n").trim()))
    }
}

impl Inner {
    fn write(&mut self, level: LogLevel, bytes: &[u8]) {
        if level == LogLevel::Warn {
            self.stderr_tail.extend_from_slice(bytes);
            if self.stderr_tail.len() > STDERR_TAIL {
                let excess = self.stderr_tail.len() - STDERR_TAIL;
                self.stderr_tail.drain(..excess);
            }
        }
        let room = self.cap.saturating_sub(self.written);
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        self.written += kept.len();
        self.dropped += dropped.len();
        for chunk in kept.split_inclusive(|b| *b == b'\n') {
            self.line_mut(level).extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || self.line_mut(level).len() >= MAX_LINE {
                self.flush_line(level);
            }
        }
    }

    fn line_mut(&mut self, level: LogLevel) -> &mut Vec<u8> {
        if level == LogLevel::Warn {
            &mut self.stderr_line
        } else {
            &mut self.stdout_line
        }
    }

    fn flush_line(&mut self, level: LogLevel) {
        let line = std::mem::take(self.line_mut(level));
        if line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            return;
        }
        if level != LogLevel::Warn {
            self.host.log(level, text);
            return;
        }
        for record in self.stderr_records.push(text) {
            self.host.log(level, &record);
        }
    }

    fn flush_record(&mut self) {
        if let Some(record) = self.stderr_records.finish() {
            self.host.log(LogLevel::Warn, &record);
        }
    }
}

/// Gathers stderr lines into records: most are one line, a traceback or a
/// panic several.
#[derive(Default)]
struct StderrRecords {
    open: Option<String>,
}

impl StderrRecords {
    /// Takes one line; returns the records complete now (zero, one or two).
    fn push(&mut self, line: &str) -> Vec<String> {
        let mut done = Vec::new();
        if let Some(record) = &mut self.open {
            match continues(record, line) {
                Continuation::Part => {
                    record.push('\n');
                    record.push_str(line);
                    return done;
                }
                Continuation::Last => {
                    record.push('\n');
                    record.push_str(line);
                    done.extend(self.open.take());
                    return done;
                }
                Continuation::Not => done.extend(self.open.take()),
            }
        }
        if starts_record(line) {
            self.open = Some(line.to_string());
        } else {
            done.push(line.to_string());
        }
        done
    }

    /// The record still open, at the end of the output.
    fn finish(&mut self) -> Option<String> {
        self.open.take()
    }
}

const TRACEBACK: &str = "Traceback (most recent call last):";

/// Whether a stderr line opens a record of several lines.
fn starts_record(line: &str) -> bool {
    line == TRACEBACK || (line.contains("panicked at ") && line.ends_with(':'))
}

enum Continuation {
    /// The line belongs to the record, which goes on.
    Part,
    /// The line belongs to the record and ends it.
    Last,
    /// The line is not part of it.
    Not,
}

fn continues(record: &str, line: &str) -> Continuation {
    let indented = line.starts_with([' ', '\t']);
    if record.starts_with(TRACEBACK) {
        if indented {
            Continuation::Part
        } else if record.lines().count() > 1 {
            // `ValueError: boom` after the frames.
            Continuation::Last
        } else {
            Continuation::Not
        }
    } else if line.starts_with("note: ") {
        Continuation::Last
    } else if record.lines().count() > 20 {
        // A panic message does not go on for ever.
        Continuation::Not
    } else {
        Continuation::Part
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(stderr: &str) -> Vec<String> {
        let mut records = StderrRecords::default();
        let mut out: Vec<String> = stderr.lines().flat_map(|l| records.push(l)).collect();
        out.extend(records.finish());
        out
    }

    #[test]
    fn a_traceback_and_a_panic_are_one_record_each() {
        let stderr = "before\nTraceback (most recent call last):\n  File \"/1/app.py\", line 3, in f\n    boom()\nValueError: boom\nafter\nthread '<unnamed>' panicked at src/lib.rs:5:5:\nfixture panic: boom\nnote: run with `RUST_BACKTRACE=1`\nlast";
        assert_eq!(
            records(stderr),
            [
                "before",
                "Traceback (most recent call last):\n  File \"/1/app.py\", line 3, in f\n    boom()\nValueError: boom",
                "after",
                "thread '<unnamed>' panicked at src/lib.rs:5:5:\nfixture panic: boom\nnote: run with `RUST_BACKTRACE=1`",
                "last",
            ]
        );
        // A header alone is not glued to what follows it.
        assert_eq!(
            records("Traceback (most recent call last):\nnext"),
            ["Traceback (most recent call last):", "next"]
        );
    }
}

/// One of the two streams, as WASI sees it.
#[derive(Clone)]
pub(super) struct CaptureStream {
    capture: OutputCapture,
    level: LogLevel,
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.level, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.level, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
