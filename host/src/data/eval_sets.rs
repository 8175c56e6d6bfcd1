//! Reranking evaluation samples, from JSONL (labeled pairs for the classification and
//! correlation evaluators are read by [`super::pairs::read_labeled_pairs`]).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::pairs::DataError;

/// One evaluation query: its positives, and either negatives or a retrieved document list.
#[derive(Debug, Clone, Deserialize)]
pub struct RerankingSample {
    /// The query.
    pub query: String,
    /// Relevant documents (a bare string is one).
    #[serde(deserialize_with = "super::one_or_many")]
    pub positive: Vec<String>,
    /// Non-relevant documents (the reference's first format).
    #[serde(default)]
    pub negative: Option<Vec<String>>,
    /// A first-stage ranking to rerank (the reference's second format).
    #[serde(default)]
    pub documents: Option<Vec<String>>,
}

fn lines(path: &Path) -> Result<Vec<(usize, Value)>, DataError> {
    let text = super::read_text(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line)
                .map(|value| (index + 1, value))
                .map_err(|e| DataError::Malformed {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: format!("not valid JSON: {e}"),
                })
        })
        .collect()
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Reranking samples in any of the shapes `{query, positive, negative}`,
/// `{query, positive, documents}` (the reference's two) and `{query, documents, labels}` (the
/// trainer's listwise format: documents with a label > 0 are the positives, and the given order
/// is the retriever's, so `base_*` metrics are reported).
/// A file without a sample is an error: an evaluation of nothing would print no metrics and
/// look like success.
pub fn read_reranking_samples(path: &Path) -> Result<Vec<RerankingSample>, DataError> {
    let lines = lines(path)?;
    if lines.is_empty() {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            line: 1,
            message: "no samples to evaluate (the file is empty)".into(),
        });
    }
    lines
        .into_iter()
        .map(|(line, value)| {
            let malformed = |message: String| DataError::Malformed {
                path: path.to_path_buf(),
                line,
                message,
            };
            if value.get("labels").is_some() && value.get("positive").is_none() {
                let query = value["query"]
                    .as_str()
                    .ok_or_else(|| malformed("field \"query\" must be a string".into()))?;
                let documents = strings(&value["documents"]).ok_or_else(|| {
                    malformed("field \"documents\" must be a list of strings".into())
                })?;
                let labels: Vec<f64> = value["labels"]
                    .as_array()
                    .and_then(|l| l.iter().map(Value::as_f64).collect())
                    .ok_or_else(|| {
                        malformed("field \"labels\" must be a list of numbers".into())
                    })?;
                if labels.len() != documents.len() {
                    return Err(malformed(format!(
                        "{} labels for {} documents",
                        labels.len(),
                        documents.len()
                    )));
                }
                let positive = documents
                    .iter()
                    .zip(&labels)
                    .filter(|(_, &label)| label > 0.0)
                    .map(|(d, _)| d.clone())
                    .collect();
                return Ok(RerankingSample {
                    query: query.to_string(),
                    positive,
                    negative: None,
                    documents: Some(documents),
                });
            }
            serde_json::from_value(value).map_err(|e| {
                malformed(format!(
                    "{e}; expected {{query, positive, negative}}, {{query, positive, documents}} \
                     or {{query, documents, labels}}"
                ))
            })
        })
        .collect()
}
