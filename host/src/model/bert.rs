//! `BertForSequenceClassification`: encoder, pooler, dropout, classifier.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::BertConfig;
use super::dropout::{Dropout, DropoutRng};
use super::embeddings::BertEmbeddings;
use super::encoder_layer::BertLayer;
use super::pooler::BertPooler;

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

/// The cross-encoder network: pairs of token sequences to `[batch, num_labels]` logits.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
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
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(bert.pp("encoder").pp("layer").pp(i), config, rng))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: BertEmbeddings::load(bert.pp("embeddings"), config, rng)?,
            layers,
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
        let mut hidden = self
            .embeddings
            .forward(&tokens.input_ids, &tokens.token_type_ids)?;
        let (batch, seq_len) = tokens.attention_mask.dims2()?;
        // 0 where attended, the dtype's lowest value where padded (transformers' convention;
        // any large negative gives the same zero probability).
        let dtype = hidden.dtype();
        let lowest = match dtype {
            DType::F64 => f64::MIN,
            _ => f64::from(f32::MIN),
        };
        let mask_bias = ((tokens.attention_mask.to_dtype(dtype)? - 1.0)? * (-lowest))?
            .reshape((batch, 1, 1, seq_len))?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask_bias)?;
        }
        let pooled = self.pooler.forward(&hidden)?;
        self.classifier.forward(&self.dropout.forward(&pooled)?)
    }
}
