//! What the model card needs from a run beyond the recipe and the trainer state: the loss as
//! the plugin reports it, statistics and samples of each dataset, the evaluators' final
//! metrics, versions, and example scores.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::card::{ColumnSummary, DatasetSummary, Stats};
use crate::data::dataset::{Dataset, LabelValues, TextValues};
use crosstrain_model::tokenize::PairTokenizer;

/// Rows used for statistics, as the reference's card.
const STATS_ROWS: usize = 100;
/// Sample rows shown.
const SAMPLE_ROWS: usize = 3;

/// Statistics and samples of a dataset; token counts use the model's tokenizer without special
/// tokens, as the reference's card does.
pub fn summarize_dataset(
    split: &str,
    dataset: &Dataset,
    tokenizer: &PairTokenizer,
) -> DatasetSummary {
    let rows = dataset.len().min(STATS_ROWS);
    let count_tokens = |text: &str| -> f64 {
        tokenizer
            .tokenizer()
            .encode(text, false)
            .map_or(0.0, |e| e.get_ids().len() as f64)
    };
    let mut columns: Vec<ColumnSummary> = dataset
        .columns
        .iter()
        .map(|column| {
            let counts: Vec<f64> = (0..rows)
                .flat_map(|row| column.row_texts(row))
                .map(count_tokens)
                .collect();
            ColumnSummary {
                name: column.name.clone(),
                kind: match column.values {
                    TextValues::Texts(_) => "string",
                    TextValues::Lists(_) => "list of strings",
                }
                .to_string(),
                tokens: Stats::of(counts),
                values: None,
            }
        })
        .collect();
    if let Some(label) = &dataset.label {
        let (kind, values): (&str, Vec<f64>) = match &label.values {
            LabelValues::Scalars(values) => (
                "float",
                values.iter().take(rows).map(|&v| f64::from(v)).collect(),
            ),
            LabelValues::Lists(values) => (
                "list of floats",
                values
                    .iter()
                    .take(rows)
                    .flatten()
                    .map(|&v| f64::from(v))
                    .collect(),
            ),
        };
        columns.push(ColumnSummary {
            name: label.name.clone(),
            kind: kind.to_string(),
            tokens: None,
            values: Stats::of(values),
        });
    }
    let samples = (0..dataset.len().min(SAMPLE_ROWS))
        .map(|row| {
            let mut sample: BTreeMap<String, Value> = dataset
                .columns
                .iter()
                .map(|column| {
                    let value = match &column.values {
                        TextValues::Texts(values) => json!(&values[row]),
                        TextValues::Lists(values) => json!(values
                            .get(row)
                            .map(|list| list.iter().collect::<Vec<_>>())
                            .unwrap_or_default()),
                    };
                    (column.name.clone(), value)
                })
                .collect();
            if let Some(label) = &dataset.label {
                let value = match &label.values {
                    LabelValues::Scalars(values) => json!(values[row]),
                    LabelValues::Lists(values) => json!(values[row]),
                };
                sample.insert(label.name.clone(), value);
            }
            sample
        })
        .collect();
    DatasetSummary {
        split: split.to_string(),
        files: dataset
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        rows: dataset.len(),
        skipped_rows: dataset.skipped_rows,
        columns,
        samples,
        name: None,
        loss: None,
    }
}

/// Up to `count` (text_a, text_b) pairs of a dataset: each row's first two texts (the first
/// document of a list).
pub fn example_pairs(dataset: &Dataset, count: usize) -> Vec<(String, String)> {
    if dataset.columns.len() < 2 {
        return Vec::new();
    }
    (0..dataset.len().min(count))
        .filter_map(|row| {
            Some((
                dataset.columns[0].text(row, 0)?.to_string(),
                dataset.columns[1].text(row, 0)?.to_string(),
            ))
        })
        .collect()
}

/// Engine crates as pinned in host/Cargo.toml (a test keeps the two in step).
const PINNED_VERSIONS: [(&str, &str); 3] = [
    ("candle-core", "0.11.1"),
    ("tokenizers", "0.23.2"),
    ("ort", "2.0.0-rc.15"),
];

/// The versions the card lists.
pub fn framework_versions(plugins: &[(String, String)]) -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    versions.insert(
        "crosstrain".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    for (name, version) in PINNED_VERSIONS {
        versions.insert(name.to_string(), version.to_string());
    }
    if let Some(version) = crate::onnx::library_path().ok().and_then(|path| {
        let name = path.file_name()?.to_string_lossy().into_owned();
        let version = name.split(".so.").nth(1)?.to_string();
        Some(version)
    }) {
        versions.insert("ONNX Runtime".to_string(), version);
    }
    for (library, version) in plugins {
        versions.insert(format!("loss plugin {library}"), version.clone());
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_match_the_manifest() {
        // tokenizers is the model crate's dependency, the others the host's.
        let manifests = concat!(
            include_str!("../../Cargo.toml"),
            include_str!("../../../model/Cargo.toml")
        );
        for (name, version) in PINNED_VERSIONS {
            let line = manifests
                .lines()
                .find(|line| line.starts_with(&format!("{name} =")))
                .unwrap_or_else(|| panic!("{name} not in host/Cargo.toml or model/Cargo.toml"));
            assert!(
                line.contains(&format!("\"{version}\""))
                    || line.contains(&format!("\"={version}\"")),
                "{line}"
            );
        }
    }
}
