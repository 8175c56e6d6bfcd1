//! Hard-negative mining (`crosstrain mine-hard-negatives`), after sentence-transformers'
//! `util.mine_hard_negatives`, and class-label conversion (`crosstrain convert`).
//!
//! The pipeline is the reference's: de-duplicate the queries and the corpus (corpus plus
//! positives), retrieve `range_max + max_positives` candidates per query, optionally rescore
//! them with a cross-encoder, filter (positives, margins, `max_score`, `min_score`), take the
//! window `range_min..range_max`, sample, and write one of four formats. What differs, on
//! purpose: BM25 is the built-in retriever (the reference always needs an embedding model);
//! the dense retriever streams the corpus in chunks with top-k heaps instead of holding every
//! embedding; ties are broken by corpus order; `random` sampling uses crosstrain's seeded
//! generator (one stream per query, so the output does not depend on thread count), not
//! Python's `random`; and a column name that is not in the data is an error rather than a
//! silent fall-back to the first or second column.

pub mod bm25;
pub mod convert;
pub mod corpus;
pub mod dense;
pub mod output;
pub mod select;
pub mod topk;

use std::path::PathBuf;

use crosstrain_plugin_api::rng::SeededRng;

use crate::data::dataset::{Dataset, DatasetError, TextValues};
use crosstrain_model::{ModelError, PairScorer, ScoreError, SentenceEmbedder};
use crosstrain_rng::derive_seed;

