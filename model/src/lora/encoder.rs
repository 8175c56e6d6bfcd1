//! LoRA on the encoder families. Their modules do not create adapters: the adapter
//! matrices are added as trainable `Var`s after the network loads
//! ([`add_encoder_adapters`]), and the network is rebuilt every forward pass from the
//! current `Var`s. Its layers run on weights with the adapter folded in
//! ([`fold_adapters`]), so the fused encoder kernels run unchanged; in training with LoRA
//! dropout, which has no folded form, each adapted linear layer finds its adapter beside
//! its weight instead ([`super::LoraLinear::load_stored`]) and applies it as PEFT does.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::{with_adapters, LoraConfig, TargetModules};
use crate::family::{FamilyConfig, ModelFamily};

impl LoraConfig {
    /// Whether an encoder's linear layer at `path` (`bert.encoder.layer.0.attention.self.query`)
    /// gets an adapter, as PEFT decides on a sentence-transformers `CrossEncoder`: the named
    /// modules (by default the family's, `default_targets`), or every linear layer for
    /// `"all-linear"` (the classifier included: a `CrossEncoder`'s model reports no output
    /// embeddings for PEFT to leave out), or a regex over the full path.
    pub fn targets_encoder_layer(&self, path: &str, default_targets: &[&str]) -> bool {
        let named = |name: &str| path == name || path.ends_with(&format!(".{name}"));
        match &self.target_modules {
            None => default_targets.iter().any(|name| named(name)),
            Some(TargetModules::Names(names)) => names.iter().any(|name| named(name)),
            Some(TargetModules::Pattern(pattern)) if pattern == "all-linear" => true,
            Some(TargetModules::Pattern(pattern)) => regex::Regex::new(&format!("^(?:{pattern})$"))
                .map(|re| re.is_match(path))
                .unwrap_or(false),
        }
    }
}

impl FamilyConfig {
    /// This config with an encoder's adapters attached to its layers: the modules then find
    /// the adapters stored beside their weights ([`super::LoraLinear::load_stored`]).
    /// A decoder's config carries its adapter already; it is returned as it is.
    pub(crate) fn with_encoder_adapters(&self, lora: &LoraConfig) -> Self {
        let mut config = self.clone();
        match &mut config {
            FamilyConfig::Bert(encoder)
            | FamilyConfig::XlmRoberta(encoder)
            | FamilyConfig::Electra(encoder) => encoder.lora = Some(lora.clone()),
            FamilyConfig::ModernBert(encoder) => encoder.lora = Some(lora.clone()),
            FamilyConfig::DebertaV2(encoder) => encoder.lora = Some(lora.clone()),
            FamilyConfig::Decoder(_) => {}
        }
        config
    }
}

/// Every parameter with each adapter folded into its layer's weight (`W + scaling · B A`), in
/// f32 and still on the graph: the encoder families train an adapter through these merged
/// weights, rebuilt on every forward pass, so the fused layers run unchanged and the
/// gradient of each merged weight flows on to A and B (`dA = s·Bᵀ·dW`, `dB = s·dW·Aᵀ`). The
/// adapter matrices themselves are left out; everything else passes as it is (a saved
/// module's `Var` keeps its gradient).
pub fn fold_adapters(
    parameters: &[(String, Tensor)],
    scaling: f64,
) -> Result<Vec<(String, Tensor)>> {
    with_adapters(parameters)
        .map(|(name, tensor, pair)| {
            let value = match pair {
                Some((a, b)) => {
                    (tensor.to_dtype(DType::F32)?
                        + (b.matmul(a)? * scaling)?.to_dtype(DType::F32)?)?
                }
                None => tensor.to_dtype(DType::F32)?,
            };
            Ok((name.to_string(), value))
        })
        .collect()
}

/// Adds the LoRA matrices of an encoder's targeted linear layers (the frozen 2-D weights
/// the network loaded, embeddings aside) through `vb`, so they become trainable `Var`s:
/// read from the adapter's file, or drawn as PEFT draws them. An encoder's modules do not
/// ask for them themselves: its layers run on weights with the adapter folded in
/// ([`crate::lora::fold_adapters`]).
pub(crate) fn add_encoder_adapters(
    vb: &VarBuilder,
    lora: &LoraConfig,
    family: ModelFamily,
    frozen: &Arc<Mutex<Vec<(String, Tensor)>>>,
) -> candle_core::Result<()> {
    let layers: Vec<(String, (usize, usize))> = frozen
        .lock()
        .map_err(|_| candle_core::Error::Msg("frozen list lock poisoned".into()))?
        .iter()
        .filter_map(|(name, tensor)| {
            let path = name.strip_suffix(".weight")?;
            let leaf = path.rsplit('.').next().unwrap_or(path);
            let linear = tensor.rank() == 2 && !leaf.ends_with("embeddings");
            let defaults = family.peft_default_targets().unwrap_or(&[]);
            (linear && lora.targets_encoder_layer(path, defaults))
                .then(|| Some((path.to_string(), tensor.dims2().ok()?)))
                .flatten()
        })
        .collect();
    if layers.is_empty() {
        candle_core::bail!(
            "target_modules {} matches no linear layer of this {} model",
            serde_json::to_string(&lora.target_modules).unwrap_or_default(),
            family.display_name()
        );
    }
    for (path, (outputs, inputs)) in layers {
        lora.adapter_matrices(&vb.pp(path), inputs, outputs)?;
    }
    Ok(())
}
