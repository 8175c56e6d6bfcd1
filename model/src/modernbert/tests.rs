//! Logits against transformers' (`tests/fixtures/model_parity_families.json`, made from the
//! reference's tiny ModernBERT models; `scripts/copy-reference-fixtures.sh`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::*;
use crate::dropout::DropoutRng;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The largest difference between our logits and transformers' `logits_f32` for `model`,
/// every pair scored alone (no padding) and all together (padded to the longest).
fn largest_difference(model: &str) -> f64 {
    let parity: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("model_parity_families.json")).unwrap(),
    )
    .unwrap();
    let dir = fixtures().join("models").join(model);
    let config: ModernBertConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let device = Device::Cpu;
    // SAFETY: a test fixture nothing else writes while the test runs.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)
    }
    .unwrap();
    let rng = DropoutRng::default();
    let network = ModernBertForSequenceClassification::load(vb, &config, 1, &rng).unwrap();
    let mut largest = 0f64;
    for (_, settings) in parity["models"][model]["settings"].as_object().unwrap() {
        let tokens = settings["tokens"].as_array().unwrap();
        let expected: Vec<f64> = settings["logits_f32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[0].as_f64().unwrap())
            .collect();
        let rows: Vec<(Vec<u32>, Vec<u32>)> = tokens
            .iter()
            .map(|pair| {
                let ids = |key: &str| -> Vec<u32> {
                    pair[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                        .collect()
                };
                (ids("input_ids"), ids("attention_mask"))
            })
            .collect();
        // One pair at a time.
        for ((ids, mask), expected) in rows.iter().zip(&expected) {
            let input = Tensor::new(ids.as_slice(), &device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let mask = Tensor::new(mask.as_slice(), &device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logit = network
                .forward(&input, &mask)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()[0][0];
            largest = largest.max((f64::from(logit) - expected).abs());
        }
        // All pairs in one batch, padded.
        let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap();
        let pad = |values: &[u32]| {
            let mut padded = values.to_vec();
            padded.resize(longest, 0);
            padded
        };
        let ids: Vec<u32> = rows.iter().flat_map(|(ids, _)| pad(ids)).collect();
        let mask: Vec<u32> = rows.iter().flat_map(|(_, mask)| pad(mask)).collect();
        let ids = Tensor::from_vec(ids, (rows.len(), longest), &device).unwrap();
        let mask = Tensor::from_vec(mask, (rows.len(), longest), &device).unwrap();
        let logits = network
            .forward(&ids, &mask)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, expected) in logits.iter().zip(&expected) {
            largest = largest.max((f64::from(row[0]) - expected).abs());
        }
    }
    largest
}

#[test]
fn cls_pooled_modernbert_logits_equal_transformers() {
    let largest = largest_difference("tiny-modernbert-ce");
    assert!(largest <= 1e-5, "largest difference {largest}");
}

#[test]
fn mean_pooled_modernbert_logits_equal_transformers() {
    let largest = largest_difference("tiny-modernbert-mean-ce");
    assert!(largest <= 1e-5, "largest difference {largest}");
}

/// Training goes through every parameter: each gets a non-zero gradient (an op without a
/// backward pass would stop them silently), with dropout on.
#[test]
fn every_modernbert_parameter_gets_a_gradient() {
    let dir = fixtures().join("models/tiny-modernbert-ce");
    let mut config: ModernBertConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config.attention_dropout = 0.1;
    config.mlp_dropout = 0.1;
    let device = Device::Cpu;
    let mut varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let rng = DropoutRng::default();
    let network = ModernBertForSequenceClassification::load(vb, &config, 1, &rng).unwrap();
    varmap.load(dir.join("model.safetensors")).unwrap();
    rng.train(7);
    // Two pairs, one padded; 40 tokens, so the local layers' window (16) cuts in.
    let ids: Vec<u32> = (0..80).map(|i| 4 + (i * 37 % 1190) as u32).collect();
    // The first row all real, the second 25 real tokens and 15 of padding.
    let mask: Vec<u32> = (0..80).map(|i| u32::from(i < 65)).collect();
    let ids = Tensor::from_vec(ids, (2, 40), &device).unwrap();
    let mask = Tensor::from_vec(mask, (2, 40), &device).unwrap();
    let logits = network.forward(&ids, &mask).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    assert_eq!(vars.len(), 24);
    for (name, var) in vars.iter() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let size = grad
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(size > 0.0, "{name}'s gradient is zero");
    }
}
