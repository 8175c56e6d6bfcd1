//! The trainer on the tiny fixture model: every loss family learns, gradient caching equals
//! the plain step, resumption is exact, and bad data or settings fail with a clear message.

mod support;

use std::path::{Path, PathBuf};

use candle_core::Var;
use crosstrain::data::dataset::{read_dataset, DatasetSpec};
use crosstrain::model::{CrossEncoder, LoadOptions};
use crosstrain::plugins::LossRegistry;
use crosstrain::train::config::TrainConfig;
use crosstrain::train::step::{accumulate_batch, GradAccumulator};
use crosstrain::train::{train, RunOptions};
use serde_json::{json, Value};
use support::{
    copy_tree, fixture, losses_of, read_json, run, stderr, stdout, train_cli, MODEL_FILES,
};

fn tiny_model() -> String {
    fixture("models/tiny-bert-ce").display().to_string()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

const TOPICS: [(&str, [&str; 3]); 4] = [
    (
        "pasta",
        [
            "boil water and cook the pasta",
            "salt the pasta water",
            "drain the pasta",
        ],
    ),
    (
        "car",
        [
            "change the oil of the car",
            "check the car tires",
            "charge the car battery",
        ],
    ),
    (
        "dog",
        [
            "walk the dog every morning",
            "feed the dog twice a day",
            "teach the dog to sit",
        ],
    ),
    (
        "garden",
        [
            "water the garden plants",
            "weed the garden beds",
            "plant tomatoes in the garden",
        ],
    ),
];

/// Rows for one loss family.
fn family_rows(family: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for (index, (topic, documents)) in TOPICS.iter().enumerate() {
        let (_, other) = TOPICS[(index + 1) % TOPICS.len()];
        let query = format!("how do i {topic}");
        match family {
            "pointwise" => {
                rows.push(json!({"query": query, "document": documents[0], "label": 1}));
                rows.push(json!({"query": query, "document": other[0], "label": 0}));
            }
            "mnrl" => {
                for document in &documents[..2] {
                    rows.push(json!({"anchor": query, "positive": document}));
                }
            }
            "listwise" => rows.push(json!({
                "query": query,
                "documents": [documents[0], other[0], documents[1], other[1]],
                "labels": [1.0, 0.0, 1.0, 0.0],
            })),
            "distillation" => rows.push(json!({
                "query": query,
                "positive": documents[0],
                "negative": other[0],
                "label": 3.0,
            })),
            _ => unreachable!(),
        }
    }
    rows
}

fn config(dir: &Path, model: &str, loss: &str, loss_config: Value, extra: &str) -> TrainConfig {
    let text = format!(
        "model = {model:?}\noutput = \"out\"\nloss = {loss:?}\ntrain = {{ files = \"train.jsonl\" }}\n\
         export_onnx = false\nsave_steps = 0\nlogging_steps = 1\nseed = 3\n\
         loss_config = {}\n{extra}",
        toml_inline(&loss_config)
    );
    TrainConfig::from_toml(&text, "test.toml", dir).unwrap()
}

fn toml_inline(value: &Value) -> String {
    let table: toml::Value = serde_json::from_value(value.clone()).unwrap();
    match table {
        toml::Value::Table(t) => {
            let inner: Vec<String> = t.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// A copy of the tiny model without dropout, so that the loss curve of a repeated batch is
/// smooth enough to test.
fn assert_learns(family: &str, loss: &str, loss_config: Value) {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("train.jsonl"), &family_rows(family));
    let rows = family_rows(family).len();
    let model = support::tiny_model_without_dropout(dir.path())
        .display()
        .to_string();
    let config = config(
        dir.path(),
        &model,
        loss,
        loss_config,
        &format!("batch_size = {rows}\nmax_steps = 30\nlr = 3e-3\nlr_scheduler = \"constant\"\n"),
    );
    let registry = LossRegistry::with_builtins().unwrap();
    let report = train(&config, &registry, &RunOptions::default()).unwrap();
    assert_eq!(report.state.global_step, 30);
    let losses = losses_of(&dir.path().join("out"));
    assert_eq!(losses.len(), 30, "{family}: one log line per step");
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[27..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.75 * first,
        "{family}/{loss}: the loss did not fall enough: first steps {:?}, last steps {:?}",
        &losses[..3],
        &losses[27..]
    );
}

#[test]
fn pointwise_loss_falls() {
    assert_learns("pointwise", "BinaryCrossEntropyLoss", json!({}));
}

#[test]
fn in_batch_negatives_loss_falls() {
    assert_learns(
        "mnrl",
        "MultipleNegativesRankingLoss",
        json!({"num_negatives": 3}),
    );
}

#[test]
fn listwise_loss_falls() {
    assert_learns("listwise", "LambdaLoss", json!({}));
}

#[test]
fn distillation_loss_falls() {
    assert_learns("distillation", "MarginMSELoss", json!({}));
}

/// Gradients of one batch, plain or cached in chunks of `chunk` pairs.
fn batch_gradients(
    model: &str,
    loss_name: &str,
    loss_config: Value,
    rows: &[Value],
    chunk: Option<usize>,
) -> (f64, Vec<Vec<f32>>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("train.jsonl");
    write_jsonl(&file, rows);
    let dataset = read_dataset(&DatasetSpec::from_files(vec![file])).unwrap();
    let model = CrossEncoder::load(model, &LoadOptions::default()).unwrap();
    // Dropout off: chunks are padded differently, so masks could not line up; with dropout
    // on, the cached path replays each chunk's own masks.
    model.dropout().eval();
    let registry = LossRegistry::with_builtins().unwrap();
    let loss = registry.build(loss_name, &loss_config).unwrap();
    let vars: Vec<Var> = model
        .trainable_parameters()
        .iter()
        .map(|t| t.var.clone())
        .collect();
    let mut grads = GradAccumulator::new(vars.len());
    let all: Vec<usize> = (0..dataset.len()).collect();
    let outcome = accumulate_batch(
        &model, &vars, &loss, &dataset, &all, 7, chunk, 1.0, None, &mut grads,
    )
    .unwrap();
    let grads = grads
        .take()
        .into_iter()
        .map(|g| {
            g.map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .unwrap_or_default()
        })
        .collect();
    (outcome.loss, grads)
}

fn assert_same_gradients(loss: &str, loss_config: Value, rows: &[Value], chunk: usize) {
    assert_same_gradients_of(&tiny_model(), loss, loss_config, rows, chunk);
}

fn assert_same_gradients_of(
    model: &str,
    loss: &str,
    loss_config: Value,
    rows: &[Value],
    chunk: usize,
) {
    let (plain_loss, plain) = batch_gradients(model, loss, loss_config.clone(), rows, None);
    let (cached_loss, cached) = batch_gradients(model, loss, loss_config, rows, Some(chunk));
    assert!(
        (plain_loss - cached_loss).abs() < 1e-5,
        "{loss}: loss {plain_loss} vs cached {cached_loss}"
    );
    let mut worst = 0.0f32;
    let mut nonzero = 0;
    for (a, b) in plain.iter().zip(&cached) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
            nonzero += usize::from(*x != 0.0);
        }
    }
    assert!(nonzero > 1000, "{loss}: gradients should reach the weights");
    assert!(worst < 1e-5, "{loss}: largest gradient difference {worst}");
}

#[test]
fn gradient_caching_equals_the_plain_step() {
    // MNRL scores 8 rows × (1 + 3) pairs = 32 pairs; chunks of 5 split them unevenly.
    assert_same_gradients(
        "MultipleNegativesRankingLoss",
        json!({"num_negatives": 3}),
        &family_rows("mnrl"),
        5,
    );
    assert_same_gradients("ListNetLoss", json!({}), &family_rows("listwise"), 3);
    assert_same_gradients(
        "BinaryCrossEntropyLoss",
        json!({}),
        &family_rows("pointwise"),
        3,
    );
    // The families with their own fused layers (chunks padded to other lengths).
    for model in ["tiny-modernbert-ce", "tiny-deberta-v2-ce"] {
        assert_same_gradients_of(
            &fixture("models").join(model).display().to_string(),
            "MultipleNegativesRankingLoss",
            json!({"num_negatives": 3}),
            &family_rows("mnrl"),
            5,
        );
    }
}

/// Writes the pointwise data set and returns the config path.
fn cli_setup(dir: &Path, extra: &str) -> PathBuf {
    cli_setup_with(dir, &tiny_model(), extra)
}

fn cli_setup_with(dir: &Path, model: &str, extra: &str) -> PathBuf {
    write_jsonl(&dir.join("train.jsonl"), &family_rows("pointwise"));
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\noutput = \"out\"\nloss = \"BinaryCrossEntropyLoss\"\n\
             train = {{ files = \"train.jsonl\" }}\nbatch_size = 3\nepochs = 3\nlr = 1e-3\n\
             export_onnx = false\nlogging_steps = 2\n{extra}",
            model
        ),
    )
    .unwrap();
    config
}

