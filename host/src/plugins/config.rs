//! Checking a loss config against the schema the plugin reports, with messages that name the
//! offending field and list what is allowed there. Done by the host, so a third-party plugin
//! gets the same quality of errors without writing any validation code.

use serde_json::{Map, Value};

use super::description::LossDescription;

/// Checks `config` against the loss's schema; on failure, one line per problem.
pub fn validate_config(description: &LossDescription, config: &Value) -> Result<(), Vec<String>> {
    if !config.is_object() {
        return Err(vec![format!(
            "the config must be a JSON object, got {}",
            json_type(config)
        )]);
    }
    let schema = &description.config_schema;
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        vec![format!(
            "the plugin's config schema is not valid JSON Schema: {e}"
        )]
    })?;
    let problems: Vec<String> = validator
        .iter_errors(config)
        .map(|error| {
            let pointer = error.instance_path().to_string();
            let field = if pointer.is_empty() {
                "config".to_string()
            } else {
                pointer.trim_start_matches('/').replace('/', ".")
            };
            let allowed = match error.kind() {
                jsonschema::error::ValidationErrorKind::AdditionalProperties { .. } => {
                    subschema_at(schema, &pointer)
                        .and_then(|s| allowed_fields(schema, s))
                        .map(|fields| format!("; allowed fields: {fields}"))
                }
                _ => subschema_at(schema, &pointer)
                    .and_then(|s| allowed_values(schema, s))
                    .map(|values| format!("; allowed values: {values}")),
            };
            format!("{field}: {error}{}", allowed.unwrap_or_default())
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Follows a local `$ref` (`#/$defs/Name`).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut current = schema;
    for _ in 0..16 {
        match current.get("$ref").and_then(Value::as_str) {
            Some(reference) => match reference.strip_prefix('#') {
                Some(pointer) => match root.pointer(pointer) {
                    Some(target) => current = target,
                    None => return current,
                },
                None => return current,
            },
            None => return current,
        }
    }
    current
}

/// The alternatives of a schema (`anyOf`/`oneOf`), or the schema itself.
fn alternatives<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let schema = resolve(root, schema);
    let mut out = Vec::new();
    for keyword in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
            for option in options {
                out.extend(alternatives(root, option));
            }
        }
    }
    if out.is_empty() {
        out.push(schema);
    }
    out
}

/// The schema that governs the value at a JSON pointer of the instance (object properties only;
/// configs are shallow).
fn subschema_at<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut current = root;
    for segment in pointer.split('/').skip(1) {
        current = alternatives(root, current)
            .into_iter()
            .find_map(|s| s.get("properties").and_then(|p| p.get(segment)))?;
    }
    Some(current)
}

fn allowed_fields(root: &Value, schema: &Value) -> Option<String> {
    let fields: Vec<String> = alternatives(root, schema)
        .into_iter()
        .filter_map(|s| s.get("properties").and_then(Value::as_object))
        .flat_map(Map::keys)
        .cloned()
        .collect();
    (!fields.is_empty()).then(|| fields.join(", "))
}

/// A readable list of what a schema accepts: enum/const values, tagged variants, and types.
fn allowed_values(root: &Value, schema: &Value) -> Option<String> {
    let mut items: Vec<String> = Vec::new();
    for option in alternatives(root, schema) {
        if let Some(values) = option.get("enum").and_then(Value::as_array) {
            items.extend(values.iter().map(Value::to_string));
        } else if let Some(value) = option.get("const") {
            items.push(value.to_string());
        } else if let Some(tag) = option
            .get("properties")
            .and_then(|p| p.get("name"))
            .and_then(|name| {
                name.get("const")
                    .or_else(|| name.get("enum").and_then(|e| e.get(0)))
            })
        {
            items.push(format!("{{\"name\": {tag}, ..}}"));
        } else if let Some(kind) = option.get("type") {
            match kind {
                Value::String(kind) => items.push(format!("any {kind}")),
                Value::Array(kinds) => {
                    items.extend(kinds.iter().filter_map(Value::as_str).map(|k| match k {
                        "null" => "null".to_string(),
                        other => format!("any {other}"),
                    }))
                }
                _ => {}
            }
        }
    }
    items.dedup();
    (!items.is_empty()).then(|| items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::LossRegistry;
    use serde_json::json;

    fn description(name: &str) -> LossDescription {
        let registry = LossRegistry::with_builtins().unwrap();
        registry.find(name).unwrap().description.clone()
    }

    #[test]
    fn unknown_fields_list_the_allowed_ones() {
        let problems = validate_config(
            &description("BinaryCrossEntropyLoss"),
            &json!({"activation": 1}),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("activation"), "{problems:?}");
        assert!(
            problems[0].contains("allowed fields: activation_fn, pos_weight, reduction"),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_enum_values_list_the_allowed_values() {
        let problems = validate_config(
            &description("MultipleNegativesRankingLoss"),
            &json!({"activation_fn": "relu"}),
        )
        .unwrap_err();
        let text = problems.join("\n");
        assert!(text.starts_with("activation_fn:"), "{text}");
        for value in ["\"identity\"", "\"sigmoid\"", "\"tanh\"", "null"] {
            assert!(text.contains(value), "{value} missing from {text}");
        }
    }

    #[test]
    fn tagged_schemes_are_listed_by_name() {
        let problems = validate_config(
            &description("LambdaLoss"),
            &json!({"weighting_scheme": {"name": "NDCG"}}),
        )
        .unwrap_err();
        let text = problems.join("\n");
        assert!(text.contains("weighting_scheme"), "{text}");
        assert!(text.contains("NDCGLoss2PPScheme"), "{text}");
    }

    #[test]
    fn wrong_types_and_non_objects_are_reported() {
        let problems =
            validate_config(&description("LambdaLoss"), &json!({"sigma": "one"})).unwrap_err();
        assert!(problems[0].starts_with("sigma:"), "{problems:?}");
        assert!(validate_config(&description("LambdaLoss"), &json!([1])).is_err());
        assert!(validate_config(&description("LambdaLoss"), &json!({"k": 3})).is_ok());
    }
}
