//! The order rows are seen in: a seeded permutation per epoch, optionally grouped by length,
//! cut into batches by the configured batch sampler (sentence-transformers' three).

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

/// The batches of epoch `epoch`, each a list of row indices, as `sampler` cuts them:
/// - `batch_sampler`: consecutive rows of the epoch order (length-grouped with
///   `row_lengths`), the last batch possibly short;
/// - `no_duplicates`: sentence-transformers' `NoDuplicatesBatchSampler`: walking the epoch
///   order, a row joins the batch unless one of its texts (any column, labels excluded) is
///   already in it; a skipped row stays at its place for the next batch, and each batch
///   starts again from the first row not yet placed. Every row is placed once per epoch;
///   there may be more batches than `rows / batch_size`;
/// - `group_by_label`: `GroupByLabelBatchSampler`: rows shuffled within each label (labels
///   with fewer than 2 rows dropped, each trimmed to an even count), labels taking turns (in
///   an order reshuffled every round) to emit 2 rows until fewer than 2 labels remain, the
///   stream cut into full batches and a last one of at least 4 rows.
pub fn epoch_batches(
    sampler: config::BatchSampler,
    dataset: &Dataset,
    row_order: RowOrder<'_>,
    seed: u64,
    epoch: usize,
    batch_size: usize,
) -> Result<Vec<Vec<usize>>, DatasetError> {
    let batch_size = batch_size.max(1);
    let order = || match row_order {
        RowOrder::Random => epoch_order(dataset.len(), seed, epoch),
        RowOrder::Sequential => (0..dataset.len()).collect(),
        RowOrder::LengthGrouped(lengths) => length_grouped_order(lengths, seed, epoch, batch_size),
    };
    Ok(match sampler {
        config::BatchSampler::BatchSampler => {
            order().chunks(batch_size).map(<[usize]>::to_vec).collect()
        }
        config::BatchSampler::NoDuplicates => no_duplicate_batches(
            dataset,
            &match row_order {
                RowOrder::Sequential => (0..dataset.len()).collect(),
                _ => epoch_order(dataset.len(), seed, epoch),
            },
            batch_size,
        ),
        config::BatchSampler::GroupByLabel => {
            group_by_label_batches(dataset, seed, epoch, batch_size)?
        }
    })
}

/// The order rows are taken in before the batch sampler cuts them
/// (`train_sampling_strategy`).
#[derive(Debug, Clone, Copy)]
pub enum RowOrder<'a> {
    /// A seeded permutation per epoch (the default, and the reference's).
    Random,
    /// The data's own order every epoch.
    Sequential,
    /// Shuffled, then sorted by these row lengths within megabatches (`group_by_length`).
    LengthGrouped(&'a [usize]),
}

/// The texts of a row that `no_duplicates` compares: each text column's value, a document
/// list as a whole.
fn row_keys(dataset: &Dataset, row: usize) -> Vec<String> {
    dataset
        .columns
        .iter()
        .map(|column| {
            if column.is_list() {
                format!("{:?}", column.row_texts(row))
            } else {
                column.text(row, 0).unwrap_or_default().to_string()
            }
        })
        .collect()
}

fn no_duplicate_batches(dataset: &Dataset, order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let keys: Vec<Vec<String>> = (0..dataset.len())
        .map(|row| row_keys(dataset, row))
        .collect();
    let mut remaining: Vec<usize> = order.to_vec();
    let mut batches = Vec::new();
    while !remaining.is_empty() {
        let mut in_batch: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut batch = Vec::with_capacity(batch_size);
        let mut deferred = Vec::with_capacity(remaining.len());
        let mut rest = remaining.iter();
        for &row in rest.by_ref() {
            if keys[row].iter().any(|key| in_batch.contains(key.as_str())) {
                deferred.push(row);
                continue;
            }
            batch.push(row);
            if batch.len() == batch_size {
                break;
            }
            in_batch.extend(keys[row].iter().map(String::as_str));
        }
        deferred.extend(rest.copied());
        batches.push(batch);
        remaining = deferred;
    }
    batches
}

