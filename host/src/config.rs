//! Where Weir keeps things and with which settings. No IO: the caller passes
//! in the environment it read.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layout of `$WEIR_HOME`.
#[derive(Clone, Debug)]
pub struct Paths {
    home: PathBuf,
}

impl Paths {
    /// `$WEIR_HOME` if set, else `~/.weir`, else `./.weir`.
    pub fn resolve(weir_home: Option<&str>, user_home: Option<&str>) -> Paths {
        let home = match (weir_home, user_home) {
            (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
            (_, Some(home)) if !home.is_empty() => Path::new(home).join(".weir"),
            _ => PathBuf::from(".weir"),
        };
        Paths { home }
    }

    pub fn at(home: impl Into<PathBuf>) -> Paths {
        Paths { home: home.into() }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }
    pub fn database(&self) -> PathBuf {
        self.home.join("weir.db")
    }
    /// Uploaded components, by sha256.
    pub fn components(&self) -> PathBuf {
        self.home.join("components")
    }
    /// Compiled artifacts, by component sha256 and engine hash.
    pub fn compile_cache(&self) -> PathBuf {
        self.home.join("cache")
    }
    /// Pinned builders of Python and JavaScript guests, installed on first use.
    pub fn toolchains(&self) -> PathBuf {
        self.home.join("toolchains")
    }
    /// Components built from Python and JavaScript projects, by a hash of their inputs.
    pub fn builds(&self) -> PathBuf {
        self.home.join("builds")
    }
    pub fn profiles(&self) -> PathBuf {
        self.home.join("profiles.toml")
    }
    /// The key that seals secrets at rest (mode 0600).
    pub fn secrets_key(&self) -> PathBuf {
        self.home.join("secrets.key")
    }
}

/// A setting users may put in a profile: its key, the environment variable
/// that overrides it, its default and what it does.
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "api.url",
        env: "WEIR_API_URL",
        default: None,
        help: "the server the CLI talks to (unset: the local database)",
    },
    Setting {
        key: "api.key",
        env: "WEIR_API_KEY",
        default: None,
        help: "the API key the CLI sends as `Authorization: Bearer`",
    },
    Setting {
        key: "api.ca_file",
        env: "WEIR_CA_FILE",
        default: None,
        help: "a PEM file of the CA certificate(s) to trust for an https:// api.url (default: Mozilla's roots)",
    },
    Setting {
        key: "logging.level",
        env: "WEIR_LOG",
        default: Some("warn"),
        help: "log filter for the host's own messages (error, warn, info, debug, trace)",
    },
    Setting {
        key: "server.addr",
        env: "WEIR_SERVER_ADDR",
        default: Some("127.0.0.1:4200"),
        help: "where `host server start` listens",
    },
    Setting {
        key: "server.api_key_file",
        env: "WEIR_SERVER_API_KEY_FILE",
        default: None,
        help: "a file of API keys the server accepts (one per line, `read-only: KEY`, `operator: KEY` or `admin: KEY`; a bare KEY is admin)",
    },
    Setting {
        key: "server.allowed_hosts",
        env: "WEIR_SERVER_ALLOWED_HOSTS",
        default: None,
        help: "comma-separated host names the server answers to besides localhost and its addresses (e.g. weir.example.com behind a proxy)",
    },
    Setting {
        key: "server.database",
        env: "WEIR_DATABASE_URL",
        default: None,
        help: "a PostgreSQL URL (postgres://user@host:port/db) to keep runs in instead of $WEIR_HOME/weir.db; several servers may share it",
    },
    Setting {
        key: "builds.keep",
        env: "WEIR_BUILDS_KEEP",
        default: Some("20"),
        help: "how many Python and JavaScript builds (and dependency sets) $WEIR_HOME/builds keeps, the newest",
    },
    Setting {
        key: "builds.max_size",
        env: "WEIR_BUILDS_MAX_SIZE",
        default: Some("2GiB"),
        help: "at most this much in $WEIR_HOME/builds (the newest build is kept regardless)",
    },
    Setting {
        key: "cache.keep",
        env: "WEIR_CACHE_KEEP",
        default: Some("100"),
        help: "how many compiled components $WEIR_HOME/cache keeps, the newest (a removed one is compiled again when loaded)",
    },
    Setting {
        key: "cache.max_size",
        env: "WEIR_CACHE_MAX_SIZE",
        default: Some("4GiB"),
        help: "at most this much in $WEIR_HOME/cache",
    },
    Setting {
        key: "store.durability",
        env: "WEIR_DURABILITY",
        default: Some("normal"),
        help: "`normal`: commits survive a process crash; `full`: also a power loss (an fsync per commit)",
    },
];

