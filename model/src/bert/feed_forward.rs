//! The position-wise feed-forward block: dense + activation, dense + dropout + residual +
//! LayerNorm (`intermediate` and `output` in transformers' names).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::{BertConfig, HiddenAct};
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;

/// `BertIntermediate` + `BertOutput`.
#[derive(Debug, Clone)]
pub struct BertFeedForward {
    pub(super) intermediate: Linear,
    pub(super) activation: HiddenAct,
    pub(super) output: Linear,
    pub(super) layer_norm: LayerNorm,
    pub(super) dropout: Dropout,
}

impl BertFeedForward {
    /// Loads `intermediate.*` and `output.*` from the layer's builder.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        Ok(Self {
            intermediate: candle_nn::linear(hidden, inner, vb.pp("intermediate").pp("dense"))?,
            activation: config.hidden_act,
            output: candle_nn::linear(inner, hidden, vb.pp("output").pp("dense"))?,
            layer_norm: LayerNorm::load(
                vb.pp("output").pp("LayerNorm"),
                hidden,
                config.layer_norm_eps,
            )?,
            dropout: Dropout::new(config.hidden_dropout_prob, rng.clone()),
        })
    }
}

impl Module for BertFeedForward {
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("feed_forward").entered();
        let inner = self.intermediate.forward(hidden)?;
        let activated = match self.activation {
            HiddenAct::Gelu => crate::kernels::ops::gelu_erf(&inner)?,
            HiddenAct::GeluNew => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        let projected = self.dropout.forward(&self.output.forward(&activated)?)?;
        self.layer_norm.forward(&(projected + hidden)?)
    }
}
