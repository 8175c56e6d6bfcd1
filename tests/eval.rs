//! The evaluators against sentence-transformers' own outputs on fixed scores
//! (`tests/fixtures/golden_metrics.json`: the real CrossEncoder*Evaluator classes with a
//! `predict` that returns the recorded float32 scores).

mod support;

use crosstrain::eval::classification::{binary_metrics, multiclass_metrics};
use crosstrain::eval::correlation::correlation_metrics;
use crosstrain::eval::reranking::{RerankingEvaluator, RerankingSample};
use crosstrain::eval::Metrics;
use serde_json::Value;
use support::fixture;

/// METRICS.md: compare to 1e-12; we assert the 1e-9 and report the largest error.
const TOLERANCE: f64 = 1e-9;

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("golden_metrics.json")).unwrap()).unwrap()
}

fn assert_metrics(id: &str, ours: &Metrics, case: &Value, skip: &[String]) -> f64 {
    let expected = case["result"].as_object().unwrap();
    assert_eq!(
        ours.values.keys().collect::<Vec<_>>(),
        {
            let mut keys: Vec<&String> = expected.keys().collect();
            keys.sort();
            keys
        },
        "{id}: metric keys"
    );
    assert_eq!(
        ours.primary_metric,
        case["primary_metric"].as_str().unwrap(),
        "{id}: primary metric"
    );
    let mut worst: f64 = 0.0;
    for (key, value) in expected {
        if skip.contains(key) {
            continue;
        }
        let ours = ours.values[key];
        match value {
            Value::String(nan) if nan == "NaN" => {
                assert!(ours.is_nan(), "{id} {key}: expected NaN, got {ours}")
            }
            _ => {
                let expected = value.as_f64().unwrap();
                let error = (ours - expected).abs();
                worst = worst.max(error);
                assert!(error <= TOLERANCE, "{id} {key}: {ours} vs {expected}");
            }
        }
    }
    worst
}

