//! `crosstrain convert`: class-labelled data to `(anchor, positive, negative)` triplets, the
//! format the ranking losses (MultipleNegativesRankingLoss and friends) take.
//!
//! Two readings of "class-labelled", picked by `ConvertMode`:
//! * `sentence-class`: every text of a row belongs to the row's class (topic or intent
//!   data). Each distinct text is an anchor; its positive is another text of the same class
//!   and its negative a text of a different class, both drawn at random.
//! * `pair-class`: the label says how `b` relates to `a` (NLI, duplicate questions). Each row
//!   whose label is `positive_label` gives `(a, b, negative)`; the negative is a `b` paired
//!   with the same `a` under another label when there is one (the hard negative AllNLI
//!   triplets use), else a `b` of any row with another label.
//!
//! Draws are seeded per anchor, so the output is the same for a seed whatever else changes.

use std::collections::HashMap;

use crosstrain_plugin_api::rng::SeededRng;

use super::MineError;
use crate::data::dataset::{Dataset, LabelValues, TextValues, Texts};
use crosstrain_rng::derive_seed;

const CONVERT_STREAM: u64 = 0x434F_4E56; // "CONV"

/// How the class label relates to the texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertMode {
    /// Every text of a row has the row's class.
    SentenceClass,
    /// The label is the relation of the second text to the first.
    PairClass,
}

super::named_values!(
    ConvertMode,
    "conversion mode",
    [(SentenceClass, "sentence-class"), (PairClass, "pair-class")]
);

/// Options of a conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertOptions {
    /// The reading of the label; default: `sentence-class` for one text column,
    /// `pair-class` for two.
    pub mode: Option<ConvertMode>,
    /// `pair-class`: the label of positive pairs (default 1).
    pub positive_label: f32,
    /// Triplets per anchor (`sentence-class`) or per positive row (`pair-class`), each with
    /// a different negative (and, for `sentence-class`, positive) where there are enough.
    pub triplets_per_anchor: usize,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            mode: None,
            positive_label: 1.0,
            triplets_per_anchor: 1,
            seed: 12,
        }
    }
}

/// One output row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triplet {
    /// The anchor.
    pub anchor: String,
    /// A text of the same class (or a positive pair's second text).
    pub positive: String,
    /// A text of another class.
    pub negative: String,
}

/// The triplets and what could not become one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// The rows, in input order.
    pub triplets: Vec<Triplet>,
    /// Anchors (or positive rows) left out: alone in their class, or no other class.
    pub skipped: usize,
    /// The mode used.
    pub mode: Option<ConvertMode>,
}

/// Converts a dataset with text columns and a scalar class label into triplets.
pub fn class_triplets(dataset: &Dataset, options: &ConvertOptions) -> Result<Converted, MineError> {
    let origin = std::path::PathBuf::from(dataset.origin());
    let input_error = |message: String| MineError::Input {
        path: origin.clone(),
        message,
    };
    let labels = match &dataset.label {
        Some(label) => match &label.values {
            LabelValues::Scalars(values) => values,
            LabelValues::Lists(_) => {
                return Err(input_error(format!(
                    "label column {:?} holds lists; convert needs one class per row",
                    label.name
                )))
            }
        },
        None => {
            return Err(input_error(
                "no class label column (label, labels, score or scores)".into(),
            ))
        }
    };
    let mut columns = Vec::new();
    for column in &dataset.columns {
        match &column.values {
            TextValues::Texts(texts) => columns.push(texts),
            TextValues::Lists(_) => {
                return Err(input_error(format!(
                    "column {:?} holds lists; convert needs one text per cell",
                    column.name
                )))
            }
        }
    }
    if options.triplets_per_anchor == 0 {
        return Err(MineError::Options(
            "triplets_per_anchor must be at least 1".into(),
        ));
    }
    let mode = match (options.mode, columns.len()) {
        (_, 0) => return Err(input_error("no text column".into())),
        (Some(ConvertMode::PairClass), n) if n != 2 => {
            return Err(input_error(format!(
                "pair-class needs exactly two text columns (a, b); found {n}"
            )))
        }
        (Some(mode), _) => mode,
        (None, 1) => ConvertMode::SentenceClass,
        (None, 2) => ConvertMode::PairClass,
        (None, n) => {
            return Err(input_error(format!(
                "found {n} text columns; choose --mode sentence-class or keep two columns \
                 (a, b) for pair-class"
            )))
        }
    };
    let mut converted = match mode {
        ConvertMode::SentenceClass => sentence_class(&columns, labels, options),
        ConvertMode::PairClass => pair_class(columns[0], columns[1], labels, options),
    };
    converted.mode = Some(mode);
    Ok(converted)
}

