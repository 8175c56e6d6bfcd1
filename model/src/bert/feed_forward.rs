//! The position-wise feed-forward block: dense + activation, dense + dropout + residual +
//! LayerNorm (`intermediate` and `output` in transformers' names).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BertConfig, HiddenAct};
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;
use crate::lora::{LoraConfig, LoraLinear};

/// `BertIntermediate` + `BertOutput`.
#[derive(Debug, Clone)]
pub struct BertFeedForward {
    pub(crate) intermediate: LoraLinear,
    pub(crate) activation: HiddenAct,
    pub(crate) output: LoraLinear,
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
            config.lora.as_ref(),
            rng,
        )
    }

    /// The same block for another family with BERT's (DeBERTa's), from its sizes (and
    /// the adapters stored beside its weights, see [`LoraLinear::load_stored`]).
    pub(crate) fn load_with(
        vb: VarBuilder,
        shape: FeedForwardShape,
        lora: Option<&LoraConfig>,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let (hidden, inner) = (shape.hidden, shape.intermediate);
        let linear = |vb: VarBuilder, inputs, outputs| {
            LoraLinear::load_stored(vb, inputs, outputs, true, lora, rng)
        };
        Ok(Self {
            intermediate: linear(vb.pp("intermediate").pp("dense"), hidden, inner)?,
            activation: shape.activation,
            output: linear(vb.pp("output").pp("dense"), inner, hidden)?,
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
    /// Whether a LoRA adapter is attached to either projection (the layer then runs on
    /// candle's ops, see [`LoraLinear::load_stored`]).
    pub(crate) fn is_adapted(&self) -> bool {
        self.intermediate.is_adapted() || self.output.is_adapted()
    }

    /// The parameters of the fused post-norm layer ([`crate::kernels::encoder_layer`])
    /// whose attention block has the projections `[query, key, value, output]` and the norm
    /// `attention_norm`, and whose feed-forward block is this one: BERT's and DeBERTa's.
    pub(crate) fn layer_parameters<'a>(
        &'a self,
        [query, key, value, output]: [&'a LoraLinear; 4],
        attention_norm: &'a LayerNorm,
    ) -> Result<crate::kernels::encoder_layer::LayerParameters<'a>> {
        fn weight_and_bias(linear: &LoraLinear) -> Result<(&Tensor, &Tensor)> {
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
        projections: [&LoraLinear; 4],
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
