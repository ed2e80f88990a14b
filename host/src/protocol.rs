//! Wire formats: flow parameters from the command line and their validation
//! against a flow's JSON Schema, and memory sizes as users write them. No IO.

use serde_json::{Map, Value};

/// Memory sizes ("64MiB") are read by the same parser as the SDK's
/// `#[task(memory = ...)]`, so a size means one thing everywhere.
pub use weir_units::{MemorySizeError, parse_memory_size};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    #[error("--param '{0}' is not of the form key=value")]
    NotAnAssignment(String),
    #[error("--params-json is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("the flow's parameter schema is not valid JSON Schema: {0}")]
    BadSchema(String),
    #[error("invalid parameters:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// Builds the params object from `--params-json` and `--param k=v` (which win).
///
/// A value is read as JSON (`rows=500` is a number, `tags=["a"]` a list) unless
/// the schema says the property is a string, or it is not valid JSON.
pub fn build_params(
    json: Option<&str>,
    assignments: &[String],
    schema: Option<&Value>,
) -> Result<Value, ParamError> {
    let mut params = match json {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(other) => return Err(ParamError::NotAnObject(format!("found {}", kind(&other)))),
            Err(e) => return Err(ParamError::NotAnObject(e.to_string())),
        },
        None => Map::new(),
    };
    for assignment in assignments {
        let Some((key, raw)) = assignment.split_once('=') else {
            return Err(ParamError::NotAnAssignment(assignment.clone()));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ParamError::NotAnAssignment(assignment.clone()));
        }
        let wants_string = schema
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(key))
            .is_some_and(is_string_schema);
        let value = if wants_string {
            Value::String(raw.to_string())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        params.insert(key.to_string(), value);
    }
    Ok(Value::Object(params))
}

fn is_string_schema(property: &Value) -> bool {
    match property.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
        _ => false,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Checks `params` against a flow's schema; every problem is listed.
pub fn validate_params(schema: &Value, params: &Value) -> Result<(), ParamError> {
    let validator =
        jsonschema::validator_for(schema).map_err(|e| ParamError::BadSchema(e.to_string()))?;
    problems(&validator, params)
}

/// Checks any JSON value (a paused run's input) against a JSON Schema: every
/// problem, or one saying the schema itself is not valid.
pub fn validate_against(schema: &Value, value: &Value) -> Result<(), Vec<String>> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        vec![format!(
            "the pause's input schema is not valid JSON Schema: {e}"
        )]
    })?;
    problems(&validator, value).map_err(|e| match e {
        ParamError::Invalid(problems) => problems,
        other => vec![other.to_string()],
    })
}

/// Whether `schema` is a JSON Schema this host can check values against.
pub fn check_schema(schema: &Value) -> Result<(), ParamError> {
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| ParamError::BadSchema(e.to_string()))
}

fn problems(validator: &jsonschema::Validator, params: &Value) -> Result<(), ParamError> {
    let problems: Vec<String> = validator
        .iter_errors(params)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{}: {e}", at.trim_start_matches('/'))
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ParamError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {"rows": {"type": "integer", "minimum": 0}, "name": {"type": "string"}},
            "required": ["rows"],
            "additionalProperties": false
        })
    }

    #[test]
    fn assignments_are_json_unless_the_schema_wants_a_string() {
        let p = build_params(
            None,
            &["rows=500".into(), "name=123".into()],
            Some(&schema()),
        )
        .unwrap();
        assert_eq!(p, json!({"rows": 500, "name": "123"}));
        let p = build_params(
            Some(r#"{"rows": 1}"#),
            &["rows=2".into(), "x=hello world".into()],
            None,
        )
        .unwrap();
        assert_eq!(p, json!({"rows": 2, "x": "hello world"}));
    }

    #[test]
    fn bad_assignments_and_json_are_named() {
        assert_eq!(
            build_params(None, &["rows".into()], None),
            Err(ParamError::NotAnAssignment("rows".into()))
        );
        assert!(
            matches!(build_params(Some("[1]"), &[], None), Err(ParamError::NotAnObject(m)) if m.contains("a list"))
        );
        assert!(matches!(
            build_params(Some("{"), &[], None),
            Err(ParamError::NotAnObject(_))
        ));
    }

    #[test]
    fn validation_lists_every_problem() {
        assert!(validate_params(&schema(), &json!({"rows": 3})).is_ok());
        let err = validate_params(&schema(), &json!({"rows": "many", "extra": 1})).unwrap_err();
        let ParamError::Invalid(problems) = err else {
            panic!("{err:?}")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("rows:")),
            "{problems:?}"
        );
    }
}
