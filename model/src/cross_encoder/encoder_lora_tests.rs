//! LoRA dropout on the encoder families: the adapters attached to every adapted layer
//! (the path a training pass with LoRA dropout takes) against the folded weights, and the
//! gradients that reach each adapter through dropout.

use std::path::PathBuf;

use super::{CrossEncoder, LoadOptions};
use crate::lora::{LoraConfig, TargetModules};
use crate::test_support::{max_abs, max_diff};

fn tiny_model(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Every linear layer adapted, B drawn like A (so the update is not zero), with dropout.
fn every_linear_layer() -> LoraConfig {
    LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        lora_dropout: 0.5,
        init_lora_weights: false,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::default()
    }
}

const PAIRS: [(&str, &str); 3] = [
    (
        "how do plants make energy",
        "photosynthesis turns light into sugar",
    ),
    (
        "capital of france",
        "paris is the capital and largest city of france",
    ),
    ("a", "b"),
];

#[test]
fn attached_adapters_give_the_folded_weights_logits_on_every_encoder_family() {
    for name in [
        "tiny-bert-ce",
        "tiny-xlmr-ce",
        "tiny-electra-ce",
        "tiny-modernbert-ce",
        "tiny-deberta-v2-ce",
    ] {
        let lora = every_linear_layer();
        let options = LoadOptions {
            adapter: Some(lora.clone()),
            ..LoadOptions::default()
        };
        let model = CrossEncoder::load(&tiny_model(name), &options).unwrap();
        let base = CrossEncoder::load(&tiny_model(name), &LoadOptions::default()).unwrap();
        let tokens = model.token_tensors(&model.encode(&PAIRS).unwrap()).unwrap();
        model.dropout().eval();
        let folded = model.forward(&tokens).unwrap();
        let attached = model
            .encoder_network_with_adapters(&lora, true)
            .unwrap()
            .forward(&tokens)
            .unwrap();
        let without = base.forward(&tokens).unwrap();
        // The adapters change the logits, and the attached ones change them exactly as the
        // folded weights do: a layer left without its adapter, or a wrong scaling, would not.
        assert!(
            max_diff(&folded, &without) > 1e-3,
            "{name}: adapters had no effect"
        );
        assert!(
            max_diff(&attached, &folded) < 1e-5,
            "{name}: attached {attached} vs folded {folded}"
        );
    }
}

#[test]
fn lora_dropout_trains_every_encoder_adapter_reproducibly() {
    for name in ["tiny-bert-ce", "tiny-modernbert-ce", "tiny-deberta-v2-ce"] {
        let lora = every_linear_layer();
        let options = LoadOptions {
            adapter: Some(lora),
            ..LoadOptions::default()
        };
        let model = CrossEncoder::load(&tiny_model(name), &options).unwrap();
        let tokens = model.token_tensors(&model.encode(&PAIRS).unwrap()).unwrap();
        let logits_with_seed = |seed: u64| {
            model.dropout().train(seed);
            model.forward(&tokens).unwrap()
        };
        let first = logits_with_seed(7);
        assert!(max_diff(&first, &logits_with_seed(7)) == 0.0, "{name}");
        assert!(max_diff(&first, &logits_with_seed(8)) > 1e-4, "{name}");
        let gradients = first.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let adapters: Vec<_> = model
            .trainable_parameters()
            .iter()
            .filter(|trainable| trainable.parts[0].name.contains("lora_"))
            .collect();
        assert!(
            adapters.len() >= 8,
            "{name}: {} adapter matrices",
            adapters.len()
        );
        for trainable in adapters {
            let gradient = gradients
                .get(trainable.var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {}", trainable.parts[0].name));
            assert!(
                max_abs(gradient) > 0.0,
                "{name}: zero gradient for {}",
                trainable.parts[0].name
            );
        }
    }
}
