//! What `--resume` may and may not change: a resumed run is exact only with the recipe it
//! was checkpointed with, so a different loss, model, data, learning rate or seed is refused
//! (naming each change) unless the user allows that key on purpose, and then it is logged.

use std::path::Path;

use serde_json::Value;

use super::config::TrainConfig;
use super::TrainError;

/// The top-level settings that decide the numbers of a run. The others (where and how often
/// to log, evaluate, save and export, the device, the output) may differ on resume.
const RECIPE_KEYS: [&str; 34] = [
    "model",
    "from_scratch",
    "base_model",
    "peft",
    "base_dtype",
    "num_labels",
    "max_length",
    "loss",
    "loss_config",
    "train",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "learning_rate",
    "learning_rate_mapping",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "warmup_ratio",
    "warmup_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "batch_sampler",
    "multi_dataset_batch_sampler",
    "max_grad_norm",
    "gradient_accumulation_steps",
    "mini_batch_size",
    "group_by_length",
    "train_sampling_strategy",
    "prompts",
    "seed",
    "early_stopping_patience",
    "early_stopping_threshold",
];

/// Compares `config` and the job's `world_size` with the `training_args.json` of
/// `checkpoint`; a checkpoint without one (written by hand, or by an older crosstrain) is not
/// checked.
pub(super) fn check_unchanged(
    config: &TrainConfig,
    checkpoint: &Path,
    allowed: &[String],
    world_size: usize,
) -> Result<(), TrainError> {
    let args_file = checkpoint.join("training_args.json");
    let Ok(text) = std::fs::read_to_string(&args_file) else {
        return Ok(());
    };
    let saved: Value = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: checkpoint.to_path_buf(),
        message: format!("{}: not valid JSON: {e}", args_file.display()),
    })?;
    check_world_size(checkpoint, &saved, world_size)?;
    let current = serde_json::to_value(config).map_err(|e| TrainError::Checkpoint {
        path: checkpoint.to_path_buf(),
        message: e.to_string(),
    })?;
    let allowed: Vec<&str> = allowed
        .iter()
        .map(|key| super::config::canonical_key(key))
        .collect();
    if let Some(unknown) = allowed.iter().find(|k| !RECIPE_KEYS.contains(k)) {
        return Err(TrainError::Checkpoint {
            path: checkpoint.to_path_buf(),
            message: format!(
                "--allow-change {unknown}: not a setting that resuming checks; those are {}",
                RECIPE_KEYS.join(", ")
            ),
        });
    }
    let mut refused = Vec::new();
    for key in RECIPE_KEYS {
        // A checkpoint written before the TrainingArguments names has the short one.
        let old_value = saved
            .get(key)
            .or_else(|| super::config::twin_key(key).and_then(|twin| saved.get(twin)));
        let old = normalized(key, old_value);
        let new = normalized(key, current.get(key));
        if old == new {
            continue;
        }
        // The fields that differ, each by its dotted name (`train.qa.limit`), rather than
        // the whole table.
        let mut fields = Vec::new();
        differences(key, &old, &new, &mut fields);
        let change = fields.join(", ");
        if allowed.contains(&key) {
            tracing::warn!(
                "resuming {} with a changed setting, as --allow-change {key} allows: {change}",
                checkpoint.display()
            );
        } else {
            refused.push(change);
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(TrainError::ResumeChanged {
            path: checkpoint.to_path_buf(),
            changes: refused.join(", "),
        })
    }
}

/// Refuses a checkpoint written by a job of another number of ranks: its global batches, and
/// so its step count and position in the epoch, were of another size. `saved` is its
/// `training_args.json`; without the figure it was written by one process.
fn check_world_size(checkpoint: &Path, saved: &Value, world_size: usize) -> Result<(), TrainError> {
    let saved = saved.get("world_size").and_then(Value::as_u64).unwrap_or(1) as usize;
    if saved == world_size {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: checkpoint.to_path_buf(),
        message: format!(
            "it was written by a job of {saved} rank{} and this one has {world_size}; resume \
             with `mpirun -np {saved}` (a global batch is per_device_train_batch_size rows \
             for each rank)",
            if saved == 1 { "" } else { "s" }
        ),
    })
}

/// A setting as compared: file paths resolved, so `./model` and `/abs/model` are one model.
fn normalized(key: &str, value: Option<&Value>) -> Value {
    let resolve = |path: &str| {
        std::fs::canonicalize(path)
            .map_or_else(|_| path.to_string(), |real| real.display().to_string())
    };
    match (key, value) {
        (_, None) => Value::Null,
        ("model", Some(Value::String(model))) => Value::String(resolve(model)),
        ("train", Some(Value::Object(spec))) => {
            let mut spec = spec.clone();
            let mut specs: Vec<&mut serde_json::Map<String, Value>> = Vec::new();
            if spec.contains_key("files") {
                specs.push(&mut spec);
            } else {
                // Named datasets: one spec each.
                specs.extend(spec.values_mut().filter_map(Value::as_object_mut));
            }
            for spec in specs {
                if let Some(Value::Array(files)) = spec.get_mut("files") {
                    for file in files.iter_mut() {
                        if let Value::String(path) = file {
                            *path = resolve(path);
                        }
                    }
                }
                // Where the rows are kept changes nothing they train (the rows are the same,
                // bit for bit), and checkpoints from before `storage` existed have no such
                // key.
                spec.remove("storage");
            }
            Value::Object(spec)
        }
        (_, Some(value)) => value.clone(),
    }
}

/// `key = old (this run: new)` for every leaf where `old` and `new` differ, tables walked
/// key by key.
fn differences(key: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for field in keys {
                let (a, b) = (
                    old.get(field).unwrap_or(&Value::Null),
                    new.get(field).unwrap_or(&Value::Null),
                );
                if a != b {
                    differences(&format!("{key}.{field}"), a, b, out);
                }
            }
        }
        _ => out.push(format!("{key} = {} (this run: {})", show(old), show(new))),
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "unset".into(),
        other => other.to_string(),
    }
}

/// Refuses to resume on training data whose rows, labels or texts differ from those the
/// checkpoint was trained on (a file changed under the same path), naming the files, unless
/// `--allow-change train` allows it. A checkpoint without digests (an older crosstrain's) is
/// not checked.
pub(super) fn check_same_data(
    checkpoint: &Path,
    state: &super::state::TrainerState,
    digests: &std::collections::BTreeMap<String, String>,
    sources: &[super::sources::TrainSource],
    options: &super::RunOptions,
) -> Result<(), TrainError> {
    if state.data_digests.is_empty() {
        return Ok(());
    }
    let changed: Vec<String> = sources
        .iter()
        .filter(|source| state.data_digests.get(&source.name) != digests.get(&source.name))
        .map(|source| {
            let files: Vec<String> = source
                .dataset
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            format!(
                "training data {} ({}) differs in its rows, labels or texts",
                source.name,
                files.join(", ")
            )
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let allowed = options
        .allowed_changes
        .iter()
        .any(|key| super::config::canonical_key(key) == "train");
    if allowed {
        tracing::warn!(
            "resuming {} on changed data, as --allow-change train allows: {}",
            checkpoint.display(),
            changed.join("; ")
        );
        return Ok(());
    }
    Err(TrainError::ResumeChanged {
        path: checkpoint.to_path_buf(),
        changes: changed.join("; "),
    })
}
