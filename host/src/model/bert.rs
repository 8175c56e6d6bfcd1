//! `BertForSequenceClassification`: encoder, pooler, dropout, classifier.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::BertConfig;
use super::dropout::{Dropout, DropoutRng};
use super::encoder::BertEncoder;
use super::pooler::BertPooler;
use crate::tokenize::EncodedPairs;

/// The token tensors of a batch of pairs, all `[batch, seq]` u32.
#[derive(Debug, Clone)]
pub struct TokenTensors {
    /// Token ids.
    pub input_ids: Tensor,
    /// Segment ids (0 for the query, 1 for the document).
    pub token_type_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

impl TokenTensors {
    /// The tensors of tokenized pairs (or single texts) on `device`.
    pub fn new(encoded: &EncodedPairs, device: &Device) -> Result<Self> {
        let shape = (encoded.batch, encoded.seq_len);
        let tensor = |values: &[u32]| Tensor::from_slice(values, shape, device);
        Ok(Self {
            input_ids: tensor(&encoded.input_ids)?,
            token_type_ids: tensor(&encoded.token_type_ids)?,
            attention_mask: tensor(&encoded.attention_mask)?,
        })
    }
}

/// The cross-encoder network: pairs of token sequences to `[batch, num_labels]` logits.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    encoder: BertEncoder,
    pooler: BertPooler,
    dropout: Dropout,
    classifier: Linear,
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
            pooler: BertPooler::load(bert.pp("pooler"), config)?,
            dropout: Dropout::new(config.classifier_dropout(), rng.clone()),
            classifier: candle_nn::linear(config.hidden_size, num_labels, vb.pp("classifier"))?,
            num_labels,
        })
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
