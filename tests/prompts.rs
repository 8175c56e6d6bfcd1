//! The recipe's `prompts` (sentence-transformers' `CrossEncoderTrainingArguments.prompts`):
//! applied to every training batch as the reference's losses apply `prompt=` (an encoder's
//! prefix of the query, a decoder's leading system message), one string or one per dataset.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::{copy_tree, fixture, losses_of, run, stderr, stdout};

const PROMPT: &str = "Search query: ";

fn rows() -> Vec<(String, String, f64)> {
    (0..8)
        .map(|i| {
            (
                format!("query number {i} about plants"),
                format!("document {} on leaves and roots {i}", i * 3),
                f64::from(i % 2),
            )
        })
        .collect()
}

fn write_rows(path: &Path, query_prefix: &str) {
    let text: String = rows()
        .iter()
        .map(|(q, d, l)| {
            json!({"query": format!("{query_prefix}{q}"), "document": d, "label": l}).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Trains 4 steps (batches of `batch_size`, every step logged) and returns the logged losses.
fn train(model: &Path, data: &Path, output: &Path, batch_size: usize, more: &[&str]) -> Vec<f64> {
    let batch_size = batch_size.to_string();
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--loss",
        "BinaryCrossEntropyLoss",
        "--train",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--batch-size",
        &batch_size,
        "--no-export-onnx",
        "--save-steps",
        "0",
        "--max-steps",
        "4",
        "--logging-steps",
        "1",
        "--set",
        "learning_rate=1e-3",
    ];
    args.extend_from_slice(more);
    let output_run = run(&args);
    assert!(output_run.status.success(), "{}", stderr(&output_run));
    losses_of(output)
}

#[test]
fn an_encoder_trains_with_a_prompt_as_on_queries_that_begin_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&fixture("models/tiny-bert-ce"), &model);
    let (plain, prefixed) = (
        dir.path().join("plain.jsonl"),
        dir.path().join("prefixed.jsonl"),
    );
    write_rows(&plain, "");
    write_rows(&prefixed, PROMPT);
    let prompt_setting = format!("prompts={}", json!(PROMPT));
    let with_prompt = train(
        &model,
        &plain,
        &dir.path().join("a"),
        4,
        &["--set", &prompt_setting],
    );
    let on_prefixed = train(&model, &prefixed, &dir.path().join("b"), 4, &[]);
    let without = train(&model, &plain, &dir.path().join("c"), 4, &[]);
    assert_eq!(with_prompt.len(), 4);
    for (a, b) in with_prompt.iter().zip(&on_prefixed) {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{with_prompt:?} vs {on_prefixed:?}"
        );
    }
    assert!(
        with_prompt
            .iter()
            .zip(&without)
            .any(|(a, b)| (a - b).abs() > 1e-6),
        "the prompt changes training"
    );
    // Recorded with the recipe, so --resume can hold it.
    let args = support::read_json(&dir.path().join("a/training_args.json"));
    assert_eq!(args["prompts"], PROMPT);
}

#[test]
fn a_decoder_trains_on_the_scores_it_predicts_with_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&fixture("models/tiny-qwen3-reranker"), &model);
    let data = dir.path().join("train.jsonl");
    write_rows(&data, "");
    let prompt = "Judge whether the document is about botany.";
    // The first step's loss is the mean BCE of the untrained model's prompted scores (one
    // batch of all 8 rows; the tiny decoder has no dropout).
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        data.to_str().unwrap(),
        "--prompt",
        prompt,
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let scores: Vec<Vec<f64>> = serde_json::from_str(&stdout(&output)).unwrap();
    let bce = |scores: &[Vec<f64>]| {
        scores
            .iter()
            .zip(rows())
            .map(|(s, (_, _, y))| {
                let x = s[0];
                x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
            })
            .sum::<f64>()
            / 8.0
    };
    let setting = format!("prompts={}", json!(prompt));
    let losses = train(
        &model,
        &data,
        &dir.path().join("out"),
        8,
        &["--set", &setting],
    );
    assert!(
        (losses[0] - bce(&scores)).abs() < 1e-5,
        "{} vs {}",
        losses[0],
        bce(&scores)
    );
    let unprompted = train(&model, &data, &dir.path().join("plain"), 8, &[]);
    assert!(
        (unprompted[0] - losses[0]).abs() > 1e-5,
        "the prompt changes the loss"
    );
}

#[test]
fn prompts_per_dataset_must_name_the_recipes_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    write_rows(&data, "");
    let output = run(&support::train_args(
        &fixture("models/tiny-bert-ce"),
        &data,
        &dir.path().join("out"),
        &["--set", "prompts={nli = \"x\"}"],
    )
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("prompts") && message.contains("named datasets"),
        "{message}"
    );
}

#[test]
fn an_evaluator_scores_with_its_prompt_name_as_eval_does() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&fixture("models/tiny-qwen3-reranker"), &model);
    let prompt = "Judge whether the document is about botany.";
    let st_config = model.join("config_sentence_transformers.json");
    let mut saved = support::read_json(&st_config);
    saved["prompts"] = json!({"botany": prompt});
    std::fs::write(&st_config, saved.to_string()).unwrap();
    let data = dir.path().join("dev.jsonl");
    write_rows(&data, "");
    let eval = |more: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--evaluator",
            "correlation",
            "--data",
            data.to_str().unwrap(),
            "--name",
            "dev",
            "--json",
        ];
        args.extend_from_slice(more);
        let output = run(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        let metrics: Value = serde_json::from_str(&stdout(&output)).unwrap();
        metrics["dev_pearson"]
            .as_f64()
            .unwrap_or_else(|| panic!("{metrics}"))
    };
    let (prompted, plain) = (eval(&["--prompt-name", "botany"]), eval(&[]));
    assert!(
        (prompted - plain).abs() > 1e-6,
        "the prompt changes the metric"
    );
    // Before the first step, the trainer's evaluator gives `eval`'s number for its prompt.
    let first_pearson = |prompt_name: Option<&str>, output: &Path| -> f64 {
        let evaluator = match prompt_name {
            Some(name) => format!(
                "evaluators=[{{kind = \"correlation\", name = \"dev\", data = {{files = [{}]}}, prompt_name = \"{name}\"}}]",
                json!(data)
            ),
            None => format!(
                "evaluators=[{{kind = \"correlation\", name = \"dev\", data = {{files = [{}]}}}}]",
                json!(data)
            ),
        };
        train(
            &model,
            &data,
            output,
            8,
            &["--set", &evaluator, "--set", "eval_on_start=true"],
        );
        std::fs::read_to_string(output.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .find_map(|line| {
                serde_json::from_str::<Value>(line).unwrap()["metrics"]["eval_dev_pearson"].as_f64()
            })
            .expect("an evaluation was logged")
    };
    let with_name = first_pearson(Some("botany"), &dir.path().join("a"));
    assert!(
        (with_name - prompted).abs() < 1e-6,
        "{with_name} vs {prompted}"
    );
    let without = first_pearson(None, &dir.path().join("b"));
    assert!((without - plain).abs() < 1e-6, "{without} vs {plain}");
    // A name the model does not have is refused before training.
    let output = run(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--loss",
        "BinaryCrossEntropyLoss",
        "--train",
        data.to_str().unwrap(),
        "--output",
        dir.path().join("c").to_str().unwrap(),
        "--set",
        &format!(
            "evaluators=[{{kind = \"correlation\", data = {{files = [{}]}}, prompt_name = \"nope\"}}]",
            json!(data)
        ),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("\"nope\" is none of the model's prompts (botany)"),
        "{}",
        stderr(&output)
    );
}
