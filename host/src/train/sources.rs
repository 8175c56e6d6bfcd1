//! The run's datasets, each with its loss, and the order their batches take in an epoch: one
//! dataset's batches as its batch sampler cuts them, several datasets' interleaved as the
//! multi-dataset batch sampler says (sentence-transformers' `ProportionalBatchSampler` and
//! `RoundRobinBatchSampler`).

#![allow(unused_imports)]
use super::*;

use config::MultiDatasetBatchSampler;
use datasets::{Datasets, NamedDataset};

/// Seed purpose of the interleaving of several datasets' batches.
const INTERLEAVE: u64 = 5;
/// Seed purpose of the shuffles of the second and later datasets (the first keeps the run's
/// seed, so a one-dataset run is what it always was).
const DATASET_SHUFFLE: u64 = 6;

/// A training dataset with the loss it trains.
pub(super) struct TrainSource {
    /// Its name (`train` for a recipe's single dataset).
    pub(super) name: String,
    pub(super) dataset: Dataset,
    pub(super) loss: Loss,
    pub(super) library: crate::plugins::LibraryInfo,
    /// The data format the dataset matched.
    pub(super) format_name: String,
    /// Characters per row, for `group_by_length`.
    pub(super) row_lengths: Option<Vec<usize>>,
    /// The seed its epoch orders derive from.
    pub(super) seed: u64,
}

/// An evaluation-loss dataset with its loss.
pub(super) struct EvalSource {
    pub(super) dataset: Dataset,
    pub(super) loss: Loss,
    /// `eval_loss`, or `eval_NAME_loss` for a named set.
    pub(super) metric_key: String,
    /// The name the card shows (`eval`, or the set's name).
    pub(super) name: String,
}

fn build_loss(
    registry: &LossRegistry,
    entry: &NamedDataset,
    config: &TrainConfig,
    what: &str,
    model_num_labels: usize,
) -> Result<(Loss, crate::plugins::LibraryInfo), TrainError> {
    let (loss_name, loss_config) = Datasets::loss_of(entry, &config.loss, &config.loss_config);
    let loss_name = if loss_name.is_empty() {
        default_loss(model_num_labels)
    } else {
        loss_name
    };
    let named = |error: PluginError| -> TrainError {
        if config.train.named {
            TrainError::Dataset(DatasetError::Format(format!(
                "{what} `{}`: {error}",
                entry.name
            )))
        } else {
            error.into()
        }
    };
    let loss = registry.build(loss_name, &loss_config).map_err(named)?;
    let library = registry
        .library_of(registry.find(loss_name).map_err(named)?)
        .clone();
    Ok((loss, library))
}

/// The reference trainer's loss when none is named (`CrossEncoderTrainer.get_default_loss`):
/// `BinaryCrossEntropyLoss` for a model of one output, else `CrossEntropyLoss`.
pub fn default_loss(num_labels: usize) -> &'static str {
    if num_labels == 1 {
        "BinaryCrossEntropyLoss"
    } else {
        "CrossEntropyLoss"
    }
}

/// Reads every training dataset, builds its loss, and checks one against the other.
pub(super) fn load_train_sources(
    config: &TrainConfig,
    registry: &LossRegistry,
    model_num_labels: usize,
) -> Result<Vec<TrainSource>, TrainError> {
    let mut sources = Vec::new();
    for (index, entry) in config.train.entries.iter().enumerate() {
        let (loss, library) = build_loss(
            registry,
            entry,
            config,
            "training dataset",
            model_num_labels,
        )?;
        let dataset = read_dataset(&entry.spec)?;
        let description = loss.description().clone();
        let format = dataset
            .check_format(
                "training data",
                loss.qualified_name(),
                &description.formats,
                description.num_labels,
                model_num_labels,
            )
            .map_err(|e| match (config.train.named, e) {
                (true, DatasetError::Format(message)) => {
                    DatasetError::Format(format!("training dataset `{}`: {message}", entry.name))
                }
                (_, e) => e,
            })?
            .clone();
        tracing::info!(
            rows = dataset.len(),
            format = %format.name,
            "training data {} ({}): {}",
            entry.name,
            dataset.origin(),
            dataset.describe()
        );
        let row_lengths = (config.sampling_strategy()
            == config::TrainSamplingStrategy::GroupByLength)
            .then(|| dataset.row_lengths());
        sources.push(TrainSource {
            name: entry.name.clone(),
            dataset,
            loss,
            library,
            format_name: format.name.to_string(),
            row_lengths,
            seed: if index == 0 {
                config.seed
            } else {
                derive_seed(config.seed, DATASET_SHUFFLE, index as u64)
            },
        });
    }
    Ok(sources)
}

