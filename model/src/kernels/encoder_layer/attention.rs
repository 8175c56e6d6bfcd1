//! Attention over each sequence's real tokens, forward and backward: scores, masked softmax
//! with dropout, and the weighted values, one sequence and head at a time.

use gemm::Parallelism;

use super::packing::Packing;
use super::products::{matmul, view};
use super::EncoderLayerOp;
use crate::kernels::simd;

/// One sequence's slices of the attention inputs.
pub(super) struct SequenceAttention<'a> {
    /// `[queries, hidden]` query projections.
    pub(super) query: &'a [f32],
    /// `[len, 2·hidden]` key and value projections.
    pub(super) key_value: &'a [f32],
}

impl EncoderLayerOp {
    /// The attention-probability dropout mask of one sequence and head at its query rows
    /// and real keys, as a `queries × len` block (false without dropout).
    pub(super) fn probs_mask(
        &self,
        packing: &Packing,
        b: usize,
        h: usize,
        out: &mut [f32],
    ) -> bool {
        let Some(masks) = &self.dropout.attention_probs else {
            return false;
        };
        let (seq, positions) = (packing.seq, &packing.positions[b]);
        let len = positions.len();
        let block = (b * self.dims.heads + h) * seq * seq;
        for (i, &pi) in positions[..packing.query_counts[b]].iter().enumerate() {
            let row = &masks[block + pi * seq..block + (pi + 1) * seq];
            for (o, &pj) in out[i * len..(i + 1) * len].iter_mut().zip(positions) {
                *o = row[pj];
            }
        }
        true
    }

    /// Attention forward for batch element `b`: fills its `[heads, queries, len]`
    /// probabilities and its `[queries, hidden]` context rows.
    pub(super) fn attention_forward(
        &self,
        packing: &Packing,
        b: usize,
        inputs: SequenceAttention,
        mask_bias: &[f32],
        probs: &mut [f32],
        context: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let len = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let mask: Vec<f32> = packing.positions[b]
            .iter()
            .map(|&j| mask_bias[b * packing.seq + j])
            .collect();
        let mut dropout_mask = vec![0f32; queries * len];
        let mut dropped = vec![0f32; queries * len];
        for h in 0..heads {
            let block = &mut probs[h * queries * len..(h + 1) * queries * len];
            // scores = Q · Kᵀ
            matmul(
                block,
                view(0, len, 1),
                inputs.query,
                view(h * head, hidden, 1),
                inputs.key_value,
                view(h * head, 1, 2 * hidden),
                (queries, len, head),
                false,
                Parallelism::None,
            );
            simd::softmax_rows(block, len, &mask, scale);
            let weights: &[f32] = if self.probs_mask(packing, b, h, &mut dropout_mask) {
                simd::product(block, &dropout_mask, &mut dropped);
                &dropped
            } else {
                block
            };
            // context = P · V
            matmul(
                context,
                view(h * head, hidden, 1),
                weights,
                view(0, len, 1),
                inputs.key_value,
                view(hidden + h * head, 2 * hidden, 1),
                (queries, head, len),
                false,
                Parallelism::None,
            );
        }
    }

    /// Attention backward for batch element `b`: writes its rows of `d_query` and
    /// `d_key_value`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &self,
        packing: &Packing,
        b: usize,
        inputs: SequenceAttention,
        probs: &[f32],
        d_context: &[f32],
        d_query: &mut [f32],
        d_key_value: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let len = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let mut dropout_mask = vec![0f32; queries * len];
        let mut dropped = vec![0f32; queries * len];
        let mut d_scores = vec![0f32; queries * len];
        for h in 0..heads {
            let p = &probs[h * queries * len..(h + 1) * queries * len];
            let has_dropout = self.probs_mask(packing, b, h, &mut dropout_mask);
            let weights: &[f32] = if has_dropout {
                simd::product(p, &dropout_mask, &mut dropped);
                &dropped
            } else {
                p
            };
            // dV = Pᵀ · dC
            matmul(
                d_key_value,
                view(hidden + h * head, 2 * hidden, 1),
                weights,
                view(0, 1, len),
                d_context,
                view(h * head, hidden, 1),
                (len, head, queries),
                false,
                Parallelism::None,
            );
            // dP = dC · Vᵀ
            matmul(
                &mut d_scores,
                view(0, len, 1),
                d_context,
                view(h * head, hidden, 1),
                inputs.key_value,
                view(hidden + h * head, 1, 2 * hidden),
                (queries, len, head),
                false,
                Parallelism::None,
            );
            // Through dropout and softmax: dS = scale · P ⊙ (dP − Σ dP·P).
            if has_dropout {
                let d_dropped = d_scores.clone();
                simd::product(&d_dropped, &dropout_mask, &mut d_scores);
            }
            simd::softmax_backward_rows(&mut d_scores, p, len, scale);
            // dQ = dS · K
            matmul(
                d_query,
                view(h * head, hidden, 1),
                &d_scores,
                view(0, len, 1),
                inputs.key_value,
                view(h * head, 2 * hidden, 1),
                (queries, head, len),
                false,
                Parallelism::None,
            );
            // dK = dSᵀ · Q
            matmul(
                d_key_value,
                view(h * head, 2 * hidden, 1),
                &d_scores,
                view(0, 1, len),
                inputs.query,
                view(h * head, hidden, 1),
                (len, head, queries),
                false,
                Parallelism::None,
            );
        }
    }
}