fn load_weights(dir: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// Issue 20: a recipe in TrainingArguments names trains exactly as the same recipe in
/// crosstrain's short names (and the flags of either name agree).
#[test]
fn training_arguments_names_train_identically() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("train.jsonl"), &family_rows("pointwise"));
    let recipe = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "model = {:?}\nloss = \"BinaryCrossEntropyLoss\"\n\
                 train = {{ files = \"train.jsonl\" }}\nexport_onnx = false\nsave_steps = 0\n\
                 logging_steps = 1\n{body}",
                tiny_model()
            ),
        )
        .unwrap();
        path
    };
    let short = recipe(
        "short.toml",
        "lr = 1e-3\nepochs = 2\nbatch_size = 3\nlr_scheduler = \"cosine\"\nwarmup_ratio = 0.2\n",
    );
    let long = recipe(
        "long.toml",
        "learning_rate = 1e-3\nnum_train_epochs = 2\nper_device_train_batch_size = 3\n\
         lr_scheduler_type = \"cosine\"\nwarmup_ratio = 0.2\n",
    );
    let flags = recipe("flags.toml", "warmup_ratio = 0.2\n");
    let out = |name: &str| dir.path().join(name);
    for (config, output, more) in [
        (&short, out("a"), vec![]),
        (&long, out("b"), vec![]),
        (
            &flags,
            out("c"),
            vec![
                "--learning-rate",
                "1e-3",
                "--num-train-epochs",
                "2",
                "--per-device-train-batch-size",
                "3",
                "--lr-scheduler-type",
                "cosine",
            ],
        ),
    ] {
        let result = train_cli(config, &output, &more);
        assert!(result.status.success(), "{}", stderr(&result));
    }
    let a = load_weights(&out("a"));
    for other in ["b", "c"] {
        let b = load_weights(&out(other));
        for (name, values) in &a {
            assert_eq!(values, &b[name], "{name} differs in run {other}");
        }
    }
    let args = read_json(&out("a").join("training_args.json"));
    assert_eq!(args["learning_rate"], 1e-3);
    assert_eq!(args["lr_scheduler_type"], "cosine");
    // The cosine schedule ran: 6 steps, warm-up 2 (ceil of 1.2), so step 3 is at the peak.
    let log = std::fs::read_to_string(out("a").join("metrics.jsonl")).unwrap();
    let rates: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["learning_rate"].as_f64())
        .collect();
    assert_eq!(rates.len(), 6, "{log}");
    assert!((rates[2] - 1e-3).abs() < 1e-12, "{rates:?}");
    let half = 0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * 0.25).cos()) * 1e-3;
    assert!((rates[3] - half).abs() < 1e-12, "{rates:?}");
}

