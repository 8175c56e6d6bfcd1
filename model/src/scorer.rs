//! One interface for everything that scores pairs: the candle cross-encoder here, the ONNX
//! Runtime session in the host. Evaluation, `rank`, mining's rescoring and the trainer's
//! evaluators take a `&dyn PairScorer` and never know which backend they drive.

use crate::activation::DefaultActivation;

/// The error a scorer reports: its backend's own error (a tensor, tokenizer or ONNX Runtime
/// error), kept whole, so its message and its `source()` chain read as the backend's.
#[derive(Debug)]
pub struct ScoreError(Box<dyn std::error::Error + Send + Sync>);

impl ScoreError {
    /// Wraps a backend's error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}

impl std::fmt::Display for ScoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ScoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<crate::ModelError> for ScoreError {
    fn from(error: crate::ModelError) -> Self {
        Self::new(error)
    }
}

/// Scores (query, document) pairs.
pub trait PairScorer {
    /// Raw logits, one row of [`Self::num_labels`] per pair, in input order; pairs go
    /// `batch_size` at a time.
    fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, ScoreError>;

    /// Outputs per pair.
    fn num_labels(&self) -> usize;

    /// The activation sentence-transformers' `predict` applies to this model's logits.
    fn default_activation(&self) -> DefaultActivation;

    /// Truncation length of the tokenizer.
    fn max_length(&self) -> usize;

    /// The tokenizer the scorer encodes pairs with (a server counts tokens with it).
    fn tokenizer(&self) -> &crate::tokenize::PairTokenizer;

    /// Logits after the default activation: the float32 scores the reference's evaluators
    /// see.
    fn activated_scores(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, ScoreError> {
        Ok(self
            .default_activation()
            .apply(self.predict(pairs, batch_size)?))
    }
}

impl PairScorer for crate::CrossEncoder {
    fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, ScoreError> {
        Ok(crate::CrossEncoder::predict(self, pairs, batch_size)?)
    }

    fn num_labels(&self) -> usize {
        crate::CrossEncoder::num_labels(self)
    }

    fn default_activation(&self) -> DefaultActivation {
        crate::CrossEncoder::default_activation(self)
    }

    fn max_length(&self) -> usize {
        crate::CrossEncoder::max_length(self)
    }

    fn tokenizer(&self) -> &crate::tokenize::PairTokenizer {
        crate::CrossEncoder::tokenizer(self)
    }
}

/// The model scoring with a prompt of its own choosing rather than the model's current one
/// (an evaluator's `prompt_name`), without changing the model.
pub struct PromptedModel<'a> {
    /// The model.
    pub model: &'a crate::CrossEncoder,
    /// The prompt every pair gets (`None`: none).
    pub prompt: Option<&'a str>,
}

impl PairScorer for PromptedModel<'_> {
    fn predict(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, ScoreError> {
        Ok(self
            .model
            .predict_with_prompt(pairs, batch_size, self.prompt)?)
    }

    fn num_labels(&self) -> usize {
        self.model.num_labels()
    }

    fn default_activation(&self) -> DefaultActivation {
        self.model.default_activation()
    }

    fn max_length(&self) -> usize {
        self.model.max_length()
    }

    fn tokenizer(&self) -> &crate::tokenize::PairTokenizer {
        self.model.tokenizer()
    }
}
