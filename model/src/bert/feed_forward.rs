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
    pub(crate) intermediate: Linear,
    pub(crate) activation: HiddenAct,
    pub(crate) output: Linear,
    pub(crate) layer_norm: LayerNorm,
    pub(crate) dropout: Dropout,
}

impl BertFeedForward {
    /// Loads `intermediate.*` and `output.*` from the layer's builder.
    pub fn load(vb: VarBuilder, config: &BertConfig, rng: &DropoutRng) -> Result<Self> {
        Self::load_with(
            vb,
            FeedForwardShape {
                hidden: config.hidden_size,
                intermediate: config.intermediate_size,
                activation: config.hidden_act,
                layer_norm_eps: config.layer_norm_eps,
                dropout: config.hidden_dropout_prob,
            },
            rng,
        )
    }

    /// The same block for another family with BERT's (DeBERTa's), from its sizes.
    pub(crate) fn load_with(
        vb: VarBuilder,
        shape: FeedForwardShape,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let (hidden, inner) = (shape.hidden, shape.intermediate);
        Ok(Self {
            intermediate: candle_nn::linear(hidden, inner, vb.pp("intermediate").pp("dense"))?,
            activation: shape.activation,
            output: candle_nn::linear(inner, hidden, vb.pp("output").pp("dense"))?,
            layer_norm: LayerNorm::load(
                vb.pp("output").pp("LayerNorm"),
                hidden,
                shape.layer_norm_eps,
            )?,
            dropout: Dropout::new(shape.dropout, rng.clone()),
        })
    }
}

impl BertFeedForward {
    /// The parameters of the fused post-norm layer ([`crate::kernels::encoder_layer`])
    /// whose attention block has the projections `[query, key, value, output]` and the norm
    /// `attention_norm`, and whose feed-forward block is this one: BERT's and DeBERTa's.
    pub(crate) fn layer_parameters<'a>(
        &'a self,
        [query, key, value, output]: [&'a Linear; 4],
        attention_norm: &'a LayerNorm,
    ) -> Result<crate::kernels::encoder_layer::LayerParameters<'a>> {
        fn weight_and_bias(linear: &Linear) -> Result<(&Tensor, &Tensor)> {
            match linear.bias() {
                Some(bias) => Ok((linear.weight(), bias)),
                None => candle_core::bail!("encoder layer: a linear layer without bias"),
            }
        }
        Ok(crate::kernels::encoder_layer::LayerParameters {
            query: weight_and_bias(query)?,
            key: weight_and_bias(key)?,
            value: weight_and_bias(value)?,
            attention_output: weight_and_bias(output)?,
            attention_norm: (attention_norm.weight(), attention_norm.bias()),
            intermediate: weight_and_bias(&self.intermediate)?,
            output: weight_and_bias(&self.output)?,
            output_norm: (self.layer_norm.weight(), self.layer_norm.bias()),
        })
    }

    /// Those parameters packed into one vector (a copy, for a layer that does not keep them
    /// packed).
    pub(crate) fn pack_layer(
        &self,
        projections: [&Linear; 4],
        attention_norm: &LayerNorm,
    ) -> Result<Tensor> {
        crate::kernels::encoder_layer::pack_parameters(
            &self.layer_parameters(projections, attention_norm)?,
        )
    }
}

/// What the feed-forward block is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedForwardShape {
    pub(crate) hidden: usize,
    pub(crate) intermediate: usize,
    pub(crate) activation: HiddenAct,
    pub(crate) layer_norm_eps: f64,
    pub(crate) dropout: f64,
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