/// Issue 20: two named datasets with their own losses (pairs with BCE, triplets with MNRL),
/// under both multi-dataset samplers: the reference's step counts, each dataset's loss logged,
/// exact resumption, and a card that lists both datasets and losses.
#[test]
fn two_named_datasets_train_with_their_losses_under_both_samplers() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("pairs.jsonl"), &family_rows("pointwise"));
    let triplets: Vec<Value> = family_rows("distillation")
        .into_iter()
        .chain(family_rows("distillation").into_iter().take(1))
        .map(|row| json!({"anchor": row["query"], "positive": row["positive"], "negative": row["negative"]}))
        .collect();
    assert_eq!(triplets.len(), 5);
    write_jsonl(&dir.path().join("triplets.jsonl"), &triplets);
    for (sampler, expected_steps) in [("proportional", 10), ("round_robin", 8)] {
        let config = dir.path().join(format!("{sampler}.toml"));
        std::fs::write(
            &config,
            format!(
                "model = {:?}\nloss = \"BinaryCrossEntropyLoss\"\nexport_onnx = false\n\
                 per_device_train_batch_size = 3\nnum_train_epochs = 2\nlogging_steps = 1\n\
                 save_steps = 3\nmulti_dataset_batch_sampler = {sampler:?}\n\
                 [train.pairs]\nfiles = \"pairs.jsonl\"\n\
                 [train.triplets]\nfiles = \"triplets.jsonl\"\n\
                 loss = \"MultipleNegativesRankingLoss\"\nloss_config = {{ scale = 10.0 }}\n\
                 [eval.triplets]\nfiles = \"triplets.jsonl\"\n",
                tiny_model()
            ),
        )
        .unwrap();
        let full = dir.path().join(format!("{sampler}-full"));
        let result = train_cli(&config, &full, &["--json"]);
        assert!(result.status.success(), "{}", stderr(&result));
        let summary: Value = serde_json::from_str(stdout(&result).trim()).unwrap();
        // pairs: 8 rows → 3 batches, triplets: 5 rows → 2; proportional 3 + 2 per epoch,
        // round robin 2 × min(3, 2).
        assert_eq!(summary["global_step"], expected_steps, "{sampler}");
        let log = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for line in log.lines() {
            let entry: Value = serde_json::from_str(line).unwrap();
            if let Some(losses) = entry["dataset_losses"].as_object() {
                assert_eq!(losses.len(), 1, "one batch per step: {line}");
                seen.extend(losses.keys().cloned());
            }
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["pairs", "triplets"]);
        // A named evaluation set takes the loss of the training set of its name.
        assert!(
            summary["metrics"]["eval_triplets_loss"].as_f64().is_some(),
            "{summary}"
        );

        let split = dir.path().join(format!("{sampler}-split"));
        let first = train_cli(&config, &split, &["--stop-at-step", "4"]);
        assert!(first.status.success(), "{}", stderr(&first));
        let resumed = train_cli(&config, &split, &["--resume"]);
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        let a = load_weights(&full);
        let b = load_weights(&split);
        for (name, values) in &a {
            assert_eq!(values, &b[name], "{sampler}: {name} differs after resuming");
        }
        let card = std::fs::read_to_string(full.join("README.md")).unwrap();
        for needle in [
            "### Training Dataset `pairs`",
            "### Training Dataset `triplets`",
            "* Loss: `BinaryCrossEntropyLoss`",
            "* Loss: `MultipleNegativesRankingLoss`",
            "loss:MultipleNegativesRankingLoss",
            "loss:BinaryCrossEntropyLoss\"",
            "dataset_size:13",
        ] {
            assert!(card.contains(needle), "{sampler}: card lacks {needle:?}");
        }
        let args = read_json(&full.join("training_args.json"));
        assert_eq!(
            args["train"]["triplets"]["loss"],
            "MultipleNegativesRankingLoss"
        );
    }
}

