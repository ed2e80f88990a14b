//! What a run may reach beyond its sandbox, and what a host lets runs reach.
//!
//! A deployment lists what its runs need (directories, read-only or
//! read-write, environment variables by name, and the HTTP hosts they may
//! call); a host is started with what it allows. A run goes only to a host
//! that allows everything it needs. Nothing is needed and nothing allowed by
//! default.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Directories, environment variables and HTTP hosts: needed by a
/// deployment, or allowed by a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// Names of environment variables (their values are the host's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Hosts that outgoing wasi:http requests may go to, as `name` or
    /// `name:port` (see [`HttpHost`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
}

/// One entry of the HTTP allow-list: a host name, an IPv4 address or a
/// bracketed IPv6 address, with or without a port.
///
/// The port is part of the grant: `api.example.com` allows only the
/// scheme's own port (80 for http, 443 for https), `127.0.0.1:8080` only
/// 8080. Names are compared as written (case aside), never resolved, so
/// `127.0.0.1` does not grant `localhost` or `127.1`, and there are no
/// wildcards: a grant names every host it lets a run reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpHost {
    /// Lower case; an IPv6 address keeps its brackets.
    pub host: String,
    pub port: Option<u16>,
}

/// A directory, seen by the guest at the same absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirGrant {
    pub path: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("'{0}': a directory must be an absolute path without `..`, e.g. /data/in:ro")]
    BadDir(String),
    #[error("'{0}': the access must be `ro` or `rw`, e.g. /data/out:rw")]
    BadAccess(String),
    #[error("'{0}' is not an environment variable name (letters, digits, `_`)")]
    BadEnv(String),
    #[error(
        "'{0}' is not an HTTP host: give a host name, IP address or [IPv6] address with an optional :port, e.g. api.example.com or 127.0.0.1:8080 (no scheme, path or wildcard)"
    )]
    BadHttpHost(String),
}

impl HttpHost {
    /// `name`, `name:port`, `1.2.3.4[:port]` or `[::1][:port]`.
    /// (Addresses are parsed with `core::net`'s types: parsing, no IO.)
    pub fn parse(text: &str) -> Result<HttpHost, CapabilityError> {
        let bad = || CapabilityError::BadHttpHost(text.to_string());
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (address, after) = rest.split_once(']').ok_or_else(bad)?;
            address.parse::<core::net::Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (format!("[{}]", address.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            if !is_host_name(host) {
                return Err(bad());
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => None,
            Some(digits) => {
                let plain = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                match digits.parse::<u16>() {
                    Ok(port) if plain && port != 0 => Some(port),
                    _ => return Err(bad()),
                }
            }
        };
        Ok(HttpHost { host, port })
    }

    /// Whether a request to `host` (as the URL wrote it, IPv6 in brackets)
    /// at `port` is granted, `default_port` being its scheme's own.
    pub fn grants(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && port == self.port.unwrap_or(default_port)
    }
}

impl std::fmt::Display for HttpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// A DNS name (letters, digits and inner hyphens in dot-separated labels)
/// or a dotted IPv4 address; what an IPv4 address is, is left to the parse
/// (`1.2.3.999` is neither).
fn is_host_name(text: &str) -> bool {
    let label = |part: &str| {
        (1..=63).contains(&part.len())
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    let numeric = text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric {
        return text.parse::<core::net::Ipv4Addr>().is_ok();
    }
    (1..=253).contains(&text.len()) && text.split('.').all(label)
}

impl DirGrant {
    /// `PATH`, `PATH:ro` or `PATH:rw` (read-only unless said).
    pub fn parse(text: &str) -> Result<DirGrant, CapabilityError> {
        let (path, writable) = match text.rsplit_once(':') {
            Some((path, "ro")) => (path, false),
            Some((path, "rw")) => (path, true),
            Some((_, _)) if text.starts_with('/') && !text.contains(":/") => {
                return Err(CapabilityError::BadAccess(text.to_string()));
            }
            _ => (text, false),
        };
        let grant = DirGrant {
            path: path.trim_end_matches('/').to_string(),
            writable,
        };
        grant.check()?;
        Ok(grant)
    }

    fn check(&self) -> Result<(), CapabilityError> {
        // Written out, not as `Path::components` sees it (which drops `.`).
        let plain = self
            .path
            .split('/')
            .skip(1)
            .all(|part| part != "." && part != "..");
        if !self.path.starts_with('/') || !plain {
            return Err(CapabilityError::BadDir(self.path.clone()));
        }
        Ok(())
    }

    /// Whether this grant covers `need`: the same folder or one above it,
    /// writable if `need` is.
    fn covers(&self, need: &DirGrant) -> bool {
        Path::new(&need.path).starts_with(&self.path) && (self.writable || !need.writable)
    }
}

impl Capabilities {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.env.is_empty() && self.http.is_empty()
    }

    /// Checks every entry's form.
    pub fn check(&self) -> Result<(), CapabilityError> {
        for dir in &self.dirs {
            dir.check()?;
        }
        for name in &self.env {
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(CapabilityError::BadEnv(name.clone()));
            }
        }
        for host in &self.http {
            HttpHost::parse(host)?;
        }
        Ok(())
    }

    /// The HTTP allow-list, parsed; entries that do not parse grant nothing
    /// (they were refused when the capabilities were checked).
    pub fn http_hosts(&self) -> impl Iterator<Item = HttpHost> + '_ {
        self.http
            .iter()
            .filter_map(|text| HttpHost::parse(text).ok())
    }

