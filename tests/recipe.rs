//! The 2026 recipe items (sentence-transformers 6.3 / transformers 5): early stopping, a
//! NanoBEIR evaluator in training, and the arguments' new forms, through `crosstrain train`.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{read_json, train_cli, write_pairs};

/// Every entry of a run's `metrics.jsonl`.
fn log_entries(output: &Path) -> Vec<Value> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The evaluations a run logged: `(step, metrics)`.
fn evaluations(output: &Path) -> Vec<(usize, Value)> {
    log_entries(output)
        .into_iter()
        .filter(|entry| entry.get("metrics").is_some())
        .map(|entry| {
            (
                entry["step"].as_u64().unwrap() as usize,
                entry["metrics"].clone(),
            )
        })
        .collect()
}

/// transformers' `EarlyStoppingCallback` replayed on logged values: the step after which it
/// stops the run, if any.
fn reference_stop(
    values: &[(usize, f64)],
    greater: bool,
    threshold: f64,
    patience: usize,
) -> Option<usize> {
    let mut best: Option<f64> = None;
    let mut counter = 0;
    for &(step, value) in values {
        let beats = |b: f64| if greater { value > b } else { value < b };
        match best {
            Some(b) if !(beats(b) && (value - b).abs() > threshold) => counter += 1,
            _ => counter = 0,
        }
        if best.is_none_or(beats) {
            best = Some(value);
        }
        if counter >= patience {
            return Some(step);
        }
    }
    None
}

