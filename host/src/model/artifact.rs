//! Artifacts: what a run leaves behind for people to read (a Markdown
//! report, a table, a link), and the checks a guest's artifact must pass.
//!
//! An artifact belongs to one flow run (and, when a task made it, one task
//! run). With a key it is also a version of that key: the key's versions
//! across runs are its history, the newest its current value.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest `data` an artifact may carry: it is shown in a terminal or a
/// page, so anything bigger belongs in a file the artifact links to.
pub const MAX_ARTIFACT_BYTES: usize = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    Markdown,
    Table,
    Link,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Markdown => "markdown",
            ArtifactKind::Table => "table",
            ArtifactKind::Link => "link",
        }
    }
}

/// An artifact as a guest asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewArtifact {
    pub kind: ArtifactKind,
    pub key: Option<String>,
    pub description: Option<String>,
    pub data: String,
}

/// An artifact as it is stored and listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub id: String,
    pub key: Option<String>,
    /// 1 for the first artifact of a key, then one more per new one; 1 for
    /// an artifact without a key.
    pub version: u64,
    pub kind: ArtifactKind,
    pub description: Option<String>,
    /// Markdown text, a URL, or (for a table) JSON rows.
    pub data: Value,
    pub flow_run: String,
    pub task_run: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// Why a guest's artifact was refused; the guest sees the message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "artifact data is {bytes} bytes, over the limit of {limit} bytes; write large data elsewhere and create a link artifact to it"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "artifact key '{0}' is not valid: use 1 to 100 lowercase letters, digits and dashes, starting with a letter or digit"
    )]
    BadKey(String),
    #[error("a table artifact's data must be a JSON array of rows (objects or arrays): {0}")]
    BadTable(String),
    #[error("a link artifact's data must be an http:// or https:// URL")]
    BadLink,
    #[error("the artifact's description is over 1000 characters")]
    DescriptionTooLong,
}

impl NewArtifact {
    /// Checks the artifact and returns its data as it is stored (a table's
    /// rows parsed, text as a JSON string).
    pub fn validate(&self) -> Result<Value, ArtifactError> {
        if self.data.len() > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge {
                bytes: self.data.len(),
                limit: MAX_ARTIFACT_BYTES,
            });
        }
        if let Some(key) = &self.key
            && !valid_key(key)
        {
            return Err(ArtifactError::BadKey(key.chars().take(100).collect()));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            return Err(ArtifactError::DescriptionTooLong);
        }
        match self.kind {
            ArtifactKind::Markdown => Ok(Value::String(self.data.clone())),
            ArtifactKind::Link => {
                let url = self.data.trim();
                let ok = (url.starts_with("https://") || url.starts_with("http://"))
                    && !url.chars().any(char::is_whitespace);
                if ok {
                    Ok(Value::String(url.to_string()))
                } else {
                    Err(ArtifactError::BadLink)
                }
            }
            ArtifactKind::Table => {
                let rows: Value = serde_json::from_str(&self.data)
                    .map_err(|e| ArtifactError::BadTable(e.to_string()))?;
                match &rows {
                    Value::Array(items) if items.iter().all(|r| r.is_object() || r.is_array()) => {
                        Ok(rows)
                    }
                    _ => Err(ArtifactError::BadTable("it is not an array of rows".into())),
                }
            }
        }
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 100
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !key.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(kind: ArtifactKind, key: Option<&str>, data: &str) -> NewArtifact {
        NewArtifact {
            kind,
            key: key.map(str::to_string),
            description: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn each_kind_checks_its_data() {
        use ArtifactKind::*;
        assert!(
            artifact(Markdown, Some("report-1"), "# hi")
                .validate()
                .is_ok()
        );
        assert!(
            artifact(Table, None, r#"[{"a":1},{"a":2}]"#)
                .validate()
                .is_ok()
        );
        assert!(matches!(
            artifact(Table, None, r#"{"a":1}"#).validate(),
            Err(ArtifactError::BadTable(_))
        ));
        assert!(matches!(
            artifact(Table, None, "[1, 2]").validate(),
            Err(ArtifactError::BadTable(_))
        ));
        assert_eq!(
            artifact(Link, None, "javascript:alert(1)").validate(),
            Err(ArtifactError::BadLink)
        );
        assert!(
            artifact(Link, None, "https://example.com/x")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn keys_and_sizes_are_bounded() {
        use ArtifactKind::*;
        for bad in ["", "Upper", "-lead", "a/b", "a b", &"k".repeat(101)] {
            assert!(
                matches!(
                    artifact(Markdown, Some(bad), "x").validate(),
                    Err(ArtifactError::BadKey(_))
                ),
                "{bad}"
            );
        }
        let huge = "x".repeat(MAX_ARTIFACT_BYTES + 1);
        assert!(matches!(
            artifact(Markdown, None, &huge).validate(),
            Err(ArtifactError::TooLarge { .. })
        ));
    }
}
