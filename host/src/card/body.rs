//! The card's Markdown body: model details, usage, evaluation, training details, citations.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::front_matter::*;
use super::TrainingSummary;
use crate::cite::{CROSSTRAIN_CITATION, SENTENCE_BERT_CITATION};
use crate::trainer_state::TrainerState;

fn code_json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A Markdown table cell: pipes escaped, newlines flattened, long text shortened.
fn cell(text: &str) -> String {
    let flat: String = text
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .chars()
        .take(160)
        .collect();
    if text.chars().count() > 160 {
        format!("{flat}…")
    } else {
        flat
    }
}

fn sample_value(value: &Value) -> String {
    match value {
        Value::String(text) => cell(text),
        Value::Array(items) => cell(
            &items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" | "),
        ),
        other => cell(&other.to_string()),
    }
}

/// The card's Markdown.
pub fn render(
    args: &Value,
    state: &TrainerState,
    summary: &TrainingSummary,
    has_loss_curve: bool,
    defaults: &Map<String, Value>,
) -> String {
    let meta = &summary.metadata;
    let mut md = front_matter(summary);
    let title = meta
        .model_name
        .clone()
        .unwrap_or_else(|| default_title(summary));
    let task = if summary.num_labels == 1 {
        "text reranking and semantic search"
    } else {
        "text pair classification"
    };
    let _ = writeln!(md, "\n# {title}\n");
    let origin = if summary.from_scratch {
        "trained from scratch".to_string()
    } else {
        format!("finetuned from `{}`", summary.base_model)
    };
    let on_data = meta
        .dataset_name
        .as_ref()
        .map(|d| format!(" on the {d} dataset"))
        .unwrap_or_default();
    // A decoder reranker scored through its LM head loads in transformers as a causal LM.
    let auto_class = if summary.architecture.ends_with("ForCausalLM") {
        "AutoModelForCausalLM"
    } else {
        "AutoModelForSequenceClassification"
    };
    let _ = writeln!(
        md,
        "This is a Cross Encoder model {origin}{on_data} with \
         [crosstrain](#citation), using {}. It computes scores for pairs of texts, \
         which can be used for {task}. The directory loads in crosstrain, in \
         sentence-transformers (`CrossEncoder`) and in transformers \
         (`{auto_class}`).\n",
        summary
            .losses()
            .iter()
            .map(|l| format!("{} from {}", l.name, l.library))
            .collect::<Vec<_>>()
            .join(" and "),
    );

    md.push_str("## Model Details\n\n### Model Description\n");
    let _ = writeln!(md, "- **Model Type:** Cross Encoder");
    if summary.from_scratch {
        md.push_str("- **Base model:** none (trained from scratch)\n");
    } else {
        let _ = writeln!(md, "- **Base model:** `{}`", summary.base_model);
    }
    let _ = writeln!(
        md,
        "- **Architecture:** {} ({})",
        summary.architecture, summary.architecture_details
    );
    match &summary.adapter {
        None => {
            let _ = writeln!(
                md,
                "- **Parameters:** {} ({:.1} M)",
                summary.parameters,
                summary.parameters as f64 / 1e6
            );
        }
        Some(adapter) => {
            let config = &adapter.config;
            let targets = match &config.target_modules {
                Some(targets) => serde_json::to_string(targets).unwrap_or_default(),
                None => "PEFT's default (q_proj, v_proj)".into(),
            };
            let _ = writeln!(
                md,
                "- **Adapter:** LoRA in PEFT's format (this directory holds the adapter, not the \
                 base weights): r {}, lora_alpha {}, lora_dropout {}, target_modules {}{}{}",
                config.r,
                config.lora_alpha,
                config.lora_dropout,
                targets,
                config
                    .modules_to_save
                    .as_ref()
                    .map(|modules| format!(", modules_to_save {modules:?}"))
                    .unwrap_or_default(),
                if config.use_rslora { ", rsLoRA" } else { "" }
            );
            let _ = writeln!(
                md,
                "- **Parameters:** {} trainable of {} ({:.2}%, {:.1} M in all)",
                adapter.trainable_parameters,
                adapter.total_parameters,
                100.0 * adapter.trainable_parameters as f64
                    / adapter.total_parameters.max(1) as f64,
                adapter.total_parameters as f64 / 1e6
            );
        }
    }
    let _ = writeln!(
        md,
        "- **Maximum Sequence Length:** {} tokens",
        summary.max_length
    );
    let _ = writeln!(
        md,
        "- **Number of Output Labels:** {} label{}",
        summary.num_labels,
        if summary.num_labels == 1 { "" } else { "s" }
    );
    md.push_str("- **Supported Modality:** Text\n");
    match &meta.dataset_name {
        Some(dataset) => {
            let _ = writeln!(md, "- **Training Dataset:** {dataset}");
        }
        None => md.push_str("<!-- - **Training Dataset:** Unknown -->\n"),
    }
    if meta.language.is_empty() {
        md.push_str("<!-- - **Language:** Unknown -->\n");
    } else {
        let _ = writeln!(md, "- **Language:** {}", meta.language.join(", "));
    }
    match &meta.license {
        Some(license) => {
            let _ = writeln!(md, "- **License:** {license}");
        }
        None => md.push_str("<!-- - **License:** Unknown -->\n"),
    }

    md.push_str("\n## Usage\n\n### crosstrain\n\n```sh\n");
    md.push_str("crosstrain predict --model path/to/this/model --pairs pairs.jsonl   # {\"query\", \"document\"} per line\n");
    md.push_str("crosstrain rank --model path/to/this/model --query \"...\" --documents documents.txt\n```\n\n");
    md.push_str(if summary.adapter.is_some() {
        "### Sentence Transformers\n\nThe adapter loads on its base model with PEFT installed.\n\n```sh\npip install -U sentence-transformers peft\n```"
    } else {
        "### Sentence Transformers\n\n```sh\npip install -U sentence-transformers\n```"
    });
    md.push_str("\n\n```python\nfrom sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder(\"path/to/this/model\")\npairs = [\n");
    for (query, document, _) in &summary.example_scores {
        let _ = writeln!(
            md,
            "    ({}, {}),",
            Value::String(query.clone()),
            Value::String(document.clone())
        );
    }
    md.push_str("]\nscores = model.predict(pairs)\nprint(scores.shape)\n");
    let _ = writeln!(md, "# ({},)", summary.example_scores.len());
    if summary.num_labels == 1 {
        if let Some((query, _, _)) = summary.example_scores.first() {
            let documents: Vec<String> = summary
                .example_scores
                .iter()
                .filter(|(q, _, _)| q == query)
                .map(|(_, d, _)| Value::String(d.clone()).to_string())
                .collect();
            let _ = writeln!(
                md,
                "\n# Or rank documents for one query:\nranks = model.rank({}, [{}])",
                Value::String(query.clone()),
                documents.join(", ")
            );
        }
    }
    md.push_str("```\n\n");
    if !summary.example_scores.is_empty() {
        md.push_str("Scores of the trained model for these pairs (after its activation):\n\n| text A | text B | score |\n|:--|:--|--:|\n");
        for (query, document, score) in &summary.example_scores {
            let _ = writeln!(md, "| {} | {} | {score:.4} |", cell(query), cell(document));
        }
        md.push('\n');
    }

    if !summary.evaluators.is_empty() {
        md.push_str("## Evaluation\n\n### Metrics\n");
        for evaluator in &summary.evaluators {
            let (_, task_name) = task_type(&evaluator.kind);
            let dataset = if evaluator.name.is_empty() {
                "eval"
            } else {
                evaluator.name.as_str()
            };
            let _ = writeln!(
                md,
                "\n#### {task_name}\n\n* Dataset: `{dataset}`\n* Evaluated with crosstrain's `{}` evaluator (sentence-transformers' \
                 `CrossEncoder{}Evaluator` metrics) with these parameters:\n\n```json\n{}\n```\n",
                evaluator.kind,
                if evaluator.kind == "nanobeir" {
                    "NanoBEIR".to_string()
                } else {
                    pretty_metric_name(&evaluator.kind)
                },
                code_json(&evaluator.config)
            );
            md.push_str("| Metric | Value |\n|:--|:--|\n");
            for (key, value) in &evaluator.metrics {
                let bare = bare_metric(key, &evaluator.name);
                if *key == evaluator.primary_metric {
                    let _ = writeln!(md, "| **{bare}** | **{value:.4}** |");
                } else {
                    let _ = writeln!(md, "| {bare} | {value:.4} |");
                }
            }
        }
        md.push('\n');
    }

    md.push_str("## Training Details\n");
    for dataset in &summary.datasets {
        let heading = match (dataset.split.as_str(), &dataset.name) {
            ("train", Some(name)) => format!("Training Dataset `{name}`"),
            ("train", None) => "Training Dataset".to_string(),
            ("eval", Some(name)) => format!("Evaluation Dataset `{name}`"),
            ("eval", None) => "Evaluation Dataset".to_string(),
            (other, _) => format!("Evaluator Dataset `{other}`"),
        };
        let files: Vec<String> = dataset.files.iter().map(|f| format!("`{f}`")).collect();
        let _ = writeln!(
            md,
            "\n### {heading}\n\n* Files: {}\n* Size: {} rows{}\n* Columns: {}\n* Approximate statistics based on the first {} rows:\n",
            files.join(", "),
            dataset.rows,
            if dataset.skipped_rows > 0 {
                format!(" ({} malformed rows skipped)", dataset.skipped_rows)
            } else {
                String::new()
            },
            dataset
                .columns
                .iter()
                .map(|c| format!("<code>{}</code>", c.name))
                .collect::<Vec<_>>()
                .join(", "),
            dataset.rows.min(100)
        );
        let header: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
        let _ = writeln!(md, "|         | {} |", header.join(" | "));
        let _ = writeln!(
            md,
            "|:--------|{}",
            header.iter().map(|_| ":--|").collect::<String>()
        );
        let types: Vec<String> = dataset.columns.iter().map(|c| c.kind.clone()).collect();
        let _ = writeln!(md, "| type    | {} |", types.join(" | "));
        let details: Vec<String> = dataset
            .columns
            .iter()
            .map(|c| match (&c.tokens, &c.values) {
                (Some(t), _) => format!(
                    "<ul><li>min: {} tokens</li><li>mean: {:.2} tokens</li><li>max: {} tokens</li></ul>",
                    t.min, t.mean, t.max
                ),
                (None, Some(v)) => format!(
                    "<ul><li>min: {:.4}</li><li>mean: {:.4}</li><li>max: {:.4}</li></ul>",
                    v.min, v.mean, v.max
                ),
                _ => String::new(),
            })
            .collect();
        let _ = writeln!(md, "| details | {} |", details.join(" | "));
        if !dataset.samples.is_empty() {
            md.push_str("* Samples:\n\n");
            let _ = writeln!(md, "| {} |", header.join(" | "));
            let _ = writeln!(md, "|{}", header.iter().map(|_| ":--|").collect::<String>());
            for sample in &dataset.samples {
                let row: Vec<String> = header
                    .iter()
                    .map(|name| sample.get(name).map(sample_value).unwrap_or_default())
                    .collect();
                let _ = writeln!(md, "| {} |", row.join(" | "));
            }
        }
        if dataset.split == "train" {
            // With several named datasets each carries its own loss.
            let loss = dataset.loss.as_ref().unwrap_or(&summary.loss);
            let _ = writeln!(
                md,
                "* Loss: `{}` from `{}` {} (data format `{}`) with these parameters:\n\n```json\n{}\n```",
                loss.name,
                loss.library,
                loss.library_version,
                loss.format,
                code_json(&loss.config)
            );
        }
    }

    md.push_str("\n### Training Hyperparameters\n#### Non-Default Hyperparameters\n\n");
    let (changed, all) = hyperparameters(args, defaults);
    for (key, value) in &changed {
        let _ = writeln!(md, "- `{key}`: {value}");
    }
    md.push_str("\n#### All Hyperparameters\n<details><summary>Click to expand</summary>\n\n");
    for (key, value) in &all {
        let _ = writeln!(md, "- `{key}`: {value}");
    }
    md.push_str("\n</details>\n\n### Training Logs\n");
    md.push_str(&training_log_table(state));
    if has_loss_curve {
        md.push_str("\n![Training loss per logging step](loss_curve.svg)\n");
    }
    let _ = writeln!(
        md,
        "\n### Training Time\n- **Training**: {:.1} seconds ({} optimiser steps, {} pairs scored{})",
        state.train_seconds,
        state.global_step,
        state.pairs_seen,
        match args.get("world_size").and_then(Value::as_u64) {
            Some(ranks) if ranks > 1 => format!(
                "; data-parallel on {ranks} ranks, each with per_device_train_batch_size rows \
                 of every batch, gradients averaged"
            ),
            _ => String::new(),
        }
    );
    if let Some(onnx) = &state.onnx {
        md.push_str("\n### ONNX\n");
        match onnx.max_abs_logit_diff {
            Some(diff) => {
                let _ = writeln!(
                    md,
                    "- `{}` (opset {}): largest absolute logit difference between ONNX Runtime and \
                     crosstrain (candle) on {} reference pairs: **{diff:.2e}**",
                    onnx.file, onnx.opset, onnx.pairs
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "- `{}` (opset {}); not checked in ONNX Runtime: {}",
                    onnx.file,
                    onnx.opset,
                    onnx.not_checked.as_deref().unwrap_or("no runtime")
                );
            }
        }
    }
    if let Some(quantized) = &summary.quantized_onnx {
        if state.onnx.is_none() {
            md.push_str("\n### ONNX\n");
        }
        let _ = writeln!(
            md,
            "- `{}` (int8, dynamic quantization of every linear layer): Spearman rank correlation \
             **{:.4}** with the float32 model's logits and largest absolute difference {:.2e} on \
             {} pairs. In Python: `CrossEncoder(\"path/to/model\", backend=\"onnx\", \
             model_kwargs={{\"file_name\": \"{}\"}})`.",
            quantized.file,
            quantized.spearman,
            quantized.max_abs_logit_diff,
            quantized.pairs,
            quantized.file
        );
    }
    md.push_str("\n### Framework Versions\n");
    for (name, version) in &summary.versions {
        let _ = writeln!(md, "- {name}: {version}");
    }

    md.push_str("\n## Citation\n\n### BibTeX\n\n#### crosstrain\n```bibtex\n");
    md.push_str(CROSSTRAIN_CITATION);
    md.push_str("\n```\n\n#### Sentence Transformers\n```bibtex\n");
    md.push_str(SENTENCE_BERT_CITATION);
    md.push_str("\n```\n");
    for loss in summary.losses() {
        if let Some(citation) = &loss.citation {
            let _ = writeln!(
                md,
                "\n#### {}\n```bibtex\n{}\n```",
                loss.name,
                citation.trim()
            );
        }
    }
    md
}

