//! LoRA adapters (issue 33): PEFT adapter directories load, train, save, merge and resume;
//! sentence-transformers' own adapter gives its scores. The trajectories against
//! `CrossEncoderTrainer` + PEFT are in `tests/train.rs`.

mod support;

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use support::{copy_tree, fixture, read_json, run, stderr, stdout, train_cli};

/// The reference's LoRA run: its eval pairs and final scores.
fn random_init_run() -> Value {
    read_json(&fixture("trajectories_decoders.json"))["runs"]
        ["tiny-qwen3-reranker/lora-random-init"]
        .clone()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|row| format!("{row}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn write_eval_pairs(path: &Path, reference: &Value) {
    let pairs: Vec<Value> = reference["eval_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| serde_json::json!({"query": pair[0], "document": pair[1]}))
        .collect();
    write_jsonl(path, &pairs);
}

/// Raw scores of `model` (plus more arguments; max length 192 unless they give one) on the
/// pairs file.
fn scores(model: &Path, pairs: &Path, more: &[&str]) -> Vec<f64> {
    let mut args = vec![
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--activation",
        "none",
        "--json",
    ];
    if !more.contains(&"--max-length") {
        args.extend(["--max-length", "192"]);
    }
    args.extend_from_slice(more);
    let predicted = run(&args);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let rows: Vec<Vec<f64>> = serde_json::from_str(&stdout(&predicted)).unwrap();
    rows.into_iter().flatten().collect()
}

fn max_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (name, values)
        })
        .collect()
}

