//! Causal grouped-query attention over each sequence's real tokens, forward and backward:
//! every query head against the key/value head of its group, each query over the keys at or
//! before it (real tokens are packed in order, so that is a prefix of the sequence's rows).

use gemm::Parallelism;

use super::DecoderLayerOp;
use crate::kernels::encoder_layer::packing::Packing;
use crate::kernels::encoder_layer::products::{matmul, view};
use crate::kernels::simd;

impl DecoderLayerOp {
    /// The attention-probability dropout mask of sequence `b`'s head `h` at its query rows
    /// and real keys (false without dropout).
    fn head_dropout(&self, packing: &Packing, b: usize, h: usize, out: &mut [f32]) -> bool {
        let Some(masks) = &self.attention_dropout else {
            return false;
        };
        let (seq, positions) = (packing.seq, &packing.positions[b]);
        let (queries, offset) = (packing.query_counts[b], packing.query_offsets[b]);
        let start = (b * self.dims.heads + h) * seq * seq;
        for (i, &query) in positions[offset..offset + queries].iter().enumerate() {
            let row = &masks[start + query * seq..start + (query + 1) * seq];
            for (o, &key) in out[i * positions.len()..(i + 1) * positions.len()]
                .iter_mut()
                .zip(positions)
            {
                *o = row[key];
            }
        }
        true
    }

    /// Attention forward for sequence `b`: fills its probabilities (`[queries, keys]` per
    /// head, zero above the causal limit) and its `[queries, heads·head_dim]` context rows,
    /// from its rotated queries and `[keys, 2·kv_heads·head_dim]` keys and values.
    pub(super) fn attention_forward(
        &self,
        packing: &Packing,
        b: usize,
        query: &[f32],
        key_value: &[f32],
        probs: &mut [f32],
        context: &mut [f32],
    ) {
        let dims = self.dims;
        let (head, query_width, kv_width) = (dims.head_dim, dims.query_width(), dims.kv_width());
        let groups = dims.heads / dims.kv_heads;
        let keys = packing.positions[b].len();
        let (queries, offset) = (packing.query_counts[b], packing.query_offsets[b]);
        let size = queries * keys;
        let scale = 1.0 / (head as f32).sqrt();
        let no_bias = vec![0f32; keys];
        let mut dropout_mask = vec![0f32; size];
        let mut dropped = vec![0f32; size];
        for h in 0..dims.heads {
            let g = h / groups;
            let scores = &mut probs[h * size..(h + 1) * size];
            // scores = Q · Kᵀ
            matmul(
                scores,
                view(0, keys, 1),
                query,
                view(h * head, query_width, 1),
                key_value,
                view(g * head, 1, 2 * kv_width),
                (queries, keys, head),
                false,
                Parallelism::None,
            );
            for (i, row) in scores.chunks_mut(keys).enumerate() {
                let visible = offset + i + 1;
                simd::softmax_rows(&mut row[..visible], visible, &no_bias, scale);
                row[visible..].fill(0.0);
            }
            let weights: &[f32] = if self.head_dropout(packing, b, h, &mut dropout_mask) {
                simd::product(scores, &dropout_mask, &mut dropped);
                &dropped
            } else {
                scores
            };
            // context = P · V
            matmul(
                context,
                view(h * head, query_width, 1),
                weights,
                view(0, keys, 1),
                key_value,
                view(kv_width + g * head, 2 * kv_width, 1),
                (queries, head, keys),
                false,
                Parallelism::None,
            );
        }
    }

    /// Attention backward for sequence `b`: writes its rows of `d_query` and adds into its
    /// rows of `d_key_value` (the heads of a group share keys and values).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &self,
        packing: &Packing,
        b: usize,
        query: &[f32],
        key_value: &[f32],
        probs: &[f32],
        d_context: &[f32],
        d_query: &mut [f32],
        d_key_value: &mut [f32],
    ) {
        let dims = self.dims;
        let (head, query_width, kv_width) = (dims.head_dim, dims.query_width(), dims.kv_width());
        let groups = dims.heads / dims.kv_heads;
        let keys = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let size = queries * keys;
        let scale = 1.0 / (head as f32).sqrt();
        let mut dropout_mask = vec![0f32; size];
        let mut dropped = vec![0f32; size];
        let mut d_scores = vec![0f32; size];
        for h in 0..dims.heads {
            let g = h / groups;
            let p = &probs[h * size..(h + 1) * size];
            let has_dropout = self.head_dropout(packing, b, h, &mut dropout_mask);
            let weights: &[f32] = if has_dropout {
                simd::product(p, &dropout_mask, &mut dropped);
                &dropped
            } else {
                p
            };
            // dV += Pᵀ · dC
            matmul(
                d_key_value,
                view(kv_width + g * head, 2 * kv_width, 1),
                weights,
                view(0, 1, keys),
                d_context,
                view(h * head, query_width, 1),
                (keys, head, queries),
                true,
                Parallelism::None,
            );
            // dP = dC · Vᵀ
            matmul(
                &mut d_scores,
                view(0, keys, 1),
                d_context,
                view(h * head, query_width, 1),
                key_value,
                view(kv_width + g * head, 1, 2 * kv_width),
                (queries, keys, head),
                false,
                Parallelism::None,
            );
            // Through dropout and softmax: dS = scale · P ⊙ (dP − Σ dP·P); keys past the
            // causal limit have P = 0 and get none.
            if has_dropout {
                let d_dropped = d_scores.clone();
                simd::product(&d_dropped, &dropout_mask, &mut d_scores);
            }
            simd::softmax_backward_rows(&mut d_scores, p, keys, scale);
            // dQ = dS · K
            matmul(
                d_query,
                view(h * head, query_width, 1),
                &d_scores,
                view(0, keys, 1),
                key_value,
                view(g * head, 2 * kv_width, 1),
                (queries, head, keys),
                false,
                Parallelism::None,
            );
            // dK += dSᵀ · Q
            matmul(
                d_key_value,
                view(g * head, 2 * kv_width, 1),
                &d_scores,
                view(0, 1, keys),
                query,
                view(h * head, query_width, 1),
                (keys, head, queries),
                true,
                Parallelism::None,
            );
        }
    }
}
