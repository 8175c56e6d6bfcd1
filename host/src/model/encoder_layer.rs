//! One transformer encoder layer: attention block, then feed-forward block.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::BertAttention;
use super::config::BertConfig;
use super::dropout::DropoutRng;
use super::feed_forward::BertFeedForward;

/// `BertLayer`.
#[derive(Debug, Clone)]
pub struct BertLayer {
    attention: BertAttention,
    feed_forward: BertFeedForward,
}

impl BertLayer {
    /// Loads `encoder.layer.{i}.*`.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            attention: BertAttention::load(vb.pp("attention"), config, rng)?,
            feed_forward: BertFeedForward::load(vb, config, rng)?,
        })
    }

    /// One layer.
    pub fn forward(&self, hidden: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("encoder_layer").entered();
        let attended = self.attention.forward(hidden, mask_bias)?;
        self.feed_forward.forward(&attended)
    }
}
