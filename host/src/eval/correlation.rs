//! CrossEncoderCorrelationEvaluator: Pearson and Spearman (average ranks for ties) between gold
//! scores and predictions; NaN when either side is constant, as scipy returns.

use super::Metrics;

/// Pearson correlation in f64, computed as scipy does (centred, each side normalised).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let centred_x: Vec<f64> = x.iter().map(|v| v - mean_x).collect();
    let centred_y: Vec<f64> = y.iter().map(|v| v - mean_y).collect();
    let norm_x = centred_x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let norm_y = centred_y.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm_x == 0.0 || norm_y == 0.0 || x.len() < 2 {
        return f64::NAN;
    }
    let r: f64 = centred_x
        .iter()
        .zip(&centred_y)
        .map(|(a, b)| (a / norm_x) * (b / norm_y))
        .sum();
    r.clamp(-1.0, 1.0)
}

/// 1-based ranks, tied values sharing the mean of the ranks they occupy.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end) as f64 / 2.0 + 1.0;
        for &index in &order[start..=end] {
            ranks[index] = rank;
        }
        start = end + 1;
    }
    ranks
}

/// `pearson` and `spearman` between gold scores and float32 predictions.
pub fn correlation_metrics(name: &str, gold: &[f64], predictions: &[f32]) -> Metrics {
    let predicted: Vec<f64> = predictions.iter().map(|&p| f64::from(p)).collect();
    Metrics::new(
        name,
        vec![
            ("pearson".into(), pearson(gold, &predicted)),
            (
                "spearman".into(),
                pearson(&average_ranks(gold), &average_ranks(&predicted)),
            ),
        ],
        "spearman",
    )
}
