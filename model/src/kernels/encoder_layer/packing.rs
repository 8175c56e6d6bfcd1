//! Packing of real tokens: the positions that hold real tokens, where each goes when the
//! padding is squeezed out, and the gather/scatter between padded and packed rows.

/// Which positions of a padded batch hold real tokens, and where they go when the padding
/// is squeezed out. Every row-wise step (the five projections, GELU, both LayerNorms) runs
/// on the real tokens only, and attention runs over each sequence's real tokens only; a
/// padded key gets probability exactly 0 in the padded computation too (its score is the
/// dtype's lowest value, whose exponential underflows to 0), so the real tokens' values are
/// the same. Padded positions come out as zeros instead of the values transformers computes
/// for them, which nothing reads: the pooler reads the first token, mean pooling masks them,
/// the next layer's attention never looks at them, and their gradients are zero either way.
///
/// The query rows are the rows the layer computes an output for: every real token, or only
/// each sequence's first (an encoder's last layer under `cls` pooling) or last (a decoder's
/// last layer, whose head reads the last token).
pub(crate) struct Packing {
    pub(crate) seq: usize,
    /// Per batch element, the positions of its real tokens.
    pub(crate) positions: Vec<Vec<usize>>,
    /// Per batch element, its first row among the packed rows (`batch + 1` entries).
    pub(crate) starts: Vec<usize>,
    /// Per batch element, how many of its real tokens are query rows (all or 1).
    pub(crate) query_counts: Vec<usize>,
    /// Per batch element, the index among its real tokens of its first query row (0, or
    /// its last token's when only that one is a query).
    pub(crate) query_offsets: Vec<usize>,
    /// Per batch element, its first row among the packed query rows (`batch + 1`).
    pub(crate) query_starts: Vec<usize>,
    /// Per batch element, where its `[heads, queries, len]` probabilities start (`batch + 1`).
    pub(crate) prob_starts: Vec<usize>,
}

/// Which of a sequence's real tokens a layer computes an output for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRows {
    /// Every real token.
    All,
    /// Only the first.
    First,
    /// Only the last.
    Last,
}

impl Packing {
    /// Real tokens are those whose mask bias is 0; padding's is any large negative number
    /// (BERT's the f32 minimum, ModernBERT's −1e9), so anything below −1.
    pub(crate) fn from_mask(
        mask_bias: &[f32],
        batch: usize,
        seq: usize,
        heads: usize,
        first_token_only: bool,
    ) -> Self {
        let queries = if first_token_only {
            QueryRows::First
        } else {
            QueryRows::All
        };
        Self::with_queries(mask_bias, batch, seq, heads, queries)
    }

    /// As [`Packing::from_mask`], with the query rows chosen.
    pub(crate) fn with_queries(
        mask_bias: &[f32],
        batch: usize,
        seq: usize,
        heads: usize,
        queries: QueryRows,
    ) -> Self {
        let positions: Vec<Vec<usize>> = (0..batch)
            .map(|b| {
                (0..seq)
                    .filter(|&j| mask_bias[b * seq + j] > -1.0)
                    .collect()
            })
            .collect();
        let query_counts: Vec<usize> = positions
            .iter()
            .map(|p| match queries {
                QueryRows::All => p.len(),
                QueryRows::First | QueryRows::Last => p.len().min(1),
            })
            .collect();
        let query_offsets: Vec<usize> = positions
            .iter()
            .zip(&query_counts)
            .map(|(p, &count)| match queries {
                QueryRows::Last => p.len() - count,
                QueryRows::All | QueryRows::First => 0,
            })
            .collect();
        let running = |sizes: &mut dyn Iterator<Item = usize>| {
            let mut starts = vec![0];
            for size in sizes {
                starts.push(starts.last().copied().unwrap_or(0) + size);
            }
            starts
        };
        let starts = running(&mut positions.iter().map(Vec::len));
        let query_starts = running(&mut query_counts.iter().copied());
        let prob_starts = running(
            &mut positions
                .iter()
                .zip(&query_counts)
                .map(|(p, &q)| heads * q * p.len()),
        );
        Self {
            seq,
            positions,
            starts,
            query_counts,
            query_offsets,
            query_starts,
            prob_starts,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    pub(crate) fn query_rows(&self) -> usize {
        self.query_starts.last().copied().unwrap_or(0)
    }

    pub(crate) fn all_rows_are_queries(&self) -> bool {
        self.rows() == self.query_rows()
    }

    /// The (batch element, position) of every real row, in packed order.
    pub(crate) fn real_positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.positions
            .iter()
            .enumerate()
            .flat_map(|(b, p)| p.iter().map(move |&j| (b, j)))
    }

    /// The (batch element, position) of every query row, in packed order.
    pub(crate) fn query_positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.positions
            .iter()
            .zip(self.query_counts.iter().zip(&self.query_offsets))
            .enumerate()
            .flat_map(|(b, (p, (&q, &o)))| p[o..o + q].iter().map(move |&j| (b, j)))
    }

