//! `DebertaV2Model` (embeddings; layers sharing one relative table, layer-normed once per
//! forward pass) and `DebertaV2ForSequenceClassification` on it (`ContextPooler`: dropout,
//! dense, activation on the first token; dropout; classifier).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::AttentionInputs;
use super::config::DebertaV2Config;
use super::embeddings::DebertaV2Embeddings;
use super::layer::DebertaV2Layer;
use super::relative_position::RelativePositions;
use crate::bert::HiddenAct;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;
use crate::tokens::TokenTensors;

/// The encoder: one hidden state per token (sentence embeddings read it).
#[derive(Debug, Clone)]
pub struct DebertaV2Model {
    embeddings: DebertaV2Embeddings,
    layers: Vec<DebertaV2Layer>,
    /// `encoder.rel_embeddings.weight` `[2·span, hidden]`, when attention is relative.
    relative_table: Option<Tensor>,
    relative_norm: Option<LayerNorm>,
    positions: RelativePositions,
    num_heads: usize,
}

impl DebertaV2Model {
    /// Loads from `vb` at the encoder's root (`deberta.` of a classifier checkpoint).
    pub fn load(vb: VarBuilder, config: &DebertaV2Config, rng: &DropoutRng) -> Result<Self> {
        let encoder = vb.pp("encoder");
        let span = config.attention_span();
        let relative = config.relative_attention;
        Ok(Self {
            embeddings: DebertaV2Embeddings::load(vb.pp("embeddings"), config, rng)?,
            layers: (0..config.num_hidden_layers)
                .map(|layer| {
                    DebertaV2Layer::load(encoder.pp(format!("layer.{layer}")), config, rng)
                })
                .collect::<Result<Vec<_>>>()?,
            relative_table: if relative {
                Some(
                    encoder
                        .pp("rel_embeddings")
                        .get((2 * span, config.hidden_size), "weight")?,
                )
            } else {
                None
            },
            relative_norm: if relative && config.normalises_relative_embeddings() {
                Some(LayerNorm::load(
                    encoder.pp("LayerNorm"),
                    config.hidden_size,
                    config.layer_norm_eps,
                )?)
            } else {
                None
            },
            positions: RelativePositions {
                span,
                buckets: (config.position_buckets > 0).then_some(config.position_buckets as usize),
                max_position: config.max_relative_positions(),
            },
            num_heads: config.num_attention_heads,
        })
    }

    /// `[b, s, hidden]` hidden states of the last layer.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        self.forward_layers(tokens, false)
    }

    /// The same where only each sequence's first token will be read (the classifier's
    /// pooler): the last layer may compute only that row (the fused CPU layer does).
    fn forward_layers(&self, tokens: &TokenTensors, first_token_only: bool) -> Result<Tensor> {
        let mut hidden = self.embeddings.forward(
            &tokens.input_ids,
            &tokens.token_type_ids,
            &tokens.attention_mask,
        )?;
        let (batch, seq_len) = tokens.attention_mask.dims2()?;
        let dtype = hidden.dtype();
        let lowest = match dtype {
            DType::F64 => f64::MIN,
            _ => f64::from(f32::MIN),
        };
        let padding = ((tokens.attention_mask.to_dtype(dtype)? - 1.0)? * (-lowest))?
            .reshape((batch, 1, 1, seq_len))?;
        let table = match (&self.relative_table, &self.relative_norm) {
            (Some(table), Some(norm)) => Some(norm.forward(table)?),
            (table, None) => table.clone(),
            (None, Some(_)) => None,
        };
        let inputs = AttentionInputs::new(
            padding,
            self.num_heads,
            table,
            self.positions.rows(seq_len).into(),
        );
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(&hidden, &inputs, first_token_only && index == last)?;
        }
        Ok(hidden)
    }
}

/// The whole classifier.
#[derive(Debug, Clone)]
pub struct DebertaV2ForSequenceClassification {
    model: DebertaV2Model,
    pooler_dropout: Dropout,
    pooler: LoraLinear,
    pooler_activation: HiddenAct,
    classifier_dropout: Dropout,
    classifier: LoraLinear,
    num_labels: usize,
}

impl DebertaV2ForSequenceClassification {
    /// Loads from `vb` (the checkpoint's root: `deberta.*`, `pooler.*`, `classifier.*`).
    pub fn load(
        vb: VarBuilder,
        config: &DebertaV2Config,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let width = config.hidden_size;
        let linear = |name: &str, outputs| {
            LoraLinear::load_stored(vb.pp(name), width, outputs, true, config.lora.as_ref(), rng)
        };
        Ok(Self {
            model: DebertaV2Model::load(vb.pp("deberta"), config, rng)?,
            pooler_dropout: Dropout::new(config.pooler_dropout, rng.clone()),
            pooler: linear("pooler.dense", width)?,
            pooler_activation: config.pooler_hidden_act,
            classifier_dropout: Dropout::new(config.classifier_dropout(), rng.clone()),
            classifier: linear("classifier", num_labels)?,
            num_labels,
        })
    }

    /// Outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Logits `[b, num_labels]`.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        let hidden = self.model.forward_layers(tokens, true)?;
        let first = self
            .pooler_dropout
            .forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?;
        let pooled = self.pooler.forward(&first)?;
        let pooled = match self.pooler_activation {
            HiddenAct::Gelu => crate::kernels::ops::gelu_erf(&pooled)?,
            HiddenAct::GeluNew => pooled.gelu()?,
            HiddenAct::Relu => pooled.relu()?,
        };
        self.classifier
            .forward(&self.classifier_dropout.forward(&pooled)?)
    }
}