pub const DEFAULT_PROFILE: &str = "default";

/// `$WEIR_HOME/profiles.toml`: named sets of settings and the active one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, BTreeMap<String, String>>,
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Env(&'static str),
    Profile(String),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Env(var) => write!(f, "env {var}"),
            Source::Profile(name) => write!(f, "profile '{name}'"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The settings in effect, each with its source.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub profile: String,
    pub values: BTreeMap<&'static str, (String, Source)>,
}

impl Settings {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(v, _)| v.as_str())
    }
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.values.get(key).map(|(_, s)| s)
    }
}

/// A profile file or setting name this host cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown setting '{key}'; known: {}", known_settings().join(", "))]
    UnknownSetting { key: String },
    #[error("{0}")]
    Syntax(String),
    #[error("profile '{profile}': {source}")]
    InProfile {
        profile: String,
        source: Box<ConfigError>,
    },
}

fn known_settings() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.key).collect()
}

pub fn setting(key: &str) -> Result<&'static Setting, ConfigError> {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .ok_or_else(|| ConfigError::UnknownSetting {
            key: key.to_string(),
        })
}

impl Profiles {
    pub fn parse(text: &str) -> Result<Profiles, ConfigError> {
        let profiles: Profiles =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        for (name, values) in &profiles.profiles {
            for key in values.keys() {
                setting(key).map_err(|e| ConfigError::InProfile {
                    profile: name.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok(profiles)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// `WEIR_PROFILE`, else the file's `active`, else `default`.
    pub fn active_name(&self, env_profile: Option<&str>) -> String {
        env_profile
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .or_else(|| self.active.clone())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string())
    }

    /// Environment over the active profile over defaults.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Settings {
        let profile = self.active_name(env("WEIR_PROFILE").as_deref());
        let own = self.profiles.get(&profile);
        let mut values = BTreeMap::new();
        for s in SETTINGS {
            let value = match (
                env(s.env).filter(|v| !v.is_empty()),
                own.and_then(|p| p.get(s.key)),
            ) {
                (Some(v), _) => Some((v, Source::Env(s.env))),
                (None, Some(v)) => Some((v.clone(), Source::Profile(profile.clone()))),
                (None, None) => s.default.map(|d| (d.to_string(), Source::Default)),
            };
            if let Some(value) = value {
                values.insert(s.key, value);
            }
        }
        Settings { profile, values }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_beats_profile_beats_default() {
        let profiles = Profiles::parse(
            r#"
            active = "prod"
            [profiles.prod]
            "api.url" = "http://prod:4200"
            "logging.level" = "info"
            [profiles.dev]
            "api.url" = "http://dev:4200"
            "#,
        )
        .unwrap();
        let none = |_: &str| None;
        let settings = profiles.resolve(&none);
        assert_eq!(settings.profile, "prod");
        assert_eq!(settings.get("api.url"), Some("http://prod:4200"));
        assert_eq!(settings.get("server.addr"), Some("127.0.0.1:4200"));
        assert_eq!(settings.source("server.addr"), Some(&Source::Default));
        let env = |k: &str| match k {
            "WEIR_PROFILE" => Some("dev".to_string()),
            "WEIR_LOG" => Some("debug".to_string()),
            _ => None,
        };
        let settings = profiles.resolve(&env);
        assert_eq!(settings.get("api.url"), Some("http://dev:4200"));
        assert_eq!(settings.get("logging.level"), Some("debug"));
        assert_eq!(
            settings.source("logging.level"),
            Some(&Source::Env("WEIR_LOG"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Profiles::parse("[profiles.x]\n\"api.uri\" = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting 'api.uri'"), "{err}");
    }

    #[test]
    fn weir_home_wins_over_user_home() {
        assert_eq!(
            Paths::resolve(Some("/w"), Some("/u")).home(),
            Path::new("/w")
        );
        assert_eq!(
            Paths::resolve(None, Some("/u")).home(),
            Path::new("/u/.weir")
        );
        assert_eq!(Paths::resolve(Some(""), None).home(), Path::new(".weir"));
    }
}
