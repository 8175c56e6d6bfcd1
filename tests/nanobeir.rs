//! The NanoBEIR evaluator against sentence-transformers 6.3's `CrossEncoderNanoBEIREvaluator`
//! on a small dataset in the hub's layout that the test writes (the reference's numbers for
//! the same data and model are `tests/fixtures/nanobeir_reference.json`, made by
//! `scripts/make-nanobeir-reference.py`), and in training.

mod support;

use std::path::Path;

use crosstrain::data::nanobeir::{write_nanobeir_split, NanoBeirSplit};
use serde_json::Value;
use support::fixture;

const WORDS: [&str; 24] = [
    "mars", "moon", "water", "boils", "orbit", "planet", "river", "ocean", "rust", "language",
    "compiler", "memory", "protein", "cell", "virus", "vaccine", "tax", "market", "stock", "bank",
    "football", "league", "music", "guitar",
];

/// A deterministic text of `n` words from a counter.
fn text(seed: usize, n: usize) -> String {
    (0..n)
        .map(|i| WORDS[(seed * 7 + i * 5 + seed / 3) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two NanoBEIR datasets (msmarco, nq) in the hub's layout: 6 queries each over 30
/// documents, BM25 lists of 10 that miss some positives, 1–3 positives per query.
fn make_nanobeir(dir: &Path) {
    for (split, offset) in [("NanoMSMARCO", 0usize), ("NanoNQ", 100)] {
        let corpus: Vec<(String, String)> = (0..30)
            .map(|i| (format!("doc{i}"), text(offset + i, 6 + i % 5)))
            .collect();
        let queries: Vec<(String, String)> = (0..6)
            .map(|q| (format!("q{q}"), text(offset + 50 + q, 3)))
            .collect();
        let mut qrels = Vec::new();
        let mut bm25 = Vec::new();
        for q in 0..6 {
            let positives: Vec<usize> = (0..1 + q % 3).map(|p| (q * 5 + p * 11) % 30).collect();
            for p in &positives {
                qrels.push((format!("q{q}"), format!("doc{p}")));
            }
            // Ranked lists: a stride through the corpus with the first positive at rank
            // 1 + q % 5 (beyond the cut for some), the others mostly missing.
            let mut ranked: Vec<usize> = (0..10).map(|r| (q * 5 + 7 + r * 3) % 30).collect();
            ranked.retain(|d| *d != positives[0]);
            ranked.insert(q % 5, positives[0]);
            ranked.truncate(10);
            let ranked: Vec<String> = ranked.iter().map(|d| format!("doc{d}")).collect();
            bm25.push((format!("q{q}"), ranked));
        }
        let data = NanoBeirSplit {
            corpus,
            queries,
            qrels,
            bm25,
        };
        write_nanobeir_split(dir, split, &data).unwrap();
    }
}

fn eval_json(args: &[&str]) -> Value {
    let output = support::run(args);
    assert!(output.status.success(), "{}", support::stderr(&output));
    serde_json::from_str(&support::stdout(&output)).unwrap()
}

#[test]
fn nanobeir_equals_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    make_nanobeir(dir.path());
    if let Ok(keep) = std::env::var("CROSSTRAIN_KEEP_NANOBEIR") {
        // For scripts/make-nanobeir-reference.py: the same files the reference reads.
        make_nanobeir(Path::new(&keep));
    }
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("nanobeir_reference.json")).unwrap())
            .unwrap();
    let model = fixture("models").join("tiny-bert-ce");
    let mut worst: f64 = 0.0;
    for case in reference["cases"].as_array().unwrap() {
        let mut args = vec![
            "eval".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--evaluator".into(),
            "nanobeir".into(),
            "--dataset-id".into(),
            dir.path().display().to_string(),
            "--dataset-names".into(),
            "msmarco,nq".into(),
            "--json".into(),
        ];
        for (flag, key) in [("--rerank-k", "rerank_k"), ("--at-k", "at_k")] {
            args.push(flag.into());
            args.push(case["kwargs"][key].to_string());
        }
        if case["kwargs"]["always_rerank_positives"] == false {
            args.push("--no-rerank-positives".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ours = eval_json(&args);
        let expected = case["result"].as_object().unwrap();
        assert_eq!(ours["primary_metric"], case["primary_metric"]);
        assert_eq!(
            ours.as_object().unwrap().len(),
            expected.len() + 1,
            "keys: {ours} vs {expected:?}"
        );
        for (key, value) in expected {
            let error = (ours[key].as_f64().unwrap() - value.as_f64().unwrap()).abs();
            worst = worst.max(error);
            assert!(error < 1e-6, "{key}: {} vs {value}", ours[key]);
        }
    }
    eprintln!("nanobeir: largest |error| against the reference {worst:e}");
}

#[test]
fn nanobeir_refuses_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    make_nanobeir(dir.path());
    let model = fixture("models").join("tiny-bert-ce");
    let output = support::run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--evaluator",
        "nanobeir",
        "--dataset-id",
        dir.path().to_str().unwrap(),
        "--dataset-names",
        "msmarco,scifact",
    ]);
    assert!(!output.status.success());
    let error = support::stderr(&output);
    assert!(
        error.contains("corpus/NanoSciFact-*.parquet") && error.contains("split \"NanoSciFact\""),
        "{error}"
    );
    let output = support::run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--evaluator",
        "nanobeir",
        "--dataset-id",
        dir.path().to_str().unwrap(),
        "--dataset-names",
        "msmarko",
    ]);
    let error = support::stderr(&output);
    assert!(
        error.contains("\"msmarko\" is not a NanoBEIR dataset"),
        "{error}"
    );
}