fn f32_list(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn reranking_metrics_equal_the_reference() {
    // The 6.2 cases re-run through sentence-transformers 6.3, whose reranking metrics we
    // follow (`scripts/make-golden-metrics-st63.py`); the 6.2 file says which MRRs tie.
    let golden_62 = golden();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("golden_metrics_st63.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(golden["meta"]["versions"]["sentence-transformers"], "6.3.0");
    let mut worst: f64 = 0.0;
    for (case, case_62) in golden["reranking"]
        .as_array()
        .unwrap()
        .iter()
        .zip(golden_62["reranking"].as_array().unwrap())
    {
        assert_eq!(case["id"], case_62["id"]);
        let id = case["id"].as_str().unwrap();
        let kwargs = &case["evaluator_kwargs"];
        let evaluator = RerankingEvaluator {
            at_k: kwargs["at_k"].as_u64().unwrap() as usize,
            always_rerank_positives: kwargs["always_rerank_positives"].as_bool().unwrap(),
            name: kwargs["name"].as_str().unwrap().to_string(),
        };
        let samples: Vec<RerankingSample> =
            serde_json::from_value(case["samples"].clone()).unwrap();
        let doc_scores = case["doc_scores"].as_array().unwrap();
        let result = evaluator.evaluate(&samples, |index, document| {
            doc_scores[index][document].as_f64().unwrap() as f32
        });
        assert!(case["error"].is_null(), "{id}: 6.3 raises no error");
        // MRR is undefined under ties at the deciding position (numpy's unstable sort).
        let tie_sensitive = case_62["per_query"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["mrr_tie_sensitive"].as_bool() == Some(true));
        let skip: Vec<String> = if tie_sensitive {
            case["result"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| k.contains("mrr@"))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        worst = worst.max(assert_metrics(id, &result.unwrap(), case, &skip));
    }
    eprintln!("reranking: largest |error| {worst:e}");
}

#[test]
fn classification_metrics_equal_the_reference() {
    let golden = golden();
    let mut worst: f64 = 0.0;
    for case in golden["classification"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let name = case["name"].as_str().unwrap_or("");
        let labels: Vec<u64> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let metrics = if case["num_labels"].as_u64() == Some(1) {
            let labels: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
            binary_metrics(name, &labels, &f32_list(&case["scores"]))
        } else {
            let scores: Vec<Vec<f32>> = case["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(f32_list)
                .collect();
            let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            multiclass_metrics(name, &labels, &scores)
        };
        worst = worst.max(assert_metrics(id, &metrics, case, &[]));
    }
    eprintln!("classification: largest |error| {worst:e}");
}

#[test]
fn correlation_metrics_equal_the_reference() {
    let golden = golden();
    let mut worst: f64 = 0.0;
    for case in golden["correlation"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let gold: Vec<f64> = case["gold"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let metrics = correlation_metrics(
            case["name"].as_str().unwrap_or(""),
            &gold,
            &f32_list(&case["scores"]),
        );
        worst = worst.max(assert_metrics(id, &metrics, case, &[]));
    }
    eprintln!("correlation: largest |error| {worst:e}");
}

fn write(dir: &std::path::Path, name: &str, lines: &[Value]) -> std::path::PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn eval_json(args: &[&str]) -> Value {
    let output = support::run(args);
    assert!(output.status.success(), "{}", support::stderr(&output));
    serde_json::from_str(&support::stdout(&output)).unwrap()
}

#[test]
fn eval_command_applies_the_model_activation_and_the_evaluators() {
    use crosstrain::model::{CrossEncoder, LoadOptions};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = fixture("models").join("tiny-bert-ce");
    let model_arg = model_dir.to_str().unwrap();

    // Reranking, in the trainer's listwise shape: base_* metrics come from the given order.
    let samples = write(
        dir.path(),
        "rerank.jsonl",
        &[
            json!({"query": "moons of mars", "documents": ["Bananas are yellow.", "Mars has two moons.", "Deimos orbits Mars."], "labels": [0, 1, 1]}),
            json!({"query": "boiling water", "positive": ["Water boils at 100 C."], "negative": ["Ice is cold.", "Rust is a language."]}),
        ],
    );
    let result = eval_json(&[
        "eval",
        "--model",
        model_arg,
        "--evaluator",
        "reranking",
        "--data",
        samples.to_str().unwrap(),
        "--at-k",
        "3",
        "--json",
    ]);
    assert_eq!(result["primary_metric"], "ndcg@3");
    for key in [
        "map",
        "mrr@3",
        "ndcg@3",
        "base_map",
        "base_mrr@3",
        "base_ndcg@3",
    ] {
        assert!(result[key].is_f64(), "{key} missing: {result}");
    }
    // The same numbers from the library: sigmoid scores, then the evaluator.
    let model = CrossEncoder::load_dir(&model_dir, &LoadOptions::default()).unwrap();
    let parsed = crosstrain::data::eval_sets::read_reranking_samples(&samples).unwrap();
    let evaluator = RerankingEvaluator {
        at_k: 3,
        ..RerankingEvaluator::default()
    };
    let expected = evaluator
        .evaluate(&parsed, |index, document| {
            let logit = model
                .predict(&[(parsed[index].query.as_str(), document)], 1)
                .unwrap()[0][0];
            1.0 / (1.0 + (-logit).exp())
        })
        .unwrap();
    for (key, value) in &expected.values {
        assert!(
            (result[key].as_f64().unwrap() - value).abs() < 1e-6,
            "{key}"
        );
    }
    // The given order ranks a negative first: base MRR@3 is 1/2.
    assert!((result["base_mrr@3"].as_f64().unwrap() - 0.5).abs() < 1e-12);

    let pairs = write(
        dir.path(),
        "sts.jsonl",
        &[
            json!({"query": "a man plays guitar", "document": "a man is playing a guitar", "score": 4.8}),
            json!({"query": "a cat sleeps", "document": "stocks fell today", "score": 0.2}),
            json!({"query": "kids play football", "document": "children play soccer", "score": 4.0}),
        ],
    );
    let result = eval_json(&[
        "eval",
        "--model",
        model_arg,
        "--evaluator",
        "correlation",
        "--data",
        pairs.to_str().unwrap(),
        "--name",
        "sts-dev",
        "--json",
    ]);
    assert_eq!(result["primary_metric"], "sts-dev_spearman");
    assert!(result["sts-dev_pearson"].as_f64().unwrap().abs() <= 1.0);

    let three = fixture("models").join("tiny-bert-ce-3labels");
    let labeled = write(
        dir.path(),
        "nli.jsonl",
        &[
            json!({"text_a": "a", "text_b": "b", "label": 0}),
            json!({"text_a": "c", "text_b": "d", "label": 2}),
        ],
    );
    let result = eval_json(&[
        "eval",
        "--model",
        three.to_str().unwrap(),
        "--evaluator",
        "classification",
        "--data",
        labeled.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(result["primary_metric"], "f1_macro");

    let bad = write(
        dir.path(),
        "bad.jsonl",
        &[json!({"query": "q", "documents": ["a", "b"], "labels": [1]})],
    );
    let output = support::run(&[
        "eval",
        "--model",
        model_arg,
        "--evaluator",
        "reranking",
        "--data",
        bad.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        support::stderr(&output).contains("bad.jsonl:1: 1 labels for 2 documents"),
        "{}",
        support::stderr(&output)
    );
}
