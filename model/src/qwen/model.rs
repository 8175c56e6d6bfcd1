//! The decoder (embeddings, layers, final norm) and the two reranking heads on its last
//! hidden state: the LM head's true/false rows at the last position (LogitScore), or the
//! classification `score` layer at the last non-pad token.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::attention::{causal_padding_bias, MASKED};
use super::config::{DecoderConfig, DecoderHead};
use super::layer::{DecoderLayer, LayerInputs};
use super::rms_norm::RmsNorm;
use super::rotary::{rotary_tables, Rotary};
use crate::dropout::DropoutRng;
use crate::kernels::decoder_layer::QueryRows;
use crate::lora::LoraLinear;
use crate::tokens::TokenTensors;

/// `Qwen3Model` / `Qwen2Model` / `LlamaModel`.
#[derive(Debug, Clone)]
pub struct DecoderModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    head_dim: usize,
    rope_theta: f64,
    /// The activations' dtype (a frozen bf16 embedding is read into it).
    dtype: DType,
}

impl DecoderModel {
    /// Loads the body under `vb` (`model.` in a checkpoint).
    pub fn load(vb: VarBuilder, config: &DecoderConfig, rng: &DropoutRng) -> Result<Self> {
        let embed_tokens =
            candle_nn::embedding(config.vocab_size, config.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|index| DecoderLayer::load(vb.pp("layers").pp(index), config, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(vb.pp("norm"), config.hidden_size, config.rms_norm_eps)?,
            head_dim: config.head_dim(),
            rope_theta: config.rope_theta,
            dtype: vb.dtype(),
        })
    }

    /// The embedding matrix (the LM head when the embeddings are tied).
    pub fn embeddings(&self) -> &Tensor {
        self.embed_tokens.embeddings()
    }

    /// Whether the layers run as the fused CPU op on `hidden`.
    fn runs_fused(&self, hidden: &Tensor) -> bool {
        self.layers.iter().all(|layer| layer.runs_fused(hidden))
    }

    /// `[batch, L, hidden]` final hidden states. With [`QueryRows::Last`] only each
    /// sequence's last real token is needed: the fused last layer computes only those rows
    /// (the others come out as zeros).
    pub fn forward(&self, tokens: &TokenTensors, queries: QueryRows) -> Result<Tensor> {
        let (batch, length) = tokens.input_ids.dims2()?;
        let mut hidden = self
            .embed_tokens
            .forward(&tokens.input_ids)?
            .to_dtype(self.dtype)?;
        let dtype = hidden.dtype();
        let device = hidden.device().clone();
        let mask: Vec<u32> = tokens.attention_mask.flatten_all()?.to_vec1()?;
        let inputs = if self.runs_fused(&hidden) {
            let padding: Vec<f32> = mask
                .iter()
                .map(|&m| if m == 1 { 0.0 } else { MASKED })
                .collect();
            LayerInputs {
                composite: None,
                fused: Some((
                    Tensor::from_vec(padding, (batch, length), &device)?,
                    Arc::new(rotary_tables(length, self.head_dim, self.rope_theta)),
                )),
            }
        } else {
            LayerInputs {
                composite: Some((
                    Rotary::new(length, self.head_dim, self.rope_theta, dtype, &device)?,
                    causal_padding_bias(&mask, batch, length, dtype, &device)?,
                )),
                fused: None,
            }
        };
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            let rows = if index == last {
                queries
            } else {
                QueryRows::All
            };
            hidden = layer.forward(&hidden, &inputs, rows)?;
        }
        self.norm.forward(&hidden)
    }
}

/// The head on the last hidden state.
#[derive(Debug, Clone)]
enum ScoreHead {
    /// The LM head (the embeddings when tied) and the ids of the rows that score: the true
    /// token's, then the false token's unless only the true token counts. The rows are
    /// selected on every pass, so they follow the weights as they train.
    LogitScore {
        lm_head: Tensor,
        ids: Tensor,
        difference: bool,
    },
    /// `score` (no bias) at the last token that is not the pad id.
    Classification {
        score: LoraLinear,
        pad_token_id: u32,
    },
}

/// A decoder reranker: `*ForCausalLM` with LogitScore, or `*ForSequenceClassification`.
#[derive(Debug, Clone)]
pub struct DecoderReranker {
    model: DecoderModel,
    head: ScoreHead,
    num_labels: usize,
}

