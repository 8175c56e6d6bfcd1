//! ELECTRA (`ElectraForSequenceClassification`: cross-encoder/ms-marco-electra-base). The
//! encoder is BERT's ([`BertEncoder`]), with embeddings `embedding_size` wide and an
//! `embeddings_project` layer when that differs from the hidden size; the head is
//! [`ClassificationHead`] with GELU, and there is no pooler.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{BertConfig, BertEncoder, PositionIds};
use crate::classification_head::{ClassificationHead, HeadActivation};
use crate::dropout::DropoutRng;
use crate::tokens::TokenTensors;
use crate::weights::TensorNames;

/// Where ELECTRA's tensors live: `electra.*` and `classifier.{dense,out_proj}.*`.
pub const TENSOR_NAMES: TensorNames = TensorNames {
    prefix: "electra",
    unprefixed_roots: &["embeddings.", "embeddings_project.", "encoder."],
    initialised_when_missing: &["classifier."],
};

/// The `architectures` entries loaded as ELECTRA (the discriminator is what rerankers are
/// fine-tuned from).
pub const ARCHITECTURES: &[&str] = &[
    "ElectraForSequenceClassification",
    "ElectraModel",
    "ElectraForPreTraining",
    "ElectraForMaskedLM",
];

/// The ELECTRA sequence classifier.
#[derive(Debug, Clone)]
pub struct ElectraForSequenceClassification {
    encoder: BertEncoder,
    head: ClassificationHead,
    num_labels: usize,
}

impl ElectraForSequenceClassification {
    /// Loads `electra.*` and `classifier.*`.
    pub fn load(
        vb: VarBuilder,
        config: &BertConfig,
        num_labels: usize,
        rng: &DropoutRng,
    ) -> Result<Self> {
        Ok(Self {
            encoder: Self::load_encoder(vb.clone(), config, rng)?,
            head: ClassificationHead::load(
                vb.pp("classifier"),
                config.hidden_size,
                num_labels,
                HeadActivation::Gelu,
                config.classifier_dropout(),
                rng,
            )?,
            num_labels,
        })
    }

    /// The encoder alone (for sentence embeddings).
    pub fn load_encoder(
        vb: VarBuilder,
        config: &BertConfig,
        rng: &DropoutRng,
    ) -> Result<BertEncoder> {
        BertEncoder::load_with_positions(
            vb.pp(TENSOR_NAMES.prefix),
            config,
            PositionIds::FromZero,
            rng,
        )
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
