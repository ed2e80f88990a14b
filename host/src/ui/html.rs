//! The page frame and the few formatting helpers every page uses.
//!
//! Pages are written as text with `write!`. The one rule that keeps them safe:
//! every value that comes from a run, a deployment, a manifest or a request
//! goes through [`esc`] (numbers and our own constant strings need not).
//! The page's `Content-Security-Policy` allows no inline script, so even a
//! forgotten escape could not run code.

use crate::clock::format_rfc3339;
use crate::model::{RunState, TimestampMicros};
use std::fmt::{self, Write as _};

/// Text made safe for HTML element content and quoted attribute values.
pub(super) struct Esc<'a>(&'a str);

pub(super) fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Query-string encoding for a value placed in a link (then escaped as HTML too).
pub(super) fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The first 12 characters of a digest, for people (whole if it is shorter
/// or not plain ASCII).
pub(super) fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The sections of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Dashboard"),
    ("/runs", "Runs"),
    ("/deployments", "Deployments"),
    ("/pools", "Pools"),
    ("/components", "Components"),
    ("/secrets", "Secrets"),
    ("/variables", "Variables"),
    ("/automations", "Automations"),
];

/// A whole page: head, navigation (with `active` marked), `body`.
/// `signed_in` adds the sign-out button (only servers with keys have one).
pub(super) fn page(title: &str, active: &str, signed_in: bool, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1200);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{} · Weir</title>\
         <link rel=\"stylesheet\" href=\"/assets/style.css\">\
         <script type=\"module\" src=\"/assets/app.js\"></script></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a><header><a class=\"brand\" href=\"/\">Weir</a><nav aria-label=\"Sections\">",
        esc(title)
    );
    for (path, label) in NAV {
        let current = if *path == active {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(out, "<a href=\"{path}\"{current}>{label}</a>");
    }
    out.push_str("</nav>");
    if signed_in {
        out.push_str(
            "<form method=\"post\" action=\"/logout\" class=\"signout\"><button>Sign out</button></form>",
        );
    }
    let _ = write!(
        out,
        "</header><main id=\"main\">{body}</main></body></html>"
    );
    out
}

/// A state as a coloured badge (`id` lets the run page update it live).
pub(super) fn badge(state: RunState) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", state.as_str())
}

/// A time the browser shows in the viewer's zone (UTC without JavaScript).
pub(super) fn time(at: TimestampMicros) -> String {
    let text = format_rfc3339(at);
    format!("<time datetime=\"{text}\">{text}</time>")
}

pub(super) fn maybe_time(at: Option<TimestampMicros>) -> String {
    at.map(time).unwrap_or_else(|| "–".to_string())
}

/// A duration for people: `850 µs`, `12 ms`, `3.4 s`, `2 m 05 s`.
pub(super) fn duration(micros: i64) -> String {
    let micros = micros.max(0);
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{} ms", micros / 1_000)
    } else if micros < 60_000_000 {
        format!("{:.1} s", micros as f64 / 1e6)
    } else {
        let secs = micros / 1_000_000;
        format!("{} m {:02} s", secs / 60, secs % 60)
    }
}

pub(super) fn span(start: Option<TimestampMicros>, end: Option<TimestampMicros>) -> String {
    match (start, end) {
        (Some(start), Some(end)) => duration(end - start),
        _ => "–".to_string(),
    }
}

/// Bytes for people (KiB, MiB, GiB).
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Fuel units for people: `1.2 M`.
pub(super) fn fuel(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.1} G", n as f64 / 1e9),
    }
}

/// JSON text pretty-printed (as given when it is not JSON), escaped.
pub(super) fn json_block(text: &str) -> String {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    format!("<pre class=\"json\">{}</pre>", esc(&pretty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_every_character_that_ends_text_or_an_attribute() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("plain").to_string(), "plain");
        assert_eq!(esc("").to_string(), "");
        assert_eq!(esc("é<ü").to_string(), "é&lt;ü");
    }

    #[test]
    fn url_parts_keep_only_unreserved_characters() {
        assert_eq!(url_part("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(1_500), "1 ms");
        assert_eq!(duration(2_500_000), "2.5 s");
        assert_eq!(duration(125_000_000), "2 m 05 s");
        assert_eq!(fuel(1_234_567), "1.2 M");
    }
}
