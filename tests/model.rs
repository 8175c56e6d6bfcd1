//! The candle cross-encoder against sentence-transformers' own numbers
//! (`tests/fixtures/model_parity.json`, from `CrossEncoder(path)` in fp32), plus gradients,
//! dropout and the save/load round trip.

mod support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use crosstrain::model::parameters::{NamedPart, Trainable};
use crosstrain::model::{CrossEncoder, LoadOptions, ModelError};
use serde_json::Value;
use support::*;

fn parity() -> Value {
    read_parity("model_parity.json")
}

/// `model_parity.json` or `model_parity_families.json` (XLM-RoBERTa, ELECTRA, ...).
fn read_parity(file: &str) -> Value {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tiny(name: &str) -> PathBuf {
    fixture("models").join(name)
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

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Checks tokens and logits of one model at one max-length setting; returns the largest
/// logit difference.
fn check_model(dir: &Path, model_name: &str, setting: &str) -> f64 {
    check_model_in(&parity(), dir, model_name, setting)
}

/// [`check_model`] against any parity file of that layout. `token_type_ids` is compared
/// where the reference has them (families without segments have none).
fn check_model_in(parity: &Value, dir: &Path, model_name: &str, setting: &str) -> f64 {
    let reference = &parity["models"][model_name]["settings"][setting];
    let max_length = reference["max_length"].as_u64().unwrap() as usize;
    // "128"/"512" is the constructor default; "32" was given explicitly.
    let options = LoadOptions {
        max_length: (setting == "32").then_some(32),
        ..LoadOptions::default()
    };
    let model = CrossEncoder::load_dir(dir, &options).unwrap();
    assert_eq!(
        model.max_length(),
        max_length,
        "{model_name}/{setting}: default max length"
    );
    let pairs = pairs(parity);
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, d)| (q.as_str(), d.as_str()))
        .collect();

    let mut max_diff: f64 = 0.0;
    for (index, pair) in borrowed.iter().enumerate() {
        let encoded = model.encode(&[*pair]).unwrap();
        let expected = &reference["tokens"][index];
        assert_eq!(
            encoded.input_ids,
            ids(&expected["input_ids"]),
            "{model_name}/{setting} pair {index} ids"
        );
        if let Some(types) = expected.get("token_type_ids") {
            assert_eq!(encoded.token_type_ids, ids(types), "pair {index} types");
        }
        assert_eq!(
            encoded.attention_mask,
            ids(&expected["attention_mask"]),
            "pair {index} mask"
        );
        let logits = model
            .forward(&model.token_tensors(&encoded).unwrap())
            .unwrap();
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        for (ours, theirs) in logits
            .iter()
            .zip(reference["logits_f32"][index].as_array().unwrap())
        {
            max_diff = max_diff.max((f64::from(*ours) - theirs.as_f64().unwrap()).abs());
        }
    }
    // All pairs in one right-padded batch.
    let encoded = model.encode(&borrowed).unwrap();
    assert_eq!(
        encoded.seq_len as u64,
        reference["batch_padded_length"].as_u64().unwrap()
    );
    let batched = model
        .forward(&model.token_tensors(&encoded).unwrap())
        .unwrap();
    let batched: Vec<Vec<f32>> = batched.to_vec2().unwrap();
    for (row, theirs) in batched
        .iter()
        .zip(reference["logits_f32_batched"].as_array().unwrap())
    {
        for (ours, theirs) in row.iter().zip(theirs.as_array().unwrap()) {
            max_diff = max_diff.max((f64::from(*ours) - theirs.as_f64().unwrap()).abs());
        }
    }
    max_diff
}

#[test]
fn tiny_model_tokens_and_logits_match_the_reference() {
    for setting in ["128", "32"] {
        let diff = check_model(&tiny("tiny-bert-ce"), "tiny-bert-ce", setting);
        eprintln!("tiny-bert-ce/{setting}: max |logit diff| {diff:e}");
        assert!(
            diff < 1e-5,
            "tiny-bert-ce/{setting}: max |logit diff| {diff}"
        );
    }
}

