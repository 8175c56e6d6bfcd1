//! Decoder rerankers (Qwen3 and Qwen2, LogitScore and classification heads) against the
//! reference: sentence-transformers 6.3's token ids (chat template, prompt, truncation with
//! the suffix written back, padding side) and raw scores (`scores_f64_exact`) for every model
//! and setting of `model_parity_decoders.json`; the saved layout; refused modules.

mod support;

use crosstrain::model::{CrossEncoder, LoadOptions};
use serde_json::Value;
use support::{copy_tree, fixture, run, stderr, stdout};

fn parity() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("model_parity_decoders.json")).unwrap())
        .unwrap()
}

fn pairs(parity: &Value) -> Vec<(String, String)> {
    parity["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["query"].as_str().unwrap().to_string(),
                p["document"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn model_dir(name: &str) -> std::path::PathBuf {
    fixture(&format!("models/{name}"))
}

/// The first score of each row (one label).
fn flat(rows: &[Vec<f32>]) -> Vec<f64> {
    rows.iter().map(|row| f64::from(row[0])).collect()
}

#[test]
fn token_ids_and_scores_equal_the_reference_for_every_model_and_setting() {
    let parity = parity();
    let owned = pairs(&parity);
    let borrowed: Vec<(&str, &str)> = owned
        .iter()
        .map(|(q, d)| (q.as_str(), d.as_str()))
        .collect();
    let mut worst = 0f64;
    let mut checked = 0;
    for (name, reference) in parity["models"].as_object().unwrap() {
        for (setting, expected) in reference["settings"].as_object().unwrap() {
            let max_length = expected["max_length"].as_u64().unwrap() as usize;
            let options = LoadOptions {
                max_length: Some(max_length),
                ..LoadOptions::default()
            };
            let mut model = CrossEncoder::load_dir(&model_dir(name), &options).unwrap();
            let suffix: Vec<u32> = reference["suffix_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                model.tokenizer().chat().unwrap().suffix_ids(),
                suffix.as_slice(),
                "{name}"
            );
            if let Some(prompt) = expected["prompt"].as_str() {
                model.set_prompt(Some(prompt.to_string()));
            }
            for (index, (pair, tokens)) in borrowed
                .iter()
                .zip(expected["tokens"].as_array().unwrap())
                .enumerate()
            {
                let ids: Vec<u32> = tokens["input_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                let encoded = model.encode(&[*pair]).unwrap();
                assert_eq!(encoded.row_ids(0), ids, "{name}/{setting} pair {index}");
            }
            let want: Vec<f64> = expected["scores_f64_exact"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            // In padded batches of 8 (left padding for the causal models, right for the
            // classifier), and for the default setting each pair alone too.
            let batch_sizes: &[usize] = if setting == "default" { &[1, 8] } else { &[8] };
            for &batch_size in batch_sizes {
                let got = flat(&model.predict(&borrowed, batch_size).unwrap());
                for (index, (a, b)) in got.iter().zip(&want).enumerate() {
                    let difference = (a - b).abs();
                    worst = worst.max(difference);
                    assert!(
                        difference <= 3e-5,
                        "{name}/{setting} pair {index} batch {batch_size}: {a} vs {b}"
                    );
                }
                checked += got.len();
            }
        }
    }
    assert_eq!(checked, 3 * 5 * 24);
    eprintln!("decoder parity: max |score difference| {worst:.2e} over {checked} scores");
}

#[test]
fn predict_takes_a_prompt_and_a_max_length_and_gives_the_raw_scores() {
    let parity = parity();
    let dir = tempfile::tempdir().unwrap();
    let pairs_file = dir.path().join("pairs.jsonl");
    let lines: String = pairs(&parity)
        .iter()
        .map(|(q, d)| serde_json::json!({"query": q, "document": d}).to_string() + "\n")
        .collect();
    std::fs::write(&pairs_file, lines).unwrap();
    let reference = &parity["models"]["tiny-qwen2-reranker"]["settings"]["prompt"];
    let model = model_dir("tiny-qwen2-reranker");
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs_file.to_str().unwrap(),
        "--activation",
        "none",
        "--prompt",
        reference["prompt"].as_str().unwrap(),
        "--max-length",
        &reference["max_length"].to_string(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: Vec<Vec<f64>> = serde_json::from_str(&stdout(&output)).unwrap();
    for (row, want) in rows
        .iter()
        .zip(reference["scores_f64_exact"].as_array().unwrap())
    {
        assert!(
            (row[0] - want.as_f64().unwrap()).abs() <= 3e-5,
            "{row:?} vs {want}"
        );
    }
    // Without the prompt the scores are the default setting's, not the prompt's.
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs_file.to_str().unwrap(),
        "--activation",
        "none",
        "--json",
    ]);
    let rows: Vec<Vec<f64>> = serde_json::from_str(&stdout(&output)).unwrap();
    let default = &parity["models"]["tiny-qwen2-reranker"]["settings"]["default"];
    for (row, want) in rows
        .iter()
        .zip(default["scores_f64_exact"].as_array().unwrap())
    {
        assert!(
            (row[0] - want.as_f64().unwrap()).abs() <= 3e-5,
            "{row:?} vs {want}"
        );
    }
    // An encoder's prompt prefixes the query, as sentence-transformers 6.3 applies it
    // (`prepend_prompt_to_texts`): its ids and scores, recorded by
    // scripts/make-prompt-fixtures.py.
    let reference = support::read_json(&fixture("encoder_prompts.json"));
    let prompt = reference["prompt"].as_str().unwrap();
    let pairs: Vec<(String, String)> = reference["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, d)| (q.as_str(), d.as_str()))
        .collect();
    let encoder_pairs = dir.path().join("encoder_pairs.jsonl");
    std::fs::write(
        &encoder_pairs,
        pairs
            .iter()
            .map(|(q, d)| serde_json::json!({"query": q, "document": d}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    for name in ["tiny-bert-ce", "tiny-bert-ce-3labels"] {
        let expected = &reference["models"][name];
        let mut model =
            CrossEncoder::load_dir(&fixture(&format!("models/{name}")), &LoadOptions::default())
                .unwrap();
        model.set_prompt(Some(prompt.to_string()));
        let encoded = model.encode(&borrowed).unwrap();
        for (row, want) in expected["input_ids"].as_array().unwrap().iter().enumerate() {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(encoded.row_ids(row), want, "{name} pair {row}");
        }
        let output = run(&[
            "predict",
            "--model",
            fixture(&format!("models/{name}")).to_str().unwrap(),
            "--pairs",
            encoder_pairs.to_str().unwrap(),
            "--prompt",
            prompt,
            "--json",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let scores: Vec<Vec<f64>> = serde_json::from_str(&stdout(&output)).unwrap();
        for ((row, want), plain) in scores
            .iter()
            .zip(expected["scores"].as_array().unwrap())
            .zip(expected["scores_without_prompt"].as_array().unwrap())
        {
            for ((got, want), plain) in row
                .iter()
                .zip(want.as_array().unwrap())
                .zip(plain.as_array().unwrap())
            {
                let (want, plain) = (want.as_f64().unwrap(), plain.as_f64().unwrap());
                assert!((got - want).abs() <= 1e-5, "{name}: {got} vs {want}");
                assert!(
                    (want - plain).abs() > 1e-4,
                    "{name}: the prompt changes the score"
                );
            }
        }
    }
}

#[test]
fn a_saved_decoder_reranker_keeps_its_layout_scores_and_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let parity = parity();
    let owned = pairs(&parity);
    let borrowed: Vec<(&str, &str)> = owned
        .iter()
        .map(|(q, d)| (q.as_str(), d.as_str()))
        .collect();
    for name in ["tiny-qwen3-reranker", "tiny-qwen3-seqcls"] {
        // A saved prompt, made the default, travels with the model.
        let source = dir.path().join(format!("{name}-source"));
        copy_tree(&model_dir(name), &source);
        let config_file = source.join("config_sentence_transformers.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
        let prompt = parity["models"][name]["settings"]["prompt"]["prompt"]
            .as_str()
            .unwrap();
        config["prompts"] = serde_json::json!({ "web": prompt });
        config["default_prompt_name"] = "web".into();
        std::fs::write(&config_file, config.to_string()).unwrap();
        let model = CrossEncoder::load_dir(&source, &LoadOptions::default()).unwrap();
        assert_eq!(model.prompt(), Some(prompt));
        let before = flat(&model.predict(&borrowed, 8).unwrap());
        let want: Vec<f64> = parity["models"][name]["settings"]["prompt"]["scores_f64_exact"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (a, b) in before.iter().zip(&want) {
            assert!((a - b).abs() <= 3e-5, "{name}: {a} vs {b}");
        }
        let saved = dir.path().join(format!("{name}-saved"));
        model.save(&saved).unwrap();
        let reloaded = CrossEncoder::load_dir(&saved, &LoadOptions::default()).unwrap();
        assert_eq!(flat(&reloaded.predict(&borrowed, 8).unwrap()), before);
        let saved_config: Value = serde_json::from_str(
            &std::fs::read_to_string(saved.join("config_sentence_transformers.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved_config["prompts"]["web"], prompt);
        assert_eq!(saved_config["default_prompt_name"], "web");
        assert!(saved.join("chat_template.jinja").is_file());
        let modules: Value =
            serde_json::from_str(&std::fs::read_to_string(saved.join("modules.json")).unwrap())
                .unwrap();
        let causal = name.ends_with("reranker");
        assert_eq!(
            modules.as_array().unwrap().len(),
            if causal { 2 } else { 1 }
        );
        assert_eq!(saved.join("1_LogitScore/config.json").is_file(), causal);
        let architecture: Value =
            serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap())
                .unwrap();
        let expected = if causal {
            "Qwen3ForCausalLM"
        } else {
            "Qwen3ForSequenceClassification"
        };
        assert_eq!(architecture["architectures"][0], expected);
    }
}

#[test]
fn a_module_crosstrain_does_not_implement_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&model_dir("tiny-qwen3-reranker"), &model);
    let modules_file = model.join("modules.json");
    let mut modules: Value =
        serde_json::from_str(&std::fs::read_to_string(&modules_file).unwrap()).unwrap();
    modules.as_array_mut().unwrap().push(serde_json::json!({
        "idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"
    }));
    std::fs::write(&modules_file, modules.to_string()).unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, "{\"query\": \"q\", \"document\": \"d\"}\n").unwrap();
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("modules.json") && message.contains("sentence_transformers.models.Dense"),
        "{message}"
    );
    // An encoder with a Dense module after its Transformer: refused too, not a fresh head.
    let encoder = dir.path().join("encoder");
    copy_tree(&fixture("models/tiny-bert-ce"), &encoder);
    std::fs::write(
        encoder.join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"}]"#,
    )
    .unwrap();
    let output = run(&[
        "predict",
        "--model",
        encoder.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("sentence_transformers.models.Dense"));
}

/// Real checkpoints' formats: Qwen3 ships bf16 safetensors, and the 4B and 8B rerankers come in
/// shards listed by `model.safetensors.index.json`. A bf16 copy scores as the f32 model does
/// up to bf16's rounding of the weights; a sharded copy scores exactly as the single file.
#[test]
fn bf16_and_sharded_checkpoints_load() {
    use candle_core::{DType, Device};
    let dir = tempfile::tempdir().unwrap();
    let parity = parity();
    let owned = pairs(&parity);
    let borrowed: Vec<(&str, &str)> = owned
        .iter()
        .take(8)
        .map(|(q, d)| (q.as_str(), d.as_str()))
        .collect();
    let source = model_dir("tiny-qwen3-reranker");
    let reference = CrossEncoder::load_dir(&source, &LoadOptions::default()).unwrap();
    let want = flat(&reference.predict(&borrowed, 8).unwrap());
    let tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();

    let bf16 = dir.path().join("bf16");
    copy_tree(&source, &bf16);
    let halved: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&halved, bf16.join("model.safetensors")).unwrap();
    let model = CrossEncoder::load_dir(&bf16, &LoadOptions::default()).unwrap();
    let got = flat(&model.predict(&borrowed, 8).unwrap());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(worst > 0.0 && worst < 0.1, "bf16 weights: {worst}");

    let sharded = dir.path().join("sharded");
    copy_tree(&source, &sharded);
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|name| ((*name).clone(), tensors[*name].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.join(file)).unwrap();
        for name in part {
            weight_map.insert((*name).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let model = CrossEncoder::load_dir(&sharded, &LoadOptions::default()).unwrap();
    assert_eq!(flat(&model.predict(&borrowed, 8).unwrap()), want);
    // An index that places a tensor in a shard without it is named.
    let mut broken = index.clone();
    broken["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into();
    let moved = names
        .iter()
        .position(|n| n.as_str() == "model.norm.weight")
        .unwrap();
    assert!(
        moved >= first.len(),
        "the final norm sorts into the second shard"
    );
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        broken.to_string(),
    )
    .unwrap();
    let error = CrossEncoder::load_dir(&sharded, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model.norm.weight") && error.contains("does not have it"),
        "{error}"
    );
}

/// The ONNX export of every decoder: `export-onnx --check` passes on each model, and ONNX
/// Runtime's raw scores equal the reference's in every setting (prompt and truncation
/// included, tokenized by the same chat format).
#[test]
fn onnx_exports_of_decoders_score_as_the_reference() {
    support::ensure_onnxruntime();
    let parity = parity();
    let dir = tempfile::tempdir().unwrap();
    let pairs_file = dir.path().join("pairs.jsonl");
    let lines: String = pairs(&parity)
        .iter()
        .map(|(q, d)| serde_json::json!({"query": q, "document": d}).to_string() + "\n")
        .collect();
    std::fs::write(&pairs_file, lines).unwrap();
    let mut worst = 0f64;
    for (name, reference) in parity["models"].as_object().unwrap() {
        let model = dir.path().join(name);
        copy_tree(&model_dir(name), &model);
        let exported = run(&["export-onnx", "--model", model.to_str().unwrap(), "--check"]);
        assert!(exported.status.success(), "{name}: {}", stderr(&exported));
        assert!(stdout(&exported).contains(": ok"), "{}", stdout(&exported));
        for (setting, expected) in reference["settings"].as_object().unwrap() {
            let max_length = expected["max_length"].to_string();
            let mut args = vec![
                "predict",
                "--model",
                model.to_str().unwrap(),
                "--pairs",
                pairs_file.to_str().unwrap(),
                "--backend",
                "onnx",
                "--activation",
                "none",
                "--max-length",
                &max_length,
                "--json",
            ];
            if let Some(prompt) = expected["prompt"].as_str() {
                args.extend(["--prompt", prompt]);
            }
            let output = run(&args);
            assert!(
                output.status.success(),
                "{name}/{setting}: {}",
                stderr(&output)
            );
            let rows: Vec<Vec<f64>> = serde_json::from_str(&stdout(&output)).unwrap();
            let want = expected["scores_f64_exact"].as_array().unwrap();
            assert_eq!(rows.len(), want.len());
            for (index, (row, want)) in rows.iter().zip(want).enumerate() {
                let difference = (row[0] - want.as_f64().unwrap()).abs();
                worst = worst.max(difference);
                assert!(
                    difference <= 3e-5,
                    "{name}/{setting} pair {index}: {} vs {want}",
                    row[0]
                );
            }
        }
    }
    eprintln!("decoder ONNX parity: max |score difference| {worst:.2e}");
}

/// `train` on a decoder reranker ends like any run: its ONNX export checked against candle,
/// and a card that names the causal LM and how transformers loads it.
#[test]
fn a_trained_decoder_has_its_onnx_export_and_card() {
    support::ensure_onnxruntime();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let rows: String = (0..8)
        .map(|i| {
            serde_json::json!({"query": format!("question {i}"), "document": format!("answer {i}"), "label": i % 2})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let output = dir.path().join("out");
    let trained = run(&[
        "train",
        "--model",
        model_dir("tiny-qwen3-reranker").to_str().unwrap(),
        "--loss",
        "BinaryCrossEntropyLoss",
        "--train",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "64",
    ]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(
        stdout(&trained).contains("ONNX export onnx/model.onnx: max |logit difference|"),
        "{}",
        stdout(&trained)
    );
    let card = std::fs::read_to_string(output.join("README.md")).unwrap();
    assert!(
        card.contains("**Architecture:** Qwen3ForCausalLM"),
        "{card}"
    );
    assert!(card.contains("`AutoModelForCausalLM`"), "{card}");
    assert!(output.join("1_LogitScore/config.json").is_file());
}

/// From scratch, a decoder's weights are drawn as transformers draws them: the embedding's
/// pad row (its `padding_idx`, Qwen's `pad_token_id`) zero, the norms one.
#[test]
fn a_decoder_from_scratch_keeps_its_pad_row_zero_and_its_norms_one() {
    let options = LoadOptions {
        from_scratch: true,
        ..LoadOptions::default()
    };
    let model = CrossEncoder::load_dir(&model_dir("tiny-qwen3-reranker"), &options).unwrap();
    let parameters: std::collections::HashMap<String, candle_core::Tensor> =
        model.named_parameters().unwrap().into_iter().collect();
    let embeddings: Vec<Vec<f32>> = parameters["model.embed_tokens.weight"].to_vec2().unwrap();
    assert!(embeddings[1497].iter().all(|&v| v == 0.0));
    assert!(embeddings[1496].iter().any(|&v| v != 0.0));
    for norm in [
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.self_attn.q_norm.weight",
    ] {
        let values: Vec<f32> = parameters[norm].to_vec1().unwrap();
        assert!(values.iter().all(|&v| v == 1.0), "{norm}");
    }
}
