//! `ModernBertModel` (embeddings: token embedding and norm; the layers; the final norm) and
//! `ModernBertForSequenceClassification` on it (pooling, the head dense → activation → norm,
//! the classifier).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::attention::{AttentionInputs, MASKED};
use super::config::{ClassifierPooling, ModernBertConfig};
use super::layer::ModernBertLayer;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;

/// The encoder: one hidden state per token (sentence embeddings read it).
#[derive(Debug, Clone)]
pub struct ModernBertModel {
    token_embeddings: Embedding,
    embedding_norm: LayerNorm,
    embedding_dropout: Dropout,
    layers: Vec<ModernBertLayer>,
    /// Whether each layer attends globally (else in its window).
    global: Vec<bool>,
    head_size: usize,
    global_theta: f64,
    local_theta: f64,
    half_window: usize,
    final_norm: LayerNorm,
}

impl ModernBertModel {
    /// Loads from `vb` at the encoder's root (`model.` of a classifier checkpoint).
    pub fn load(vb: VarBuilder, config: &ModernBertConfig, rng: &DropoutRng) -> Result<Self> {
        let (width, eps) = (config.hidden_size, config.norm_eps);
        let embeddings = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|layer| {
                ModernBertLayer::load(vb.pp(format!("layers.{layer}")), config, layer, rng)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embeddings: candle_nn::embedding(
                config.vocab_size,
                width,
                embeddings.pp("tok_embeddings"),
            )?,
            embedding_norm: LayerNorm::load_without_bias(embeddings.pp("norm"), width, eps)?,
            embedding_dropout: Dropout::new(config.embedding_dropout, rng.clone()),
            layers,
            global: (0..config.num_hidden_layers)
                .map(|layer| config.is_global(layer))
                .collect(),
            head_size: config.head_size(),
            global_theta: config.rope_theta_of(true),
            local_theta: config.rope_theta_of(false),
            half_window: config.local_attention / 2,
            final_norm: LayerNorm::load_without_bias(vb.pp("final_norm"), width, eps)?,
        })
    }

    /// The layers, for keeping their parameters packed.
    pub(crate) fn packed_layers_mut(&mut self) -> Vec<&mut dyn crate::parameters::PackedLayer> {
        self.layers
            .iter_mut()
            .map(|layer| layer as &mut dyn crate::parameters::PackedLayer)
            .collect()
    }

    /// `[b, s, hidden]` hidden states, after the final norm, of `input_ids` and
    /// `attention_mask` (`[b, s]`; 1 for a real token).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.forward_layers(input_ids, attention_mask, false)
    }

    /// The same where only each sequence's first token will be read (`cls` pooling): the
    /// last layer may compute only that row (the fused CPU layer does; other rows are then
    /// zeros).
    fn forward_layers(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let (batch, seq_len) = input_ids.dims2()?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        let padding_bias =
            ((mask.ones_like()? - &mask)? * f64::from(MASKED))?.reshape((batch, 1, 1, seq_len))?;
        let embedded = self.token_embeddings.forward(input_ids)?;
        let mut hidden = self
            .embedding_dropout
            .forward(&self.embedding_norm.forward(&embedded)?)?;
        // Made once for the pass, for each kind of layer it has.
        let kind = |global: bool| -> Result<Option<AttentionInputs>> {
            if !self.global.contains(&global) {
                return Ok(None);
            }
            let (theta, window) = if global {
                (self.global_theta, None)
            } else {
                (self.local_theta, Some(self.half_window))
            };
            AttentionInputs::new(&padding_bias, self.head_size, theta, window).map(Some)
        };
        let (global, local) = (kind(true)?, kind(false)?);
        let last = self.layers.len().saturating_sub(1);
        for (index, (layer, &is_global)) in self.layers.iter().zip(&self.global).enumerate() {
            let inputs = if is_global { &global } else { &local };
            let inputs = inputs.as_ref().expect("made for every kind present");
            hidden = layer.forward(&hidden, inputs, first_token_only && index == last)?;
        }
        self.final_norm.forward(&hidden)
    }
}

/// The whole classifier.
#[derive(Debug, Clone)]
pub struct ModernBertForSequenceClassification {
    model: ModernBertModel,
    head_dense: LoraLinear,
    head_norm: LayerNorm,
    classifier_dropout: Dropout,
    classifier: LoraLinear,
    pooling: ClassifierPooling,
    num_labels: usize,
}

impl ModernBertForSequenceClassification {
    /// Loads from `vb` (the checkpoint's root: `model.*`, `head.*`, `classifier.*`).
    pub fn load(
        vb: VarBuilder,
        config: &ModernBertConfig,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let (width, eps) = (config.hidden_size, config.norm_eps);
        let linear = |name: &str, outputs, bias| {
            LoraLinear::load_stored(vb.pp(name), width, outputs, bias, config.lora.as_ref(), rng)
        };
        Ok(Self {
            model: ModernBertModel::load(vb.pp("model"), config, rng)?,
            head_dense: linear("head.dense", width, false)?,
            head_norm: LayerNorm::load_without_bias(vb.pp("head.norm"), width, eps)?,
            classifier_dropout: Dropout::new(config.classifier_dropout, rng.clone()),
            classifier: linear("classifier", num_labels, true)?,
            pooling: config.classifier_pooling,
            num_labels,
        })
    }

    /// Outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// The encoder's layers, for keeping their parameters packed.
    pub(crate) fn packed_layers_mut(&mut self) -> Vec<&mut dyn crate::parameters::PackedLayer> {
        self.model.packed_layers_mut()
    }

    /// Logits `[b, num_labels]` of `input_ids` and `attention_mask` (`[b, s]`, u32; 1 for a
    /// real token).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.model.forward_layers(
            input_ids,
            attention_mask,
            self.pooling == ClassifierPooling::Cls,
        )?;
        let pooled = match self.pooling {
            ClassifierPooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            ClassifierPooling::Mean => {
                let weights = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                hidden
                    .broadcast_mul(&weights)?
                    .sum(1)?
                    .broadcast_div(&weights.sum(1)?)?
            }
        };
        let head = self.head_norm.forward(&crate::kernels::ops::gelu_erf(
            &self.head_dense.forward(&pooled)?,
        )?)?;
        self.classifier
            .forward(&self.classifier_dropout.forward(&head)?)
    }
}