#[test]
fn three_label_model_logits_match_the_reference() {
    for setting in ["128", "32"] {
        let diff = check_model(
            &tiny("tiny-bert-ce-3labels"),
            "tiny-bert-ce-3labels",
            setting,
        );
        eprintln!("tiny-bert-ce-3labels/{setting}: max |logit diff| {diff:e}");
        assert!(
            diff < 1e-5,
            "tiny-bert-ce-3labels/{setting}: max |logit diff| {diff}"
        );
    }
}

#[test]
fn xlm_roberta_electra_modernbert_and_deberta_tokens_and_logits_match_transformers() {
    let parity = read_parity("model_parity_families.json");
    for (name, architecture) in [
        ("tiny-xlmr-ce", "XLMRobertaForSequenceClassification"),
        ("tiny-electra-ce", "ElectraForSequenceClassification"),
        ("tiny-modernbert-ce", "ModernBertForSequenceClassification"),
        (
            "tiny-modernbert-mean-ce",
            "ModernBertForSequenceClassification",
        ),
        ("tiny-deberta-v2-ce", "DebertaV2ForSequenceClassification"),
    ] {
        let model = CrossEncoder::load_dir(&tiny(name), &LoadOptions::default()).unwrap();
        assert_eq!(model.family().architecture(), architecture);
        assert_eq!(parity["models"][name]["architecture"], architecture);
        for setting in ["128", "32"] {
            let diff = check_model_in(&parity, &tiny(name), name, setting);
            eprintln!("{name}/{setting}: max |logit diff| {diff:e}");
            assert!(diff < 1e-5, "{name}/{setting}: max |logit diff| {diff}");
        }
    }
}

/// The real MiniLM: runs when CROSSTRAIN_SHARED points at the shared reference folder
/// (the one holding `reference/models/minilm-l6-ce`).
#[test]
fn minilm_matches_the_reference_when_the_shared_folder_is_given() {
    let Some(shared) = std::env::var_os("CROSSTRAIN_SHARED") else {
        eprintln!("CROSSTRAIN_SHARED not set: skipping the MiniLM parity check");
        return;
    };
    let dir = Path::new(&shared).join("reference/models/minilm-l6-ce");
    for setting in ["512", "32"] {
        let diff = check_model(&dir, "minilm-l6-ce", setting);
        eprintln!("minilm-l6-ce/{setting}: max |logit diff| {diff:e}");
        assert!(
            diff < 1e-5,
            "minilm-l6-ce/{setting}: max |logit diff| {diff}"
        );
    }
}

#[test]
fn predict_matches_the_reference_predict_with_its_activation() {
    let parity = parity();
    let model = CrossEncoder::load_dir(&tiny("tiny-bert-ce"), &LoadOptions::default()).unwrap();
    let pairs = pairs(&parity);
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, d)| (q.as_str(), d.as_str()))
        .collect();
    let scores = model.predict(&borrowed, 5).unwrap();
    let expected = parity["models"]["tiny-bert-ce"]["settings"]["128"]["predict_f32"]
        .as_array()
        .unwrap();
    for (row, expected) in scores.iter().zip(expected) {
        let sigmoid = 1.0 / (1.0 + (-f64::from(row[0])).exp());
        assert!((sigmoid - expected.as_f64().unwrap()).abs() < 1e-5);
    }
}

fn some_pairs() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "how many moons does mars have",
            "Mars has two small moons, Phobos and Deimos.",
        ),
        (
            "boiling point of water",
            "Water boils at 100 degrees Celsius at sea level.",
        ),
        ("a", ""),
    ]
}

/// A named parameter's slice of its `Var`'s gradient.
fn part_gradient(
    grads: &candle_core::backprop::GradStore,
    trainable: &Trainable,
    part: &NamedPart,
) -> Option<Tensor> {
    let grad = grads.get(trainable.var.as_tensor())?;
    Some(part.slice_of(grad).unwrap())
}