fn recipe(dir: &Path, extra: &str) -> std::path::PathBuf {
    let model = support::tiny_model_without_dropout(dir);
    let data = dir.join("pairs.jsonl");
    write_pairs(&data);
    let text = format!(
        "model = {model:?}\noutput = \"unused\"\nloss = \"BinaryCrossEntropyLoss\"\n\
         train = {{ files = {data:?} }}\neval = {{ files = {data:?} }}\n\
         per_device_train_batch_size = 4\nexport_onnx = false\nlearning_rate = 1e-3\n\
         num_train_epochs = 5\nlogging_steps = 1\nsave_steps = 0\n{extra}\n",
    );
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn early_stopping_stops_where_the_reference_callback_would() {
    let dir = tempfile::tempdir().unwrap();
    // A falling eval loss read as "greater is better" never improves: the run must stop
    // `patience` evaluations after its best, long before its 20 steps.
    let config = recipe(
        dir.path(),
        "eval_steps = 1\nmetric_for_best_model = \"eval_loss\"\ngreater_is_better = true\n\
         early_stopping_patience = 3\nearly_stopping_threshold = 0.0",
    );
    let output = dir.path().join("out");
    let run = train_cli(&config, &output, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let logged = evaluations(&output);
    let values: Vec<(usize, f64)> = logged
        .iter()
        .map(|(step, entry)| (*step, entry["eval_loss"].as_f64().unwrap()))
        .collect();
    let expected = reference_stop(&values, true, 0.0, 3).expect("the reference stops");
    assert!(expected < 20, "stop at {expected}");
    assert_eq!(
        values.last().unwrap().0,
        expected,
        "no evaluation after the stop"
    );
    let state = read_json(&output.join("trainer_state.json"));
    assert_eq!(state["early_stopping"]["stopped_at"], expected);
    assert_eq!(state["global_step"], expected);

    // A threshold larger than any change: every evaluation after the first fails to improve.
    let dir = tempfile::tempdir().unwrap();
    let config = recipe(
        dir.path(),
        "eval_steps = 2\nearly_stopping_patience = 2\nearly_stopping_threshold = 10.0",
    );
    let output = dir.path().join("out");
    let run = train_cli(&config, &output, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let steps: Vec<usize> = evaluations(&output).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![2, 4, 6]);

    // Patience 0 and early stopping without evaluations are refused by name.
    let dir = tempfile::tempdir().unwrap();
    let config = recipe(dir.path(), "early_stopping_patience = 2");
    let run = train_cli(&config, &dir.path().join("out"), &[]);
    let error = support::stderr(&run);
    assert!(
        error.contains("early_stopping_patience") && error.contains("needs evaluations"),
        "{error}"
    );
}

#[test]
fn early_stopping_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "eval_steps = 1\nmetric_for_best_model = \"eval_loss\"\ngreater_is_better = true\n\
                 early_stopping_patience = 4";
    let config = recipe(dir.path(), extra);
    let whole = dir.path().join("whole");
    let run = train_cli(&config, &whole, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let parted = dir.path().join("parted");
    let run = train_cli(
        &config,
        &parted,
        &["--set", "stop_at_step=3", "--set", "save_steps=1"],
    );
    assert!(run.status.success(), "{}", support::stderr(&run));
    let run = train_cli(&config, &parted, &["--resume", "--set", "save_steps=1"]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let steps = |output: &Path| -> Vec<(usize, f64)> {
        evaluations(output)
            .into_iter()
            .map(|(s, e)| (s, e["eval_loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(steps(&whole), steps(&parted));
    assert_eq!(
        read_json(&whole.join("trainer_state.json"))["early_stopping"],
        read_json(&parted.join("trainer_state.json"))["early_stopping"]
    );
}

#[test]
fn no_loss_named_trains_with_the_reference_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.jsonl");
    write_pairs(&data);
    let model = support::tiny_model_without_dropout(dir.path());
    let run = |output: &Path, more: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            model.to_str().unwrap(),
            "--train",
            data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--no-export-onnx",
            "--epochs",
            "1",
            "--batch-size",
            "4",
        ];
        args.extend_from_slice(more);
        let result = support::run(&args);
        assert!(result.status.success(), "{}", support::stderr(&result));
    };
    let (default, named) = (dir.path().join("default"), dir.path().join("named"));
    run(&default, &[]);
    run(&named, &["--loss", "BinaryCrossEntropyLoss"]);
    assert_eq!(support::losses_of(&default), support::losses_of(&named));
    let card = std::fs::read_to_string(default.join("README.md")).unwrap();
    assert!(card.contains("\"loss:BinaryCrossEntropyLoss\""), "{card}");
    // The directory is sentence-transformers 6.3's layout, and says so (an encoder too).
    let saved = read_json(&default.join("config_sentence_transformers.json"));
    assert_eq!(saved["__version__"]["sentence_transformers"], "6.3.0");
}

#[test]
fn fractional_epochs_and_steps_are_read_as_transformers_5_does() {
    let dir = tempfile::tempdir().unwrap();
    // 16 rows in batches of 4: 4 steps an epoch, 1.5 epochs = 6 steps; every fraction
    // below is ceil(0.5 × 6) = 3 steps.
    let config = recipe(dir.path(), "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("num_train_epochs = 5", "num_train_epochs = 1.5")
        .replace("logging_steps = 1", "logging_steps = 0.5")
        .replace(
            "save_steps = 0",
            "save_steps = 0.5\neval_steps = 0.5\nwarmup_steps = 0.5",
        );
    std::fs::write(&config, text).unwrap();
    let output = dir.path().join("out");
    let run = train_cli(&config, &output, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let entries = log_entries(&output);
    let logged = |key: &str| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| e.get(key).is_some())
            .map(|e| e["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(logged("loss"), vec![3, 6]);
    assert_eq!(logged("metrics"), vec![3, 6]);
    // Linear warm-up over 3 of 6 steps: step 3 ran at 2/3 of the peak, step 6 at 1/3.
    let rates: Vec<f64> = entries
        .iter()
        .filter_map(|e| e["learning_rate"].as_f64())
        .collect();
    assert_eq!(rates.len(), 2);
    assert!((rates[0] - 1e-3 * 2.0 / 3.0).abs() < 1e-12, "{rates:?}");
    assert!((rates[1] - 1e-3 / 3.0).abs() < 1e-12, "{rates:?}");
    assert!(output.join("checkpoint-3").is_dir() && output.join("checkpoint-6").is_dir());
    let args = read_json(&output.join("training_args.json"));
    assert_eq!(args["num_train_epochs"], 1.5);
    assert_eq!(args["warmup_steps"], 0.5);
    assert_eq!(
        read_json(&output.join("trainer_state.json"))["global_step"],
        6
    );

    // A fraction of a step above 1 is refused by name, as transformers does.
    let dir = tempfile::tempdir().unwrap();
    let config = recipe(dir.path(), "eval_steps = 2.5");
    let run = train_cli(&config, &dir.path().join("out"), &[]);
    let error = support::stderr(&run);
    assert!(
        error.contains("eval_steps") && error.contains("whole number"),
        "{error}"
    );
}

#[test]
fn save_strategy_best_checkpoints_each_new_best() {
    let dir = tempfile::tempdir().unwrap();
    let config = recipe(
        dir.path(),
        "eval_steps = 1\nsave_strategy = \"best\"\nnum_train_epochs = 2",
    );
    // A large step size, so that some evaluations are worse than the best.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("num_train_epochs = 5\n", "")
        .replace("learning_rate = 1e-3", "learning_rate = 2e-2");
    std::fs::write(&config, text).unwrap();
    let output = dir.path().join("out");
    let run = train_cli(&config, &output, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let mut best: Option<f64> = None;
    let mut expected = Vec::new();
    for (step, metrics) in evaluations(&output) {
        let value = metrics["eval_loss"].as_f64().unwrap();
        if best.is_none_or(|b| value < b) {
            best = Some(value);
            expected.push(step);
        }
    }
    let mut saved: Vec<usize> = std::fs::read_dir(&output)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()
        })
        .collect();
    saved.sort();
    assert!(
        !expected.is_empty() && expected.len() < 8,
        "{expected:?} (every step a best)"
    );
    assert_eq!(saved, expected);
}

/// `trajectory_recipe_2026.json`: sentence-transformers 6.3's `CrossEncoderTrainer` on
/// trajectories.json's tiny BERT run with a fractional `warmup_steps`, `cosine_with_min_lr`
/// and `learning_rate_mapping` (the classifier at 10x), reproduced step by step.
#[test]
fn recipe_items_train_as_the_cross_encoder_trainer() {
    let reference = read_json(&support::fixture("trajectory_recipe_2026.json"));
    let run = &read_json(&support::fixture("trajectories.json"))["runs"]["tiny-bert-ce/bce"];
    let dir = tempfile::tempdir().unwrap();
    let model = support::tiny_model_without_dropout(dir.path());
    let train = dir.path().join("train.jsonl");
    let lines: String = run["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| format!("{row}\n"))
        .collect();
    std::fs::write(&train, lines).unwrap();
    let settings = &reference["settings"];
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "model = {model:?}\noutput = \"out\"\nloss = \"BinaryCrossEntropyLoss\"\n\
             train = {{ files = {train:?} }}\nper_device_train_batch_size = {rows}\n\
             num_train_epochs = {steps}\nlearning_rate = {lr}\nweight_decay = {wd}\n\
             warmup_steps = {warmup}\nlr_scheduler_type = \"cosine_with_min_lr\"\n\
             lr_scheduler_kwargs = {{ min_lr = {min_lr} }}\n\
             learning_rate_mapping = {{ \"classifier\" = {head_lr} }}\n\
             max_length = {max_length}\nseed = 12\nlogging_steps = 1\nsave_steps = 0\n\
             export_onnx = false\n",
            rows = run["train"].as_array().unwrap().len(),
            steps = settings["steps"],
            lr = settings["lr"],
            wd = settings["weight_decay"],
            warmup = settings["warmup_steps"],
            min_lr = settings["lr_scheduler_kwargs"]["min_lr"],
            head_lr = settings["learning_rate_mapping"]["classifier"],
            max_length = settings["max_length"],
        ),
    )
    .unwrap();
    let output = dir.path().join("out");
    let trained = train_cli(&recipe, &output, &[]);
    assert!(trained.status.success(), "{}", support::stderr(&trained));
    let losses = support::losses_of(&output);
    let expected: Vec<f64> = reference["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), expected.len());
    let worst = losses
        .iter()
        .zip(&expected)
        .map(|(ours, theirs)| (ours - theirs).abs() / theirs.abs())
        .fold(0.0, f64::max);
    eprintln!("2026 recipe trajectory: loss rel err {worst:.1e}");
    assert!(
        worst < 1e-4,
        "loss rel err {worst}: {losses:?} vs {expected:?}"
    );
    // Without the mapping the head would learn 10x slower: the run must differ from that.
    let plain = dir.path().join("plain");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("learning_rate_mapping = { \"classifier\" = 0.01 }\n", "");
    let plain_recipe = dir.path().join("plain.toml");
    std::fs::write(&plain_recipe, text).unwrap();
    let trained = train_cli(&plain_recipe, &plain, &[]);
    assert!(trained.status.success(), "{}", support::stderr(&trained));
    let plain_losses = support::losses_of(&plain);
    assert!(
        (plain_losses[7] - losses[7]).abs() > 1e-3,
        "{plain_losses:?} vs {losses:?}"
    );
    // The same mapping as a flag (JSON, as sentence-transformers takes it stringified).
    let flagged = dir.path().join("flagged");
    let trained = train_cli(
        &plain_recipe,
        &flagged,
        &["--learning-rate-mapping", "{\"classifier\": 0.01}"],
    );
    assert!(trained.status.success(), "{}", support::stderr(&trained));
    assert_eq!(support::losses_of(&flagged), losses);
}

#[test]
fn reduce_lr_on_plateau_cuts_after_each_stalled_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    // Mode max on a falling eval loss: every evaluation but an improving one stalls, and
    // patience 0 cuts the rate by half right after it.
    let config = recipe(
        dir.path(),
        "eval_steps = 1\nlr_scheduler_type = \"reduce_lr_on_plateau\"\n\
         lr_scheduler_kwargs = { mode = \"max\", patience = 0, factor = 0.5, \
         threshold = 0.0, threshold_mode = \"abs\", eps = 0.0 }",
    );
    let output = dir.path().join("out");
    let run = train_cli(&config, &output, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let entries = log_entries(&output);
    let mut expected_lr = 1e-3;
    let mut best: Option<f64> = None;
    let mut cuts = 0;
    for entry in &entries {
        if let Some(lr) = entry["learning_rate"].as_f64() {
            assert!(
                (lr - expected_lr).abs() < 1e-15,
                "step {}: {lr} vs {expected_lr}",
                entry["step"]
            );
        }
        if let Some(value) = entry["metrics"]["eval_loss"].as_f64() {
            if best.is_none_or(|b| value > b) {
                best = Some(value);
            } else {
                expected_lr *= 0.5;
                cuts += 1;
            }
        }
    }
    assert!(cuts >= 3, "{cuts} cuts");
    let state = read_json(&output.join("trainer_state.json"));
    let saved = state["plateau"]["lr"].as_f64().unwrap();
    assert!(
        (saved - expected_lr).abs() < 1e-15,
        "{saved} vs {expected_lr}: {}",
        state["plateau"]
    );
}

/// `report_to = ["tensorboard"]`: event files whose scalars are metrics.jsonl's, also after
/// a resume (the superseded file is replaced by one with the checkpoint's history).
#[test]
fn tensorboard_event_files_hold_the_logged_scalars() {
    use tfrecord::protobuf::event::What;
    use tfrecord::protobuf::summary::value::Value as Scalar;
    let dir = tempfile::tempdir().unwrap();
    let config = recipe(dir.path(), "eval_steps = 2\nreport_to = \"tensorboard\"");
    let output = dir.path().join("out");
    let args = ["--set", "stop_at_step=6", "--set", "save_steps=3"];
    let run = train_cli(&config, &output, &args);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let run = train_cli(&config, &output, &["--resume", "--set", "save_steps=3"]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(output.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut read: Vec<(i64, String, f32)> = Vec::new();
    for event in tfrecord::EventIter::open(&files[0], Default::default()).unwrap() {
        if let Some(What::Summary(summary)) = event.unwrap().what {
            for value in summary.value {
                if let Some(Scalar::SimpleValue(number)) = value.value {
                    read.push((0, value.tag, number));
                }
            }
        }
    }
    // The same scalars, in order, from metrics.jsonl.
    let mut expected: Vec<(String, f32)> = Vec::new();
    for entry in log_entries(&output) {
        for (key, tag) in [
            ("loss", "train/loss"),
            ("grad_norm", "train/grad_norm"),
            ("learning_rate", "train/learning_rate"),
        ] {
            if let Some(value) = entry[key].as_f64() {
                expected.push((tag.to_string(), value as f32));
            }
        }
        if let Some(metrics) = entry["metrics"].as_object() {
            for (key, value) in metrics {
                let tag = format!("eval/{}", key.trim_start_matches("eval_"));
                expected.push((tag, value.as_f64().unwrap() as f32));
            }
        }
        expected.push((
            "train/epoch".into(),
            entry["epoch"].as_f64().unwrap() as f32,
        ));
    }
    let read: Vec<(String, f32)> = read.into_iter().map(|(_, tag, v)| (tag, v)).collect();
    assert_eq!(read, expected);
    assert!(expected.iter().any(|(tag, _)| tag == "eval/loss"));
    assert_eq!(
        expected
            .iter()
            .filter(|(tag, _)| tag == "train/loss")
            .count(),
        20
    );
}
