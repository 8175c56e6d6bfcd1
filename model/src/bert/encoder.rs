//! `BertModel` without its pooler: embeddings and the stack of encoder layers, giving one
//! hidden state per token. The cross-encoder puts a pooler and classifier on top; the
//! sentence embedder used for hard-negative mining mean-pools it.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::BertConfig;
use super::embeddings::{BertEmbeddings, PositionIds};
use super::layer::BertLayer;
use crate::dropout::DropoutRng;
use crate::lora::LoraLinear;
use crate::tokens::TokenTensors;

/// Embeddings plus encoder layers (transformers' `bert.embeddings` and `bert.encoder`; the
/// same modules under `roberta.` and `electra.`).
#[derive(Debug, Clone)]
pub struct BertEncoder {
    embeddings: BertEmbeddings,
    /// ELECTRA's `embeddings_project`, when its embeddings are narrower than the layers.
    embeddings_project: Option<LoraLinear>,
    layers: Vec<BertLayer>,
}

impl BertEncoder {
    /// Loads `embeddings.*` and `encoder.layer.N.*` under `vb` (the caller passes `bert`),
    /// with positions from 0.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        Self::load_with_positions(vb, config, PositionIds::FromZero, rng)
    }

    /// The same with the family's position ids; `embeddings_project.*` too when
    /// `embedding_size` differs from `hidden_size`.
    pub fn load_with_positions(
        vb: VarBuilder,
        config: &BertConfig,
        positions: PositionIds,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp("encoder").pp("layer").pp(i), config, rng))
            .collect::<Result<_>>()?;
        let embeddings = BertEmbeddings::load(vb.pp("embeddings"), config, positions, rng)?;
        let embeddings_project = match config.embedding_width() {
            width if width != config.hidden_size => Some(LoraLinear::load_stored(
                vb.pp("embeddings_project"),
                width,
                config.hidden_size,
                true,
                config.lora.as_ref(),
                rng,
            )?),
            _ => None,
        };
        Ok(Self {
            embeddings,
            embeddings_project,
            layers,
        })
    }

    /// The layers, for keeping their parameters packed.
    pub(crate) fn packed_layers_mut(&mut self) -> Vec<&mut dyn crate::parameters::PackedLayer> {
        self.layers
            .iter_mut()
            .map(|layer| layer as &mut dyn crate::parameters::PackedLayer)
            .collect()
    }

    /// `[batch, seq, hidden]` hidden states of the last layer.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        self.forward_layers(tokens, false)
    }

    /// The same where only each sequence's first token (`[CLS]`, position 0: the tokenizer
    /// pads on the right) will be read, as the cross-encoder's pooler does: the last layer
    /// may compute only that row (the fused CPU layer does; other rows are then zeros), a
    /// sixth of its cost.
    pub fn forward_first_token(&self, tokens: &TokenTensors) -> Result<Tensor> {
        self.forward_layers(tokens, true)
    }

    fn forward_layers(&self, tokens: &TokenTensors, first_token_only: bool) -> Result<Tensor> {
        let mut hidden = self
            .embeddings
            .forward(&tokens.input_ids, &tokens.token_type_ids)?;
        if let Some(project) = &self.embeddings_project {
            hidden = project.forward(&hidden)?;
        }
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
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = if first_token_only && index == last {
                layer.forward_first_token(&hidden, &mask_bias)?
            } else {
                layer.forward(&hidden, &mask_bias)?
            };
        }
        Ok(hidden)
    }
}

impl Module for BertEncoder {
    /// Runs on token ids alone (one segment, nothing padded).
    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let tokens = TokenTensors {
            input_ids: input_ids.clone(),
            token_type_ids: input_ids.zeros_like()?,
            attention_mask: input_ids.ones_like()?,
        };
        BertEncoder::forward(self, &tokens)
    }
}
