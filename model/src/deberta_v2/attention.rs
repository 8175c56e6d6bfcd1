//! DeBERTa's disentangled self-attention and its output block. The scores add to the
//! content term `q_i · k_j` the content-to-position term `q_i · k^r_{δ(i,j)}` and the
//! position-to-content term `k_j · q^r_{δ(i,j)}`, where `k^r`, `q^r` are the relative
//! embeddings through the key and query projections (`share_att_key`) or their own, and
//! `δ(i, j)` the pair's row of the relative table; all three are divided by
//! `sqrt(head_size · terms)`.
//!
//! Heads are laid out head-major (`[heads, batch, seq, head_size]`), so that one product per
//! head, `[batch·seq, head_size] × [head_size, 2·span]`, gives every token's scores against
//! every relative row, from which each pair's is gathered (`index_select`, whose backward is
//! an `index_add`: candle primitives on every device).

use std::cell::OnceCell;
use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::DebertaV2Config;
use super::relative_position::RelativeIndex;
use crate::dropout::{Dropout, DropoutRng};
use crate::layer_norm::LayerNorm;
use crate::lora::LoraLinear;

/// What every layer attends with, for one batch: made once per forward pass.
#[derive(Debug, Clone)]
pub struct AttentionInputs {
    /// `[batch, 1, 1, seq]`: 0 on real keys, a large negative number on padding (keys
    /// only: transformers also masks padded queries' rows, whose outputs nothing real reads).
    pub padding: Tensor,
    /// The relative table (layer-normed when the config says so), when attention is relative.
    pub table: Option<Tensor>,
    /// The table row of every (query, key) position pair, `[seq, seq]`.
    pub rows: Arc<[u32]>,
    heads: usize,
    /// The composite layer's head-major bias and gather indices, made on first use: the
    /// fused CPU layer needs neither.
    composite: OnceCell<CompositeInputs>,
}

#[derive(Debug, Clone)]
struct CompositeInputs {
    /// `[heads · batch, 1, 1, seq]`.
    bias: Tensor,
    index: Option<RelativeIndex>,
}

impl AttentionInputs {
    /// The inputs of a batch with `padding`, `heads` heads, the relative `table` and the rows
    /// of its position pairs.
    pub fn new(padding: Tensor, heads: usize, table: Option<Tensor>, rows: Arc<[u32]>) -> Self {
        Self {
            padding,
            table,
            rows,
            heads,
            composite: OnceCell::new(),
        }
    }

    fn composite(&self) -> Result<&CompositeInputs> {
        if let Some(made) = self.composite.get() {
            return Ok(made);
        }
        let (batch, _, _, seq_len) = self.padding.dims4()?;
        let bias = self
            .padding
            .reshape((1, batch, 1, 1, seq_len))?
            .repeat((self.heads, 1, 1, 1, 1))?
            .reshape((self.heads * batch, 1, 1, seq_len))?;
        let index = match &self.table {
            Some(table) => Some(RelativeIndex::from_rows(
                &self.rows,
                seq_len,
                table.dim(0)?,
                self.padding.device(),
            )?),
            None => None,
        };
        Ok(self
            .composite
            .get_or_init(|| CompositeInputs { bias, index }))
    }
}

/// `DebertaV2Attention`: `DisentangledSelfAttention` and `DebertaV2SelfOutput`.
#[derive(Debug, Clone)]
pub struct DisentangledAttention {
    pub(super) query: LoraLinear,
    pub(super) key: LoraLinear,
    pub(super) value: LoraLinear,
    /// Own projections of the relative table when keys are not shared.
    position_key: Option<LoraLinear>,
    position_query: Option<LoraLinear>,
    pub(super) content_to_position: bool,
    pub(super) position_to_content: bool,
    pub(super) num_heads: usize,
    pub(super) head_size: usize,
    pub(super) scale: f64,
    pub(super) position_dropout: Dropout,
    pub(super) probabilities_dropout: Dropout,
    pub(super) output: LoraLinear,
    pub(super) output_dropout: Dropout,
    pub(super) layer_norm: LayerNorm,
}

impl DisentangledAttention {
    /// Loads `encoder.layer.N.attention`.
    pub fn load(vb: VarBuilder, config: &DebertaV2Config, rng: &DropoutRng) -> Result<Self> {
        let hidden = config.hidden_size;
        let heads_width = config.num_attention_heads * config.head_size();
        let own = vb.pp("self");
        let separate = !config.share_att_key;
        let content_to_position = config.content_to_position();
        let position_to_content = config.position_to_content();
        let linear = |vb: VarBuilder, inputs, outputs| {
            LoraLinear::load_stored(vb, inputs, outputs, true, config.lora.as_ref(), rng)
        };
        Ok(Self {
            query: linear(own.pp("query_proj"), hidden, heads_width)?,
            key: linear(own.pp("key_proj"), hidden, heads_width)?,
            value: linear(own.pp("value_proj"), hidden, heads_width)?,
            position_key: if separate && content_to_position {
                Some(linear(own.pp("pos_key_proj"), hidden, heads_width)?)
            } else {
                None
            },
            position_query: if separate && position_to_content {
                Some(linear(own.pp("pos_query_proj"), hidden, heads_width)?)
            } else {
                None
            },
            content_to_position,
            position_to_content,
            num_heads: config.num_attention_heads,
            head_size: config.head_size(),
            scale: config.score_scale(),
            position_dropout: Dropout::new(config.hidden_dropout_prob, rng.clone()),
            probabilities_dropout: Dropout::new(config.attention_probs_dropout_prob, rng.clone()),
            output: linear(vb.pp("output").pp("dense"), heads_width, hidden)?,
            output_dropout: Dropout::new(config.hidden_dropout_prob, rng.clone()),
            layer_norm: LayerNorm::load(
                vb.pp("output").pp("LayerNorm"),
                hidden,
                config.layer_norm_eps,
            )?,
        })
    }

