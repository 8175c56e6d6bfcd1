//! Attention over each sequence's real tokens, forward and backward, a block of queries at a
//! time against the keys the block's window reaches (all keys on a global layer), so that a
//! local layer costs O(window) per token.

use gemm::Parallelism;

use super::{LayerPlan, ModernLayerOp};
use crate::kernels::encoder_layer::products::{matmul, view};
use crate::kernels::simd;

/// Queries per block on a local layer: small enough that the keys a block reaches stay
/// near the window, large enough for the products to run at speed.
const QUERIES_PER_BLOCK: usize = 64;

/// A block of one sequence's query rows `queries` (indices among its query rows) and the key
/// rows `keys` (among its real rows) they may attend to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Block {
    pub(super) queries: std::ops::Range<usize>,
    pub(super) keys: std::ops::Range<usize>,
}

impl Block {
    /// Probabilities per head.
    pub(super) fn size(&self) -> usize {
        self.queries.len() * self.keys.len()
    }
}

/// The blocks of a sequence whose real tokens sit at `positions` (ascending) and whose first
/// `query_count` are query rows: one block over every key on a global layer; on a local one,
/// blocks of [`QUERIES_PER_BLOCK`] queries, each with the keys within `half_window`
/// positions of one of them.
pub(super) fn blocks_of(
    positions: &[usize],
    query_count: usize,
    half_window: Option<usize>,
) -> Vec<Block> {
    if query_count == 0 {
        return Vec::new();
    }
    let Some(half) = half_window else {
        return vec![Block {
            queries: 0..query_count,
            keys: 0..positions.len(),
        }];
    };
    (0..query_count)
        .step_by(QUERIES_PER_BLOCK)
        .map(|start| {
            let end = (start + QUERIES_PER_BLOCK).min(query_count);
            let lowest = positions[start].saturating_sub(half);
            let highest = positions[end - 1] + half;
            Block {
                queries: start..end,
                keys: positions.partition_point(|&p| p < lowest)
                    ..positions.partition_point(|&p| p <= highest),
            }
        })
        .collect()
}

impl ModernLayerOp {
    /// The window's score bias of a block (0 inside, the f32 minimum outside), row-major
    /// `queries × keys`; `None` on a global layer.
    fn window_bias(&self, positions: &[usize], block: &Block) -> Option<Vec<f32>> {
        let half = self.dims.half_window?;
        let mut bias = Vec::with_capacity(block.size());
        for &query in &positions[block.queries.clone()] {
            for &key in &positions[block.keys.clone()] {
                bias.push(if query.abs_diff(key) <= half {
                    0.0
                } else {
                    f32::MIN
                });
            }
        }
        Some(bias)
    }

    /// The attention-probability dropout mask of one block and head (false without
    /// dropout).
    fn block_dropout(
        &self,
        plan: &LayerPlan,
        b: usize,
        h: usize,
        block: &Block,
        out: &mut [f32],
    ) -> bool {
        let Some(masks) = &self.dropout.attention_probs else {
            return false;
        };
        let (seq, positions) = (plan.packing.seq, &plan.packing.positions[b]);
        let start = (b * self.dims.heads + h) * seq * seq;
        let keys = &positions[block.keys.clone()];
        for (i, &query) in positions[block.queries.clone()].iter().enumerate() {
            let row = &masks[start + query * seq..start + (query + 1) * seq];
            for (o, &key) in out[i * keys.len()..(i + 1) * keys.len()]
                .iter_mut()
                .zip(keys)
            {
                *o = row[key];
            }
        }
        true
    }

    /// Softmax of a block's scaled scores, with the window's bias where there is one.
    fn block_softmax(&self, scores: &mut [f32], width: usize, window: Option<&[f32]>) {
        let scale = 1.0 / (self.dims.head_size() as f32).sqrt();
        match window {
            Some(bias) => {
                for (row, bias) in scores.chunks_mut(width).zip(bias.chunks(width)) {
                    simd::softmax_rows(row, width, bias, scale);
                }
            }
            None => simd::softmax_rows(scores, width, &vec![0f32; width], scale),
        }
    }

