//! Where Weir keeps things and with which settings. No IO: the caller passes
//! in the environment it read.

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
