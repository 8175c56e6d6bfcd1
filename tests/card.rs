//! The model card of a trained directory: a third-party plugin's loss appears like a built-in,
//! the front matter is YAML the hub understands, and the card's numbers are the run's.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{fixture, plugin_library, read_json, run, stderr};
use yaml_rust2::{Yaml, YamlLoader};

/// Splits `---\nYAML---\nMarkdown`.
fn split_card(card: &str) -> (Yaml, String) {
    let rest = card.strip_prefix("---\n").expect("front matter first");
    let end = rest.find("\n---\n").expect("front matter ends");
    let yaml = YamlLoader::load_from_str(&rest[..end]).expect("front matter is YAML");
    (yaml[0].clone(), rest[end + 5..].to_string())
}

/// The JSON code block that follows `marker`.
fn json_block_after(card: &str, marker: &str) -> Value {
    let at = card
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in card"));
    let start = card[at..].find("```json\n").unwrap() + at + 8;
    let end = card[start..].find("\n```").unwrap() + start;
    serde_json::from_str(&card[start..end]).unwrap()
}

fn train_with_plugin(dir: &Path) -> std::path::PathBuf {
    let rows = [
        ("how do i bake bread", "knead the dough and bake it", 1),
        ("how do i bake bread", "change the bike chain", 0),
        ("fix a bike chain", "oil the chain and adjust it", 1),
        ("fix a bike chain", "proof the yeast", 0),
        ("feed the fish", "fish eat flakes twice a day", 1),
        ("feed the fish", "tune the guitar strings", 0),
        (
            "tune a guitar",
            "turn the pegs until the string is in tune",
            1,
        ),
        ("tune a guitar", "clean the fish tank", 0),
    ];
    let train: String = rows
        .iter()
        .map(|(q, d, l)| {
            format!(
                "{}\n",
                serde_json::json!({"query": q, "document": d, "label": l})
            )
        })
        .collect();
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    let dev: String = ["bread", "chain", "fish", "guitar"]
        .iter()
        .zip(rows.chunks(2))
        .map(|(_, pair)| {
            format!(
                "{}\n",
                serde_json::json!({"query": pair[0].0, "positive": [pair[0].1], "negative": [pair[1].1, "a random sentence"]})
            )
        })
        .collect();
    std::fs::write(dir.join("dev.jsonl"), dev).unwrap();
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            r#"model = {:?}
output = "out"
loss = "FocalBinaryLoss"
loss_config = {{ gamma = 1.5 }}
train = {{ files = "train.jsonl" }}
batch_size = 4
epochs = 3
lr = 1e-3
logging_steps = 2
eval_steps = 3
save_steps = 3
export_onnx = false
card = {{ language = ["en"], license = "apache-2.0" }}

[[evaluators]]
kind = "reranking"
name = "toy-dev"
at_k = 3
data = {{ files = "dev.jsonl" }}
"#,
            fixture("models/tiny-bert-ce").display().to_string()
        ),
    )
    .unwrap();
    let plugin = plugin_library("crosstrain-example-plugin");
    let result = run(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "train",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    dir.join("out")
}

