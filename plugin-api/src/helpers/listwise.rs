//! The driver of a listwise loss: group the logits by query, apply the activation, run the
//! per-query maths, normalise, and chain the gradient back to the raw logits. The built-in
//! ListNet, ListMLE, PListMLE, LambdaLoss, RankNet and ADRMSE losses are each one `per_query`
//! function over it.

use crate::author::LossResult;
use crate::types::{Labels, LossOutput, PairPlan};

use super::checks::{check_finite, check_logits};
use super::config::Activation;
use super::plans::{listwise_queries, ListwiseQuery};

/// One query's contribution: `loss = Σ numerator / Σ denominator` over the batch.
pub struct QueryTerm {
    /// This query's share of the numerator.
    pub numerator: f64,
    /// This query's share of the normaliser (1 for a mean over queries, the number of kept
    /// pairs for LambdaLoss, the list length for ADRMSE).
    pub denominator: f64,
    /// d numerator / d activated score, by document position.
    pub grad: Vec<f64>,
}

/// The loss over a listwise batch, and whether every query's numerator was exactly 0 (the
/// (P)ListMLE degenerate case).
pub fn listwise_loss(
    loss: &str,
    plan: &PairPlan,
    logits: &[f32],
    num_labels: usize,
    labels: &Labels,
    activation: Activation,
    per_query: impl Fn(&[f64], &[f64]) -> QueryTerm,
) -> LossResult<(LossOutput, bool)> {
    check_logits(loss, plan, logits, num_labels, Some(1))?;
    check_finite(loss, logits)?;
    let queries = listwise_queries(loss, plan, logits, labels)?;
    let term = |query: &ListwiseQuery| {
        let activated: Vec<f64> = query.logits.iter().map(|&s| activation.apply(s)).collect();
        per_query(&activated, &query.labels)
    };
    let terms: Vec<QueryTerm> = queries.iter().map(term).collect();
    let numerator: f64 = terms.iter().map(|t| t.numerator).sum();
    let denominator: f64 = terms.iter().map(|t| t.denominator).sum();
    let all_zero = terms.iter().all(|t| t.numerator == 0.0);
    // The reference divides by 1 when nothing was kept (e.g. LambdaLoss with all-equal labels).
    let norm = if denominator > 0.0 { denominator } else { 1.0 };
    let mut grad = vec![0.0; logits.len()];
    for (query, term) in queries.iter().zip(&terms) {
        for (item, &position) in query.positions.iter().enumerate() {
            grad[position] = term.grad[item] / norm * activation.derivative(query.logits[item]);
        }
    }
    Ok((LossOutput::new(numerator / norm, grad), all_zero))
}

/// Document positions sorted by `keys` descending; ties keep input order. torch's sort is not
/// stable, so with tied keys the reference's order is implementation-defined; ours is fixed.
pub fn descending_order(keys: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&i, &j| keys[j].total_cmp(&keys[i]));
    order
}
