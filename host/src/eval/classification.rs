//! CrossEncoderClassificationEvaluator: best-threshold accuracy and F1 with average precision
//! for one output; macro/micro/weighted F1 of the argmax for several.

use std::collections::BTreeSet;

use super::{average_precision, descending_tie_groups, Metrics};

/// The threshold between a tie group at `score` and the next one: the float32 midpoint, or
/// `score` when the midpoint rounds onto the next score (adjacent float32 values), or `score`
/// itself for the last group.
fn cut_threshold(score: f32, next: Option<f32>) -> f32 {
    match next {
        Some(next) => {
            let midpoint = (score + next) / 2.0;
            if midpoint == next {
                score
            } else {
                midpoint
            }
        }
        None => score,
    }
}

/// One-output metrics; `labels` are 0/1, `scores` the activated float32 predictions.
pub fn binary_metrics(name: &str, labels: &[u8], scores: &[f32]) -> Metrics {
    let n = labels.len();
    let positives = labels.iter().filter(|&&l| l == 1).count();
    let negatives = n - positives;
    let groups = descending_tie_groups(scores);
    let max_score = groups.first().map_or(0.0, |g| g.0);

    let mut best_accuracy = negatives as f64 / n.max(1) as f64;
    let mut accuracy_threshold = next_up(max_score);
    let mut best_f1 = 0.0;
    let mut precision = 0.0;
    let mut recall = 0.0;
    let mut f1_threshold = 0.0f32;
    let (mut positives_seen, mut negatives_seen, mut extracted) = (0usize, 0usize, 0usize);
    for (position, (score, members)) in groups.iter().enumerate() {
        let group_positives = members.iter().filter(|&&i| labels[i] == 1).count();
        positives_seen += group_positives;
        negatives_seen += members.len() - group_positives;
        extracted += members.len();
        let next = groups.get(position + 1).map(|g| g.0);
        let accuracy = (positives_seen + (negatives - negatives_seen)) as f64 / n as f64;
        if accuracy > best_accuracy {
            best_accuracy = accuracy;
            accuracy_threshold = cut_threshold(*score, next);
        }
        if positives_seen > 0 {
            let p = positives_seen as f64 / extracted as f64;
            let r = positives_seen as f64 / positives as f64;
            let f1 = 2.0 * p * r / (p + r);
            if f1 > best_f1 {
                best_f1 = f1;
                precision = p;
                recall = r;
                f1_threshold = cut_threshold(*score, next);
            }
        }
    }
    let relevant: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
    Metrics::new(
        name,
        vec![
            ("accuracy".into(), best_accuracy),
            ("accuracy_threshold".into(), f64::from(accuracy_threshold)),
            ("f1".into(), best_f1),
            ("f1_threshold".into(), f64::from(f1_threshold)),
            ("precision".into(), precision),
            ("recall".into(), recall),
            (
                "average_precision".into(),
                average_precision(&relevant, scores),
            ),
        ],
        "average_precision",
    )
}

/// The next float32 above `x` (numpy's `nextafter(x, inf)`).
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// Several-output metrics: argmax (lowest index on ties) against the class labels.
pub fn multiclass_metrics(name: &str, labels: &[usize], scores: &[Vec<f32>]) -> Metrics {
    let predictions: Vec<usize> = scores
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect();
    let classes: BTreeSet<usize> = labels.iter().chain(&predictions).copied().collect();
    let mut macro_sum = 0.0;
    let mut weighted_sum = 0.0;
    for &class in &classes {
        let tp = labels
            .iter()
            .zip(&predictions)
            .filter(|&(&l, &p)| l == class && p == class)
            .count();
        let fp = labels
            .iter()
            .zip(&predictions)
            .filter(|&(&l, &p)| l != class && p == class)
            .count();
        let fn_ = labels
            .iter()
            .zip(&predictions)
            .filter(|&(&l, &p)| l == class && p != class)
            .count();
        let denominator = 2 * tp + fp + fn_;
        let f1 = if denominator == 0 {
            0.0
        } else {
            2.0 * tp as f64 / denominator as f64
        };
        macro_sum += f1;
        weighted_sum += f1 * labels.iter().filter(|&&l| l == class).count() as f64;
    }
    let correct = labels
        .iter()
        .zip(&predictions)
        .filter(|(l, p)| l == p)
        .count();
    Metrics::new(
        name,
        vec![
            ("f1_macro".into(), macro_sum / classes.len().max(1) as f64),
            (
                "f1_micro".into(),
                correct as f64 / labels.len().max(1) as f64,
            ),
            (
                "f1_weighted".into(),
                weighted_sum / labels.len().max(1) as f64,
            ),
        ],
        "f1_macro",
    )
}