/// Issue 20: CrossEntropyLoss trains on probability labels (soft labels), and a row whose
/// list does not have num_labels entries is named before training.
#[test]
fn cross_entropy_trains_on_class_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = family_rows("pointwise")
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let p = (i % 4) as f64 * 0.25;
            json!({"query": row["query"], "document": row["document"], "label": [p, 1.0 - p, 0.0]})
        })
        .collect();
    write_jsonl(&dir.path().join("train.jsonl"), &rows);
    let model = fixture("models/tiny-bert-ce-3labels");
    let args = |output: &Path, data: &Path| {
        run(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--loss",
            "CrossEntropyLoss",
            "--train",
            data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--no-export-onnx",
            "--max-steps",
            "2",
            "--json",
        ])
    };
    let result = args(&dir.path().join("out"), &dir.path().join("train.jsonl"));
    assert!(result.status.success(), "{}", stderr(&result));
    let summary: Value = serde_json::from_str(stdout(&result).trim()).unwrap();
    assert!(summary["train_loss"].as_f64().unwrap().is_finite());
    let mut bad = rows.clone();
    bad[3]["label"] = json!([0.5, 0.5]);
    write_jsonl(&dir.path().join("bad.jsonl"), &bad);
    let result = args(&dir.path().join("out2"), &dir.path().join("bad.jsonl"));
    assert!(!result.status.success());
    assert!(
        stderr(&result)
            .contains("bad.jsonl:line 4: label has 2 class probabilities for num_labels = 3"),
        "{}",
        stderr(&result)
    );
}

