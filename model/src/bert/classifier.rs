//! `BertForSequenceClassification`: encoder, pooler, dropout, classifier.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::BertConfig;
use super::encoder::BertEncoder;
use super::pooler::BertPooler;
use crate::dropout::{Dropout, DropoutRng};
use crate::lora::LoraLinear;
use crate::tokens::TokenTensors;

/// The cross-encoder network: pairs of token sequences to `[batch, num_labels]` logits.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    encoder: BertEncoder,
    pooler: BertPooler,
    dropout: Dropout,
    classifier: LoraLinear,
    num_labels: usize,
}

impl BertForSequenceClassification {
    /// Loads `bert.*` and `classifier.*` (the builder maps checkpoints without the `bert.`
    /// prefix).
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let bert = vb.pp("bert");
        Ok(Self {
            encoder: BertEncoder::load(bert.clone(), config, rng)?,
            pooler: BertPooler::load(bert.pp("pooler"), config, rng)?,
            dropout: Dropout::new(config.classifier_dropout(), rng.clone()),
            classifier: LoraLinear::load_stored(
                vb.pp("classifier"),
                config.hidden_size,
                num_labels,
                true,
                config.lora.as_ref(),
                rng,
            )?,
            num_labels,
        })
    }

    /// The encoder's layers, for keeping their parameters packed.
    pub(crate) fn packed_layers_mut(&mut self) -> Vec<&mut dyn crate::parameters::PackedLayer> {
        self.encoder.packed_layers_mut()
    }

    /// Number of outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// `[batch, num_labels]` logits.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        let _span = tracing::trace_span!("cross_encoder_forward").entered();
        let hidden = self.encoder.forward_first_token(tokens)?;
        let pooled = self.pooler.forward(&hidden)?;
        self.classifier.forward(&self.dropout.forward(&pooled)?)
    }
}