    /// Whether the relative table goes through the content projections (`share_att_key`),
    /// as the fused CPU layer computes it, or there is no relative term.
    pub(super) fn shares_projections(&self) -> bool {
        self.position_key.is_none() && self.position_query.is_none()
    }

    /// Whether a LoRA adapter is attached to any of its projections (the layer then runs
    /// on candle's ops, see [`LoraLinear::load_stored`]).
    pub(super) fn is_adapted(&self) -> bool {
        [&self.query, &self.key, &self.value, &self.output]
            .into_iter()
            .chain(self.position_key.iter())
            .chain(self.position_query.iter())
            .any(LoraLinear::is_adapted)
    }

    /// `[rows, heads · head_size]` to head-major `[heads, rows, head_size]`.
    fn split_heads(&self, projected: &Tensor) -> Result<Tensor> {
        let rows = projected.dim(0)?;
        projected
            .reshape((rows, self.num_heads, self.head_size))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// Every token's (`[heads, b·s, d]`) products with every relative row (`[heads, 2span,
    /// d]`), gathered at each pair's row by `index` into `[heads, b, s, s]`.
    fn relative_scores(
        tokens: &Tensor,
        relative_rows: &Tensor,
        index: &Tensor,
        batch: usize,
        seq_len: usize,
    ) -> Result<Tensor> {
        let heads = tokens.dim(0)?;
        let rows = relative_rows.dim(1)?;
        tokens
            .matmul(&relative_rows.t()?)?
            .reshape((heads * batch, seq_len * rows))?
            .index_select(index, 1)?
            .reshape((heads, batch, seq_len, seq_len))
    }

    /// `hidden` `[b, s, h]` to the block's output `[b, s, h]` (after its residual norm).
    pub fn forward(&self, hidden: &Tensor, inputs: &AttentionInputs) -> Result<Tensor> {
        let _span = tracing::trace_span!("disentangled_attention").entered();
        let (batch, seq_len, width) = hidden.dims3()?;
        let flat = hidden.reshape((batch * seq_len, width))?;
        let query = self.split_heads(&self.query.forward(&flat)?)?;
        let key = self.split_heads(&self.key.forward(&flat)?)?;
        let value = self.split_heads(&self.value.forward(&flat)?)?;
        let heads = self.num_heads;
        let per_sequence = |t: &Tensor| t.reshape((heads, batch, seq_len, self.head_size));
        let mut scores = per_sequence(&query)?.matmul(&per_sequence(&key)?.t()?)?;
        let composite = inputs.composite()?;
        if let (Some(table), Some(index)) = (&inputs.table, &composite.index) {
            let table = self.position_dropout.forward(table)?;
            if self.content_to_position {
                let projection = self.position_key.as_ref().unwrap_or(&self.key);
                let position_keys = self.split_heads(&projection.forward(&table)?)?;
                scores = (scores
                    + Self::relative_scores(
                        &query,
                        &position_keys,
                        &index.content_to_position,
                        batch,
                        seq_len,
                    )?)?;
            }
            if self.position_to_content {
                let projection = self.position_query.as_ref().unwrap_or(&self.query);
                let position_queries = self.split_heads(&projection.forward(&table)?)?;
                scores = (scores
                    + Self::relative_scores(
                        &key,
                        &position_queries,
                        &index.position_to_content,
                        batch,
                        seq_len,
                    )?)?;
            }
        }
        let probabilities = crate::kernels::ops::masked_softmax(
            &scores.reshape((heads * batch, 1, seq_len, seq_len))?,
            &composite.bias,
            1.0 / self.scale,
        )?;
        let probabilities = self.probabilities_dropout.forward(&probabilities)?;
        let context = probabilities
            .reshape((heads, batch, seq_len, seq_len))?
            .matmul(&per_sequence(&value)?)?
            .permute((1, 2, 0, 3))?
            .contiguous()?
            .reshape((batch * seq_len, heads * self.head_size))?;
        let projected = self
            .output_dropout
            .forward(&self.output.forward(&context)?)?;
        self.layer_norm
            .forward(&(projected + flat)?)?
            .reshape((batch, seq_len, width))
    }
}
