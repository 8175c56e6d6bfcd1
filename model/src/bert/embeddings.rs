//! Word + position + token-type embeddings, LayerNorm, dropout.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::BertConfig;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;

/// `BertEmbeddings`.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl BertEmbeddings {
    /// Loads `embeddings.*`.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            word_embeddings: candle_nn::embedding(
                config.vocab_size,
                hidden,
                vb.pp("word_embeddings"),
            )?,
            position_embeddings: candle_nn::embedding(
                config.max_position_embeddings,
                hidden,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                config.type_vocab_size,
                hidden,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
            dropout: Dropout::new(config.hidden_dropout_prob, rng.clone()),
        })
    }

    /// `[batch, seq]` token ids and token types to `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("embeddings").entered();
        let seq_len = input_ids.dim(1)?;
        let positions = Tensor::arange(0u32, seq_len as u32, input_ids.device())?;
        let words = self.word_embeddings.forward(input_ids)?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let positions = self.position_embeddings.forward(&positions)?;
        let summed = (words + types)?.broadcast_add(&positions)?;
        self.dropout.forward(&self.layer_norm.forward(&summed)?)
    }
}
