//! Editing the recipe as a TOML table before it is typed: the flags' and `--set`'s dotted
//! keys, and the two spellings (crosstrain's short keys, TrainingArguments' names) of a
//! setting.

use super::config::ConfigError;

/// crosstrain's short keys and the TrainingArguments names they stand for. The long names
/// are the ones written (`training_args.json`, the card); either is read, not both.
pub const KEY_ALIASES: [(&str, &str); 5] = [
    ("lr", "learning_rate"),
    ("epochs", "num_train_epochs"),
    ("batch_size", "per_device_train_batch_size"),
    ("eval_batch_size", "per_device_eval_batch_size"),
    ("lr_scheduler", "lr_scheduler_type"),
];

/// The key a setting is written under: the TrainingArguments name of a short key.
pub fn canonical_key(key: &str) -> &str {
    KEY_ALIASES
        .iter()
        .find(|(short, _)| *short == key)
        .map_or(key, |(_, long)| long)
}

/// The other spelling of a setting, if it has one.
pub fn twin_key(key: &str) -> Option<&'static str> {
    KEY_ALIASES.iter().find_map(|&(short, long)| {
        if short == key {
            Some(long)
        } else if long == key {
            Some(short)
        } else {
            None
        }
    })
}

/// Sets `key = value` in a TOML table, where `key` may be dotted (`train.limit`) and `value`
/// is TOML (a bare word is taken as a string).
pub fn set_key(table: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.to_string()),
    };
    set_value(table, key, parsed)
}

/// Sets an already-typed value at a dotted key.
pub fn set_value(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::Parse {
            origin: "--set".into(),
            message: format!("empty key in {key:?}"),
        })?;
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Parse {
                    origin: "--set".into(),
                    message: format!("{key}: {part} is not a table"),
                })
            }
        };
    }
    // A flag or `--set` overrides the setting under either of its names.
    if let Some(twin) = twin_key(last).filter(|_| !key.contains('.')) {
        current.remove(twin);
    }
    current.insert(last.to_string(), value);
    Ok(())
}
