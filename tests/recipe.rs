//! The 2026 recipe items (sentence-transformers 6.3 / transformers 5): early stopping, a
//! NanoBEIR evaluator in training, and the arguments' new forms, through `crosstrain train`.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{read_json, train_cli, write_pairs};

/// The evaluations a run logged: `(step, metrics)`.
fn evaluations(output: &Path) -> Vec<(usize, Value)> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|entry| entry.get("metrics").is_some())
        .map(|entry| (entry["step"].as_u64().unwrap() as usize, entry["metrics"].clone()))
        .collect()
}

/// transformers' `EarlyStoppingCallback` replayed on logged values: the step after which it
/// stops the run, if any.
fn reference_stop(values: &[(usize, f64)], greater: bool, threshold: f64, patience: usize) -> Option<usize> {
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
    assert_eq!(values.last().unwrap().0, expected, "no evaluation after the stop");
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
    let run = train_cli(&config, &parted, &["--set", "stop_at_step=3", "--set", "save_steps=1"]);
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
}
