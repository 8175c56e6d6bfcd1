//! The token tensors a model reads, built from tokenized pairs.

use candle_core::{Device, Result, Tensor};

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

    /// The tensors for a model that reads segment ids only if `takes_token_type_ids`:
    /// otherwise every token gets type 0, as transformers does when a model is called
    /// without `token_type_ids` (XLM-RoBERTa has one token type, whatever a tokenizer's
    /// post-processor writes).
    pub fn for_model(
        encoded: &EncodedPairs,
        device: &Device,
        takes_token_type_ids: bool,
    ) -> Result<Self> {
        let mut tensors = Self::new(encoded, device)?;
        if !takes_token_type_ids {
            tensors.token_type_ids = tensors.token_type_ids.zeros_like()?;
        }
        Ok(tensors)
    }
}