/// A class key that treats every label value, -0.0 and NaN included, as itself.
fn class_key(label: f32) -> u32 {
    label.to_bits()
}

fn sentence_class(columns: &[&Texts], labels: &[f32], options: &ConvertOptions) -> Converted {
    // Distinct (text, class) members in first-seen order, grouped by class.
    let mut seen: HashMap<(&str, u32), ()> = HashMap::new();
    let mut members: Vec<(&str, u32)> = Vec::new();
    for (row, &label) in labels.iter().enumerate() {
        for column in columns {
            let key = (&column[row], class_key(label));
            if seen.insert(key, ()).is_none() {
                members.push(key);
            }
        }
    }
    let mut by_class: HashMap<u32, Vec<usize>> = HashMap::new();
    for (index, &(_, class)) in members.iter().enumerate() {
        by_class.entry(class).or_default().push(index);
    }
    let mut converted = Converted::default();
    for (index, &(anchor, class)) in members.iter().enumerate() {
        let same: Vec<usize> = by_class[&class]
            .iter()
            .copied()
            .filter(|&other| other != index)
            .collect();
        let others: Vec<usize> = (0..members.len())
            .filter(|&other| members[other].1 != class)
            .collect();
        if same.is_empty() || others.is_empty() {
            converted.skipped += 1;
            continue;
        }
        let mut rng = SeededRng::new(derive_seed(options.seed, CONVERT_STREAM, index as u64));
        let count = options.triplets_per_anchor;
        let positives = draw(&mut rng, &same, count);
        let negatives = draw(&mut rng, &others, count);
        for (positive, negative) in positives.into_iter().zip(negatives) {
            converted.triplets.push(Triplet {
                anchor: anchor.to_string(),
                positive: members[positive].0.to_string(),
                negative: members[negative].0.to_string(),
            });
        }
    }
    converted
}

/// `count` items of `pool`: distinct while the pool lasts, then drawn again.
fn draw(rng: &mut SeededRng, pool: &[usize], count: usize) -> Vec<usize> {
    let mut drawn = Vec::with_capacity(count);
    while drawn.len() < count {
        let batch = rng.sample_without_replacement(pool, count - drawn.len());
        drawn.extend(batch);
    }
    drawn
}

