//! Automations: "when a run of these deployments fails (or crashes, is late,
//! is stuck running, ...), POST this webhook". The rule, its validation and
//! the body it sends; no IO. Delivery is `crate::automations`'.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What a run did that fires an automation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutomationEvent {
    Failed,
    Crashed,
    Late,
    Cancelled,
    Completed,
    /// Running for longer than the automation's `stuck_after_seconds`.
    Stuck,
}

impl AutomationEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AutomationEvent::Failed => "failed",
            AutomationEvent::Crashed => "crashed",
            AutomationEvent::Late => "late",
            AutomationEvent::Cancelled => "cancelled",
            AutomationEvent::Completed => "completed",
            AutomationEvent::Stuck => "stuck",
        }
    }
}

/// Why an automation is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AutomationError {
    #[error(transparent)]
    Name(#[from] super::deploy::DeploymentError),
    #[error("webhook '{0}' is not an http:// or https:// URL")]
    BadWebhook(String),
    #[error("`--on stuck` needs `--stuck-after` (e.g. 10m): how long Running counts as stuck")]
    StuckWithoutTime,
    #[error("stuck_after_seconds belongs to `--on stuck` only")]
    StuckTimeWithoutStuck,
    #[error("header '{0}' is not a valid HTTP header name")]
    BadHeader(String),
    #[error(
        "the template does not make JSON once filled in ({0}); quote the placeholders inside strings"
    )]
    BadTemplate(String),
}

/// A rule: on `on`, for runs matching the filters, POST `webhook`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Automation {
    pub name: String,
    pub on: AutomationEvent,
    /// Only runs of this deployment / carrying this tag / of this flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_after_seconds: Option<u64>,
    pub webhook: String,
    /// Sent with every delivery (e.g. an authorization token); never shown back.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body with `{{placeholders}}` (see [`TEMPLATE_FIELDS`]); the
    /// default payload when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default)]
    pub paused: bool,
}

/// The placeholders a template may use.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "automation",
    "event",
    "flow_run_id",
    "flow",
    "deployment",
    "state",
    "reason",
    "link",
];

impl Automation {
    pub fn validate(&self) -> Result<(), AutomationError> {
        super::deploy::validate_name("automation", &self.name)?;
        let url = self.webhook.to_ascii_lowercase();
        if !(url.starts_with("http://") || url.starts_with("https://")) || self.webhook.len() > 2048
        {
            return Err(AutomationError::BadWebhook(self.webhook.clone()));
        }
        match (self.on, self.stuck_after_seconds) {
            (AutomationEvent::Stuck, None | Some(0)) => {
                return Err(AutomationError::StuckWithoutTime);
            }
            (AutomationEvent::Stuck, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(AutomationError::StuckTimeWithoutStuck),
        }
        for name in self.headers.keys() {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(AutomationError::BadHeader(name.clone()));
            }
        }
        if let Some(template) = &self.template {
            let sample = EventFields {
                automation: "a\"b".into(),
                event: "failed".into(),
                flow_run_id: "id".into(),
                flow: "f".into(),
                deployment: "d".into(),
                state: "Failed".into(),
                reason: "line one\nline \"two\"".into(),
                link: "http://x/".into(),
            };
            serde_json::from_str::<Value>(&sample.fill(template))
                .map_err(|e| AutomationError::BadTemplate(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether a run with these names and tags is one this automation watches.
    pub fn matches(&self, deployment: Option<&str>, flow: &str, tags: &[String]) -> bool {
        self.deployment
            .as_deref()
            .is_none_or(|d| deployment == Some(d))
            && self.flow.as_deref().is_none_or(|f| f == flow)
            && self.tag.as_ref().is_none_or(|t| tags.contains(t))
    }

    /// The body to POST for `fields`: the template filled in, or the default
    /// JSON payload.
    pub fn payload(&self, fields: &EventFields) -> String {
        match &self.template {
            Some(template) => fields.fill(template),
            None => json!({
                "automation": fields.automation,
                "event": fields.event,
                "flow_run": {
                    "id": fields.flow_run_id,
                    "flow": fields.flow,
                    "deployment": (!fields.deployment.is_empty()).then_some(&fields.deployment),
                    "state": fields.state,
                },
                "reason": fields.reason,
                "link": fields.link,
            })
            .to_string(),
        }
    }
}

/// What a delivery says about the run (already redacted of its secrets).
#[derive(Clone, Debug, Default)]
pub struct EventFields {
    pub automation: String,
    pub event: String,
    pub flow_run_id: String,
    pub flow: String,
    pub deployment: String,
    pub state: String,
    pub reason: String,
    pub link: String,
}

impl EventFields {
    /// `template` with each `{{field}}` replaced by the field's text escaped
    /// for a JSON string, so a reason with quotes cannot break the body.
    pub fn fill(&self, template: &str) -> String {
        let mut out = template.to_string();
        for (name, value) in [
            ("automation", &self.automation),
            ("event", &self.event),
            ("flow_run_id", &self.flow_run_id),
            ("flow", &self.flow),
            ("deployment", &self.deployment),
            ("state", &self.state),
            ("reason", &self.reason),
            ("link", &self.link),
        ] {
            let quoted = serde_json::to_string(value).unwrap_or_default();
            let escaped = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or_default();
            out = out.replace(&format!("{{{{{name}}}}}"), escaped);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn automation(v: Value) -> Result<Automation, String> {
        let a: Automation = serde_json::from_value(v).map_err(|e| e.to_string())?;
        a.validate().map_err(|e| e.to_string())?;
        Ok(a)
    }

    #[test]
    fn automations_that_cannot_work_are_refused() {
        let ok = json!({"name": "a", "on": "failed", "webhook": "http://127.0.0.1:9/hook"});
        assert!(automation(ok.clone()).is_ok());
        let refused = |patch: Value| {
            let mut v = ok.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            automation(v).unwrap_err()
        };
        assert!(refused(json!({"webhook": "file:///etc/passwd"})).contains("not an http"));
        assert!(refused(json!({"on": "stuck"})).contains("--stuck-after"));
        assert!(refused(json!({"stuck_after_seconds": 5})).contains("`--on stuck` only"));
        assert!(refused(json!({"on": "exploded"})).contains("unknown variant"));
        assert!(refused(json!({"headers": {"Bad Header": "x"}})).contains("header 'Bad Header'"));
        assert!(
            refused(json!({"template": "{\"text\": {{reason}}}"})).contains("does not make JSON")
        );
        assert!(refused(json!({"name": "../x"})).contains("automation name"));
    }

    #[test]
    fn a_template_cannot_be_broken_by_what_it_is_filled_with() {
        let fields = EventFields {
            flow: "etl".into(),
            state: "Failed".into(),
            reason: "boom: \"quoted\"\nand a second line".into(),
            ..EventFields::default()
        };
        let body = fields.fill(r#"{"text": "{{flow}} {{state}}: {{reason}}"}"#);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed["text"],
            "etl Failed: boom: \"quoted\"\nand a second line"
        );
    }

    #[test]
    fn filters_narrow_which_runs_fire() {
        let a: Automation = serde_json::from_value(json!({
            "name": "a", "on": "failed", "webhook": "http://x/", "deployment": "d", "tag": "prod"
        }))
        .unwrap();
        assert!(a.matches(Some("d"), "f", &["prod".into()]));
        assert!(!a.matches(Some("d"), "f", &[]));
        assert!(!a.matches(None, "f", &["prod".into()]));
    }
}
