//! The classification head of RoBERTa-style sequence classifiers (XLM-RoBERTa's
//! `RobertaClassificationHead`, ELECTRA's `ElectraClassificationHead`): on the first token,
//! dropout → dense → activation → dropout → out_proj. BERT instead has a pooler (dense → tanh,
//! part of the base model) and one dropout before its classifier.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{BertConfig, BertEncoder};
use crate::dropout::{Dropout, DropoutRng};
use crate::kernels::ops::gelu_erf;
use crate::lora::{LoraConfig, LoraLinear};
use crate::tokens::TokenTensors;

/// The activation between the head's two projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadActivation {
    /// tanh (RoBERTa, XLM-RoBERTa).
    Tanh,
    /// Exact (erf) GELU (ELECTRA: `get_activation("gelu")`).
    Gelu,
}

/// `classifier.dense` and `classifier.out_proj` with their dropouts.
#[derive(Debug, Clone)]
pub struct ClassificationHead {
    dense: LoraLinear,
    out_proj: LoraLinear,
    activation: HeadActivation,
    dropout: Dropout,
}

impl ClassificationHead {
    /// Loads `dense.*` and `out_proj.*` under `vb` (the caller passes `classifier`).
    /// `dropout` is `classifier_dropout`, else `hidden_dropout_prob`, as transformers takes it;
    /// `lora` attaches the adapters stored beside the weights ([`LoraLinear::load_stored`]).
    pub fn load(
        vb: VarBuilder,
        hidden_size: usize,
        num_labels: usize,
        activation: HeadActivation,
        dropout: f64,
        lora: Option<&LoraConfig>,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let linear = |name: &str, outputs| {
            LoraLinear::load_stored(vb.pp(name), hidden_size, outputs, true, lora, rng)
        };
        Ok(Self {
            dense: linear("dense", hidden_size)?,
            out_proj: linear("out_proj", num_labels)?,
            activation,
            dropout: Dropout::new(dropout, rng.clone()),
        })
    }

    /// `[batch, num_labels]` logits from `[batch, seq, hidden]` hidden states (only the
    /// first token is read).
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("classification_head").entered();
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let dense = self.dense.forward(&self.dropout.forward(&first)?)?;
        let activated = match self.activation {
            HeadActivation::Tanh => dense.tanh()?,
            HeadActivation::Gelu => gelu_erf(&dense)?,
        };
        self.out_proj.forward(&self.dropout.forward(&activated)?)
    }
}

/// BERT's encoder with a [`ClassificationHead`] on its first token: the sequence classifier of
/// XLM-RoBERTa and ELECTRA, which differ only in tensor prefix, position ids and activation.
#[derive(Debug, Clone)]
pub struct EncoderWithHead {
    encoder: BertEncoder,
    head: ClassificationHead,
    num_labels: usize,
}

impl EncoderWithHead {
    /// `encoder` with `classifier.*` (the head) loaded under `vb`.
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        encoder: BertEncoder,
        activation: HeadActivation,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        Ok(Self {
            encoder,
            head: ClassificationHead::load(
                vb.pp("classifier"),
                config.hidden_size,
                num_labels,
                activation,
                config.classifier_dropout(),
                config.lora.as_ref(),
                rng,
            )?,
            num_labels,
        })
    }

    /// The encoder's layers, for keeping their parameters packed.
    pub(crate) fn packed_layers_mut(&mut self) -> Vec<&mut dyn crate::parameters::PackedLayer> {
        self.encoder.packed_layers_mut()
    }

    /// Number of outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// `[batch, num_labels]` logits.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        let _span = tracing::trace_span!("cross_encoder_forward").entered();
        self.head
            .forward(&self.encoder.forward_first_token(tokens)?)
    }
}
