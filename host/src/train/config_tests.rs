//! The recipe's parsing, defaults and checks.
use super::*;

const MINIMAL: &str = r#"
    model = "m"
    output = "out"
    loss = "BinaryCrossEntropyLoss"
    train = { files = "train.jsonl" }
"#;

#[test]
fn defaults_are_the_reference_trainers() {
    let config = TrainConfig::from_toml(MINIMAL, "t.toml", Path::new("/base")).unwrap();
    assert_eq!(config.epochs, Epochs::Whole(3));
    assert_eq!(config.batch_size, 8);
    assert_eq!(config.lr, 5e-5);
    assert_eq!(config.max_grad_norm, 1.0);
    assert_eq!(config.seed, 42);
    assert_eq!(config.adam_epsilon, 1e-8);
    assert_eq!(
        config.train.entries[0].spec.files,
        vec![PathBuf::from("/base/train.jsonl")]
    );
    assert_eq!(config.output, PathBuf::from("/base/out"));
    assert!(config.export_onnx);
    assert_eq!(config.device, "cpu");
}

#[test]
fn unknown_device_is_named() {
    let text = format!("{MINIMAL}\ndevice = \"tpu:0\"\n");
    let error = TrainConfig::from_toml(&text, "t.toml", Path::new("/base"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("device") && error.contains("tpu:0"),
        "{error}"
    );
    let text = format!("{MINIMAL}\ndevice = \"cuda:1\"\n");
    assert!(TrainConfig::from_toml(&text, "t.toml", Path::new("/base")).is_ok());
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\nlearning_rat = 1e-5\n");
    let error = TrainConfig::from_toml(&text, "t.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(error.contains("t.toml"), "{error}");
    assert!(error.contains("learning_rat"), "{error}");
}

#[test]
fn out_of_range_value_is_named() {
    let text = format!("{MINIMAL}\nwarmup_ratio = 1.5\n");
    let error = TrainConfig::from_toml(&text, "t.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(error.contains("warmup_ratio"), "{error}");
}

#[test]
fn dotted_overrides() {
    let mut table: toml::Table = toml::from_str(MINIMAL).unwrap();
    set_key(&mut table, "train.limit", "10").unwrap();
    set_key(&mut table, "lr", "2e-5").unwrap();
    set_key(&mut table, "loss", "MSELoss").unwrap();
    let config = TrainConfig::from_table(table, "t", Path::new(".")).unwrap();
    assert_eq!(config.train.entries[0].spec.limit, Some(10));
    assert_eq!(config.lr, 2e-5);
    assert_eq!(config.loss, "MSELoss");
}

#[test]
fn training_arguments_names_are_the_same_settings_and_not_both() {
    let short = format!("{MINIMAL}\nlr = 2e-5\nepochs = 2\nbatch_size = 16\neval_batch_size = 4\nlr_scheduler = \"cosine\"\n");
    let long = format!(
        "{MINIMAL}\nlearning_rate = 2e-5\nnum_train_epochs = 2\nper_device_train_batch_size = 16\n\
         per_device_eval_batch_size = 4\nlr_scheduler_type = \"cosine\"\n"
    );
    let short = TrainConfig::from_toml(&short, "t", Path::new(".")).unwrap();
    let long = TrainConfig::from_toml(&long, "t", Path::new(".")).unwrap();
    assert_eq!(short, long);
    assert_eq!(long.lr, 2e-5);
    assert_eq!(long.lr_scheduler, LrScheduler::Cosine);
    // Written under the TrainingArguments names.
    let written = serde_json::to_value(&long).unwrap();
    assert_eq!(written["learning_rate"], 2e-5);
    assert_eq!(written["per_device_train_batch_size"], 16);
    assert!(written.get("lr").is_none());
    let both = format!("{MINIMAL}\nlr = 2e-5\nlearning_rate = 3e-5\n");
    let error = TrainConfig::from_toml(&both, "t.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(error.contains("both `lr` and `learning_rate`"), "{error}");
    // A flag overrides the file's value under either name.
    let mut table: toml::Table =
        toml::from_str(&format!("{MINIMAL}\nlearning_rate = 3e-5\n")).unwrap();
    set_key(&mut table, "lr", "1e-4").unwrap();
    assert_eq!(
        TrainConfig::from_table(table, "t", Path::new("."))
            .unwrap()
            .lr,
        1e-4
    );
}

#[test]
fn strategies_decide_evaluations_and_checkpoints() {
    // Evaluation needs something to evaluate.
    let config = |extra: &str| {
        let text = format!("{MINIMAL}\neval = {{ files = \"e.jsonl\" }}\n{extra}\n");
        TrainConfig::from_toml(&text, "t", Path::new(".")).unwrap()
    };
    let nothing = format!("{MINIMAL}\neval_steps = 4\n");
    let error = TrainConfig::from_toml(&nothing, "t", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(error.contains("nothing to evaluate"), "{error}");
    let epoch = config("eval_strategy = \"epoch\"\nsave_strategy = \"epoch\"");
    assert!(epoch.evaluates_after(7, true, 100) && !epoch.evaluates_after(8, false, 100));
    assert!(epoch.saves_after(7, true, 1000) && !epoch.saves_after(500, false, 1000));
    let steps = config("eval_strategy = \"steps\"\nlogging_steps = 5");
    assert!(steps.evaluates_after(10, false, 100) && !steps.evaluates_after(11, true, 100));
    assert!(!config("").evaluates_after(500, true, 1000));
    assert!(config("eval_steps = 4").evaluates_after(8, false, 100));
    assert!(!config("save_strategy = \"no\"").saves_after(500, true, 1000));
    assert!(!config("save_steps = 0").saves_after(500, true, 1000));
    let mismatch = format!(
        "{MINIMAL}\neval = {{ files = \"e.jsonl\" }}\nload_best_model_at_end = true\n\
         eval_strategy = \"epoch\"\n"
    );
    let error = TrainConfig::from_toml(&mismatch, "t", Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("same eval_strategy and save_strategy"),
        "{error}"
    );
}

#[test]
fn schema_lists_every_key() {
    let schema = TrainConfig::schema();
    let properties = schema["properties"].as_object().unwrap();
    for key in [
        "model",
        "loss",
        "loss_config",
        "warmup_ratio",
        "mini_batch_size",
    ] {
        assert!(properties.contains_key(key), "{key}");
    }
}