#[test]
fn every_parameter_gets_a_nonzero_gradient_in_training_mode() {
    let model =
        CrossEncoder::load_dir(&tiny("tiny-bert-ce-3labels"), &LoadOptions::default()).unwrap();
    model.dropout().train(1);
    let logits = model.logits(&some_pairs()).unwrap();
    // A loss that touches every logit with a different weight.
    let weights = Tensor::arange(1f32, 10f32, logits.device())
        .unwrap()
        .reshape((3, 3))
        .unwrap();
    let loss = (logits * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let trainables = model.trainable_parameters();
    let parts: Vec<(&Trainable, &NamedPart)> = trainables
        .iter()
        .flat_map(|t| t.parts.iter().map(move |part| (t, part)))
        .collect();
    assert_eq!(
        parts.len(),
        5 + 16 * 2 + 2 + 2,
        "embeddings, 2 layers, pooler, classifier"
    );
    // On the CPU in f32 each encoder layer keeps its 16 parameters in one packed `Var`.
    assert_eq!(trainables.len(), 5 + 2 + 2 + 2);
    assert_eq!(trainables.iter().filter(|t| t.parts.len() == 16).count(), 2);
    for (trainable, part) in parts {
        let name = &part.name;
        let grad = part_gradient(&grads, trainable, part)
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let norm = grad
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let options = LoadOptions {
        dtype: DType::F64,
        ..LoadOptions::default()
    };
    let model = CrossEncoder::load_dir(&tiny("tiny-bert-ce"), &options).unwrap();
    let pairs = some_pairs();
    let objective = |model: &CrossEncoder| -> f64 {
        // A non-trivial scalar of the logits: Σ_i (i + 1)·logit_i.
        let logits = model.logits(&pairs).unwrap();
        let weights = Tensor::new(&[1f64, 2.0, 3.0], logits.device())
            .unwrap()
            .reshape((3, 1))
            .unwrap();
        (logits * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let logits = model.logits(&pairs).unwrap();
    let weights = Tensor::new(&[1f64, 2.0, 3.0], logits.device())
        .unwrap()
        .reshape((3, 1))
        .unwrap();
    let grads = (logits * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let trainables = model.trainable_parameters();
    let checked = [
        ("classifier.weight", 5),
        ("bert.pooler.dense.weight", 17),
        ("bert.encoder.layer.1.output.LayerNorm.weight", 3),
        ("bert.encoder.layer.0.attention.self.query.weight", 40),
        ("bert.encoder.layer.0.intermediate.dense.bias", 9),
        ("bert.embeddings.LayerNorm.bias", 0),
        ("bert.embeddings.position_embeddings.weight", 2 * 32 + 7),
        ("bert.embeddings.token_type_embeddings.weight", 32 + 4),
    ];
    for (name, index) in checked {
        let (trainable, part) = trainables
            .iter()
            .find_map(|t| t.parts.iter().find(|p| p.name == name).map(|p| (t, p)))
            .unwrap();
        let analytic: Vec<f64> = part_gradient(&grads, trainable, part)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original = trainable.value(part).unwrap().copy().unwrap();
        let shape = original.shape().clone();
        let flat: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        let step = 1e-5;
        let at = |delta: f64| {
            let mut values = flat.clone();
            values[index] += delta;
            trainable
                .set(
                    part,
                    &Tensor::from_vec(values, &shape, original.device()).unwrap(),
                )
                .unwrap();
            objective(&model)
        };
        let numeric = (at(step) - at(-step)) / (2.0 * step);
        trainable.set(part, &original).unwrap();
        assert!(
            (numeric - analytic[index]).abs() < 1e-6 * (1.0 + numeric.abs()),
            "{name}[{index}]: analytic {} vs numeric {numeric}",
            analytic[index]
        );
    }
}

#[test]
fn dropout_changes_outputs_in_training_mode_only() {
    let model = CrossEncoder::load_dir(&tiny("tiny-bert-ce"), &LoadOptions::default()).unwrap();
    let eval_a: Vec<Vec<f32>> = model.logits(&some_pairs()).unwrap().to_vec2().unwrap();
    let eval_b: Vec<Vec<f32>> = model.logits(&some_pairs()).unwrap().to_vec2().unwrap();
    assert_eq!(eval_a, eval_b);
    model.dropout().train(5);
    let train_a: Vec<Vec<f32>> = model.logits(&some_pairs()).unwrap().to_vec2().unwrap();
    let train_b: Vec<Vec<f32>> = model.logits(&some_pairs()).unwrap().to_vec2().unwrap();
    assert_ne!(train_a, eval_a);
    assert_ne!(train_a, train_b);
    model.dropout().train(5);
    let replay: Vec<Vec<f32>> = model.logits(&some_pairs()).unwrap().to_vec2().unwrap();
    assert_eq!(replay, train_a, "same seed, same masks");
    model.dropout().eval();
    assert_eq!(
        model
            .logits(&some_pairs())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        eval_a
    );
}

#[test]
fn load_save_load_gives_identical_logits_and_a_transformers_layout() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved");
    for name in ["tiny-bert-ce", "tiny-bert-ce-3labels"] {
        let model = CrossEncoder::load_dir(&tiny(name), &LoadOptions::default()).unwrap();
        let target = saved.join(name);
        model.save(&target).unwrap();
        let reloaded = CrossEncoder::load_dir(&target, &LoadOptions::default()).unwrap();
        assert_eq!(
            model
                .logits(&some_pairs())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            reloaded
                .logits(&some_pairs())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert_eq!(reloaded.max_length(), 128);
        for file in MODEL_FILES {
            assert!(target.join(file).is_file(), "{name}: {file} missing");
        }
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], "BertForSequenceClassification");
        assert_eq!(
            config["id2label"].as_object().unwrap().len(),
            model.num_labels()
        );
        // Same tensor names as the original checkpoint.
        let names = |path: &Path| {
            let mut names: Vec<String> =
                candle_core::safetensors::load(path, &candle_core::Device::Cpu)
                    .unwrap()
                    .into_keys()
                    .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(&target.join("model.safetensors")),
            names(&tiny(name).join("model.safetensors"))
        );
        // The tokenizer no longer pads to a fixed 128.
        let tokenizer: Value =
            serde_json::from_str(&std::fs::read_to_string(target.join("tokenizer.json")).unwrap())
                .unwrap();
        assert_eq!(tokenizer["padding"]["strategy"], "BatchLongest");
    }
    // An existing non-empty directory is never overwritten.
    let model = CrossEncoder::load_dir(&tiny("tiny-bert-ce"), &LoadOptions::default()).unwrap();
    match model.save(&saved.join("tiny-bert-ce")) {
        Err(ModelError::AlreadyExists { .. }) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(
        std::fs::read_dir(&saved).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial")),
        "no staging directory is left behind"
    );
}

#[test]
fn a_missing_classifier_is_initialised_from_the_seed_and_pytorch_files_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny("tiny-bert-ce").join(file), base.join(file)).unwrap();
    }
    // A base encoder checkpoint: no classifier, names without the "bert." prefix.
    let tensors = candle_core::safetensors::load(
        tiny("tiny-bert-ce").join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let base_tensors: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(name, _)| !name.starts_with("classifier."))
        .map(|(name, tensor)| (name.trim_start_matches("bert.").to_string(), tensor))
        .collect();
    candle_core::safetensors::save(&base_tensors, base.join("model.safetensors")).unwrap();
    let options = LoadOptions {
        seed: 11,
        ..LoadOptions::default()
    };
    let first = CrossEncoder::load_dir(&base, &options).unwrap();
    assert_eq!(
        first.initialised_parameters(),
        ["classifier.bias", "classifier.weight"]
    );
    let second = CrossEncoder::load_dir(&base, &options).unwrap();
    assert_eq!(
        first
            .logits(&some_pairs())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        second
            .logits(&some_pairs())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    );

    std::fs::rename(
        base.join("model.safetensors"),
        base.join("pytorch_model.bin"),
    )
    .unwrap();
    let error = CrossEncoder::load_dir(&base, &options)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("pytorch_model.bin") && error.contains("safetensors"),
        "{error}"
    );
    let error = CrossEncoder::load("no/such-model-dir-here/x", &options)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no such directory"), "{error}");
}

