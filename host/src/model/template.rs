//! `{{ variables.NAME }}` in a deployment's params (`weir.yaml`), as Prefect
//! writes `{{ prefect.variables.NAME }}`: replaced by the variable's value
//! when the deployment is deployed.
//!
//! A string that is only the template becomes the variable's JSON value
//! (a number stays a number); a template inside longer text is replaced by
//! the value as text. Pure: the caller says how a variable is looked up.

use serde_json::Value;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "params use variable '{0}', which is not set; set it with `host variable set {0} VALUE` and deploy again"
    )]
    Unset(String),
    #[error("'{0}' is not a template this host knows; write {{{{ variables.NAME }}}}")]
    Unknown(String),
    #[error("reading variable '{name}': {message}")]
    Lookup { name: String, message: String },
}

/// `value` with every `{{ variables.NAME }}` replaced through `lookup`.
pub fn resolve_variables(
    value: &Value,
    lookup: &mut dyn FnMut(&str) -> Result<Option<Value>, String>,
) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(text) => resolve_text(text, lookup)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve_variables(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), resolve_variables(v, lookup)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

fn resolve_text(
    text: &str,
    lookup: &mut dyn FnMut(&str) -> Result<Option<Value>, String>,
) -> Result<Value, TemplateError> {
    let mut out = String::new();
    let mut rest = text;
    let mut whole = None;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + len].trim();
        let Some(name) = inner.strip_prefix("variables.") else {
            return Err(TemplateError::Unknown(
                rest[start..start + len + 2].to_string(),
            ));
        };
        let value = lookup(name)
            .map_err(|message| TemplateError::Lookup {
                name: name.to_string(),
                message,
            })?
            .ok_or_else(|| TemplateError::Unset(name.to_string()))?;
        if start == 0 && rest.len() == len + 2 && out.is_empty() {
            whole = Some(value.clone());
        }
        out.push_str(&rest[..start]);
        match &value {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + len + 2..];
    }
    if let Some(value) = whole {
        return Ok(value);
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(name: &str) -> Result<Option<Value>, String> {
        Ok(match name {
            "rows" => Some(json!(500)),
            "who" => Some(json!("ops")),
            _ => None,
        })
    }

    #[test]
    fn a_whole_template_keeps_the_type_and_text_is_substituted() {
        let params = json!({"rows": "{{ variables.rows }}", "to": "team {{variables.who}}!", "n": 1, "list": ["{{ variables.who }}"]});
        let resolved = resolve_variables(&params, &mut vars).unwrap();
        assert_eq!(
            resolved,
            json!({"rows": 500, "to": "team ops!", "n": 1, "list": ["ops"]})
        );
    }

    #[test]
    fn an_unset_variable_or_unknown_template_is_refused() {
        assert_eq!(
            resolve_variables(&json!({"x": "{{ variables.nope }}"}), &mut vars),
            Err(TemplateError::Unset("nope".into()))
        );
        assert!(matches!(
            resolve_variables(&json!({"x": "{{ secrets.key }}"}), &mut vars),
            Err(TemplateError::Unknown(_))
        ));
        // A value holding braces is inserted, never read as a template again.
        let mut braces = |_: &str| Ok(Some(json!("{{ variables.rows }}")));
        assert_eq!(
            resolve_variables(&json!("a {{ variables.x }}"), &mut braces).unwrap(),
            json!("a {{ variables.rows }}")
        );
    }
}