#[test]
fn card_of_a_third_party_loss_matches_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_with_plugin(dir.path());
    let card = std::fs::read_to_string(output.join("README.md")).unwrap();
    let state = read_json(&output.join("trainer_state.json"));
    let summary = read_json(&output.join("training_summary.json"));
    let args = read_json(&output.join("training_args.json"));
    let (front, body) = split_card(&card);

    // Front matter.
    let tags: Vec<&str> = front["tags"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for tag in [
        "cross-encoder",
        "reranker",
        "crosstrain",
        "loss:FocalBinaryLoss",
        "dataset_size:8",
    ] {
        assert!(tags.contains(&tag), "tag {tag} in {tags:?}");
    }
    assert_eq!(front["pipeline_tag"].as_str(), Some("text-ranking"));
    assert_eq!(
        front["library_name"].as_str(),
        Some("sentence-transformers")
    );
    assert_eq!(front["license"].as_str(), Some("apache-2.0"));
    assert_eq!(front["language"][0].as_str(), Some("en"));
    // A local start model is named in the text; `base_model` is for hub ids only.
    assert!(front["base_model"].is_badvalue());
    assert!(body.contains("\n# CrossEncoder based on tiny-bert-ce\n"));
    let metrics: Vec<&str> = front["metrics"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["map", "mrr@3", "ndcg@3"]);
    let result = &front["model-index"][0]["results"][0];
    assert_eq!(
        result["task"]["type"].as_str(),
        Some("cross-encoder-reranking")
    );
    let final_metrics = &state["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e.get("metrics").is_some())
        .unwrap()["metrics"];
    for metric in result["metrics"].as_vec().unwrap() {
        let key = format!("eval_toy-dev_{}", metric["type"].as_str().unwrap());
        assert_eq!(
            metric["value"].as_f64().unwrap(),
            final_metrics[&key].as_f64().unwrap(),
            "{key}"
        );
    }

    // The loss: its config and citation as the plugin reports them.
    let loss_config = json_block_after(&body, "* Loss: `FocalBinaryLoss`");
    assert_eq!(loss_config, summary["loss"]["config"]);
    assert_eq!(loss_config["gamma"], 1.5);
    assert!(body.contains("from `crosstrain-example-plugin`"));
    let citation = summary["loss"]["citation"].as_str().unwrap();
    assert!(!citation.is_empty());
    assert!(
        body.contains(citation.trim()),
        "plugin citation in the card"
    );
    assert!(body.contains("#### crosstrain\n```bibtex"));

    // Hyperparameters: every recipe value, the changed ones first.
    let non_default = &body[body.find("#### Non-Default Hyperparameters").unwrap()
        ..body.find("#### All Hyperparameters").unwrap()];
    assert!(
        non_default.contains("- `per_device_train_batch_size`: 4"),
        "{non_default}"
    );
    assert!(
        non_default.contains("- `learning_rate`: 0.001"),
        "{non_default}"
    );
    assert!(!non_default.contains("`adam_beta1`"), "{non_default}");
    let all = &body[body.find("#### All Hyperparameters").unwrap()..];
    for key in [
        "num_train_epochs",
        "adam_beta1",
        "max_grad_norm",
        "seed",
        "warmup_ratio",
    ] {
        let value = match &args[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert!(
            all.contains(&format!("- `{key}`: {value}")),
            "{key} = {value}"
        );
    }

    // Training logs: every logged loss and metric, as in trainer_state.json.
    let logs = &body[body.find("### Training Logs").unwrap()..];
    for entry in state["log_history"].as_array().unwrap() {
        if let Some(loss) = entry["loss"].as_f64() {
            assert!(
                logs.contains(&format!("| {loss:.4} |")),
                "loss {loss} in the log table"
            );
        }
        if let Some(metrics) = entry["metrics"].as_object() {
            for value in metrics.values() {
                assert!(logs.contains(&format!("{:.4}", value.as_f64().unwrap())));
            }
        }
    }
    assert!(output.join("loss_curve.svg").is_file());
    assert!(body.contains("![Training loss per logging step](loss_curve.svg)"));
    assert!(body.contains("loss plugin crosstrain-example-plugin"));

    // Rebuilding with new metadata keeps the numbers and changes the metadata.
    let rebuilt = run(&[
        "card",
        "--model",
        output.to_str().unwrap(),
        "--license",
        "mit",
        "--model-name",
        "toy reranker",
        "--dataset-name",
        "toy-data",
    ]);
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    let card = std::fs::read_to_string(output.join("README.md")).unwrap();
    let (front, body) = split_card(&card);
    assert_eq!(front["license"].as_str(), Some("mit"));
    assert_eq!(front["language"][0].as_str(), Some("en"));
    assert_eq!(front["datasets"][0].as_str(), Some("toy-data"));
    assert!(body.contains("\n# toy reranker\n"));
    assert_eq!(
        json_block_after(&body, "* Loss: `FocalBinaryLoss`"),
        loss_config
    );
}

#[test]
fn card_renders_to_html_with_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let output = train_with_plugin(dir.path());
    let card = std::fs::read_to_string(output.join("README.md")).unwrap();
    let (_, body) = split_card(&card);
    let mut html = String::new();
    pulldown_cmark::html::push_html(
        &mut html,
        pulldown_cmark::Parser::new_ext(&body, pulldown_cmark::Options::ENABLE_TABLES),
    );
    for heading in [
        "<h2>Model Details</h2>",
        "<h3>Model Description</h3>",
        "<h2>Usage</h2>",
        "<h3>Sentence Transformers</h3>",
        "<h2>Evaluation</h2>",
        "<h2>Training Details</h2>",
        "<h3>Training Dataset</h3>",
        "<h3>Training Hyperparameters</h3>",
        "<h3>Training Logs</h3>",
        "<h3>Framework Versions</h3>",
        "<h2>Citation</h2>",
    ] {
        assert!(html.contains(heading), "{heading} missing");
    }
    // The tables render as tables, the snippets as code.
    assert!(html.matches("<table>").count() >= 4, "tables");
    assert!(html.contains("<code class=\"language-python\">"));
    assert!(html.contains("<code class=\"language-bibtex\">"));
    assert!(html.contains("<img src=\"loss_curve.svg\""));
}
