//! Word + position + token-type embeddings, LayerNorm, dropout. BERT and ELECTRA number
//! positions from 0; XLM-RoBERTa numbers real tokens from `padding_idx + 1`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::BertConfig;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;

/// How position ids are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionIds {
    /// `0, 1, 2, ...` for every sequence (BERT, ELECTRA).
    FromZero,
    /// RoBERTa's: the running count of non-padding tokens times the non-padding mask, plus
    /// `padding_idx` (transformers' `create_position_ids_from_input_ids`), so real tokens
    /// start at `padding_idx + 1` and padding sits at `padding_idx`.
    AfterPadding {
        /// The padding token's id, which is also the padding position.
        padding_idx: u32,
    },
}

/// `BertEmbeddings` (also `RobertaEmbeddings` and `ElectraEmbeddings`, which differ only in
/// position ids and width).
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
    positions: PositionIds,
}

impl BertEmbeddings {
    /// Loads `embeddings.*`, `config.embedding_width()` wide.
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        positions: PositionIds,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let hidden = config.embedding_width();
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
            positions,
        })
    }

    /// `[batch, seq]` position ids (`[seq]` when every sequence counts from 0).
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        match self.positions {
            PositionIds::FromZero => {
                Tensor::arange(0u32, input_ids.dim(1)? as u32, input_ids.device())
            }
            PositionIds::AfterPadding { padding_idx } => {
                // In f32 (exact below 2^24) so that the running sum runs on every device.
                let real = input_ids.ne(padding_idx)?.to_dtype(DType::F32)?;
                let counted = (real.cumsum(1)? * &real)?;
                (counted + f64::from(padding_idx))?.to_dtype(DType::U32)
            }
        }
    }

    /// `[batch, seq]` token ids and token types to `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("embeddings").entered();
        let positions = self.position_ids(input_ids)?;
        let words = self.word_embeddings.forward(input_ids)?;
        let types = self.token_type_embeddings.forward(token_type_ids)?;
        let positions = self.position_embeddings.forward(&positions)?;
        let summed = (words + types)?.broadcast_add(&positions)?;
        self.dropout.forward(&self.layer_norm.forward(&summed)?)
    }
}