fn pair_class(
    first: &Texts,
    second: &Texts,
    labels: &[f32],
    options: &ConvertOptions,
) -> Converted {
    let positive = class_key(options.positive_label);
    // Per anchor text, the rows under another label (hard negatives).
    let mut hard: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut other_rows: Vec<usize> = Vec::new();
    for (row, &label) in labels.iter().enumerate() {
        if class_key(label) != positive {
            hard.entry(&first[row]).or_default().push(row);
            other_rows.push(row);
        }
    }
    let mut converted = Converted::default();
    for (row, &label) in labels.iter().enumerate() {
        if class_key(label) != positive {
            continue;
        }
        let pool = hard
            .get(&first[row])
            .filter(|rows| !rows.is_empty())
            .unwrap_or(&other_rows);
        if pool.is_empty() {
            converted.skipped += 1;
            continue;
        }
        let mut rng = SeededRng::new(derive_seed(options.seed, CONVERT_STREAM, row as u64));
        for negative in draw(&mut rng, pool, options.triplets_per_anchor) {
            converted.triplets.push(Triplet {
                anchor: first[row].to_string(),
                positive: second[row].to_string(),
                negative: second[negative].to_string(),
            });
        }
    }
    converted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::parse_jsonl_dataset;
    use std::path::Path;

    fn dataset(jsonl: &str) -> Dataset {
        parse_jsonl_dataset(jsonl, Path::new("classes.jsonl")).unwrap()
    }

    #[test]
    fn sentence_class_pairs_same_and_different_classes() {
        let data = dataset(
            r#"{"text": "a1", "label": 0}
{"text": "a2", "label": 0}
{"text": "b1", "label": 1}
{"text": "b2", "label": 1}
{"text": "b3", "label": 1}
{"text": "c1", "label": 2}"#,
        );
        let converted = class_triplets(&data, &ConvertOptions::default()).unwrap();
        assert_eq!(converted.mode, Some(ConvertMode::SentenceClass));
        // c1 is alone in its class.
        assert_eq!(converted.skipped, 1);
        let anchors: Vec<&str> = converted
            .triplets
            .iter()
            .map(|t| t.anchor.as_str())
            .collect();
        assert_eq!(anchors, ["a1", "a2", "b1", "b2", "b3"]);
        for triplet in &converted.triplets {
            let class = |text: &str| text.as_bytes()[0];
            assert_eq!(class(&triplet.anchor), class(&triplet.positive));
            assert_ne!(triplet.anchor, triplet.positive);
            assert_ne!(class(&triplet.anchor), class(&triplet.negative));
        }
        // a1's only same-class partner is a2.
        assert_eq!(converted.triplets[0].positive, "a2");
        // Seeded: the same seed gives the same rows, another seed (eventually) others.
        assert_eq!(
            converted,
            class_triplets(&data, &ConvertOptions::default()).unwrap()
        );
        let differs = (0..20).any(|seed| {
            let options = ConvertOptions {
                seed,
                ..ConvertOptions::default()
            };
            class_triplets(&data, &options).unwrap().triplets != converted.triplets
        });
        assert!(differs);
    }

    #[test]
    fn triplets_per_anchor_draws_distinct_partners_first() {
        let data = dataset(
            r#"{"text": "a1", "label": 0}
{"text": "a2", "label": 0}
{"text": "a3", "label": 0}
{"text": "b1", "label": 1}
{"text": "b2", "label": 1}"#,
        );
        let options = ConvertOptions {
            triplets_per_anchor: 2,
            ..ConvertOptions::default()
        };
        let converted = class_triplets(&data, &options).unwrap();
        let of_a1: Vec<&Triplet> = converted
            .triplets
            .iter()
            .filter(|t| t.anchor == "a1")
            .collect();
        assert_eq!(of_a1.len(), 2);
        let mut positives: Vec<&str> = of_a1.iter().map(|t| t.positive.as_str()).collect();
        positives.sort();
        assert_eq!(positives, ["a2", "a3"]);
        let mut negatives: Vec<&str> = of_a1.iter().map(|t| t.negative.as_str()).collect();
        negatives.sort();
        assert_eq!(negatives, ["b1", "b2"]);
    }

    #[test]
    fn pair_class_prefers_same_anchor_negatives() {
        let data = dataset(
            r#"{"premise": "p1", "hypothesis": "h-entail-1", "label": 1}
{"premise": "p1", "hypothesis": "h-contra-1", "label": 0}
{"premise": "p2", "hypothesis": "h-entail-2", "label": 1}
{"premise": "p3", "hypothesis": "h-contra-3", "label": 0}"#,
        );
        let converted = class_triplets(&data, &ConvertOptions::default()).unwrap();
        assert_eq!(converted.mode, Some(ConvertMode::PairClass));
        assert_eq!(
            converted.triplets[0],
            Triplet {
                anchor: "p1".into(),
                positive: "h-entail-1".into(),
                negative: "h-contra-1".into(),
            }
        );
        // p2 has no negative of its own: one of the other-label rows.
        let second = &converted.triplets[1];
        assert_eq!(
            (second.anchor.as_str(), second.positive.as_str()),
            ("p2", "h-entail-2")
        );
        assert!(["h-contra-1", "h-contra-3"].contains(&second.negative.as_str()));
        assert_eq!(converted.triplets.len(), 2);
    }

    #[test]
    fn missing_label_is_an_error() {
        let data = dataset(r#"{"a": "x", "b": "y"}"#);
        let error = class_triplets(&data, &ConvertOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("classes.jsonl") && error.contains("label"),
            "{error}"
        );
    }
}
