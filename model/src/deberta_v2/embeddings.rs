//! `DebertaV2Embeddings`: word embeddings, plus absolute positions only when
//! `position_biased_input` (v3 checkpoints: no) and token types only when `type_vocab_size`
//! is positive (v2/v3: 0), projected to the hidden width when `embedding_size` differs,
//! layer-normed, zeroed on padding, dropout.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::DebertaV2Config;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;

/// The embedding block.
#[derive(Debug, Clone)]
pub struct DebertaV2Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Option<Embedding>,
    token_type_embeddings: Option<Embedding>,
    project: Option<LoraLinear>,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl DebertaV2Embeddings {
    /// Loads `embeddings.*`.
    pub fn load(vb: VarBuilder, config: &DebertaV2Config, rng: &DropoutRng) -> Result<Self> {
        let width = config.embedding_width();
        Ok(Self {
            word_embeddings: candle_nn::embedding(
                config.vocab_size,
                width,
                vb.pp("word_embeddings"),
            )?,
            position_embeddings: if config.position_biased_input {
                Some(candle_nn::embedding(
                    config.max_position_embeddings,
                    width,
                    vb.pp("position_embeddings"),
                )?)
            } else {
                None
            },
            token_type_embeddings: if config.type_vocab_size > 0 {
                Some(candle_nn::embedding(
                    config.type_vocab_size,
                    width,
                    vb.pp("token_type_embeddings"),
                )?)
            } else {
                None
            },
            project: if width != config.hidden_size {
                Some(LoraLinear::load_stored(
                    vb.pp("embed_proj"),
                    width,
                    config.hidden_size,
                    false,
                    config.lora.as_ref(),
                    rng,
                )?)
            } else {
                None
            },
            layer_norm: LayerNorm::load(
                vb.pp("LayerNorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
            dropout: Dropout::new(config.hidden_dropout_prob, rng.clone()),
        })
    }

    /// `[b, s]` token ids, token types and attention mask to `[b, s, hidden]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("embeddings").entered();
        let mut embedded = self.word_embeddings.forward(input_ids)?;
        if let Some(positions) = &self.position_embeddings {
            let ids = Tensor::arange(0u32, input_ids.dim(1)? as u32, input_ids.device())?;
            embedded = embedded.broadcast_add(&positions.forward(&ids)?)?;
        }
        if let Some(types) = &self.token_type_embeddings {
            embedded = (embedded + types.forward(token_type_ids)?)?;
        }
        if let Some(project) = &self.project {
            embedded = project.forward(&embedded)?;
        }
        let normed = self.layer_norm.forward(&embedded)?;
        let mask = attention_mask.to_dtype(normed.dtype())?.unsqueeze(2)?;
        self.dropout.forward(&normed.broadcast_mul(&mask)?)
    }
}
