//! What a run may reach beyond its sandbox, and what a host lets runs reach.
//!
//! A deployment lists what its runs need (directories, read-only or
//! read-write, and environment variables by name); a host is started with
//! what it allows. A run goes only to a host that allows everything it
//! needs. Nothing is needed and nothing allowed by default.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Directories and environment variables: needed by a deployment, or allowed by a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// Names of environment variables (their values are the host's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
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
        self.dirs.is_empty() && self.env.is_empty()
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
        Ok(())
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
        };
        let needs = |dirs: &[&str], env: &[&str]| Capabilities {
            dirs: dirs.iter().map(|d| dir(d)).collect(),
            env: env.iter().map(|e| e.to_string()).collect(),
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
        };
        assert!(caps("TZ").check().is_ok());
        assert!(caps("A_1").check().is_ok());
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(caps(bad).check().is_err(), "{bad}");
        }
    }
}
