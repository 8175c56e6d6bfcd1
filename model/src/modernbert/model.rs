//! `ModernBertModel` (embeddings: token embedding and norm; the layers; the final norm) and
//! `ModernBertForSequenceClassification` on it (pooling, the head dense → activation → norm,
//! the classifier).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::attention::MASKED;
use super::config::{ClassifierPooling, ModernBertConfig};
use super::layer::ModernBertLayer;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;

/// The encoder: one hidden state per token (sentence embeddings read it).
#[derive(Debug, Clone)]
pub struct ModernBertModel {
    token_embeddings: Embedding,
    embedding_norm: LayerNorm,
    embedding_dropout: Dropout,
    layers: Vec<ModernBertLayer>,
    final_norm: LayerNorm,
}

impl ModernBertModel {
    /// Loads from `vb` at the encoder's root (`model.` of a classifier checkpoint).
    pub fn load(vb: VarBuilder, config: &ModernBertConfig, rng: &DropoutRng) -> Result<Self> {
        let (width, eps) = (config.hidden_size, config.norm_eps);
        let embeddings = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                ModernBertLayer::load(vb.pp(format!("layers.{layer}")), config, layer, rng)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embeddings: candle_nn::embedding(
                config.vocab_size,
                width,
                embeddings.pp("tok_embeddings"),
            )?,
            embedding_norm: LayerNorm::load_without_bias(embeddings.pp("norm"), width, eps)?,
            embedding_dropout: Dropout::new(config.embedding_dropout, rng.clone()),
            layers,
            final_norm: LayerNorm::load_without_bias(vb.pp("final_norm"), width, eps)?,
        })
    }

    /// `[b, s, hidden]` hidden states, after the final norm, of `input_ids` and
    /// `attention_mask` (`[b, s]`; 1 for a real token).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (batch, seq_len) = input_ids.dims2()?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        let padding_bias =
            ((mask.ones_like()? - &mask)? * f64::from(MASKED))?.reshape((batch, 1, 1, seq_len))?;
        let embedded = self.token_embeddings.forward(input_ids)?;
        let mut hidden = self
            .embedding_dropout
            .forward(&self.embedding_norm.forward(&embedded)?)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &padding_bias)?;
        }
        self.final_norm.forward(&hidden)
    }
}

/// The whole classifier.
#[derive(Debug, Clone)]
pub struct ModernBertForSequenceClassification {
    model: ModernBertModel,
    head_dense: Linear,
    head_norm: LayerNorm,
    classifier_dropout: Dropout,
    classifier: Linear,
    pooling: ClassifierPooling,
    num_labels: usize,
}

impl ModernBertForSequenceClassification {
    /// Loads from `vb` (the checkpoint's root: `model.*`, `head.*`, `classifier.*`).
    pub fn load(
        vb: VarBuilder,
        config: &ModernBertConfig,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let (width, eps) = (config.hidden_size, config.norm_eps);
        Ok(Self {
            model: ModernBertModel::load(vb.pp("model"), config, rng)?,
            head_dense: candle_nn::linear_no_bias(width, width, vb.pp("head.dense"))?,
            head_norm: LayerNorm::load_without_bias(vb.pp("head.norm"), width, eps)?,
            classifier_dropout: Dropout::new(config.classifier_dropout, rng.clone()),
            classifier: candle_nn::linear(width, num_labels, vb.pp("classifier"))?,
            pooling: config.classifier_pooling,
            num_labels,
        })
    }

    /// Outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Logits `[b, num_labels]` of `input_ids` and `attention_mask` (`[b, s]`, u32; 1 for a
    /// real token).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.model.forward(input_ids, attention_mask)?;
        let pooled = match self.pooling {
            ClassifierPooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            ClassifierPooling::Mean => {
                let weights = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                hidden
                    .broadcast_mul(&weights)?
                    .sum(1)?
                    .broadcast_div(&weights.sum(1)?)?
            }
        };
        let head = self.head_norm.forward(&crate::kernels::ops::gelu_erf(
            &self.head_dense.forward(&pooled)?,
        )?)?;
        self.classifier
            .forward(&self.classifier_dropout.forward(&head)?)
    }
}
