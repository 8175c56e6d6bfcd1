//! Logits against transformers' (`tests/fixtures/model_parity_families.json`, made from the
//! reference's tiny DeBERTa-v2 model; `scripts/copy-reference-fixtures.sh`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::*;
use crate::dropout::DropoutRng;
use crate::tokens::TokenTensors;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("models/tiny-deberta-v2-ce")
}

fn config() -> DebertaV2Config {
    serde_json::from_str(&std::fs::read_to_string(model_dir().join("config.json")).unwrap())
        .unwrap()
}

fn tokens(rows: &[(Vec<u32>, Vec<u32>)], device: &Device) -> TokenTensors {
    let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap();
    let pad = |values: &[u32]| {
        let mut padded = values.to_vec();
        padded.resize(longest, 0);
        padded
    };
    let ids: Vec<u32> = rows.iter().flat_map(|(ids, _)| pad(ids)).collect();
    let mask: Vec<u32> = rows.iter().flat_map(|(_, mask)| pad(mask)).collect();
    let input_ids = Tensor::from_vec(ids, (rows.len(), longest), device).unwrap();
    TokenTensors {
        token_type_ids: input_ids.zeros_like().unwrap(),
        input_ids,
        attention_mask: Tensor::from_vec(mask, (rows.len(), longest), device).unwrap(),
    }
}

/// The largest difference between our logits and transformers' `logits_f32`, every pair
/// scored alone (no padding) and all together (padded to the longest), at both lengths.
#[test]
fn deberta_v2_logits_equal_transformers() {
    let parity: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("model_parity_families.json")).unwrap(),
    )
    .unwrap();
    let device = Device::Cpu;
    // SAFETY: a test fixture nothing else writes while the test runs.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[model_dir().join("model.safetensors")],
            DType::F32,
            &device,
        )
    }
    .unwrap();
    let network =
        DebertaV2ForSequenceClassification::load(vb, &config(), 1, &DropoutRng::default()).unwrap();
    let mut largest = 0f64;
    let mut longest = 0;
    for (_, settings) in parity["models"]["tiny-deberta-v2-ce"]["settings"]
        .as_object()
        .unwrap()
    {
        let expected: Vec<f64> = settings["logits_f32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row[0].as_f64().unwrap())
            .collect();
        let rows: Vec<(Vec<u32>, Vec<u32>)> = settings["tokens"]
            .as_array()
            .unwrap()
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
        for (row, expected) in rows.iter().zip(&expected) {
            let logit = network
                .forward(&tokens(std::slice::from_ref(row), &device))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()[0][0];
            largest = largest.max((f64::from(logit) - expected).abs());
            longest = longest.max(row.0.len());
        }
        let logits = network
            .forward(&tokens(&rows, &device))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, expected) in logits.iter().zip(&expected) {
            largest = largest.max((f64::from(row[0]) - expected).abs());
        }
    }
    // Past half the 32 buckets, so the log-bucketed distances are exercised.
    assert!(longest > 17, "longest pair {longest}");
    eprintln!("largest difference from transformers' f32 logits: {largest:.2e}");
    assert!(largest <= 1e-5, "largest difference {largest}");
}

/// The composite path (candle primitives, which CUDA runs: no fused CPU op takes f64) in
/// f64 against transformers' f64 logits, padded batches.
#[test]
fn deberta_v2_logits_in_f64_equal_transformers_f64() {
    let parity: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("model_parity_families.json")).unwrap(),
    )
    .unwrap();
    let device = Device::Cpu;
    // SAFETY: a test fixture nothing else writes while the test runs.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[model_dir().join("model.safetensors")],
            DType::F64,
            &device,
        )
    }
    .unwrap();
    let network =
        DebertaV2ForSequenceClassification::load(vb, &config(), 1, &DropoutRng::default()).unwrap();
    let settings = &parity["models"]["tiny-deberta-v2-ce"]["settings"]["128"];
    let rows: Vec<(Vec<u32>, Vec<u32>)> = settings["tokens"]
        .as_array()
        .unwrap()
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
    let logits = network
        .forward(&tokens(&rows, &device))
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    for (row, expected) in logits
        .iter()
        .zip(settings["logits_f64"].as_array().unwrap())
    {
        let difference = (row[0] - expected[0].as_f64().unwrap()).abs();
        assert!(difference <= 1e-12, "difference {difference}");
    }
}

/// Training goes through every parameter: each gets a non-zero gradient (an op without a
/// backward pass would stop them silently), with dropout on.
#[test]
fn every_deberta_v2_parameter_gets_a_gradient() {
    let device = Device::Cpu;
    let mut varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let rng = DropoutRng::default();
    let network = DebertaV2ForSequenceClassification::load(vb, &config(), 1, &rng).unwrap();
    varmap.load(model_dir().join("model.safetensors")).unwrap();
    rng.train(7);
    // Two pairs of 40 tokens, the second with 15 of padding.
    let ids: Vec<u32> = (0..80).map(|i| 4 + (i * 37 % 1190) as u32).collect();
    let mask: Vec<u32> = (0..80).map(|i| u32::from(i < 65)).collect();
    let rows = vec![
        (ids[..40].to_vec(), mask[..40].to_vec()),
        (ids[40..].to_vec(), mask[40..].to_vec()),
    ];
    let logits = network.forward(&tokens(&rows, &device)).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    assert_eq!(vars.len(), 42);
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