/// Reads the evaluation-loss datasets; each takes its own loss, else that of the training
/// dataset of the same name, else the top-level one.
pub(super) fn load_eval_sources(
    config: &TrainConfig,
    registry: &LossRegistry,
    model_num_labels: usize,
) -> Result<Vec<EvalSource>, TrainError> {
    let Some(eval) = &config.eval else {
        return Ok(Vec::new());
    };
    let mut sources = Vec::new();
    for entry in &eval.entries {
        let same_name = config
            .train
            .entries
            .iter()
            .find(|t| config.train.named && eval.named && t.name == entry.name);
        let effective = match (same_name, &entry.loss) {
            (Some(train_entry), None) => NamedDataset {
                loss: train_entry.loss.clone(),
                loss_config: entry
                    .loss_config
                    .clone()
                    .or_else(|| train_entry.loss_config.clone()),
                ..entry.clone()
            },
            // A single evaluation set goes with a single training set's loss.
            (None, None) if !eval.named && !config.train.named => NamedDataset {
                loss: config.train.entries[0].loss.clone(),
                loss_config: config.train.entries[0].loss_config.clone(),
                ..entry.clone()
            },
            _ => entry.clone(),
        };
        let (loss, _) = build_loss(
            registry,
            &effective,
            config,
            "evaluation dataset",
            model_num_labels,
        )?;
        let dataset = read_dataset(&entry.spec)?;
        let description = loss.description().clone();
        dataset
            .check_format(
                "evaluation data",
                loss.qualified_name(),
                &description.formats,
                description.num_labels,
                model_num_labels,
            )
            .map_err(|e| {
                DatasetError::Format(if eval.named {
                    format!("evaluation dataset `{}`: {e}", entry.name)
                } else {
                    format!("evaluation data: {e}")
                })
            })?;
        sources.push(EvalSource {
            dataset,
            loss,
            metric_key: if eval.named {
                format!("eval_{}_loss", entry.name)
            } else {
                "eval_loss".to_string()
            },
            name: if eval.named {
                entry.name.clone()
            } else {
                "eval".to_string()
            },
        });
    }
    Ok(sources)
}

/// One batch of an epoch: the dataset it comes from and its rows.
pub(super) type PlannedBatch = (usize, Vec<usize>);

/// The batches of each dataset in epoch `epoch`.
fn per_source_batches(
    config: &TrainConfig,
    sources: &[TrainSource],
    epoch: usize,
    batch_size: usize,
) -> Result<Vec<Vec<Vec<usize>>>, TrainError> {
    sources
        .iter()
        .map(|source| {
            epoch_batches(
                config.batch_sampler,
                &source.dataset,
                match (&source.row_lengths, config.sampling_strategy()) {
                    (Some(lengths), _) => super::order::RowOrder::LengthGrouped(lengths),
                    (None, config::TrainSamplingStrategy::Sequential) => {
                        super::order::RowOrder::Sequential
                    }
                    (None, _) => super::order::RowOrder::Random,
                },
                source.seed,
                epoch,
                batch_size,
            )
            .map_err(TrainError::from)
        })
        .collect()
}

/// The length of a dataset's batch sampler, as the reference's trainer counts it: rows /
/// batch size, or the label stream's batches for `group_by_label`.
fn sampler_len(
    config: &TrainConfig,
    source: &TrainSource,
    batch_size: usize,
) -> Result<usize, TrainError> {
    Ok(match config.batch_sampler {
        config::BatchSampler::GroupByLabel => epoch_batches(
            config.batch_sampler,
            &source.dataset,
            super::order::RowOrder::Random,
            source.seed,
            0,
            batch_size,
        )?
        .len(),
        _ => source.dataset.len().div_ceil(batch_size),
    })
}

/// Batches per epoch, as the reference's trainer counts them: the sum of the datasets'
/// sampler lengths (proportional) or the smallest times the number of datasets (round
/// robin). `batch_size` is the global batch's (every rank's rows).
pub(super) fn batches_per_epoch(
    config: &TrainConfig,
    sources: &[TrainSource],
    batch_size: usize,
) -> Result<usize, TrainError> {
    let lengths = sources
        .iter()
        .map(|s| sampler_len(config, s, batch_size))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match config.multi_dataset_batch_sampler {
        _ if lengths.len() == 1 => lengths[0],
        MultiDatasetBatchSampler::Proportional => lengths.iter().sum(),
        MultiDatasetBatchSampler::RoundRobin => {
            lengths.iter().copied().min().unwrap_or(0) * lengths.len()
        }
    })
}

/// The global batches of epoch `epoch`, in the order they are trained.
pub(super) fn epoch_plan(
    config: &TrainConfig,
    sources: &[TrainSource],
    epoch: usize,
    batch_size: usize,
) -> Result<Vec<PlannedBatch>, TrainError> {
    let per_source = per_source_batches(config, sources, epoch, batch_size)?;
    if per_source.len() == 1 {
        let batches = per_source.into_iter().next().unwrap_or_default();
        return Ok(batches.into_iter().map(|rows| (0, rows)).collect());
    }
    let mut iterators: Vec<_> = per_source.into_iter().map(Vec::into_iter).collect();
    let mut plan = Vec::new();
    match config.multi_dataset_batch_sampler {
        MultiDatasetBatchSampler::Proportional => {
            // One slot per batch of each dataset, in a seeded order.
            let mut slots: Vec<usize> = iterators
                .iter()
                .enumerate()
                .flat_map(|(index, batches)| std::iter::repeat_n(index, batches.len()))
                .collect();
            let mut rng = SeededRng::new(derive_seed(config.seed, INTERLEAVE, epoch as u64));
            for i in (1..slots.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                slots.swap(i, j);
            }
            for source in slots {
                if let Some(rows) = iterators[source].next() {
                    plan.push((source, rows));
                }
            }
        }
        MultiDatasetBatchSampler::RoundRobin => {
            let rounds = iterators
                .iter()
                .map(ExactSizeIterator::len)
                .min()
                .unwrap_or(0);
            for _ in 0..rounds {
                for (source, batches) in iterators.iter_mut().enumerate() {
                    if let Some(rows) = batches.next() {
                        plan.push((source, rows));
                    }
                }
            }
        }
    }
    Ok(plan)
}
