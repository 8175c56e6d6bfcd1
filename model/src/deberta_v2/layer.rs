//! A DeBERTa-v2 layer: disentangled attention with its post-norm output, then BERT's
//! feed-forward block (`intermediate` and `output` have BERT's shape and names).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{AttentionInputs, DisentangledAttention};
use super::config::DebertaV2Config;
use crate::bert::feed_forward::{BertFeedForward, FeedForwardShape};
use crate::dropout::DropoutRng;

/// `DebertaV2Layer`.
#[derive(Debug, Clone)]
pub struct DebertaV2Layer {
    attention: DisentangledAttention,
    feed_forward: BertFeedForward,
}

impl DebertaV2Layer {
    /// Loads `encoder.layer.N`.
    pub fn load(vb: VarBuilder, config: &DebertaV2Config, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            attention: DisentangledAttention::load(vb.pp("attention"), config, rng)?,
            feed_forward: BertFeedForward::load_with(
                vb,
                FeedForwardShape {
                    hidden: config.hidden_size,
                    intermediate: config.intermediate_size,
                    activation: config.hidden_act,
                    layer_norm_eps: config.layer_norm_eps,
                    dropout: config.hidden_dropout_prob,
                },
                rng,
            )?,
        })
    }

    /// `hidden` `[b, s, h]` with the batch's attention inputs.
    pub fn forward(&self, hidden: &Tensor, inputs: &AttentionInputs) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, inputs)?;
        self.feed_forward.forward(&attended)
    }
}