/// The adapter sentence-transformers saved after its LoRA run loads on the base beside it
/// (its `base_model_name_or_path`), with no `--base-model`, and gives that run's final scores;
/// `merge-adapter` writes a full model with the same scores.
#[test]
fn a_sentence_transformers_adapter_scores_as_saved_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let reference = random_init_run();
    let pairs = dir.path().join("pairs.jsonl");
    write_eval_pairs(&pairs, &reference);
    let expected: Vec<f64> = reference["final_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // A copy beside a copy of its base, as the fixtures lie.
    let models = dir.path().join("models");
    copy_tree(
        &fixture("models/tiny-qwen3-reranker"),
        &models.join("tiny-qwen3-reranker"),
    );
    let adapter = models.join("adapter");
    copy_tree(
        &fixture("models/tiny-qwen3-reranker-lora-trained"),
        &adapter,
    );
    let ours = scores(&adapter, &pairs, &[]);
    let error = max_difference(&ours, &expected);
    assert!(error < 3e-5, "adapter scores off by {error}: {ours:?}");

    let merged = dir.path().join("merged");
    let merging = run(&[
        "merge-adapter",
        "--model",
        adapter.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(merging.status.success(), "{}", stderr(&merging));
    assert!(merged.join("config.json").is_file());
    assert!(!merged.join("adapter_config.json").exists());
    let merged_scores = scores(&merged, &pairs, &[]);
    let error = max_difference(&merged_scores, &ours);
    assert!(error < 1e-5, "merged scores off by {error}");
    // The merged weights are the base's plus (alpha / r) B A, nothing else changed.
    let base = tensors(&models.join("tiny-qwen3-reranker/model.safetensors"));
    let merged_weights = tensors(&merged.join("model.safetensors"));
    let adapter_weights = tensors(&adapter.join("adapter_model.safetensors"));
    assert_eq!(
        base.get("model.norm.weight"),
        merged_weights.get("model.norm.weight")
    );
    let name = "model.layers.1.mlp.down_proj";
    let a = &adapter_weights[&format!("base_model.model.{name}.lora_A.weight")]; // [4, 128]
    let b = &adapter_weights[&format!("base_model.model.{name}.lora_B.weight")]; // [64, 4]
    let (row, column) = (5, 77);
    let update: f32 = (0..4).map(|k| b[row * 4 + k] * a[k * 128 + column]).sum();
    let merged_value = merged_weights[&format!("{name}.weight")][row * 128 + column];
    let base_value = base[&format!("{name}.weight")][row * 128 + column];
    assert!((merged_value - (base_value + 2.0 * update)).abs() < 1e-6);

    // The adapter's base can be named instead; a full model takes no base.
    let named = scores(
        &adapter,
        &pairs,
        &[
            "--base-model",
            models.join("tiny-qwen3-reranker").to_str().unwrap(),
        ],
    );
    assert_eq!(named, ours);
    let refused = run(&[
        "predict",
        "--model",
        merged.to_str().unwrap(),
        "--base-model",
        adapter.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("full model"),
        "{}",
        stderr(&refused)
    );
    // Without its base beside it, the error says how to name it.
    let alone = dir.path().join("alone");
    copy_tree(&adapter, &alone);
    let missing = run(&[
        "predict",
        "--model",
        alone.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    let message = stderr(&missing);
    assert!(
        message.contains("--base-model") && message.contains("adapter_config.json"),
        "{message}"
    );
}

/// Adapters crosstrain does not implement are refused by the key that says so, and an
/// adapter tensor no layer takes is an error, not silently dropped.
#[test]
fn unsupported_adapters_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let reference = random_init_run();
    let pairs = dir.path().join("pairs.jsonl");
    write_eval_pairs(&pairs, &reference);
    let base = dir.path().join("tiny-qwen3-reranker");
    copy_tree(&fixture("models/tiny-qwen3-reranker"), &base);
    let predict = |adapter: &Path| {
        run(&[
            "predict",
            "--model",
            adapter.to_str().unwrap(),
            "--base-model",
            base.to_str().unwrap(),
            "--pairs",
            pairs.to_str().unwrap(),
        ])
    };
    let dora = dir.path().join("dora");
    copy_tree(&fixture("models/tiny-qwen3-reranker-lora-trained"), &dora);
    let mut config = read_json(&dora.join("adapter_config.json"));
    config["use_dora"] = true.into();
    std::fs::write(dora.join("adapter_config.json"), config.to_string()).unwrap();
    let refused = predict(&dora);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("use_dora")
            && message.contains(dora.join("adapter_config.json").to_str().unwrap()),
        "{message}"
    );

    // A fresh adapter whose targets match no layer: the error names the recipe's table.
    let train = dir.path().join("train.jsonl");
    write_jsonl(&train, reference["train"].as_array().unwrap());
    let refused = run(&[
        "train",
        "--model",
        base.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--output",
        dir.path().join("out").to_str().unwrap(),
        "--set",
        "peft.target_modules=[\"nothing\"]",
    ]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("[peft]") && message.contains("[\"nothing\"] match no linear layer"),
        "{message}"
    );

    let narrowed = dir.path().join("narrowed");
    copy_tree(
        &fixture("models/tiny-qwen3-reranker-lora-trained"),
        &narrowed,
    );
    let mut config = read_json(&narrowed.join("adapter_config.json"));
    config["target_modules"] = serde_json::json!(["q_proj"]);
    std::fs::write(narrowed.join("adapter_config.json"), config.to_string()).unwrap();
    let refused = predict(&narrowed);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains(narrowed.join("adapter_model.safetensors").to_str().unwrap())
            && message.contains("lora_"),
        "{message}"
    );
}

/// A recipe's `[peft]` table on a sequence-classification decoder: only the adapters on every
/// linear layer and the `score` head (`modules_to_save`) train; the output is a PEFT adapter
/// directory naming its base; the merged model scores as the adapter does; the base's other
/// weights stay as they were; a run stopped at a checkpoint and resumed logs the same losses
/// (LoRA dropout included) and ends at the same adapter.
#[test]
fn a_peft_recipe_trains_only_the_adapter_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny-qwen3-seqcls");
    copy_tree(&fixture("models/tiny-qwen3-seqcls"), &base);
    let reference = random_init_run();
    write_jsonl(
        &dir.path().join("train.jsonl"),
        reference["train"].as_array().unwrap(),
    );
    let pairs = dir.path().join("pairs.jsonl");
    write_eval_pairs(&pairs, &reference);
    let config = dir.path().join("recipe.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nloss = \"BinaryCrossEntropyLoss\"\nmax_length = 192\n\
             per_device_train_batch_size = 4\nmax_steps = 6\nlearning_rate = 5e-3\nseed = 7\n\
             logging_steps = 1\nexport_onnx = false\ntrain = {{ files = {:?} }}\n\n\
             [peft]\ntype = \"lora\"\nr = 2\nlora_alpha = 4\nlora_dropout = 0.1\n\
             target_modules = \"all-linear\"\nmodules_to_save = [\"score\"]\n",
            base.to_str().unwrap(),
            dir.path().join("train.jsonl").to_str().unwrap()
        ),
    )
    .unwrap();
    let whole = dir.path().join("whole");
    let trained = train_cli(&config, &whole, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(!whole.join("model.safetensors").exists());
    assert!(!whole.join("config.json").exists());
    let adapter_config = read_json(&whole.join("adapter_config.json"));
    assert_eq!(adapter_config["r"], 2);
    assert_eq!(adapter_config["lora_alpha"], 4);
    assert_eq!(adapter_config["peft_type"], "LORA");
    assert_eq!(
        adapter_config["modules_to_save"],
        serde_json::json!(["score"])
    );
    assert_eq!(
        adapter_config["base_model_name_or_path"].as_str().unwrap(),
        base.to_str().unwrap()
    );
    let adapter = tensors(&whole.join("adapter_model.safetensors"));
    // 2 layers × 7 projections × (A, B), plus the head.
    assert_eq!(adapter.len(), 2 * 7 * 2 + 1, "{:?}", adapter.keys());
    assert!(adapter.contains_key("base_model.model.score.weight"));
    assert!(adapter
        .keys()
        .all(|name| name.starts_with("base_model.model.")));
    assert_eq!(
        adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].len(),
        2 * 64
    );
    // The head trained, and nothing of the base did.
    let base_weights = tensors(&base.join("model.safetensors"));
    assert_ne!(
        adapter["base_model.model.score.weight"],
        base_weights["score.weight"]
    );
    let adapter_scores = scores(&whole, &pairs, &[]);
    let base_scores = scores(&base, &pairs, &[]);
    assert!(max_difference(&adapter_scores, &base_scores) > 1e-3);
    let merged = dir.path().join("merged");
    let merging = run(&[
        "merge-adapter",
        "--model",
        whole.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(merging.status.success(), "{}", stderr(&merging));
    assert!(max_difference(&scores(&merged, &pairs, &[]), &adapter_scores) < 1e-5);
    let merged_weights = tensors(&merged.join("model.safetensors"));
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
    ] {
        assert_eq!(merged_weights[name], base_weights[name], "{name}");
    }
    // ONNX: the adapter merged into the graph, checked in ONNX Runtime against candle.
    support::ensure_onnxruntime();
    let exported = run(&["export-onnx", "--model", whole.to_str().unwrap(), "--check"]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let onnx_scores = scores(&whole, &pairs, &["--backend", "onnx"]);
    assert!(max_difference(&onnx_scores, &adapter_scores) < 3e-5);
    std::fs::remove_dir_all(whole.join("onnx")).unwrap();

    // Stopped after a checkpoint at step 3, then resumed.
    let parted = dir.path().join("parted");
    let stopped = train_cli(
        &config,
        &parted,
        &["--set", "stop_at_step=3", "--set", "save_steps=3"],
    );
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let checkpoint = parted.join("checkpoint-3");
    assert!(checkpoint.join("adapter_model.safetensors").is_file());
    assert!(!checkpoint.join("model.safetensors").exists());
    let resumed = train_cli(&config, &parted, &["--resume", "--set", "save_steps=3"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(support::losses_of(&whole), support::losses_of(&parted));
    assert_eq!(support::losses_of(&whole).len(), 6);
    assert_eq!(tensors(&parted.join("adapter_model.safetensors")), adapter);

    // The frozen base kept in bf16: the same run, up to bf16's rounding of the base.
    let halved = dir.path().join("bf16");
    let trained = train_cli(&config, &halved, &["--base-dtype", "bf16"]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let (f32_losses, bf16_losses) = (support::losses_of(&whole), support::losses_of(&halved));
    assert_ne!(f32_losses, bf16_losses);
    for (full, half) in f32_losses.iter().zip(&bf16_losses) {
        assert!(
            (full - half).abs() / full < 2e-2,
            "{f32_losses:?} vs {bf16_losses:?}"
        );
    }
    assert_eq!(
        read_json(&halved.join("training_args.json"))["base_dtype"],
        "bf16"
    );
}

/// `load_best_model_at_end` on a LoRA run reloads the best checkpoint's adapter (the
/// checkpoints hold `adapter_model.safetensors`, not `model.safetensors`).
#[test]
fn a_lora_run_loads_its_best_checkpoint_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny-qwen3-reranker");
    copy_tree(&fixture("models/tiny-qwen3-reranker"), &base);
    let reference = random_init_run();
    let train = dir.path().join("train.jsonl");
    write_jsonl(&train, reference["train"].as_array().unwrap());
    let config = dir.path().join("recipe.toml");
    // The eval loss read as "greater is better", and a learning rate that makes it swing, so
    // the best checkpoint is not the last.
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nloss = \"BinaryCrossEntropyLoss\"\nmax_length = 192\n\
             per_device_train_batch_size = 8\nmax_steps = 6\nlearning_rate = 0.3\n\
             logging_steps = 1\nexport_onnx = false\ntrain = {{ files = {:?} }}\n\
             eval = {{ files = {:?} }}\neval_steps = 2\nsave_steps = 2\n\
             load_best_model_at_end = true\nmetric_for_best_model = \"eval_loss\"\n\
             greater_is_better = true\n\n\
             [peft]\nr = 2\nlora_alpha = 4\ntarget_modules = \"all-linear\"\n",
            base.to_str().unwrap(),
            train.to_str().unwrap(),
            train.to_str().unwrap()
        ),
    )
    .unwrap();
    let output = dir.path().join("out");
    let trained = train_cli(&config, &output, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let state = read_json(&output.join("trainer_state.json"));
    let best = state["best_checkpoint"]
        .as_str()
        .or_else(|| state["best_model_checkpoint"].as_str())
        .expect("a best checkpoint")
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(
        best, "checkpoint-6",
        "the test needs a best checkpoint before the last"
    );
    assert_ne!(
        tensors(
            &output
                .join("checkpoint-6")
                .join("adapter_model.safetensors")
        ),
        tensors(&output.join(&best).join("adapter_model.safetensors"))
    );
    assert_eq!(
        tensors(&output.join("adapter_model.safetensors")),
        tensors(&output.join(&best).join("adapter_model.safetensors")),
        "the output is not {best}'s adapter"
    );
}

/// `[peft]` on an encoder (BERT): PEFT's default targets for the family (`query`, `value`),
/// only the adapter trains and is saved, the merged model scores as the adapter; LoRA dropout
/// (which the encoders' folded weights cannot apply), `r = 0`, and ModernBERT without
/// `target_modules` (PEFT has no default for it) are refused before training, by name.
#[test]
fn peft_on_an_encoder_trains_the_adapter_with_or_without_dropout_and_refuses_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bert");
    copy_tree(&fixture("models/tiny-bert-ce"), &model);
    let data = dir.path().join("train.jsonl");
    support::write_pairs(&data);
    let pairs = dir.path().join("pairs.jsonl");
    let rows: Vec<Value> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    write_jsonl(&pairs, &rows);
    let recipe = |model: &Path, peft: &str| {
        let config = dir.path().join("recipe.toml");
        std::fs::write(
            &config,
            format!(
                "model = {:?}\nloss = \"BinaryCrossEntropyLoss\"\nmax_steps = 3\n\
                 learning_rate = 5e-3\nexport_onnx = false\ntrain = {{ files = {:?} }}\n\n\
                 [peft]\n{peft}\n",
                model.to_str().unwrap(),
                data.to_str().unwrap()
            ),
        )
        .unwrap();
        config
    };
    let output = dir.path().join("out");
    let trained = train_cli(&recipe(&model, "r = 2\nlora_alpha = 4"), &output, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let adapter_config = read_json(&output.join("adapter_config.json"));
    assert_eq!(
        adapter_config["target_modules"],
        serde_json::json!(["query", "value"])
    );
    let adapter = tensors(&output.join("adapter_model.safetensors"));
    // 2 layers × (query, value) × (A, B), under PEFT's names.
    assert_eq!(adapter.len(), 8, "{:?}", adapter.keys());
    assert!(adapter
        .contains_key("base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"));
    assert!(!output.join("model.safetensors").exists());
    let adapter_scores = scores(&output, &pairs, &["--max-length", "64"]);
    let base_scores = scores(&model, &pairs, &["--max-length", "64"]);
    assert!(max_difference(&adapter_scores, &base_scores) > 1e-4);
    let merged = dir.path().join("merged");
    let merging = run(&[
        "merge-adapter",
        "--model",
        output.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(merging.status.success(), "{}", stderr(&merging));
    let merged_scores = scores(&merged, &pairs, &["--max-length", "64"]);
    assert!(max_difference(&merged_scores, &adapter_scores) < 1e-5);
    // ONNX: the adapter merged into the graph.
    support::ensure_onnxruntime();
    let exported = run(&[
        "export-onnx",
        "--model",
        output.to_str().unwrap(),
        "--check",
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let onnx_scores = scores(
        &output,
        &pairs,
        &["--max-length", "64", "--backend", "onnx"],
    );
    assert!(max_difference(&onnx_scores, &adapter_scores) < 1e-5);
    // Stopped after a checkpoint at step 2, then resumed: the same run.
    let config = recipe(&model, "r = 2\nlora_alpha = 4");
    let parted = dir.path().join("parted");
    let stopped = train_cli(
        &config,
        &parted,
        &["--set", "stop_at_step=2", "--set", "save_steps=2"],
    );
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    assert!(parted
        .join("checkpoint-2")
        .join("adapter_model.safetensors")
        .is_file());
    let resumed = train_cli(&config, &parted, &["--resume", "--set", "save_steps=2"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(support::losses_of(&output), support::losses_of(&parted));
    assert_eq!(tensors(&parted.join("adapter_model.safetensors")), adapter);
    // The frozen base in bf16: the same run up to bf16's rounding.
    let halved = dir.path().join("bf16");
    let trained = train_cli(&config, &halved, &["--base-dtype", "bf16"]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    for (full, half) in support::losses_of(&output)
        .iter()
        .zip(&support::losses_of(&halved))
    {
        assert!((full - half).abs() / full < 2e-2, "{full} vs {half}");
    }

    // LoRA dropout, as PEFT applies it (on each adapter's input): another run than without
    // it, saved with it, and stopped and resumed exactly (the masks come from the run's seed).
    let config = recipe(&model, "r = 2\nlora_alpha = 4\nlora_dropout = 0.1");
    let dropped = dir.path().join("dropout");
    let trained = train_cli(&config, &dropped, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert_eq!(
        read_json(&dropped.join("adapter_config.json"))["lora_dropout"],
        0.1
    );
    let dropped_losses = support::losses_of(&dropped);
    assert!(dropped_losses.iter().all(|loss| loss.is_finite()));
    assert_ne!(dropped_losses, support::losses_of(&output));
    let parted = dir.path().join("dropout-parted");
    let stopped = train_cli(
        &config,
        &parted,
        &["--set", "stop_at_step=2", "--set", "save_steps=2"],
    );
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let resumed = train_cli(&config, &parted, &["--resume", "--set", "save_steps=2"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(dropped_losses, support::losses_of(&parted));
    assert_eq!(
        tensors(&parted.join("adapter_model.safetensors")),
        tensors(&dropped.join("adapter_model.safetensors"))
    );

    let refused = train_cli(&recipe(&model, "r = 0"), &dir.path().join("refused"), &[]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("peft") && message.contains("r must be"),
        "{message}"
    );
    let modernbert = dir.path().join("modernbert");
    copy_tree(&fixture("models/tiny-modernbert-ce"), &modernbert);
    let refused = train_cli(
        &recipe(&modernbert, "r = 2"),
        &dir.path().join("refused"),
        &[],
    );
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("target_modules") && message.contains("ModernBERT"),
        "{message}"
    );
    assert!(!dir.path().join("refused").exists());
}
