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
    /// DeBERTa's relative table through the key and the query projections, each
    /// `[table_rows, hidden]`.
    pub(super) relative: Option<(&'a [f32], &'a [f32])>,
}

/// One sequence's relative rows: `row(i, j) − first` for its query rows `i` and real keys
/// `j` (row-major `queries × len`), and the range of table rows they use (only those are
/// multiplied).
struct SequenceRows {
    rows: Vec<usize>,
    first: usize,
    count: usize,
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
        // DeBERTa's composite layer draws its masks head-major, `[heads, batch, seq, seq]`.
        let block = if self.relative.is_some() {
            (h * packing.positions.len() + b) * seq * seq
        } else {
            (b * self.dims.heads + h) * seq * seq
        };
        for (i, &pi) in positions[..packing.query_counts[b]].iter().enumerate() {
            let row = &masks[block + pi * seq..block + (pi + 1) * seq];
            for (o, &pj) in out[i * len..(i + 1) * len].iter_mut().zip(positions) {
                *o = row[pj];
            }
        }
        true
    }

    /// The relative rows of batch element `b` (with relative attention).
    fn sequence_rows(&self, packing: &Packing, b: usize) -> Option<SequenceRows> {
        let relative = self.relative.as_ref()?;
        let (seq, positions) = (packing.seq, &packing.positions[b]);
        let mut rows = Vec::with_capacity(packing.query_counts[b] * positions.len());
        for &query in &positions[..packing.query_counts[b]] {
            for &key in positions {
                rows.push(relative.rows[query * seq + key] as usize);
            }
        }
        let first = rows.iter().copied().min().unwrap_or(0);
        let count = rows
            .iter()
            .copied()
            .max()
            .map_or(0, |last| last + 1 - first);
        rows.iter_mut().for_each(|row| *row -= first);
        Some(SequenceRows { rows, first, count })
    }

    /// The score scale: `1/sqrt(head_size)`, or DeBERTa's `1/sqrt(head_size · terms)`.
    pub(super) fn scale(&self) -> f32 {
        match &self.relative {
            Some(relative) => relative.scale,
            None => 1.0 / (self.dims.head_size() as f32).sqrt(),
        }
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
        let scale = self.scale();
        let len = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let sequence_rows = self.sequence_rows(packing, b);
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
            if let (Some(rows), Some((position_keys, position_queries))) =
                (&sequence_rows, inputs.relative)
            {
                self.add_relative_scores(
                    block,
                    rows,
                    &inputs,
                    (position_keys, position_queries),
                    h,
                    (queries, len),
                );
            }
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
        d_relative: Option<(&mut [f32], &mut [f32])>,
    ) {
        let mut d_relative = d_relative;
        let (hidden, heads) = (self.dims.hidden, self.dims.heads);
        let head = self.dims.head_size();
        let scale = self.scale();
        let len = packing.positions[b].len();
        let queries = packing.query_counts[b];
        let sequence_rows = self.sequence_rows(packing, b);
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
            if let (Some(rows), Some(relative), Some((d_keys, d_queries))) =
                (&sequence_rows, inputs.relative, d_relative.as_mut())
            {
                self.relative_backward(
                    &d_scores,
                    rows,
                    &inputs,
                    relative,
                    (d_query, d_key_value),
                    (d_keys, d_queries),
                    h,
                    (queries, len),
                );
            }
        }
    }

    /// Adds head `h`'s relative terms to its `queries × len` scores: the content-to-position
    /// term `q_i · k^r_row(i,j)` and the position-to-content term `k_j · q^r_row(i,j)`, each
    /// from one product against the table rows the sequence uses.
    fn add_relative_scores(
        &self,
        scores: &mut [f32],
        rows: &SequenceRows,
        inputs: &SequenceAttention,
        (position_keys, position_queries): (&[f32], &[f32]),
        h: usize,
        (queries, len): (usize, usize),
    ) {
        let Some(relative) = &self.relative else {
            return;
        };
        let (hidden, head) = (self.dims.hidden, self.dims.head_size());
        let table = view(rows.first * hidden + h * head, 1, hidden);
        if relative.content_to_position {
            let mut products = vec![0f32; queries * rows.count];
            matmul(
                &mut products,
                view(0, rows.count, 1),
                inputs.query,
                view(h * head, hidden, 1),
                position_keys,
                table,
                (queries, rows.count, head),
                false,
                Parallelism::None,
            );
            for ((scores, rows_of_query), products) in scores
                .chunks_mut(len)
                .zip(rows.rows.chunks(len))
                .zip(products.chunks(rows.count))
            {
                for (score, &row) in scores.iter_mut().zip(rows_of_query) {
                    *score += products[row];
                }
            }
        }
        if relative.position_to_content {
            let mut products = vec![0f32; len * rows.count];
            matmul(
                &mut products,
                view(0, rows.count, 1),
                inputs.key_value,
                view(h * head, 2 * hidden, 1),
                position_queries,
                table,
                (len, rows.count, head),
                false,
                Parallelism::None,
            );
            for (scores, rows_of_query) in scores.chunks_mut(len).zip(rows.rows.chunks(len)) {
                for (j, (score, &row)) in scores.iter_mut().zip(rows_of_query).enumerate() {
                    *score += products[j * rows.count + row];
                }
            }
        }
    }

    /// Head `h`'s relative terms in the backward pass, given its score gradient `d_scores`
    /// (through the softmax): into the queries' and keys' gradients, and into the sequence's
    /// gradients of the projected tables (`d_keys`, `d_queries`, `[table_rows, hidden]`).
    #[allow(clippy::too_many_arguments)]
    fn relative_backward(
        &self,
        d_scores: &[f32],
        rows: &SequenceRows,
        inputs: &SequenceAttention,
        (position_keys, position_queries): (&[f32], &[f32]),
        (d_query, d_key_value): (&mut [f32], &mut [f32]),
        (d_keys, d_queries): (&mut [f32], &mut [f32]),
        h: usize,
        (queries, len): (usize, usize),
    ) {
        let Some(relative) = &self.relative else {
            return;
        };
        let (hidden, head) = (self.dims.hidden, self.dims.head_size());
        let table = view(rows.first * hidden + h * head, hidden, 1);
        if relative.content_to_position {
            // dC2P[i, r] = Σ_j dS[i, j] over the keys at row r.
            let mut d_products = vec![0f32; queries * rows.count];
            for (i, (d_scores, rows_of_query)) in
                d_scores.chunks(len).zip(rows.rows.chunks(len)).enumerate()
            {
                let d_products = &mut d_products[i * rows.count..(i + 1) * rows.count];
                for (&d, &row) in d_scores.iter().zip(rows_of_query) {
                    d_products[row] += d;
                }
            }
            // dQ += dC2P · K^r;  dK^r += dC2Pᵀ · Q
            matmul(
                d_query,
                view(h * head, hidden, 1),
                &d_products,
                view(0, rows.count, 1),
                position_keys,
                table,
                (queries, head, rows.count),
                true,
                Parallelism::None,
            );
            matmul(
                d_keys,
                table,
                &d_products,
                view(0, 1, rows.count),
                inputs.query,
                view(h * head, hidden, 1),
                (rows.count, head, queries),
                true,
                Parallelism::None,
            );
        }
        if relative.position_to_content {
            // dP2C[j, r] = Σ_i dS[i, j] over the queries at row r.
            let mut d_products = vec![0f32; len * rows.count];
            for (d_scores, rows_of_query) in d_scores.chunks(len).zip(rows.rows.chunks(len)) {
                for (j, (&d, &row)) in d_scores.iter().zip(rows_of_query).enumerate() {
                    d_products[j * rows.count + row] += d;
                }
            }
            // dK += dP2C · Q^r;  dQ^r += dP2Cᵀ · K
            matmul(
                d_key_value,
                view(h * head, 2 * hidden, 1),
                &d_products,
                view(0, rows.count, 1),
                position_queries,
                table,
                (len, head, rows.count),
                true,
                Parallelism::None,
            );
            matmul(
                d_queries,
                table,
                &d_products,
                view(0, 1, rows.count),
                inputs.key_value,
                view(h * head, 2 * hidden, 1),
                (rows.count, head, len),
                true,
                Parallelism::None,
            );
        }
    }
}