#[test]
fn predict_and_rank_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.tsv");
    std::fs::write(
        &pairs,
        "query\tdocument\nhow many moons does mars have\tMars has two moons.\nwhat is rust\tA language.\n",
    )
    .unwrap();
    let model = tiny("tiny-bert-ce-3labels");
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let scores: Vec<Vec<f64>> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(scores.len(), 2);
    assert_eq!(scores[0].len(), 3);
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--activation",
        "softmax",
    ]);
    let first: Vec<f64> = stdout(&output)
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!((first.iter().sum::<f64>() - 1.0).abs() < 1e-5);

    let documents = dir.path().join("documents.txt");
    std::fs::write(
        &documents,
        "Mars has two moons.\nBananas are yellow.\nPhobos and Deimos orbit Mars.\n",
    )
    .unwrap();
    let model = tiny("tiny-bert-ce");
    let output = run(&[
        "rank",
        "--model",
        model.to_str().unwrap(),
        "--query",
        "moons of mars",
        "--documents",
        documents.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ranked: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(ranked.len(), 3);
    let scores: Vec<f64> = ranked
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted: {scores:?}"
    );
    assert!(
        scores.iter().all(|s| (0.0..=1.0).contains(s)),
        "sigmoid scores: {scores:?}"
    );

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"query\": \"q\", \"document\": \"d\"}\n{\"query\": \"q\"}\n",
    )
    .unwrap();
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        bad.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("bad.jsonl:line 2: column \"document\": missing"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bench_predict_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    let lines: String = (0..8)
        .map(|i| format!("{{\"query\": \"q {i}\", \"document\": \"a document {i}\"}}\n"))
        .collect();
    std::fs::write(&pairs, lines).unwrap();
    let model = tiny("tiny-bert-ce");
    let output = run(&[
        "bench",
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--batch-size",
        "4",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.lines().count(), 1);
    let line: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(line["pairs"], 8);
    assert!(line["pairs_per_second"].as_f64().unwrap() > 0.0);
    assert!(line["peak_rss_mb"].as_f64().unwrap() > 0.0);
}

/// The default build is CPU-only: asking for CUDA says how to get it, before any work.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_without_the_feature_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.tsv");
    std::fs::write(&pairs, "query\tdocument\nq\td\n").unwrap();
    let model = tiny("tiny-bert-ce");
    let output = run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("--features cuda"), "{message}");
    let output = run(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--loss",
        "BinaryCrossEntropyLoss",
        "--train",
        pairs.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--device",
        "cuda:0",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("--features cuda"), "{message}");
    assert!(!dir.path().join("out").exists());
}