/// Hyperparameters as `(key, value)` text.
type Settings = Vec<(String, String)>;

/// `(changed, all)` hyperparameters; "changed" compares with the defaults of the recipe (the
/// reference trainer's).
fn hyperparameters(args: &Value, defaults: &Map<String, Value>) -> (Settings, Settings) {
    let skip = [
        "model",
        "output",
        "train",
        "eval",
        "evaluators",
        "loss",
        "loss_config",
        "crosstrain_version",
    ];
    let mut changed = Vec::new();
    let mut all = Vec::new();
    if let Value::Object(map) = args {
        for (key, value) in map {
            if skip.contains(&key.as_str()) {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Null => "None".to_string(),
                other => other.to_string(),
            };
            // One process is the default of a setting the recipe does not hold.
            let single_process = key == "world_size" && value.as_u64() == Some(1);
            if defaults.get(key) != Some(value) && !single_process {
                changed.push((key.clone(), text.clone()));
            }
            all.push((key.clone(), text));
        }
    }
    (changed, all)
}

fn training_log_table(state: &TrainerState) -> String {
    let metric_keys: Vec<String> = {
        let mut keys: Vec<String> = Vec::new();
        for entry in &state.log_history {
            for key in entry.metrics.keys() {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
        keys
    };
    // One row per step: the training loss and any metrics logged at that step.
    type Row = (f64, Option<f64>, BTreeMap<String, f64>);
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    for entry in &state.log_history {
        let row = rows
            .entry(entry.step)
            .or_insert((entry.epoch, None, BTreeMap::new()));
        if entry.loss.is_some() {
            row.1 = entry.loss;
        }
        row.2.extend(entry.metrics.clone());
    }
    let mut md = String::new();
    let mut header = vec![
        "Epoch".to_string(),
        "Step".to_string(),
        "Training Loss".to_string(),
    ];
    header.extend(metric_keys.iter().cloned());
    if rows.len() > 100 {
        md.push_str("<details><summary>Click to expand</summary>\n\n");
    }
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        header.iter().map(|_| ":--:|").collect::<String>()
    );
    for (step, (epoch, loss, metrics)) in &rows {
        let bold = state.best_checkpoint.as_deref() == Some(&format!("checkpoint-{step}"));
        let mut cells = vec![
            format!("{epoch:.4}"),
            step.to_string(),
            loss.map_or("-".to_string(), |l| format!("{l:.4}")),
        ];
        for key in &metric_keys {
            cells.push(
                metrics
                    .get(key)
                    .map_or("-".to_string(), |v| format!("{v:.4}")),
            );
        }
        if bold {
            cells = cells.into_iter().map(|c| format!("**{c}**")).collect();
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    if rows.len() > 100 {
        md.push_str("\n</details>\n");
    }
    if state.best_checkpoint.is_some() {
        md.push_str("\n* The bold row denotes the saved checkpoint.\n");
    }
    md
}
