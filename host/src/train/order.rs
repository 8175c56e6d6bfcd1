//! The order rows are seen in: a seeded permutation per epoch, optionally grouped by length.

#![allow(unused_imports)]
use super::*;

/// Rows per "megabatch" in `group_by_length`, in batches (transformers' LengthGroupedSampler
/// uses 50).
const LENGTH_GROUP_BATCHES: usize = 50;

/// The order of the rows in an epoch with `group_by_length`: the shuffled order cut into
/// megabatches of 50 batches, each sorted by length, longest first, so that a batch holds rows
/// of similar length and pads little. The shuffle still decides which rows meet.
pub fn length_grouped_order(
    lengths: &[usize],
    seed: u64,
    epoch: usize,
    batch_size: usize,
) -> Vec<usize> {
    let mut order = epoch_order(lengths.len(), seed, epoch);
    for group in order.chunks_mut(batch_size.max(1) * LENGTH_GROUP_BATCHES) {
        // Stable: equal lengths keep their shuffled order.
        group.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    }
    order
}

/// The order of the rows in an epoch: a seeded Fisher-Yates shuffle.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng = SeededRng::new(derive_seed(seed, SHUFFLE, epoch as u64));
    for i in (1..rows).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_grouped_batches_pad_little() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 3).collect();
        let order = length_grouped_order(&lengths, 5, 0, 4);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        // Within each megabatch of 200 rows, lengths never increase.
        for group in order.chunks(200) {
            assert!(group.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        // Padding (Σ over batches of max length × rows) drops against the plain shuffle.
        let padded = |order: &[usize]| -> usize {
            order
                .chunks(4)
                .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len())
                .sum()
        };
        assert!(padded(&order) * 10 < padded(&epoch_order(1000, 5, 0)) * 8);
        assert_eq!(order, length_grouped_order(&lengths, 5, 0, 4));
        assert_ne!(order, length_grouped_order(&lengths, 5, 1, 4));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 12, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 12, 0));
        assert_ne!(a, epoch_order(50, 12, 1));
        assert_ne!(a, epoch_order(50, 13, 0));
    }
}