/// A NanoBEIR evaluator in a recipe: its keys in the log (per dataset and the means), its
/// primary metric choosing the best checkpoint, and the card's table and model-index.
#[test]
fn nanobeir_evaluates_during_training_and_fills_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("NanoBEIR-local");
    make_nanobeir(&data_dir);
    let train = dir.path().join("train.jsonl");
    support::write_pairs(&train);
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "model = {:?}\noutput = \"out\"\nloss = \"BinaryCrossEntropyLoss\"\n\
             train = {{ files = {train:?} }}\nper_device_train_batch_size = 8\n\
             num_train_epochs = 2\neval_steps = 2\nsave_steps = 2\nlogging_steps = 1\n\
             load_best_model_at_end = true\nexport_onnx = false\n\
             metric_for_best_model = \"NanoBEIR_R6_mean_ndcg@3\"\n\
             [[evaluators]]\nkind = \"nanobeir\"\ndataset_id = \"NanoBEIR-local\"\n\
             dataset_names = [\"msmarco\", \"nq\"]\nrerank_k = 6\nat_k = 3\nbatch_size = 5\n",
            fixture("models").join("tiny-bert-ce")
        ),
    )
    .unwrap();
    let output = dir.path().join("out");
    let run = support::train_cli(&recipe, &output, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let state = support::read_json(&output.join("trainer_state.json"));
    assert_eq!(state["best_metric_name"], "eval_NanoBEIR_R6_mean_ndcg@3");
    let last: Value = serde_json::from_str(
        std::fs::read_to_string(output.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    for key in [
        "eval_NanoMSMARCO_R6_map",
        "eval_NanoNQ_R6_ndcg@3",
        "eval_NanoBEIR_R6_mean_mrr@3",
        "eval_NanoBEIR_R6_mean_base_ndcg@3",
    ] {
        assert!(last["metrics"][key].is_f64(), "{key}: {last}");
    }
    let card = std::fs::read_to_string(output.join("README.md")).unwrap();
    for needle in [
        "type: cross-encoder-nano-beir",
        "name: Cross Encoder Nano BEIR",
        "CrossEncoderNanoBEIREvaluator",
        "\"dataset_names\": [",
        "#### Cross Encoder Reranking\n\n* Dataset: `NanoMSMARCO_R6`",
        "| **ndcg@3** |",
    ] {
        assert!(card.contains(needle), "{needle}:\n{card}");
    }
    // A recipe's nanobeir evaluator with a `name` or `data` is refused by name.
    let bad = std::fs::read_to_string(&recipe).unwrap() + "name = \"mine\"\n";
    std::fs::write(&recipe, bad).unwrap();
    let run = support::train_cli(&recipe, &dir.path().join("out2"), &[]);
    let error = support::stderr(&run);
    assert!(error.contains("nanobeir takes no `name`"), "{error}");
}

/// Issue 34's recipe with every item at once (NanoBEIR evaluator, early stopping, fractional
/// epochs, steps and warm-up, `save_strategy = "best"`, `train_sampling_strategy`, a
/// transformers 5 schedule, `learning_rate_mapping`, the default loss, TensorBoard) trains,
/// and a run stopped half-way and resumed ends exactly as the whole run.
#[test]
fn a_recipe_with_every_2026_item_trains_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    make_nanobeir(&dir.path().join("NanoBEIR-local"));
    let train = dir.path().join("train.jsonl");
    support::write_pairs(&train);
    let model = support::tiny_model_without_dropout(dir.path());
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "model = {model:?}\noutput = \"out\"\ntrain = {{ files = {train:?} }}\n\
             per_device_train_batch_size = 4\nnum_train_epochs = 2.5\nlearning_rate = 1e-3\n\
             warmup_steps = 0.2\nlogging_steps = 0.1\neval_steps = 0.2\nsave_strategy = \"best\"\n\
             train_sampling_strategy = \"sequential\"\n\
             lr_scheduler_type = \"warmup_stable_decay\"\n\
             lr_scheduler_kwargs = {{ num_decay_steps = 4, min_lr_ratio = 0.1 }}\n\
             learning_rate_mapping = {{ \"classifier\" = 5e-3 }}\n\
             metric_for_best_model = \"NanoBEIR_R6_mean_ndcg@3\"\n\
             early_stopping_patience = 3\nreport_to = [\"tensorboard\"]\nexport_onnx = false\n\
             [[evaluators]]\nkind = \"nanobeir\"\ndataset_id = \"NanoBEIR-local\"\n\
             dataset_names = [\"msmarco\", \"nq\"]\nrerank_k = 6\nat_k = 3\n"
        ),
    )
    .unwrap();
    let whole = dir.path().join("whole");
    let run = support::train_cli(&recipe, &whole, &[]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let parted = dir.path().join("parted");
    let run = support::train_cli(&recipe, &parted, &["--set", "stop_at_step=4"]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let run = support::train_cli(&recipe, &parted, &["--resume"]);
    assert!(run.status.success(), "{}", support::stderr(&run));
    let log = |output: &Path| std::fs::read_to_string(output.join("metrics.jsonl")).unwrap();
    assert_eq!(log(&whole), log(&parted));
    assert!(log(&whole).contains("eval_NanoBEIR_R6_mean_ndcg@3"));
    let weights = |output: &Path| std::fs::read(output.join("model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&parted), "final weights differ");
    let state = support::read_json(&whole.join("trainer_state.json"));
    assert_eq!(state["max_steps"], 10);
    assert!(whole.join("runs").read_dir().unwrap().count() == 1);
}