/// Issue 20: `no_duplicates` batches resume exactly like the plain sampler.
#[test]
fn no_duplicates_sampler_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Anchors repeated across rows: the sampler has to defer some.
    let rows: Vec<Value> = family_rows("mnrl")
        .into_iter()
        .chain(family_rows("mnrl"))
        .collect();
    write_jsonl(&dir.path().join("train.jsonl"), &rows);
    let config = dir.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nloss = \"MultipleNegativesRankingLoss\"\n\
             train = {{ files = \"train.jsonl\" }}\nexport_onnx = false\nsave_steps = 2\n\
             per_device_train_batch_size = 4\nnum_train_epochs = 2\nbatch_sampler = \"no_duplicates\"\n\
             logging_steps = 1\n",
            tiny_model()
        ),
    )
    .unwrap();
    let full = dir.path().join("full");
    let split = dir.path().join("split");
    let result = train_cli(&config, &full, &[]);
    assert!(result.status.success(), "{}", stderr(&result));
    let first = train_cli(&config, &split, &["--stop-at-step", "3"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let resumed = train_cli(&config, &split, &["--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let a = load_weights(&full);
    let b = load_weights(&split);
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming");
    }
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    resumes_exactly("tiny-bert-ce", "");
}

/// The families with their own fused layers, with dropout (DeBERTa's fixture has 0.1;
/// ModernBERT's has none, so its copy gets 0.1).
#[test]
fn modernbert_and_deberta_resume_exactly_with_dropout() {
    resumes_exactly(
        "tiny-modernbert-ce",
        "attention_dropout,mlp_dropout,embedding_dropout",
    );
    resumes_exactly("tiny-deberta-v2-ce", "");
}

/// Trains `fixture` whole and stopped at step 5 then resumed: the same weights and logs. The
/// listed config keys are set to a dropout of 0.1 first.
fn resumes_exactly(fixture_name: &str, dropout_keys: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture("models").join(fixture_name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let mut model_config = read_json(&model.join("config.json"));
    for key in dropout_keys.split(',').filter(|key| !key.is_empty()) {
        model_config[key] = json!(0.1);
    }
    std::fs::write(model.join("config.json"), model_config.to_string()).unwrap();
    // 8 rows, batch 3 → 3 batches per epoch, 9 steps; warm-up and dropout on.
    let config = cli_setup_with(
        dir.path(),
        &model.display().to_string(),
        "save_steps = 4\nwarmup_ratio = 0.2\n",
    );
    let config = config.to_str().unwrap();
    let full_dir = dir.path().join("full");
    let split_dir = dir.path().join("split");
    let full = run(&[
        "train",
        "--config",
        config,
        "--output",
        full_dir.to_str().unwrap(),
    ]);
    assert!(full.status.success(), "{}", stderr(&full));

    let split = split_dir.to_str().unwrap();
    let first = run(&[
        "train",
        "--config",
        config,
        "--output",
        split,
        "--stop-at-step",
        "5",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("stopped at step 5 of 9"),
        "{}",
        stdout(&first)
    );
    assert!(split_dir
        .join("checkpoint-5/optimizer.safetensors")
        .is_file());
    assert!(split_dir.join("checkpoint-4/trainer_state.json").is_file());
    assert!(!split_dir.join("model.safetensors").exists());

    // Without --resume or --overwrite the directory is refused.
    let refused = run(&["train", "--config", config, "--output", split]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--resume"),
        "{}",
        stderr(&refused)
    );

    let resumed = run(&["train", "--config", config, "--output", split, "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));

    let a = load_weights(&full_dir);
    let b = load_weights(&split_dir);
    assert_eq!(a.len(), b.len());
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming");
    }
    // And differs from the start model: training happened.
    let start = load_weights(&model);
    assert_ne!(start["classifier.weight"], a["classifier.weight"]);
    // The logs agree too.
    let log = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(log(&full_dir), log(&split_dir));
}

#[test]
fn mismatched_format_names_the_loss_and_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_setup(dir.path(), "");
    let output = dir.path().join("out");
    let result = train_cli(&config, &output, &["--loss", "ListNetLoss"]);
    assert!(!result.status.success());
    let message = stderr(&result);
    assert!(
        message.contains("does not fit crosstrain-losses/ListNetLoss"),
        "{message}"
    );
    assert!(message.contains("query-documents-scores"), "{message}");
    assert!(
        message.contains("2 text columns (query, document)"),
        "{message}"
    );
    assert!(!output.join("model.safetensors").exists());
}

#[test]
fn bad_row_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_setup(dir.path(), "");
    let mut text = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
    text.push_str("{\"query\": \"q\", \"document\": [1, 2], \"label\": 1}\n");
    std::fs::write(dir.path().join("train.jsonl"), &text).unwrap();
    let output = dir.path().join("out");
    let args = [
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-steps",
        "1",
    ];
    let result = run(&args);
    assert!(!result.status.success());
    let message = stderr(&result);
    assert!(message.contains("train.jsonl:line 9"), "{message}");
    assert!(message.contains("column \"document\""), "{message}");

    // With skip_invalid_rows the row is skipped and training runs.
    let mut skipping = args.to_vec();
    skipping.extend(["--set", "train.skip_invalid_rows=true"]);
    let result = run(&skipping);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(output.join("model.safetensors").is_file());
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_setup(dir.path(), "learning_rate = 1e-5\n");
    let result = run(&["train", "--config", config.to_str().unwrap()]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("learning_rate"),
        "{}",
        stderr(&result)
    );

    let config = cli_setup(dir.path(), "");
    let result = run(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--loss-config",
        "{\"pos_weight\": \"heavy\"}",
    ]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("pos_weight"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // A huge learning rate without clipping drives the logits to infinity.
    let config = cli_setup(dir.path(), "save_steps = 1\nmax_grad_norm = 0.0\n");
    let output = dir.path().join("out");
    let result = train_cli(&config, &output, &["--lr", "1e30"]);
    assert!(!result.status.success(), "{}", stdout(&result));
    let message = stderr(&result);
    assert!(
        message.contains("the loss is NaN") || message.contains("the loss is inf"),
        "{message}"
    );
    assert!(message.contains("step "), "{message}");
    assert!(message.contains("last good checkpoint"), "{message}");
    assert!(output.join("checkpoint-1/model.safetensors").is_file());
}

#[test]
fn output_directory_is_a_model_directory_with_training_args() {
    let dir = tempfile::tempdir().unwrap();
    let config = cli_setup(dir.path(), "save_steps = 0\n");
    let output = dir.path().join("out");
    let result = train_cli(&config, &output, &["--json"]);
    assert!(result.status.success(), "{}", stderr(&result));
    let summary: Value = serde_json::from_str(stdout(&result).trim()).unwrap();
    assert_eq!(summary["global_step"], 9);
    let run_files = ["training_args.json", "trainer_state.json", "metrics.jsonl"];
    for file in MODEL_FILES.iter().chain(&run_files) {
        assert!(output.join(file).is_file(), "missing {file}");
    }
    let args = read_json(&output.join("training_args.json"));
    assert_eq!(args["per_device_train_batch_size"], 3);
    assert!(
        args.get("batch_size").is_none(),
        "written under the TrainingArguments name"
    );
    assert_eq!(args["loss"], "BinaryCrossEntropyLoss");
    // The trained directory loads again and scores pairs.
    let model = CrossEncoder::load_dir(&output, &LoadOptions::default()).unwrap();
    assert_eq!(model.predict(&[("a", "b")], 1).unwrap().len(), 1);
    // A second run into the same directory is refused; --overwrite replaces it.
    let again = train_cli(&config, &output, &[]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--overwrite"), "{}", stderr(&again));
}

#[test]
fn best_checkpoint_is_loaded_at_the_end_and_kept_by_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 9 steps, eval and save every 3; the eval loss picks the best checkpoint.
    let config = cli_setup(
        dir.path(),
        "eval = { files = \"train.jsonl\" }\neval_steps = 3\nsave_steps = 3\n\
         save_total_limit = 1\nload_best_model_at_end = true\n",
    );
    let output = dir.path().join("out");
    let result = train_cli(&config, &output, &[]);
    assert!(result.status.success(), "{}", stderr(&result));
    let state = read_json(&output.join("trainer_state.json"));
    assert_eq!(state["best_metric_name"], "eval_loss");
    let best = state["best_checkpoint"].as_str().unwrap().to_string();
    // The best has the lowest eval loss among the checkpointed steps (3, 6 and 9: the last
    // step falls on the schedule, so it is evaluated and checkpointed too, once).
    let losses: Vec<(u64, f64)> = state["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["step"].as_u64()?, e["metrics"]["eval_loss"].as_f64()?)))
        .collect();
    let steps: Vec<u64> = losses.iter().map(|(step, _)| *step).collect();
    assert_eq!(steps, [3, 6, 9]);
    let (best_step, best_loss) = losses
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(best, format!("checkpoint-{best_step}"));
    assert_eq!(state["best_metric"].as_f64().unwrap(), best_loss);
    // save_total_limit = 1 keeps only the best checkpoint; the output holds its weights.
    let kept: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(kept, vec![best.clone()]);
    assert_eq!(load_weights(&output), load_weights(&output.join(&best)));
}

/// Trains as sentence-transformers' `CrossEncoderTrainer` did for a run of `trajectories`
/// (`trajectories.json`, `trajectories_decoders.json`: dropout zeroed in a copy of the model,
/// the whole training set in one batch per step) and returns (largest relative loss error,
/// largest final-score error).
fn trajectory_errors(trajectories: &str, run_id: &str) -> (f64, f64) {
    let trajectories = read_json(&fixture(trajectories));
    let reference = &trajectories["runs"][run_id];
    let settings = &reference["settings"];
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let source = fixture("models").join(
        reference["model"]
            .as_str()
            .unwrap()
            .trim_start_matches("models/"),
    );
    copy_tree(&source, &model);
    let mut config = read_json(&model.join("config.json"));
    for key in [
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout",
        // ModernBERT's.
        "embedding_dropout",
        "attention_dropout",
        "mlp_dropout",
    ] {
        config[key] = json!(0.0);
    }
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    // A LoRA run continues the adapter it started from (PEFT's format) on that base.
    let lora = reference["lora"].as_object();
    let (model_arg, base_args) = match lora {
        Some(lora) => {
            let adapter = dir.path().join("adapter");
            let initial = lora["initial_adapter"].as_str().unwrap();
            copy_tree(
                &fixture("models").join(initial.trim_start_matches("models/")),
                &adapter,
            );
            let base = vec!["--base-model".to_string(), model.display().to_string()];
            (adapter, base)
        }
        None => (model.clone(), Vec::new()),
    };
    let train_file = dir.path().join("train.jsonl");
    write_jsonl(&train_file, reference["train"].as_array().unwrap());
    let pairs_file = dir.path().join("pairs.jsonl");
    let eval_pairs: Vec<Value> = reference["eval_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| json!({"query": pair[0], "document": pair[1]}))
        .collect();
    write_jsonl(&pairs_file, &eval_pairs);
    let output = dir.path().join("out");
    let text = |value: &Value| value.to_string();
    let base_args: Vec<&str> = base_args.iter().map(String::as_str).collect();
    let trained = run(&[
        &[
            "train",
            "--loss",
            reference["loss"].as_str().unwrap(),
            "--model",
            model_arg.to_str().unwrap(),
        ][..],
        &base_args,
        &[
            "--train",
            train_file.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--epochs",
            &text(&settings["steps"]),
            "--batch-size",
            &text(&settings["batch_size"]),
            "--lr",
            &text(&settings["lr"]),
            "--set",
            &format!("weight_decay={}", settings["weight_decay"]),
            "--warmup-ratio",
            &text(&settings["warmup_ratio"]),
            "--max-length",
            &text(&settings["max_length"]),
            "--logging-steps",
            "1",
            "--seed",
            "12",
            "--no-export-onnx",
        ],
    ]
    .concat());
    assert!(trained.status.success(), "{run_id}: {}", stderr(&trained));
    if lora.is_some() {
        // The output is an adapter in PEFT's format, not a copy of the model.
        assert!(
            output.join("adapter_model.safetensors").is_file(),
            "{run_id}"
        );
        assert!(!output.join("model.safetensors").exists(), "{run_id}");
    }
    let losses: Vec<f64> = std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter_map(|entry| entry.get("loss").and_then(Value::as_f64))
        .collect();
    let expected: Vec<f64> = reference["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), expected.len(), "{run_id}: logged losses");
    let loss_error = losses
        .iter()
        .zip(&expected)
        .map(|(ours, theirs)| (ours - theirs).abs() / theirs.abs().max(1e-12))
        .fold(0.0, f64::max);
    let predicted = run(&[
        &[
            "predict",
            "--model",
            output.to_str().unwrap(),
            "--pairs",
            pairs_file.to_str().unwrap(),
            "--max-length",
            &text(&settings["max_length"]),
            "--json",
        ][..],
        &base_args,
    ]
    .concat());
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let ours: Vec<Vec<f64>> = serde_json::from_str(&stdout(&predicted)).unwrap();
    let logit_error = ours
        .iter()
        .flatten()
        .zip(
            // Encoders' final logits are rows; decoders' final scores are one number each.
            reference
                .get("final_logits")
                .unwrap_or(&reference["final_scores"])
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| match row.as_array() {
                    Some(row) => row.iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(),
                    None => vec![row.as_f64().unwrap()],
                }),
        )
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{run_id}: loss rel err {loss_error:.1e}, final logits abs err {logit_error:.1e}");
    (loss_error, logit_error)
}

/// `trajectories.json`: sentence-transformers' per-step training losses and final logits for
/// BERT, XLM-RoBERTa, ELECTRA, ModernBERT (both poolings) and DeBERTa-v2 (BinaryCrossEntropyLoss, 8
/// steps, warm-up, weight decay, clipping), reproduced by `crosstrain train`.
#[test]
fn training_trajectories_match_the_cross_encoder_trainer() {
    for run_id in [
        "tiny-bert-ce/bce",
        "tiny-xlmr-ce/bce",
        "tiny-electra-ce/bce",
        "tiny-modernbert-ce/bce",
        "tiny-modernbert-mean-ce/bce",
        "tiny-deberta-v2-ce/bce",
    ] {
        let (loss_error, logit_error) = trajectory_errors("trajectories.json", run_id);
        assert!(loss_error < 1e-4, "{run_id}: loss rel err {loss_error}");
        assert!(
            logit_error < 1e-4,
            "{run_id}: final logits err {logit_error}"
        );
    }
}

/// `trajectories_decoders.json`, the full fine-tuning runs: sentence-transformers 6.3's
/// per-step losses and final raw scores of the Qwen3 reranker (LogitScore), the Qwen3
/// sequence classifier and the Qwen2 reranker (BinaryCrossEntropyLoss, 8 steps, warm-up,
/// weight decay except on norms, clipping), reproduced by `crosstrain train`.
#[test]
fn decoder_training_trajectories_match_the_cross_encoder_trainer() {
    for run_id in [
        "tiny-qwen3-reranker/bce",
        "tiny-qwen3-seqcls/bce",
        "tiny-qwen2-reranker/bce",
    ] {
        let (loss_error, score_error) = trajectory_errors("trajectories_decoders.json", run_id);
        assert!(loss_error < 1e-4, "{run_id}: loss rel err {loss_error}");
        assert!(
            score_error < 1e-4,
            "{run_id}: final scores err {score_error}"
        );
    }
}

/// `trajectories_decoders.json`, the LoRA runs (PEFT, r 4, alpha 8, all seven projections):
/// each continues the initial adapter sentence-transformers saved (`--model ADAPTER
/// --base-model BASE`), one with A and B both drawn and one with PEFT's zero B, and must log
/// the reference's losses and end at its scores.
#[test]
fn lora_training_trajectories_match_the_cross_encoder_trainer() {
    for run_id in [
        "tiny-qwen3-reranker/lora-random-init",
        "tiny-qwen3-reranker/lora-default-init",
    ] {
        let (loss_error, score_error) = trajectory_errors("trajectories_decoders.json", run_id);
        assert!(loss_error < 1e-4, "{run_id}: loss rel err {loss_error}");
        assert!(
            score_error < 1e-4,
            "{run_id}: final scores err {score_error}"
        );
    }
}

/// `trajectories_encoder_lora.json` (`scripts/make-encoder-lora-trajectories.py`): LoRA on
/// every encoder family through `CrossEncoderTrainer` + PEFT (r 4, alpha 8, A and B drawn;
/// PEFT's default targets, "all-linear" with the classifier, named layers, and
/// `modules_to_save`), each continued by crosstrain from the adapter saved at the start.
#[test]
fn encoder_lora_trajectories_match_the_cross_encoder_trainer() {
    for run_id in [
        "tiny-bert-ce/lora",
        "tiny-xlmr-ce/lora",
        "tiny-electra-ce/lora",
        "tiny-modernbert-ce/lora",
        "tiny-deberta-v2-ce/lora",
    ] {
        let (loss_error, logit_error) = trajectory_errors("trajectories_encoder_lora.json", run_id);
        assert!(loss_error < 1e-4, "{run_id}: loss rel err {loss_error}");
        assert!(
            logit_error < 1e-4,
            "{run_id}: final logits err {logit_error}"
        );
    }
}

/// Issue 23: a dataset kept on disk (a memory-mapped Arrow cache) trains bit for bit as the
/// same file read into memory, length grouping and an exact resume included; the second read
/// is a cache hit, and `--json` reports the rows and the cache file.
#[test]
fn disk_storage_trains_bit_identically_to_memory_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("train.jsonl"), &family_rows("pointwise"));
    write_jsonl(
        &dir.path().join("eval.jsonl"),
        &family_rows("pointwise")[..4],
    );
    let cache = dir.path().join("cache");
    let recipe = |storage: &str| {
        let path = dir.path().join(format!("{storage}.toml"));
        std::fs::write(
            &path,
            format!(
                "model = {:?}\nloss = \"BinaryCrossEntropyLoss\"\n\
                 train = {{ files = \"train.jsonl\", storage = {storage:?} }}\n\
                 eval = {{ files = \"eval.jsonl\", storage = {storage:?} }}\n\
                 batch_size = 3\nepochs = 3\nlr = 1e-3\nwarmup_ratio = 0.2\n\
                 group_by_length = true\nsave_steps = 4\neval_steps = 4\n\
                 eval_strategy = \"steps\"\nexport_onnx = false\nlogging_steps = 1\n",
                tiny_model()
            ),
        )
        .unwrap();
        path
    };
    let train = |recipe: &Path, output: &Path, more: &[&str]| {
        let output = support::crosstrain()
            .env("CROSSTRAIN_CACHE", &cache)
            .arg("train")
            .arg("--config")
            .arg(recipe)
            .arg("--output")
            .arg(output)
            .arg("--json")
            .args(more)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        output
    };
    let memory_dir = dir.path().join("memory");
    let memory = train(&recipe("memory"), &memory_dir, &[]);
    let memory: Value = serde_json::from_str(stdout(&memory).trim()).unwrap();
    assert_eq!(memory["datasets"][0]["cache"], Value::Null);
    assert!(!cache.exists(), "memory storage wrote a cache");

    let disk_dir = dir.path().join("disk");
    let disk = train(&recipe("disk"), &disk_dir, &[]);
    let disk: Value = serde_json::from_str(stdout(&disk).trim()).unwrap();
    let datasets = disk["datasets"].as_array().unwrap();
    assert_eq!(datasets.len(), 2, "{disk}");
    assert_eq!(datasets[0]["split"], "train");
    assert_eq!(datasets[0]["rows"], 8);
    assert_eq!(datasets[1]["split"], "eval");
    assert_eq!(datasets[1]["rows"], 4);
    let entry = PathBuf::from(datasets[0]["cache"].as_str().unwrap());
    assert!(
        entry.starts_with(cache.join("datasets")),
        "{}",
        entry.display()
    );
    assert!(entry.is_file());
    let written = std::fs::metadata(&entry).unwrap().modified().unwrap();

    let log = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let same_weights = |a: &Path, b: &Path| {
        let (a, b) = (load_weights(a), load_weights(b));
        assert_eq!(a.len(), b.len());
        for (name, values) in &a {
            assert_eq!(values, &b[name], "{name} differs");
        }
    };
    same_weights(&memory_dir, &disk_dir);
    assert_eq!(log(&memory_dir), log(&disk_dir));
    assert!(log(&disk_dir).contains("eval_loss"));

    // Stopped and resumed on the cached rows (a cache hit: the entry is not rewritten).
    let split_dir = dir.path().join("split");
    train(&recipe("disk"), &split_dir, &["--stop-at-step", "5"]);
    let resumed = train(&recipe("disk"), &split_dir, &["--resume"]);
    let resumed: Value = serde_json::from_str(stdout(&resumed).trim()).unwrap();
    assert_eq!(resumed["datasets"][0]["cache"], datasets[0]["cache"]);
    assert_eq!(
        std::fs::metadata(&entry).unwrap().modified().unwrap(),
        written
    );
    same_weights(&memory_dir, &split_dir);
    assert_eq!(log(&memory_dir), log(&split_dir));

    // Resuming with the rows kept elsewhere is no change of recipe.
    let switched = dir.path().join("switched");
    train(&recipe("disk"), &switched, &["--stop-at-step", "5"]);
    train(&recipe("memory"), &switched, &["--resume"]);
    same_weights(&memory_dir, &switched);
}