/// The sentence embedder used for dense mining: unit vectors, and padding does not leak into
/// the mean (a text embedded beside a longer one equals the text embedded alone).
#[test]
fn sentence_embeddings_are_unit_length_and_padding_free() {
    // XLM-RoBERTa (multilingual-e5's family) numbers positions after padding; ELECTRA
    // projects its embeddings: both must embed a text the same alone and in a padded batch.
    for name in ["tiny-bert-ce", "tiny-xlmr-ce", "tiny-electra-ce"] {
        let model = tiny(name);
        let embedder =
            crosstrain::model::SentenceEmbedder::load_dir(&model, &candle_core::Device::Cpu, None)
                .unwrap();
        assert_eq!(embedder.pooling(), crosstrain::model::Pooling::Mean);
        let dimension = embedder.dimension();
        let texts = [
            "mars",
            "how many moons does mars have, and what are they called?",
        ];
        let together = embedder.embed(&texts, 8).unwrap();
        assert_eq!(together.len(), 2 * dimension);
        for (index, text) in texts.iter().enumerate() {
            let alone = embedder.embed(&[text], 8).unwrap();
            let row = &together[index * dimension..(index + 1) * dimension];
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
            let gap = row
                .iter()
                .zip(&alone)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(gap < 1e-5, "{name}: {text}: {gap}");
        }
        // Different texts get different vectors.
        assert!(together[..dimension] != together[dimension..], "{name}");
    }
}