/// The names of an option's values, as the reference and the command line spell them:
/// `NAMES`, `name()` and `FromStr` (an unknown name is an error listing the known ones), so
/// the command line parses them without the library knowing clap.
macro_rules! named_values {
    ($type:ident, $what:literal, [$(($variant:ident, $name:literal)),+ $(,)?]) => {
        impl $type {
            /// Every name, as the command line and the reference spell them.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The name of the value.
            pub fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $type {
            type Err = String;

            fn from_str(name: &str) -> Result<Self, String> {
                match name {
                    $($name => Ok($type::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}; expected one of {}"),
                        other,
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}
use named_values;

pub use corpus::{read_corpus, Corpus};
pub use output::OutputFormat;
pub use select::{SamplingStrategy, Selection, Skipped};
pub use topk::Candidate;

use bm25::{Bm25Index, Bm25Params};
use dense::{dense_search, DenseOptions};

/// The seed stream of `random` sampling (see [`derive_seed`]).
const SAMPLING_STREAM: u64 = 0x4D49_4E45; // "MINE"

/// What can go wrong while mining or converting.
#[derive(Debug, thiserror::Error)]
pub enum MineError {
    /// An option is out of range or contradicts another.
    #[error("{0}")]
    Options(String),
    /// The input data does not have what mining needs.
    #[error("{path}: {message}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the column or line.
        message: String,
    },
    /// Reading a data file failed.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The embedding model or cross-encoder failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Cross-encoder rescoring failed.
    #[error("rescoring with the cross-encoder: {0}")]
    Rescore(#[from] ScoreError),
    /// The cross-encoder returned the wrong number of scores.
    #[error("rescoring with the cross-encoder: {scores} scores for {pairs} pairs")]
    RescoreCount {
        /// Scores returned.
        scores: usize,
        /// Pairs asked for.
        pairs: usize,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Every option of a mining run (the reference's names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct MineOptions {
    /// Ranks skipped at the top (default 0).
    pub range_min: usize,
    /// Ranks considered; default `range_min + num_negatives + max_positives`, or
    /// `range_min + 10·num_negatives + max_positives` when a margin, `max_score`, or
    /// `min_score` with a cross-encoder is set.
    pub range_max: Option<usize>,
    /// Drop candidates scoring above this.
    pub max_score: Option<f32>,
    /// Drop candidates scoring below this.
    pub min_score: Option<f32>,
    /// Drop candidates with `score + absolute_margin > min positive score`.
    pub absolute_margin: Option<f32>,
    /// Drop candidates with `score > min_pos − |min_pos|·relative_margin`.
    pub relative_margin: Option<f32>,
    /// Negatives per query (default 3).
    pub num_negatives: usize,
    /// `top` (default) or `random`.
    pub sampling_strategy: SamplingStrategy,
    /// Keep positives among the candidates (forces `n-tuple`, for reranking eval sets).
    pub include_positives: bool,
    /// The output layout (default `triplet`).
    pub output_format: OutputFormat,
    /// Add (or substitute) scores in the output.
    pub output_scores: bool,
    /// Seed of `random` sampling.
    pub seed: u64,
}

impl Default for MineOptions {
    fn default() -> Self {
        Self {
            range_min: 0,
            range_max: None,
            max_score: None,
            min_score: None,
            absolute_margin: None,
            relative_margin: None,
            num_negatives: 3,
            sampling_strategy: SamplingStrategy::Top,
            include_positives: false,
            output_format: OutputFormat::Triplet,
            output_scores: false,
            seed: 12,
        }
    }
}

impl MineOptions {
    /// Whether any score filter is set (these make the default window 10× wider and turn
    /// cross-encoder rescoring on).
    fn filters_scores(&self, rescoring: bool) -> bool {
        self.absolute_margin.is_some()
            || self.relative_margin.is_some()
            || self.max_score.is_some()
            || (rescoring && self.min_score.is_some())
    }

    /// Checks the options against the data and fixes `range_max` and the output format as
    /// the reference does.
    pub fn resolve(&self, max_positives: usize, rescoring: bool) -> Result<Selection, MineError> {
        let bad = |message: String| Err(MineError::Options(message));
        if self.num_negatives < 1 {
            return bad(format!(
                "num_negatives must be at least 1, got {}",
                self.num_negatives
            ));
        }
        for (name, value) in [
            ("absolute_margin", self.absolute_margin),
            ("relative_margin", self.relative_margin),
            ("max_score", self.max_score),
            ("min_score", self.min_score),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return bad(format!("{name} must be a finite number"));
            }
        }
        let range_max = self.range_max.unwrap_or_else(|| {
            let negatives = if self.filters_scores(rescoring) {
                10 * self.num_negatives
            } else {
                self.num_negatives
            };
            self.range_min + negatives + max_positives
        });
        if self.range_min >= range_max {
            return bad(format!(
                "range_min must be smaller than range_max, got range_min={} and range_max={range_max}",
                self.range_min
            ));
        }
        if self.num_negatives > range_max - self.range_min {
            return bad(format!(
                "cannot mine {} negatives per query: only {} candidates remain after skipping \
                 the first range_min={} of range_max={range_max}; decrease num_negatives or \
                 range_min, or increase range_max",
                self.num_negatives,
                range_max - self.range_min,
                self.range_min
            ));
        }
        Ok(Selection {
            include_positives: self.include_positives,
            absolute_margin: self.absolute_margin,
            relative_margin: self.relative_margin,
            max_score: self.max_score,
            min_score: self.min_score,
            range_min: self.range_min,
            range_max,
            num_negatives: self.num_negatives,
            sampling: self.sampling_strategy,
        })
    }

    /// The output format actually written: `include_positives` forces `n-tuple`.
    pub fn effective_format(&self) -> OutputFormat {
        if self.include_positives {
            OutputFormat::NTuple
        } else {
            self.output_format
        }
    }
}

/// The (anchor, positive) pairs to mine for, grouped by de-duplicated query.
#[derive(Debug, Clone, PartialEq)]
pub struct MiningInput {
    /// The anchor column's name (used in the output).
    pub anchor_column: String,
    /// The positive column's name (used in the output).
    pub positive_column: String,
    /// Distinct anchors in first-seen order.
    pub queries: Vec<String>,
    /// Per query, its distinct positives as corpus indices, in first-seen order.
    pub positives: Vec<Vec<u32>>,
    /// The most rows any anchor has (the reference's `max_positives`, counted before
    /// de-duplicating positives).
    pub max_positives: usize,
    /// Rows read.
    pub rows: usize,
}

impl MiningInput {
    /// Takes the anchor and positive columns of `dataset` (default: its first and second
    /// text columns) and adds the positives to `corpus` after whatever it already holds.
    pub fn from_dataset(
        dataset: &Dataset,
        anchor_column: Option<&str>,
        positive_column: Option<&str>,
        corpus: &mut Corpus,
    ) -> Result<Self, MineError> {
        let origin = PathBuf::from(dataset.origin());
        let names: Vec<&str> = dataset.columns.iter().map(|c| c.name.as_str()).collect();
        let pick =
            |wanted: Option<&str>, default: usize, role: &str| {
                let index =
                    match wanted {
                        Some(name) => names.iter().position(|n| *n == name).ok_or_else(|| {
                            MineError::Input {
                                path: origin.clone(),
                                message: format!(
                                    "no {role} column {name:?}; the text columns are {}",
                                    names.join(", ")
                                ),
                            }
                        })?,
                        None if default < names.len() => default,
                        None => {
                            return Err(MineError::Input {
                                path: origin.clone(),
                                message: format!(
                                    "mining needs (anchor, positive) text columns; found {}",
                                    if names.is_empty() {
                                        "none".to_string()
                                    } else {
                                        names.join(", ")
                                    }
                                ),
                            })
                        }
                    };
                match &dataset.columns[index].values {
                    TextValues::Texts(texts) => Ok((names[index].to_string(), texts)),
                    TextValues::Lists(_) => Err(MineError::Input {
                        path: origin.clone(),
                        message: format!(
                            "the {role} column {:?} holds lists; it must hold one text per row",
                            names[index]
                        ),
                    }),
                }
            };
        let (anchor_column, anchors) = pick(anchor_column, 0, "anchor")?;
        let (positive_column, positives) = pick(positive_column, 1, "positive")?;
        if anchor_column == positive_column {
            return Err(MineError::Options(format!(
                "the anchor and positive columns are both {anchor_column:?}"
            )));
        }
        if anchors.is_empty() {
            return Err(MineError::Input {
                path: origin,
                message: "the dataset is empty".into(),
            });
        }
        let mut query_index: std::collections::HashMap<&str, usize> = Default::default();
        let mut queries = Vec::new();
        let mut grouped: Vec<Vec<u32>> = Vec::new();
        let mut rows_per_query: Vec<usize> = Vec::new();
        for (anchor, positive) in anchors.iter().zip(positives) {
            let query = *query_index.entry(anchor).or_insert_with(|| {
                queries.push(anchor.to_string());
                grouped.push(Vec::new());
                rows_per_query.push(0);
                queries.len() - 1
            });
            rows_per_query[query] += 1;
            let document = corpus.insert(positive);
            if !grouped[query].contains(&document) {
                grouped[query].push(document);
            }
        }
        Ok(Self {
            anchor_column,
            positive_column,
            queries,
            positives: grouped,
            max_positives: rows_per_query.into_iter().max().unwrap_or(0),
            rows: anchors.len(),
        })
    }

    /// (query, positive document) in grouped order: the order of positive scores.
    pub fn pairs(&self) -> Vec<(usize, u32)> {
        self.positives
            .iter()
            .enumerate()
            .flat_map(|(query, documents)| documents.iter().map(move |&d| (query, d)))
            .collect()
    }
}

/// The first-stage retriever.
pub enum Retriever<'a> {
    /// BM25 over the corpus (no model).
    Bm25(Bm25Params),
    /// Cosine similarity of normalised sentence embeddings.
    Dense {
        /// The embedding model.
        embedder: &'a SentenceEmbedder,
        /// Documents embedded at a time (bounds memory).
        chunk_size: usize,
        /// Texts per forward pass.
        batch_size: usize,
        /// Prepended to each query before embedding.
        query_prompt: Option<&'a str>,
        /// Prepended to each document before embedding.
        corpus_prompt: Option<&'a str>,
    },
}

/// The cross-encoder that rescores candidates (on either backend), and its batch size.
#[derive(Clone, Copy)]
pub struct Rescorer<'a> {
    /// The model.
    pub scorer: &'a dyn PairScorer,
    /// Pairs per forward pass.
    pub batch_size: usize,
}

impl Rescorer<'_> {
    /// The first output after the model's activation, per pair (what the reference's
    /// `cross_encoder.predict` returns), checked to be one score per pair.
    fn scores(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, MineError> {
        let scores: Vec<f32> = self
            .scorer
            .activated_scores(pairs, self.batch_size)?
            .into_iter()
            .map(|row| row.first().copied().unwrap_or(f32::NAN))
            .collect();
        if scores.len() != pairs.len() {
            return Err(MineError::RescoreCount {
                scores: scores.len(),
                pairs: pairs.len(),
            });
        }
        Ok(scores)
    }
}

/// Progress reporting: `(stage, done, total)`.
pub type Progress<'a> = dyn Fn(&str, usize, usize) + Sync + 'a;

/// The mined negatives of every query.
#[derive(Debug, Clone)]
pub struct Mined {
    /// Per query, `num_negatives` entries best first; [`select::MISSING`] where none was
    /// found.
    pub negatives: Vec<Vec<Candidate>>,
    /// Per (query, positive) in [`MiningInput::pairs`] order, its score.
    pub positive_scores: Vec<f32>,
    /// Candidates removed by each filter.
    pub skipped: Skipped,
    /// The window actually used.
    pub selection: Selection,
    /// Candidates retrieved per query (`range_max + max_positives`).
    pub retrieved_per_query: usize,
    /// Whether the cross-encoder rescored the candidates.
    pub rescored: bool,
}

/// Runs retrieval, optional rescoring, filtering and selection.
pub fn mine(
    input: &MiningInput,
    corpus: &Corpus,
    retriever: &Retriever<'_>,
    rescorer: Option<Rescorer<'_>>,
    options: &MineOptions,
    progress: &Progress<'_>,
) -> Result<Mined, MineError> {
    let selection = options.resolve(input.max_positives, rescorer.is_some())?;
    let k = selection.range_max + input.max_positives;
    let queries: Vec<&str> = input.queries.iter().map(String::as_str).collect();
    let pairs = input.pairs();

    let (mut candidates, mut positive_scores) = match retriever {
        Retriever::Bm25(params) => {
            progress("indexing", 0, corpus.len());
            let index = Bm25Index::build(corpus, *params);
            progress("indexing", corpus.len(), corpus.len());
            let done = std::sync::atomic::AtomicUsize::new(0);
            let total = queries.len();
            let candidates = index.search(&queries, k, &|| {
                let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if finished % 256 == 0 || finished == total {
                    progress("searching", finished, total);
                }
            });
            let positive_scores = pairs
                .iter()
                .map(|&(query, document)| index.score(queries[query], document))
                .collect();
            (candidates, positive_scores)
        }
        Retriever::Dense {
            embedder,
            chunk_size,
            batch_size,
            query_prompt,
            corpus_prompt,
        } => {
            let total = corpus.len();
            let search = dense_search(
                embedder,
                &queries,
                corpus,
                &pairs,
                DenseOptions {
                    k,
                    chunk_size: *chunk_size,
                    batch_size: *batch_size,
                    query_prompt: *query_prompt,
                    corpus_prompt: *corpus_prompt,
                },
                &|done| progress("embedding", done, total),
            )?;
            (search.candidates, search.pair_scores)
        }
    };

    let rescored = match rescorer {
        Some(rescorer) if options.filters_scores(true) => {
            rescore_candidates(
                input,
                corpus,
                &mut candidates,
                &mut positive_scores,
                rescorer,
                progress,
            )?;
            true
        }
        _ => false,
    };

    let mut skipped = Skipped::default();
    let mut negatives = Vec::with_capacity(input.queries.len());
    let mut first_pair = 0usize;
    for (query, found) in candidates.iter().enumerate() {
        let positives = &input.positives[query];
        let scores = &positive_scores[first_pair..first_pair + positives.len()];
        first_pair += positives.len();
        let mut rng = SeededRng::new(derive_seed(options.seed, SAMPLING_STREAM, query as u64));
        negatives.push(select::select_negatives(
            found,
            positives,
            scores,
            &selection,
            &mut rng,
            &mut skipped,
        ));
    }
    Ok(Mined {
        negatives,
        positive_scores,
        skipped,
        selection,
        retrieved_per_query: k,
        rescored,
    })
}

/// Replaces every candidate's and positive's score with the cross-encoder's, a block of
/// queries at a time (so the cross-encoder sees full batches).
fn rescore_candidates(
    input: &MiningInput,
    corpus: &Corpus,
    candidates: &mut [Vec<Candidate>],
    positive_scores: &mut [f32],
    rescorer: Rescorer<'_>,
    progress: &Progress<'_>,
) -> Result<(), MineError> {
    const QUERIES_PER_CALL: usize = 32;
    let total = input.queries.len();
    for start in (0..total).step_by(QUERIES_PER_CALL) {
        let end = (start + QUERIES_PER_CALL).min(total);
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (query, found) in candidates.iter().enumerate().take(end).skip(start) {
            for candidate in found {
                pairs.push((&input.queries[query], corpus.get(candidate.document)));
            }
        }
        let scores = rescorer.scores(&pairs)?;
        let mut next = scores.into_iter();
        for found in &mut candidates[start..end] {
            for candidate in found.iter_mut() {
                candidate.score = next.next().unwrap_or(f32::NEG_INFINITY);
            }
            // Rescored lists are re-ranked by the new scores (the reference's topk does the
            // same after rescoring).
            found.sort_by(Candidate::rank_order);
        }
        progress("rescoring", end, total);
    }
    let pairs = input.pairs();
    let texts: Vec<(&str, &str)> = pairs
        .iter()
        .map(|&(query, document)| (input.queries[query].as_str(), corpus.get(document)))
        .collect();
    let scores = rescorer.scores(&texts)?;
    positive_scores.copy_from_slice(&scores);
    Ok(())
}

/// Summary statistics of a list of scores, as the reference prints them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ScoreStats {
    /// Number of scores.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Median (the lower middle, as torch's).
    pub median: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// 25th percentile (linear interpolation).
    pub q25: f64,
    /// 50th percentile.
    pub q50: f64,
    /// 75th percentile.
    pub q75: f64,
    /// Maximum.
    pub max: f64,
}

impl ScoreStats {
    /// Statistics of `scores` (`None` when empty).
    pub fn of(scores: &[f32]) -> Option<Self> {
        if scores.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let variance = if n > 1 {
            sorted.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            f64::NAN
        };
        let quantile = |q: f64| {
            let position = q * (n - 1) as f64;
            let low = position.floor() as usize;
            let high = position.ceil() as usize;
            sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
        };
        Some(Self {
            count: n,
            mean,
            median: sorted[(n - 1) / 2],
            std: variance.sqrt(),
            min: sorted[0],
            q25: quantile(0.25),
            q50: quantile(0.5),
            q75: quantile(0.75),
            max: sorted[n - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_parse_by_name_and_unknown_names_list_the_known_ones() {
        for format in [
            OutputFormat::Triplet,
            OutputFormat::NTuple,
            OutputFormat::LabeledPair,
            OutputFormat::LabeledList,
        ] {
            assert_eq!(format.name().parse::<OutputFormat>(), Ok(format));
        }
        assert_eq!(
            "random".parse::<SamplingStrategy>(),
            Ok(SamplingStrategy::Random)
        );
        assert_eq!(
            "pair-class".parse::<convert::ConvertMode>(),
            Ok(convert::ConvertMode::PairClass)
        );
        let error = "ntuple".parse::<OutputFormat>().unwrap_err();
        assert_eq!(
            error,
            "unknown output format \"ntuple\"; expected one of triplet, n-tuple, labeled-pair, labeled-list"
        );
    }

    #[test]
    fn range_max_defaults_like_the_reference() {
        let options = MineOptions::default();
        assert_eq!(options.resolve(2, false).unwrap().range_max, 5);
        let margin = MineOptions {
            absolute_margin: Some(0.1),
            range_min: 1,
            ..MineOptions::default()
        };
        assert_eq!(margin.resolve(1, false).unwrap().range_max, 1 + 30 + 1);
        let min_score = MineOptions {
            min_score: Some(0.1),
            ..MineOptions::default()
        };
        assert_eq!(min_score.resolve(1, false).unwrap().range_max, 4);
        assert_eq!(min_score.resolve(1, true).unwrap().range_max, 31);
    }

    #[test]
    fn bad_ranges_are_errors() {
        let too_many = MineOptions {
            range_max: Some(4),
            range_min: 2,
            num_negatives: 3,
            ..MineOptions::default()
        };
        let error = too_many.resolve(1, false).unwrap_err().to_string();
        assert!(error.contains("only 2 candidates remain"), "{error}");
        let inverted = MineOptions {
            range_max: Some(2),
            range_min: 2,
            ..MineOptions::default()
        };
        assert!(inverted.resolve(1, false).is_err());
        let zero = MineOptions {
            num_negatives: 0,
            ..MineOptions::default()
        };
        assert!(zero.resolve(1, false).is_err());
    }

    #[test]
    fn include_positives_forces_n_tuple() {
        let options = MineOptions {
            include_positives: true,
            output_format: OutputFormat::LabeledPair,
            ..MineOptions::default()
        };
        assert_eq!(options.effective_format(), OutputFormat::NTuple);
    }

    #[test]
    fn stats_match_numpy() {
        // numpy: mean 2.5, std(ddof=1) 1.2909944, quantiles 1.75 / 2.5 / 3.25; torch median
        // takes the lower middle, 2.
        let stats = ScoreStats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(stats.mean, 2.5);
        assert!((stats.std - 1.290_994_4).abs() < 1e-6);
        assert_eq!((stats.q25, stats.q50, stats.q75), (1.75, 2.5, 3.25));
        assert_eq!(stats.median, 2.0);
        assert!(ScoreStats::of(&[]).is_none());
    }
}
