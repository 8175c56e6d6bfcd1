//! The card's YAML front matter: what the Hugging Face hub reads (tags, datasets, metrics as
//! `model-index`), and the small formatting helpers the body shares.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::TrainingSummary;

/// A JSON string, which is also a valid YAML scalar.
pub(super) fn yaml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

pub(super) fn pretty_metric_name(key: &str) -> String {
    let mut chars = key.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub(super) fn task_type(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "reranking" => ("cross-encoder-reranking", "Cross Encoder Reranking"),
        "nanobeir" => ("cross-encoder-nano-beir", "Cross Encoder Nano BEIR"),
        "classification" => (
            "cross-encoder-classification",
            "Cross Encoder Classification",
        ),
        _ => ("cross-encoder-correlation", "Cross Encoder Correlation"),
    }
}

pub(super) fn front_matter(summary: &TrainingSummary) -> String {
    let meta = &summary.metadata;
    let mut yaml = String::from("---\n");
    if !meta.language.is_empty() {
        yaml.push_str("language:\n");
        for language in &meta.language {
            let _ = writeln!(yaml, "- {}", yaml_string(language));
        }
    }
    if let Some(license) = &meta.license {
        let _ = writeln!(yaml, "license: {}", yaml_string(license));
    }
    yaml.push_str("tags:\n");
    let train_rows: usize = summary
        .datasets
        .iter()
        .filter(|d| d.split == "train")
        .map(|d| d.rows)
        .sum();
    let tags = [
        "cross-encoder".to_string(),
        "reranker".to_string(),
        "crosstrain".to_string(),
        "generated_from_trainer".to_string(),
        format!("dataset_size:{train_rows}"),
    ]
    .into_iter()
    .chain(
        summary
            .losses()
            .into_iter()
            .map(|l| format!("loss:{}", l.name)),
    )
    .collect::<Vec<_>>();
    for tag in tags {
        let _ = writeln!(yaml, "- {}", yaml_string(&tag));
    }
    let pipeline = if summary.num_labels == 1 {
        "text-ranking"
    } else {
        "text-classification"
    };
    let _ = writeln!(yaml, "pipeline_tag: {pipeline}");
    yaml.push_str("library_name: sentence-transformers\n");
    if !summary.from_scratch && !summary.base_model_is_local {
        let _ = writeln!(yaml, "base_model: {}", yaml_string(&summary.base_model));
    }
    if let Some(dataset) = &meta.dataset_name {
        let _ = writeln!(yaml, "datasets:\n- {}", yaml_string(dataset));
    }
    let metric_names: Vec<String> = {
        let mut names: Vec<String> = Vec::new();
        for evaluator in &summary.evaluators {
            for key in evaluator.metrics.keys() {
                let bare = bare_metric(key, &evaluator.name);
                if !names.contains(&bare) {
                    names.push(bare);
                }
            }
        }
        names
    };
    if !metric_names.is_empty() {
        yaml.push_str("metrics:\n");
        for name in &metric_names {
            let _ = writeln!(yaml, "- {}", yaml_string(name));
        }
        let title = meta
            .model_name
            .clone()
            .unwrap_or_else(|| default_title(summary));
        let _ = writeln!(
            yaml,
            "model-index:\n- name: {}\n  results:",
            yaml_string(&title)
        );
        for evaluator in &summary.evaluators {
            let (task, task_name) = task_type(&evaluator.kind);
            let dataset = if evaluator.name.is_empty() {
                "eval".to_string()
            } else {
                evaluator.name.clone()
            };
            let _ = writeln!(
                yaml,
                "  - task:\n      type: {task}\n      name: {task_name}\n    dataset:\n      name: {}\n      type: {}\n    metrics:",
                yaml_string(&dataset.replace(['-', '_'], " ")),
                yaml_string(&dataset)
            );
            for (key, value) in &evaluator.metrics {
                let bare = bare_metric(key, &evaluator.name);
                let _ = writeln!(
                    yaml,
                    "    - type: {}\n      value: {}\n      name: {}",
                    yaml_string(&bare),
                    json_number(*value),
                    yaml_string(&pretty_metric_name(&bare))
                );
            }
        }
    }
    yaml.push_str("---\n");
    yaml
}

pub(super) fn json_number(value: f64) -> String {
    serde_json::Number::from_f64(value).map_or_else(|| "null".to_string(), |n| n.to_string())
}

pub(super) fn bare_metric(key: &str, name: &str) -> String {
    if name.is_empty() {
        key.to_string()
    } else {
        key.strip_prefix(&format!("{name}_"))
            .unwrap_or(key)
            .to_string()
    }
}

pub(super) fn default_title(summary: &TrainingSummary) -> String {
    if summary.from_scratch {
        "CrossEncoder trained from scratch".to_string()
    } else {
        let name = if summary.base_model_is_local {
            Path::new(&summary.base_model).file_name().map_or_else(
                || summary.base_model.clone(),
                |n| n.to_string_lossy().into_owned(),
            )
        } else {
            summary.base_model.clone()
        };
        format!("CrossEncoder based on {name}")
    }
}
