//! Figures, their targets, the table and the JSON file.
//!
//! Every figure keeps all its samples: the table gives the median and the
//! spread (min–max) so one noisy run on a shared machine shows as a wide
//! spread instead of a quietly wrong number.

use serde_json::{Value, json};
use std::process::Command;

/// Which way a figure is better.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Better {
    Lower,
    Higher,
}

/// A figure's target: the bound from the issues and which way is better.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub bound: f64,
    pub better: Better,
}

pub const fn at_most(bound: f64) -> Option<Target> {
    Some(Target {
        bound,
        better: Better::Lower,
    })
}

pub const fn at_least(bound: f64) -> Option<Target> {
    Some(Target {
        bound,
        better: Better::Higher,
    })
}

/// One measured quantity with every sample taken.
#[derive(Clone, Debug)]
pub struct Figure {
    pub scenario: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub target: Option<Target>,
    /// Why a target is missed, or what the figure means, in a few words.
    pub note: Option<String>,
}

impl Figure {
    pub fn new(scenario: &'static str, name: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            scenario,
            name: name.into(),
            unit,
            samples: Vec::new(),
            target: None,
            note: None,
        }
    }

    pub fn samples(mut self, samples: Vec<f64>) -> Figure {
        self.samples = samples;
        self
    }

    pub fn one(self, value: f64) -> Figure {
        self.samples(vec![value])
    }

    pub fn target(mut self, target: Option<Target>) -> Figure {
        self.target = target;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = Some(note.into());
        self
    }

    pub fn median(&self) -> f64 {
        percentile(&self.samples, 50.0)
    }

    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::max)
    }

    /// `Some(true)` when the median meets the target.
    pub fn met(&self) -> Option<bool> {
        let target = self.target?;
        let m = self.median();
        Some(match target.better {
            Better::Lower => m <= target.bound,
            Better::Higher => m >= target.bound,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "name": self.name,
            "unit": self.unit,
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "samples": self.samples,
            "target": self.target.map(|t| json!({
                "bound": t.bound,
                "better": if t.better == Better::Lower { "lower" } else { "higher" },
            })),
            "met": self.met(),
            "note": self.note,
        })
    }
}

/// The nearest-rank percentile of `samples` (`p` in 0..=100).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Everything one invocation measured.
#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// Lines printed under the table (skips, ratios, explanations).
    pub notes: Vec<String>,
    /// Extra structured results (Prefect's side, drills).
    pub extra: serde_json::Map<String, Value>,
}

impl Report {
    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn find(&self, scenario: &str, name: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.scenario == scenario && f.name == name)
    }

    pub fn print(&self, machine: &Value) {
        println!(
            "Weir {} at {} on {} ({} cores, {} MB), {}\n",
            machine["version"].as_str().unwrap_or("?"),
            machine["commit"].as_str().unwrap_or("?"),
            machine["cpu"].as_str().unwrap_or("?"),
            machine["cores"],
            machine["memory_mb"],
            machine["date"].as_str().unwrap_or("?"),
        );
        println!(
            "{:<11} {:<50} {:>11} {:>23} {:>6}  {:<14} verdict",
            "scenario", "figure", "median", "spread (min–max)", "n", "target"
        );
        let mut scenario = "";
        for f in &self.figures {
            if f.scenario != scenario && !scenario.is_empty() {
                println!();
            }
            scenario = f.scenario;
            let target = f.target.map_or(String::new(), |t| {
                format!(
                    "{} {}",
                    if t.better == Better::Lower {
                        "≤"
                    } else {
                        "≥"
                    },
                    number(t.bound)
                )
            });
            let verdict = match f.met() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "{:<11} {:<50} {:>11} {:>23} {:>6}  {:<14} {}{}",
                f.scenario,
                f.name,
                format!("{} {}", number(f.median()), f.unit),
                if f.samples.len() > 1 {
                    format!("{}–{}", number(f.min()), number(f.max()))
                } else {
                    String::new()
                },
                f.samples.len(),
                target,
                verdict,
                f.note
                    .as_deref()
                    .map_or(String::new(), |n| format!("  ({n})")),
            );
        }
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("{note}");
            }
        }
        let missed: Vec<&Figure> = self
            .figures
            .iter()
            .filter(|f| f.met() == Some(false))
            .collect();
        if !missed.is_empty() {
            println!("\ntargets missed:");
            for f in missed {
                println!(
                    "  {} / {}: {} {}{}",
                    f.scenario,
                    f.name,
                    number(f.median()),
                    f.unit,
                    f.note
                        .as_deref()
                        .map_or(String::new(), |n| format!(": {n}"))
                );
            }
        }
    }

    pub fn to_json(&self, machine: &Value) -> Value {
        let mut value = json!({
            "machine": machine,
            "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
            "notes": self.notes,
        });
        for (key, extra) in &self.extra {
            value[key] = extra.clone();
        }
        value
    }
}

/// A number with as many digits as it deserves.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 10_000.0 {
        let whole = format!("{:.0}", x);
        // Thousands separators: 123456 -> 123,456.
        let (sign, digits) = whole.split_at(usize::from(whole.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The machine, the version and the commit the figures belong to.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(weir_tests::workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string));
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": if dirty { format!("{commit}-dirty") } else { commit },
        "date": utc_now(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_mb": memory_mb,
        "os": std::env::consts::OS,
        "load_average_at_start": load,
    })
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`, from the system clock (no time crate needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn targets_are_met_by_the_median_in_their_direction() {
        let f = Figure::new("s", "x", "ms")
            .samples(vec![1.0, 30.0, 2.0])
            .target(at_most(5.0));
        assert_eq!(f.met(), Some(true));
        let f = Figure::new("s", "x", "/s")
            .samples(vec![1.0, 30.0, 2.0])
            .target(at_least(5.0));
        assert_eq!(f.met(), Some(false));
    }

    #[test]
    fn numbers_get_separators() {
        assert_eq!(number(123_456.7), "123,457");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
    }
}