    /// Attention forward for batch element `b`: fills its probabilities (per block, per
    /// head) and its `[queries, hidden]` context rows from its rotated `[queries, hidden]`
    /// queries and `[len, 2·hidden]` keys and values.
    pub(super) fn attention_forward(
        &self,
        plan: &LayerPlan,
        b: usize,
        query: &[f32],
        key_value: &[f32],
        probs: &mut [f32],
        context: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let positions = &plan.packing.positions[b];
        let mut offset = 0;
        for block in &plan.blocks[b] {
            let (q0, k0) = (block.queries.start, block.keys.start);
            let (queries, keys) = (block.queries.len(), block.keys.len());
            let window = self.window_bias(positions, block);
            let mut dropout_mask = vec![0f32; block.size()];
            let mut dropped = vec![0f32; block.size()];
            for h in 0..heads {
                let scores = &mut probs[offset..offset + block.size()];
                offset += block.size();
                // scores = Q · Kᵀ
                matmul(
                    scores,
                    view(0, keys, 1),
                    query,
                    view(q0 * hidden + h * head, hidden, 1),
                    key_value,
                    view(k0 * 2 * hidden + h * head, 1, 2 * hidden),
                    (queries, keys, head),
                    false,
                    Parallelism::None,
                );
                self.block_softmax(scores, keys, window.as_deref());
                let weights: &[f32] = if self.block_dropout(plan, b, h, block, &mut dropout_mask) {
                    simd::product(scores, &dropout_mask, &mut dropped);
                    &dropped
                } else {
                    scores
                };
                // context = P · V
                matmul(
                    context,
                    view(q0 * hidden + h * head, hidden, 1),
                    weights,
                    view(0, keys, 1),
                    key_value,
                    view(k0 * 2 * hidden + hidden + h * head, 2 * hidden, 1),
                    (queries, head, keys),
                    false,
                    Parallelism::None,
                );
            }
        }
    }

    /// Attention backward for batch element `b`: writes its rows of `d_query` and adds into
    /// its rows of `d_key_value` (blocks share keys).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &self,
        plan: &LayerPlan,
        b: usize,
        query: &[f32],
        key_value: &[f32],
        probs: &[f32],
        d_context: &[f32],
        d_query: &mut [f32],
        d_key_value: &mut [f32],
    ) {
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = 1.0 / (head as f32).sqrt();
        let mut offset = 0;
        for block in &plan.blocks[b] {
            let (q0, k0) = (block.queries.start, block.keys.start);
            let (queries, keys) = (block.queries.len(), block.keys.len());
            let mut dropout_mask = vec![0f32; block.size()];
            let mut dropped = vec![0f32; block.size()];
            let mut d_scores = vec![0f32; block.size()];
            for h in 0..heads {
                let p = &probs[offset..offset + block.size()];
                offset += block.size();
                let has_dropout = self.block_dropout(plan, b, h, block, &mut dropout_mask);
                let weights: &[f32] = if has_dropout {
                    simd::product(p, &dropout_mask, &mut dropped);
                    &dropped
                } else {
                    p
                };
                // dV += Pᵀ · dC
                matmul(
                    d_key_value,
                    view(k0 * 2 * hidden + hidden + h * head, 2 * hidden, 1),
                    weights,
                    view(0, 1, keys),
                    d_context,
                    view(q0 * hidden + h * head, hidden, 1),
                    (keys, head, queries),
                    true,
                    Parallelism::None,
                );
                // dP = dC · Vᵀ
                matmul(
                    &mut d_scores,
                    view(0, keys, 1),
                    d_context,
                    view(q0 * hidden + h * head, hidden, 1),
                    key_value,
                    view(k0 * 2 * hidden + hidden + h * head, 1, 2 * hidden),
                    (queries, keys, head),
                    false,
                    Parallelism::None,
                );
                // Through dropout and softmax: dS = scale · P ⊙ (dP − Σ dP·P); the window's
                // masked scores have P = 0 and get none.
                if has_dropout {
                    let d_dropped = d_scores.clone();
                    simd::product(&d_dropped, &dropout_mask, &mut d_scores);
                }
                simd::softmax_backward_rows(&mut d_scores, p, keys, scale);
                // dQ = dS · K
                matmul(
                    d_query,
                    view(q0 * hidden + h * head, hidden, 1),
                    &d_scores,
                    view(0, keys, 1),
                    key_value,
                    view(k0 * 2 * hidden + h * head, 2 * hidden, 1),
                    (queries, head, keys),
                    false,
                    Parallelism::None,
                );
                // dK += dSᵀ · Q
                matmul(
                    d_key_value,
                    view(k0 * 2 * hidden + h * head, 2 * hidden, 1),
                    &d_scores,
                    view(0, 1, keys),
                    query,
                    view(q0 * hidden + h * head, hidden, 1),
                    (keys, head, queries),
                    true,
                    Parallelism::None,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_blocks_reach_only_their_window() {
        let positions: Vec<usize> = (0..200).collect();
        let blocks = blocks_of(&positions, 200, Some(16));
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[0].keys, 0..64 + 16);
        assert_eq!(blocks[1].queries, 64..128);
        assert_eq!(blocks[1].keys, 48..128 + 16);
        assert_eq!(blocks[3].keys, 192 - 16..200);
        // A global layer, and a first-token-only one.
        assert_eq!(
            blocks_of(&positions, 200, None),
            [Block {
                queries: 0..200,
                keys: 0..200
            }]
        );
        assert_eq!(blocks_of(&positions, 1, Some(16))[0].keys, 0..17);
        assert!(blocks_of(&positions, 0, None).is_empty());
    }
}