#[test]
fn an_unsupported_architecture_is_refused_before_any_work_naming_what_is_supported() {
    // A BERT-shaped directory whose config says Mistral (a decoder crosstrain does not
    // implement): before the model crate, any such config was trained as BERT and saved
    // relabelled as BERT.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mistral");
    std::fs::create_dir(&model).unwrap();
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(tiny("tiny-bert-ce").join(file), model.join(file)).unwrap();
    }
    let mut config = read_json(&tiny("tiny-bert-ce").join("config.json"));
    config["architectures"] = serde_json::json!(["MistralForSequenceClassification"]);
    config["model_type"] = "mistral".into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();

    let error = match CrossEncoder::load_dir(&model, &LoadOptions::default()) {
        Err(error) => error,
        Ok(_) => panic!("a Mistral config loaded as BERT"),
    };
    assert!(
        matches!(error, ModelError::UnsupportedArchitecture { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("config.json")
            && message.contains("XLMRobertaForSequenceClassification")
            && message.contains("\"MistralForSequenceClassification\" is not supported")
            && message.contains("BERT")
            && message.contains("BertForSequenceClassification"),
        "{message}"
    );

    // The command line says the same.
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
    assert!(
        stderr(&output).contains("MistralForSequenceClassification"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn every_family_saves_loads_round_trip_and_base_checkpoints_get_a_head() {
    // (fixture, encoder prefix, architecture, the head a base checkpoint lacks)
    for (name, prefix, architecture, head) in [
        (
            "tiny-xlmr-ce",
            "roberta.",
            "XLMRobertaForSequenceClassification",
            &[
                "classifier.dense.bias",
                "classifier.dense.weight",
                "classifier.out_proj.bias",
                "classifier.out_proj.weight",
            ][..],
        ),
        (
            "tiny-electra-ce",
            "electra.",
            "ElectraForSequenceClassification",
            &[
                "classifier.dense.bias",
                "classifier.dense.weight",
                "classifier.out_proj.bias",
                "classifier.out_proj.weight",
            ][..],
        ),
        (
            "tiny-modernbert-ce",
            "model.",
            "ModernBertForSequenceClassification",
            &[
                "classifier.bias",
                "classifier.weight",
                "head.dense.weight",
                "head.norm.weight",
            ][..],
        ),
        (
            "tiny-deberta-v2-ce",
            "deberta.",
            "DebertaV2ForSequenceClassification",
            &[
                "classifier.bias",
                "classifier.weight",
                "pooler.dense.bias",
                "pooler.dense.weight",
            ][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = CrossEncoder::load_dir(&tiny(name), &LoadOptions::default()).unwrap();
        assert!(model.initialised_parameters().is_empty(), "{name}");
        let saved = dir.path().join("saved");
        model.save(&saved).unwrap();
        let config = read_json(&saved.join("config.json"));
        assert_eq!(config["architectures"][0], architecture);
        let reloaded = CrossEncoder::load_dir(&saved, &LoadOptions::default()).unwrap();
        let logits = |m: &CrossEncoder| m.logits(&some_pairs()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(logits(&model), logits(&reloaded), "{name}");

        // A base checkpoint: encoder tensors without the prefix, no head.
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(tiny(name).join(file), base.join(file)).unwrap();
        }
        let tensors = candle_core::safetensors::load(
            tiny(name).join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let base_tensors: std::collections::HashMap<String, Tensor> = tensors
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, tensor)| (name.trim_start_matches(prefix).to_string(), tensor))
            .collect();
        candle_core::safetensors::save(&base_tensors, base.join("model.safetensors")).unwrap();
        let fresh = CrossEncoder::load_dir(&base, &LoadOptions::default()).unwrap();
        assert_eq!(fresh.initialised_parameters(), head, "{name}");
    }
}

/// Issue 19, class 7: files that start with a UTF-8 byte-order mark read as without it in
/// every reader (prediction pairs, evaluation samples, training data), and invalid UTF-8 is an
/// error that names the file and the line.
#[test]
fn byte_order_marks_are_read_and_invalid_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny("tiny-bert-ce");
    let model_arg = model.to_str().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "\u{feff}{\"query\": \"how many moons\", \"document\": \"two\"}\n",
    )
    .unwrap();
    let output = run(&[
        "predict",
        "--model",
        model_arg,
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 1);

    let samples = dir.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        "\u{feff}{\"query\": \"q\", \"positive\": [\"a\"], \"negative\": [\"b\", \"c\"]}\n",
    )
    .unwrap();
    let output = run(&[
        "eval",
        "--model",
        model_arg,
        "--evaluator",
        "reranking",
        "--data",
        samples.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    let train = dir.path().join("train.jsonl");
    std::fs::write(
        &train,
        "\u{feff}{\"query\": \"a\", \"document\": \"b\", \"label\": 1}\n\
         {\"query\": \"a\", \"document\": \"c\", \"label\": 0}\n",
    )
    .unwrap();
    let output = run(&[
        "train",
        "--model",
        model_arg,
        "--loss",
        "BinaryCrossEntropyLoss",
        "--train",
        train.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--batch-size",
        "2",
        "--no-export-onnx",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    std::fs::write(
        &pairs,
        b"{\"query\": \"q\", \"document\": \"d\"}\n{\"query\": \"q\xff\", \"document\": \"d\"}\n",
    )
    .unwrap();
    let output = run(&[
        "predict",
        "--model",
        model_arg,
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("pairs.jsonl") && message.contains("invalid UTF-8 on line 2"),
        "{message}"
    );
}

/// Issue 19, class 5: a max length the model cannot take (0, or past its position
/// embeddings) is refused when the model loads, naming the limit; training writes nothing.
#[test]
fn a_max_length_the_model_cannot_take_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny("tiny-bert-ce");
    for length in [0usize, 129, 1000] {
        let error = match CrossEncoder::load_dir(
            &model,
            &LoadOptions {
                max_length: Some(length),
                ..LoadOptions::default()
            },
        ) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("max length {length} accepted"),
        };
        assert!(
            error.contains(&format!("max length {length}")) && error.contains("1 to 128 tokens"),
            "{error}"
        );
    }
    assert!(CrossEncoder::load_dir(
        &model,
        &LoadOptions {
            max_length: Some(128),
            ..LoadOptions::default()
        }
    )
    .is_ok());
    let train = dir.path().join("train.jsonl");
    std::fs::write(
        &train,
        "{\"query\": \"a\", \"document\": \"b\", \"label\": 1}\n{\"query\": \"a\", \"document\": \"c\", \"label\": 0}\n",
    )
    .unwrap();
    let output = dir.path().join("out");
    let result = run(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--loss",
        "BinaryCrossEntropyLoss",
        "--train",
        train.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-length",
        "1000",
        "--no-export-onnx",
    ]);
    assert!(!result.status.success());
    assert!(
        stderr(&result).contains("1 to 128 tokens"),
        "{}",
        stderr(&result)
    );
    assert!(!output.exists(), "a refused run left {}", output.display());
}