impl DecoderReranker {
    /// Loads the network of `config` through `vb` (the checkpoint's root).
    pub fn load(vb: VarBuilder, config: &DecoderConfig, rng: &DropoutRng) -> Result<Self> {
        let model = DecoderModel::load(vb.pp("model"), config, rng)?;
        let head = match config.head {
            DecoderHead::LogitScore {
                true_token_id,
                false_token_id,
            } => {
                // Only the two rows that score: never the whole vocabulary's logits.
                let lm_head = if config.tie_word_embeddings {
                    model.embeddings().clone()
                } else {
                    vb.pp("lm_head")
                        .get((config.vocab_size, config.hidden_size), "weight")?
                };
                let mut ids = vec![true_token_id];
                ids.extend(false_token_id);
                ScoreHead::LogitScore {
                    ids: Tensor::new(ids.as_slice(), lm_head.device())?,
                    lm_head,
                    difference: false_token_id.is_some(),
                }
            }
            DecoderHead::Classification { num_labels } => ScoreHead::Classification {
                score: LoraLinear::load(
                    vb.pp("score"),
                    config.hidden_size,
                    num_labels,
                    false,
                    config.lora.as_ref(),
                    rng,
                )?,
                pad_token_id: config.pad_token_id.unwrap_or(u32::MAX),
            },
        };
        Ok(Self {
            model,
            head,
            num_labels: config.num_labels(),
        })
    }

    /// Outputs per pair.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// `[batch, num_labels]` scores.
    pub fn forward(&self, tokens: &TokenTensors) -> Result<Tensor> {
        let queries = if self.reads_only_last_tokens(tokens)? {
            QueryRows::Last
        } else {
            QueryRows::All
        };
        let hidden = self.model.forward(tokens, queries)?;
        let (batch, length, width) = hidden.dims3()?;
        match &self.head {
            ScoreHead::LogitScore {
                lm_head,
                ids,
                difference,
            } => {
                // Left-padded: every row's last position is its last token.
                let last = hidden.narrow(1, length - 1, 1)?.squeeze(1)?;
                let rows = lm_head.index_select(ids, 0)?.to_dtype(last.dtype())?;
                let logits = last.matmul(&rows.t()?)?;
                if *difference {
                    logits.narrow(1, 0, 1)? - logits.narrow(1, 1, 1)?
                } else {
                    Ok(logits)
                }
            }
            ScoreHead::Classification {
                score,
                pad_token_id,
            } => {
                // transformers pools at the rightmost token that is not the pad id (from the
                // ids, not the attention mask).
                let ids: Vec<Vec<u32>> = tokens.input_ids.to_vec2()?;
                let positions: Vec<u32> = ids
                    .iter()
                    .enumerate()
                    .map(|(row, ids)| {
                        let last = ids.iter().rposition(|id| id != pad_token_id).unwrap_or(0);
                        (row * length + last) as u32
                    })
                    .collect();
                let index = Tensor::new(positions.as_slice(), hidden.device())?;
                let pooled = hidden
                    .reshape((batch * length, width))?
                    .index_select(&index, 0)?;
                score.forward(&pooled)
            }
        }
    }

    /// Whether the head reads only each row's last real token (so the last layer need
    /// compute nothing else): LogitScore reads the last position, which is real when every
    /// row is left-padded; the classification head reads the last token that is not the pad
    /// id, which is the last real one unless a real token equals the pad id.
    fn reads_only_last_tokens(&self, tokens: &TokenTensors) -> Result<bool> {
        let mask: Vec<Vec<u32>> = tokens.attention_mask.to_vec2()?;
        let last_real = |mask: &[u32]| mask.iter().rposition(|&m| m == 1);
        match &self.head {
            ScoreHead::LogitScore { .. } => Ok(mask.iter().all(|row| row.last() == Some(&1))),
            ScoreHead::Classification { pad_token_id, .. } => {
                let ids: Vec<Vec<u32>> = tokens.input_ids.to_vec2()?;
                Ok(ids.iter().zip(&mask).all(|(ids, mask)| {
                    let pooled = ids.iter().rposition(|id| id != pad_token_id);
                    pooled.is_some() && pooled == last_real(mask)
                }))
            }
        }
    }

    /// The network's dtype.
    pub fn dtype(&self) -> DType {
        self.model.dtype
    }
}
