//! DeBERTa's relative positions: `i − j` between a query and a key token, log-bucketed beyond
//! half the buckets (`make_log_bucket_position`), shifted into a row of the relative
//! embedding. Both relative terms read the same row for a pair `(i, j)`: the content-to-
//! position term at the query's distance `δ(i − j)`, and the position-to-content term, which
//! transformers computes as the key's view `−δ(j − i)` and transposes, at the same row
//! because the bucketing is odd (`δ(−r) = −δ(r)`).

use candle_core::{Device, Result, Tensor};

/// transformers' `make_log_bucket_position(r, bucket_size, max_position)` for one distance,
/// in f32 as torch computes it (its `log` of float32 tensors), so that a distance near a
/// bucket edge lands in the same bucket.
pub fn log_bucket(relative: i64, bucket_size: usize, max_position: usize) -> i64 {
    let mid = (bucket_size / 2) as i64;
    let magnitude = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if magnitude <= mid {
        return relative;
    }
    let ratio = (magnitude as f32 / mid as f32).ln();
    let range = ((max_position - 1) as f32 / mid as f32).ln();
    let log_position = (ratio / range * (mid - 1) as f32).ceil() + mid as f32;
    log_position as i64 * relative.signum()
}

/// The relative embedding row of every `(query i, key j)` pair of a sequence, and the flat
/// indices that gather each term's scores from `[.., s, 2·span]` products.
#[derive(Debug, Clone)]
pub struct RelativeIndex {
    /// `i · 2span + row(i, j)`, row-major over `(i, j)`: the content-to-position scores
    /// `q_i · k^r_row` from `Q · (K^r)ᵀ` flattened per head.
    pub content_to_position: Tensor,
    /// `j · 2span + row(i, j)`, row-major over `(i, j)`: the position-to-content scores
    /// `k_j · q^r_row` from `K · (Q^r)ᵀ` flattened per head.
    pub position_to_content: Tensor,
}

/// Relative-position settings of one model.
#[derive(Debug, Clone, Copy)]
pub struct RelativePositions {
    /// Positions each side: the relative embedding has `2 · span` rows.
    pub span: usize,
    /// Log buckets (with `max_position`), or none.
    pub buckets: Option<usize>,
    /// The longest distance the log buckets stretch to.
    pub max_position: usize,
}

impl RelativePositions {
    /// The embedding row of the pair `(query, key)`: its (bucketed) distance plus `span`,
    /// clamped to the table.
    pub fn row(&self, query: usize, key: usize) -> usize {
        let distance = query as i64 - key as i64;
        let bucketed = match self.buckets {
            Some(buckets) => log_bucket(distance, buckets, self.max_position),
            None => distance,
        };
        (bucketed + self.span as i64).clamp(0, 2 * self.span as i64 - 1) as usize
    }

    /// The row of every (query, key) position pair of a sequence of `seq_len` tokens,
    /// row-major `[seq, seq]`.
    pub fn rows(&self, seq_len: usize) -> Vec<u32> {
        (0..seq_len)
            .flat_map(|query| (0..seq_len).map(move |key| self.row(query, key) as u32))
            .collect()
    }
}

impl RelativeIndex {
    /// The gather indices of a sequence of `seq_len` tokens whose pairs' rows are `rows`
    /// ([`RelativePositions::rows`]), against a table of `table_rows` rows.
    pub fn from_rows(
        rows: &[u32],
        seq_len: usize,
        table_rows: usize,
        device: &Device,
    ) -> Result<Self> {
        let index = |of: &dyn Fn(usize, usize) -> usize| -> Result<Tensor> {
            let values: Vec<u32> = rows
                .iter()
                .enumerate()
                .map(|(pair, &row)| (of(pair / seq_len, pair % seq_len) * table_rows) as u32 + row)
                .collect();
            Tensor::from_vec(values, rows.len(), device)
        };
        Ok(Self {
            content_to_position: index(&|query, _| query)?,
            position_to_content: index(&|_, key| key)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of transformers' `make_log_bucket_position(torch.arange(-127, 128), 32, 128)`
    /// at a few distances (torch 2.x, float32; `(-600..600)[::50]` for 256 buckets), and what the identity region keeps.
    #[test]
    fn log_buckets_match_transformers() {
        for (distance, bucket) in [
            (0, 0),
            (5, 5),
            (-16, -16),
            (16, 16),
            (17, 17),
            (20, 18),
            (31, 21),
            (32, 22),
            (64, 27),
            (100, 30),
            (127, 31),
            (-127, -31),
            (-40, -23),
        ] {
            assert_eq!(log_bucket(distance, 32, 128), bucket, "distance {distance}");
        }
        // deberta-v3's 256 buckets over 512 positions, past the longest distance too.
        for (distance, bucket) in [
            (-600, -270),
            (-150, -143),
            (150, 143),
            (550, 262),
            (100, 100),
        ] {
            assert_eq!(
                log_bucket(distance, 256, 512),
                bucket,
                "distance {distance}"
            );
        }
        // Odd, so both relative terms read the same row.
        for distance in -300..300 {
            assert_eq!(
                log_bucket(-distance, 256, 512),
                -log_bucket(distance, 256, 512)
            );
        }
    }

    #[test]
    fn rows_are_clamped_into_the_table() {
        let positions = RelativePositions {
            span: 4,
            buckets: None,
            max_position: 16,
        };
        assert_eq!(positions.row(0, 0), 4);
        assert_eq!(positions.row(3, 0), 7);
        assert_eq!(positions.row(9, 0), 7);
        assert_eq!(positions.row(0, 9), 0);
        let index =
            RelativeIndex::from_rows(&positions.rows(3), 3, 2 * positions.span, &Device::Cpu)
                .unwrap();
        let c2p = index.content_to_position.to_vec1::<u32>().unwrap();
        let p2c = index.position_to_content.to_vec1::<u32>().unwrap();
        // (i = 1, j = 2): row 3; c2p reads query 1's products, p2c key 2's.
        assert_eq!(c2p[5], 8 + 3);
        assert_eq!(p2c[5], 16 + 3);
    }
}