    /// The rows at `positions` of a `[batch·seq, width]` matrix, packed.
    pub(crate) fn gather(
        &self,
        full: &[f32],
        width: usize,
        positions: impl Iterator<Item = (usize, usize)>,
    ) -> Vec<f32> {
        let mut packed = Vec::new();
        for (b, j) in positions {
            let row = b * self.seq + j;
            packed.extend_from_slice(&full[row * width..(row + 1) * width]);
        }
        packed
    }

    /// Packed rows back to `positions` of a `[batch·seq, width]` matrix, zeros elsewhere.
    pub(crate) fn scatter(
        &self,
        packed: &[f32],
        width: usize,
        positions: impl Iterator<Item = (usize, usize)>,
    ) -> Vec<f32> {
        let mut full = vec![0f32; self.positions.len() * self.seq * width];
        for (next, (b, j)) in positions.enumerate() {
            let row = b * self.seq + j;
            full[row * width..(row + 1) * width]
                .copy_from_slice(&packed[next * width..(next + 1) * width]);
        }
        full
    }

    /// Per batch element, the range of its query rows among the packed real rows.
    fn query_row_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.starts
            .iter()
            .zip(&self.query_counts)
            .zip(&self.query_offsets)
            .map(|((&start, &count), &offset)| start + offset..start + offset + count)
    }

    /// The query rows among packed real rows (`None`: all of them, no copy needed).
    pub(crate) fn select_queries(&self, packed: &[f32], width: usize) -> Option<Vec<f32>> {
        if self.all_rows_are_queries() {
            return None;
        }
        let mut queries = Vec::with_capacity(self.query_rows() * width);
        for rows in self.query_row_ranges() {
            queries.extend_from_slice(&packed[rows.start * width..rows.end * width]);
        }
        Some(queries)
    }

    /// Adds packed query rows into their places among packed real rows.
    pub(crate) fn add_queries_into(&self, packed: &mut [f32], queries: &[f32], width: usize) {
        let mut next = 0;
        for rows in self.query_row_ranges() {
            let count = rows.len();
            let target = &mut packed[rows.start * width..rows.end * width];
            for (t, &q) in target
                .iter_mut()
                .zip(&queries[next * width..(next + count) * width])
            {
                *t += q;
            }
            next += count;
        }
    }
}

/// Splits `buffer` into one mutable piece per batch element, `unit` values per step of
/// `starts` (a running total with `batch + 1` entries).
pub(crate) fn split_mut<'a>(
    buffer: &'a mut [f32],
    starts: &[usize],
    unit: usize,
) -> Vec<&'a mut [f32]> {
    let mut rest = buffer;
    starts
        .windows(2)
        .map(|w| {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * unit);
            rest = tail;
            piece
        })
        .collect()
}

/// The same for a shared buffer.
pub(crate) fn split<'a>(buffer: &'a [f32], starts: &[usize], unit: usize) -> Vec<&'a [f32]> {
    let mut rest = buffer;
    starts
        .windows(2)
        .map(|w| {
            let (piece, tail) = rest.split_at((w[1] - w[0]) * unit);
            rest = tail;
            piece
        })
        .collect()
}
