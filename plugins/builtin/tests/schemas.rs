//! Every loss's config schema is valid JSON Schema, its default config validates against it,
//! and the loss builds from that default.

use crosstrain_plugin_api::abi_stable::std_types::RResult;
use serde_json::Value;

#[test]
fn every_schema_is_valid_and_every_default_validates() {
    let library = crosstrain_losses::crosstrain_loss_library();
    let entries = match (library.losses())() {
        RResult::ROk(entries) => entries,
        RResult::RErr(error) => panic!("listing the losses failed: {error}"),
    };
    assert_eq!(entries.len(), 12);
    for entry in entries.iter() {
        let name = entry.info.name.as_str();
        let schema: Value = serde_json::from_str(entry.info.config_schema.as_str()).unwrap();
        let default: Value = serde_json::from_str(entry.info.default_config.as_str()).unwrap();
        assert!(
            jsonschema::meta::is_valid(&schema),
            "{name}: schema is not valid JSON Schema: {schema}"
        );
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&default)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{name}: default {default} fails its schema: {errors:?}"
        );
        assert_eq!(
            schema["additionalProperties"],
            Value::Bool(false),
            "{name}: unknown fields must be rejected"
        );
        // Every field documents itself.
        for (field, property) in schema["properties"].as_object().unwrap() {
            assert!(
                property.get("description").is_some(),
                "{name}.{field} has no description"
            );
        }
        // The empty config means "all defaults" and builds.
        match (entry.create)("{}".into()) {
            RResult::ROk(_) => {}
            RResult::RErr(error) => panic!("{name}: default config does not build: {error}"),
        }
        // An unknown field is rejected by the plugin itself, too.
        assert!(
            matches!(
                (entry.create)(r#"{"no_such_field": 1}"#.into()),
                RResult::RErr(_)
            ),
            "{name} accepted an unknown field"
        );
    }
}