    /// What of `needs` these allowances do not cover, in words; `None` when
    /// they cover it all.
    pub fn missing(&self, needs: &Capabilities) -> Option<String> {
        let mut missing: Vec<String> = needs
            .dirs
            .iter()
            .filter(|need| !self.dirs.iter().any(|grant| grant.covers(need)))
            .map(|need| {
                format!(
                    "directory {} ({})",
                    need.path,
                    if need.writable {
                        "read-write"
                    } else {
                        "read-only"
                    }
                )
            })
            .collect();
        missing.extend(
            needs
                .env
                .iter()
                .filter(|name| !self.env.contains(name))
                .map(|name| format!("environment variable {name}")),
        );
        // The same entry, case aside: `api.example.com` (ports 80 and 443)
        // neither covers nor is covered by `api.example.com:8443`.
        let allowed: Vec<HttpHost> = self.http_hosts().collect();
        missing.extend(
            needs
                .http
                .iter()
                .filter(
                    |text| !matches!(HttpHost::parse(text), Ok(need) if allowed.contains(&need)),
                )
                .map(|text| format!("HTTP host {text}")),
        );
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(text: &str) -> DirGrant {
        DirGrant::parse(text).unwrap()
    }

    #[test]
    fn directories_parse_read_only_unless_rw() {
        assert_eq!(
            dir("/data"),
            DirGrant {
                path: "/data".into(),
                writable: false
            }
        );
        assert_eq!(
            dir("/data/:ro"),
            DirGrant {
                path: "/data".into(),
                writable: false
            }
        );
        assert_eq!(
            dir("/data:rw"),
            DirGrant {
                path: "/data".into(),
                writable: true
            }
        );
        for bad in ["data", "/data/../etc", "/a/./b", ""] {
            assert!(DirGrant::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DirGrant::parse("/data:rx"),
            Err(CapabilityError::BadAccess("/data:rx".into()))
        );
    }

    #[test]
    fn a_grant_covers_its_folder_and_below_and_never_more_access() {
        let host = Capabilities {
            dirs: vec![dir("/srv/in:ro"), dir("/srv/out:rw")],
            env: vec!["TZ".into()],
            http: vec![],
        };
        let needs = |dirs: &[&str], env: &[&str]| Capabilities {
            dirs: dirs.iter().map(|d| dir(d)).collect(),
            env: env.iter().map(|e| e.to_string()).collect(),
            http: vec![],
        };
        assert_eq!(
            host.missing(&needs(&["/srv/in", "/srv/out/x:rw"], &["TZ"])),
            None
        );
        assert_eq!(
            host.missing(&needs(&["/srv/in:rw"], &[])).as_deref(),
            Some("directory /srv/in (read-write)")
        );
        // A sibling whose name starts alike is not below the grant.
        assert!(host.missing(&needs(&["/srv/inbox"], &[])).is_some());
        assert!(host.missing(&needs(&["/srv"], &[])).is_some());
        assert_eq!(
            host.missing(&needs(&[], &["HOME"])).as_deref(),
            Some("environment variable HOME")
        );
        assert_eq!(
            Capabilities::default().missing(&Capabilities::default()),
            None
        );
    }

    #[test]
    fn env_names_are_checked() {
        let caps = |name: &str| Capabilities {
            dirs: vec![],
            env: vec![name.into()],
            http: vec![],
        };
        assert!(caps("TZ").check().is_ok());
        assert!(caps("A_1").check().is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(caps(bad).check().is_err(), "{bad}");
        }
    }

    fn http(hosts: &[&str]) -> Capabilities {
        Capabilities {
            http: hosts.iter().map(|h| h.to_string()).collect(),
            ..Capabilities::default()
        }
    }

    #[test]
    fn http_hosts_parse_with_an_optional_port_and_bad_ones_are_named() {
        let parsed = |text: &str| HttpHost::parse(text).unwrap();
        assert_eq!(
            parsed("API.Example.com"),
            HttpHost {
                host: "api.example.com".into(),
                port: None
            }
        );
        assert_eq!(parsed("127.0.0.1:8080").port, Some(8080));
        assert_eq!(parsed("[::1]:443").host, "[::1]");
        assert_eq!(parsed("[::1]").port, None);
        assert_eq!(parsed("localhost").to_string(), "localhost");
        for bad in [
            "",
            "https://api.example.com",
            "api.example.com/path",
            "*.example.com",
            "user@api.example.com",
            "api.example.com:",
            "api.example.com:0",
            "api.example.com:65536",
            "api.example.com:+80",
            "api.example.com:80:81",
            "-api.example.com",
            "api..example.com",
            "1.2.3.999",
            "[::1",
            "[::1]8080",
            "[not-v6]",
            "a b",
        ] {
            assert_eq!(
                HttpHost::parse(bad),
                Err(CapabilityError::BadHttpHost(bad.into())),
                "{bad}"
            );
            let error = http(&[bad]).check().unwrap_err().to_string();
            assert!(error.contains(&format!("'{bad}'")), "{error}");
        }
    }

    #[test]
    fn a_granted_host_is_that_name_at_that_port_and_nothing_like_it() {
        let entry = HttpHost::parse("127.0.0.1:8080").unwrap();
        assert!(entry.grants("127.0.0.1", 8080, 80));
        assert!(!entry.grants("127.0.0.1", 8081, 80));
        assert!(!entry.grants("localhost", 8080, 80));
        assert!(!entry.grants("127.1", 8080, 80));
        assert!(!entry.grants("127.0.0.1.", 8080, 80));
        // Without a port: the scheme's own, and no other.
        let name = HttpHost::parse("api.example.com").unwrap();
        assert!(name.grants("API.example.com", 443, 443));
        assert!(name.grants("api.example.com", 80, 80));
        assert!(!name.grants("api.example.com", 8443, 443));
        assert!(!name.grants("api.example.com", 80, 443));
        assert!(!name.grants("api.example.com.evil.net", 443, 443));
        assert!(!name.grants("evil.net", 443, 443));
    }

    #[test]
    fn a_host_must_allow_every_http_host_a_deployment_needs() {
        let host = http(&["api.example.com", "127.0.0.1:8080"]);
        assert_eq!(host.missing(&http(&["API.example.com"])), None);
        assert_eq!(
            host.missing(&http(&["127.0.0.1:8081", "localhost:8080"]))
                .as_deref(),
            Some("HTTP host 127.0.0.1:8081, HTTP host localhost:8080")
        );
        assert!(host.missing(&http(&["api.example.com:8443"])).is_some());
        assert!(http(&[]).missing(&http(&["api.example.com"])).is_some());
        assert!(!http(&["x.org"]).is_empty());
    }
}