fn group_by_label_batches(
    dataset: &Dataset,
    seed: u64,
    epoch: usize,
    batch_size: usize,
) -> Result<Vec<Vec<usize>>, DatasetError> {
    let origin = dataset.origin();
    if batch_size < 4 || batch_size % 2 == 1 {
        return Err(DatasetError::Format(format!(
            "{origin}: batch_sampler \"group_by_label\" needs an even batch size of at least 4, \
             not {batch_size}"
        )));
    }
    let labels = match dataset.label.as_ref().map(|l| &l.values) {
        Some(LabelValues::Scalars(values)) => values,
        _ => {
            return Err(DatasetError::Format(format!(
                "{origin}: batch_sampler \"group_by_label\" needs a label column with one \
                 value per row; the data has {}",
                dataset.describe()
            )))
        }
    };
    // Labels in order of first appearance, as a dict keeps them.
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for (row, label) in labels.iter().enumerate() {
        let bits = label.to_bits();
        match groups.iter_mut().find(|(b, _)| *b == bits) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((bits, vec![row])),
        }
    }
    groups.retain(|(_, rows)| rows.len() >= 2);
    for (_, rows) in &mut groups {
        rows.truncate(rows.len() / 2 * 2);
    }
    if groups.len() < 2 {
        return Err(DatasetError::Format(format!(
            "{origin}: batch_sampler \"group_by_label\" needs at least 2 labels with 2 or more \
             rows each; {} qualify",
            groups.len()
        )));
    }
    let mut rng = SeededRng::new(derive_seed(seed, SHUFFLE, epoch as u64));
    let shuffle = |items: &mut [usize], rng: &mut SeededRng| {
        for i in (1..items.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    };
    let mut queues: Vec<std::collections::VecDeque<usize>> = groups
        .into_iter()
        .map(|(_, mut rows)| {
            shuffle(&mut rows, &mut rng);
            rows.into()
        })
        .collect();
    let mut labels_left: Vec<usize> = (0..queues.len()).collect();
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(batch_size);
    while labels_left.len() >= 2 {
        shuffle(&mut labels_left, &mut rng);
        for &label in &labels_left {
            for _ in 0..2 {
                if let Some(row) = queues[label].pop_front() {
                    batch.push(row);
                }
            }
            if batch.len() >= batch_size {
                let rest = batch.split_off(batch_size);
                batches.push(std::mem::replace(&mut batch, rest));
            }
        }
        labels_left.retain(|&label| !queues[label].is_empty());
    }
    if batch.len() >= 4 {
        batches.push(batch);
    }
    Ok(batches)
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

    fn dataset(jsonl: &str) -> Dataset {
        crate::data::dataset::parse_jsonl_dataset(jsonl, Path::new("t.jsonl")).unwrap()
    }

    #[test]
    fn no_duplicates_never_puts_a_text_twice_in_a_batch_and_places_every_row() {
        // 40 rows over 5 anchors and 10 positives: full of repeats.
        let text: String = (0..40)
            .map(|i| {
                format!(
                    "{{\"anchor\": \"a{}\", \"positive\": \"p{}\"}}\n",
                    i % 5,
                    i % 10
                )
            })
            .collect();
        let data = dataset(&text);
        for epoch in 0..3 {
            let batches = epoch_batches(
                config::BatchSampler::NoDuplicates,
                &data,
                RowOrder::Random,
                7,
                epoch,
                4,
            )
            .unwrap();
            let mut placed: Vec<usize> = batches.concat();
            placed.sort();
            assert_eq!(placed, (0..40).collect::<Vec<_>>());
            for batch in &batches {
                let mut texts: Vec<String> =
                    batch.iter().flat_map(|&r| row_keys(&data, r)).collect();
                let count = texts.len();
                texts.sort();
                texts.dedup();
                assert_eq!(texts.len(), count, "a text twice in {batch:?}");
                assert!(!batch.is_empty() && batch.len() <= 4);
            }
            // With at most 5 distinct anchors a batch of 4 is possible, so most are full.
            assert!(batches.iter().filter(|b| b.len() == 4).count() >= 8);
        }
    }

    #[test]
    fn group_by_label_batches_hold_two_labels_with_pairs() {
        let text: String = (0..30)
            .map(|i| {
                format!(
                    "{{\"text\": \"t{i}\", \"label\": {}}}\n",
                    [0, 0, 1, 2, 2, 2][i % 6]
                )
            })
            .collect();
        let data = dataset(&text);
        let batches = epoch_batches(
            config::BatchSampler::GroupByLabel,
            &data,
            RowOrder::Random,
            3,
            0,
            4,
        )
        .unwrap();
        let labels = match &data.label.as_ref().unwrap().values {
            LabelValues::Scalars(values) => values.clone(),
            _ => unreachable!(),
        };
        assert!(!batches.is_empty());
        // Labels come in pairs; as in the reference, a pair carried over from one round may
        // meet its own label's next pair, so most (not all) batches mix labels.
        let mut mixed = 0;
        for batch in &batches {
            let mut counts = std::collections::BTreeMap::new();
            for &row in batch {
                *counts.entry(labels[row] as i32).or_insert(0) += 1;
            }
            assert!(counts.values().all(|&c| c % 2 == 0), "{batch:?}");
            mixed += usize::from(counts.len() >= 2);
        }
        assert!(mixed * 2 >= batches.len(), "{mixed} of {}", batches.len());
        // 10, 5 and 15 rows: 5, 2 and 7 pairs; the stream stops when one label is left, so
        // (the reference's length) 2 × (5 + 5 + 2) = 24 rows, 6 batches of 4.
        let placed: usize = batches.iter().map(Vec::len).sum();
        assert_eq!((placed, batches.len()), (24, 6));
        let error = epoch_batches(
            config::BatchSampler::GroupByLabel,
            &data,
            RowOrder::Random,
            3,
            0,
            5,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("even batch size"), "{error}");
    }

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
    fn sequential_order_keeps_the_datas_order_every_epoch() {
        let data = crate::data::dataset::parse_jsonl_dataset(
            &(0..10)
                .map(|i| format!("{{\"query\": \"q{i}\", \"document\": \"d{i}\", \"label\": 1}}\n"))
                .collect::<String>(),
            std::path::Path::new("t.jsonl"),
        )
        .unwrap();
        for epoch in 0..2 {
            let batches = epoch_batches(
                config::BatchSampler::BatchSampler,
                &data,
                RowOrder::Sequential,
                7,
                epoch,
                4,
            )
            .unwrap();
            assert_eq!(
                batches,
                vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
            );
        }
        let random = epoch_batches(
            config::BatchSampler::BatchSampler,
            &data,
            RowOrder::Random,
            7,
            0,
            4,
        )
        .unwrap();
        assert_ne!(random[0], vec![0, 1, 2, 3]);
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
