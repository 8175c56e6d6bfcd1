//! Pieces every built-in loss shares: activations, reductions, the standard plans, and the
//! checks that turn a malformed batch into a precise error instead of a wrong number.

use crosstrain_plugin_api::{
    BatchShape, LabelLayout, Labels, LossError, LossResult, PairPlan, ScoredPair, TextRef,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The element-wise function a loss applies to the raw logits before its maths (the
/// reference's `activation_fn`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `torch.nn.Identity`: the raw logit.
    #[default]
    Identity,
    /// `torch.nn.Sigmoid`: 1 / (1 + e^-x).
    Sigmoid,
    /// `torch.nn.Tanh`.
    Tanh,
}

impl Activation {
    /// The activation of `x`.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// d activation / dx at `x`.
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Activation::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
        }
    }

    /// The name the reference's `get_config_dict` writes (`fullname(module)`).
    pub fn reference_name(self) -> &'static str {
        match self {
            Activation::Identity => "torch.nn.modules.linear.Identity",
            Activation::Sigmoid => "torch.nn.modules.activation.Sigmoid",
            Activation::Tanh => "torch.nn.modules.activation.Tanh",
        }
    }
}

/// How per-item losses become one number (torch's `reduction`; `"none"` cannot train).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// The mean over items.
    #[default]
    Mean,
    /// The sum over items.
    Sum,
}

/// The logistic sigmoid, stable for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log(1 + e^x) without overflow.
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// log Σ e^x over `values` (−∞ for an empty slice).
pub fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// σ(z_i − z_j) and log σ(z_i − z_j) for every pair of a list of `z = scale · score`, with one
/// exp per document instead of one per pair: σ(z_i − z_j) = e^{z_i} / (e^{z_i} + e^{z_j}).
/// Shifted by the maximum so nothing overflows; a pair whose exponentials underflow falls back
/// to the direct formula.
pub struct PairwiseLogistic {
    shifted: Vec<f64>,
    exps: Vec<f64>,
}

impl PairwiseLogistic {
    /// Precomputes the exponentials of `scale · scores`.
    pub fn new(scores: &[f64], scale: f64) -> Self {
        let max = scores
            .iter()
            .map(|s| scale * s)
            .fold(f64::NEG_INFINITY, f64::max);
        let shifted: Vec<f64> = scores.iter().map(|s| scale * s - max).collect();
        let exps = shifted.iter().map(|z| z.exp()).collect();
        Self { shifted, exps }
    }

    /// σ(z_i − z_j).
    #[inline]
    pub fn sigmoid(&self, i: usize, j: usize) -> f64 {
        let total = self.exps[i] + self.exps[j];
        if total > 1e-290 {
            self.exps[i] / total
        } else {
            sigmoid(self.shifted[i] - self.shifted[j])
        }
    }

    /// (log σ(z_i − z_j), σ(z_j − z_i)): a pairwise log-likelihood and its derivative factor.
    #[inline]
    pub fn log_sigmoid_and_complement(&self, i: usize, j: usize) -> (f64, f64) {
        let total = self.exps[i] + self.exps[j];
        if total > 1e-290 {
            (self.shifted[i] - total.ln(), self.exps[j] / total)
        } else {
            let x = self.shifted[i] - self.shifted[j];
            (-softplus(-x), sigmoid(-x))
        }
    }
}

/// softmax over `values`.
pub fn softmax(values: &[f64]) -> Vec<f64> {
    let lse = log_sum_exp(values);
    values.iter().map(|v| (v - lse).exp()).collect()
}

/// Checks that `logits` holds `plan.len() × num_labels` values and that the loss got the
/// number of model outputs it needs.
pub fn check_logits(
    loss: &str,
    plan: &PairPlan,
    logits: &[f32],
    num_labels: usize,
    required: Option<usize>,
) -> LossResult<()> {
    if let Some(required) = required {
        if num_labels != required {
            return Err(LossError::new(format!(
                "{loss} needs a model with num_labels = {required}, got {num_labels}"
            )));
        }
    }
    if num_labels == 0 || logits.len() != plan.len() * num_labels {
        return Err(LossError::new(format!(
            "{loss}: expected {} logits ({} pairs × {num_labels} labels), got {}",
            plan.len() * num_labels,
            plan.len(),
            logits.len()
        )));
    }
    Ok(())
}

/// Checks that no text column holds document lists and that there are between `min` and `max`
/// of them.
pub fn require_text_columns(
    loss: &str,
    shape: &BatchShape,
    min: usize,
    max: usize,
    layout: &str,
) -> LossResult<()> {
    let columns = shape.num_columns();
    if columns < min || columns > max {
        return Err(LossError::new(format!(
            "{loss} expects {layout}, but the batch has {columns} text column(s)"
        )));
    }
    if let Some(index) = shape
        .columns
        .iter()
        .position(|column| column.list_lengths().is_some())
    {
        return Err(LossError::new(format!(
            "{loss} expects {layout}, but text column {index} holds lists of documents"
        )));
    }
    Ok(())
}

/// `(column 0, row i)` with `(column 1, row i)` for every row: the plan of the pointwise losses.
pub fn pairwise_plan(loss: &str, shape: &BatchShape) -> LossResult<PairPlan> {
    require_text_columns(loss, shape, 2, 2, "exactly 2 text columns (text_a, text_b)")?;
    let pairs = (0..shape.rows)
        .map(|row| ScoredPair::new(TextRef::cell(0, row), TextRef::cell(1, row)))
        .collect();
    Ok(PairPlan::new(shape.rows, pairs))
}

/// The list lengths of a `(query, [documents])` batch.
pub fn listwise_lengths<'a>(loss: &str, shape: &'a BatchShape) -> LossResult<&'a [u32]> {
    let layout = "2 columns: a query and a list of documents";
    if shape.num_columns() != 2 || shape.columns[0].list_lengths().is_some() {
        return Err(LossError::new(format!(
            "{loss} expects {layout}, but the batch has {} text column(s){}",
            shape.num_columns(),
            if shape.num_columns() == 2 {
                " and the first is a list"
            } else {
                ""
            }
        )));
    }
    let lengths = shape.columns[1].list_lengths().ok_or_else(|| {
        LossError::new(format!(
            "{loss} expects {layout}, but column 1 holds one text per row"
        ))
    })?;
    if lengths.len() != shape.rows as usize {
        return Err(LossError::new(format!(
            "{loss}: {} list lengths for {} rows",
            lengths.len(),
            shape.rows
        )));
    }
    if let Some(row) = lengths.iter().position(|&n| n == 0) {
        return Err(LossError::new(format!(
            "{loss}: row {row} has an empty document list"
        )));
    }
    Ok(lengths)
}

/// `(query_i, document_ij)` for every row i and document j, row-major: the plan of the
/// listwise losses. A positive `mini_batch_size` turns on gradient caching with chunks of that
/// many pairs; the reference's `None`/0 (chunks of B pairs, graph kept) and negative values
/// (one call) change only how the forward calls are grouped, not any number, so they score
/// everything at once here.
pub fn listwise_plan(
    loss: &str,
    shape: &BatchShape,
    mini_batch_size: Option<i64>,
) -> LossResult<PairPlan> {
    let lengths = listwise_lengths(loss, shape)?;
    let mut pairs = Vec::with_capacity(lengths.iter().map(|&n| n as usize).sum());
    for (row, &length) in lengths.iter().enumerate() {
        for item in 0..length {
            pairs.push(ScoredPair::new(
                TextRef::cell(0, row as u32),
                TextRef::list_item(1, row as u32, item),
            ));
        }
    }
    let chunk = mini_batch_size
        .filter(|&size| size > 0)
        .map(|size| size as u32);
    Ok(PairPlan::new(shape.rows, pairs).with_mini_batch_size(chunk))
}

/// One label per row, exactly `rows` of them.
pub fn labels_per_row(loss: &str, labels: &Labels, rows: usize) -> LossResult<Vec<f64>> {
    match labels.layout {
        LabelLayout::PerRow if labels.values.len() == rows => {
            Ok(labels.values.iter().map(|&v| f64::from(v)).collect())
        }
        LabelLayout::PerRow => Err(LossError::new(format!(
            "{loss}: expected {rows} labels (one per row), got {}",
            labels.values.len()
        ))),
        LabelLayout::PerRowList => Err(LossError::new(format!(
            "{loss} expects one number per row as label, got a list per row"
        ))),
        LabelLayout::None => Err(LossError::new(format!(
            "{loss} needs a label column (label, labels, score or scores)"
        ))),
    }
}

/// The scores and labels of one query of a listwise batch, with where each score came from.
pub struct ListwiseQuery {
    /// Index in the plan (and the logits) of each document, by position in the row's list.
    pub positions: Vec<usize>,
    /// The raw logits, by document position.
    pub logits: Vec<f64>,
    /// The labels, by document position.
    pub labels: Vec<f64>,
}

/// Groups a listwise plan's logits by query, checking that every document of every list was
/// scored exactly once and that each row has one label per document.
pub fn listwise_queries(
    loss: &str,
    plan: &PairPlan,
    logits: &[f32],
    labels: &Labels,
) -> LossResult<Vec<ListwiseQuery>> {
    let rows = plan.rows as usize;
    if labels.layout != LabelLayout::PerRowList || labels.rows() != rows {
        return Err(LossError::new(format!(
            "{loss} expects a list of labels per row (one per document) for {rows} rows, got {}",
            match labels.layout {
                LabelLayout::None => "no labels".to_string(),
                LabelLayout::PerRow => "one number per row".to_string(),
                LabelLayout::PerRowList => format!("lists for {} rows", labels.rows()),
            }
        )));
    }
    let mut queries: Vec<ListwiseQuery> = (0..rows)
        .map(|row| {
            let row_labels = labels.row(row);
            ListwiseQuery {
                positions: vec![usize::MAX; row_labels.len()],
                logits: vec![0.0; row_labels.len()],
                labels: row_labels.iter().map(|&v| f64::from(v)).collect(),
            }
        })
        .collect();
    for (position, pair) in plan.pairs.iter().enumerate() {
        let row = pair.text_a.row as usize;
        let item = pair.text_b.item as usize;
        let query = queries.get_mut(row).ok_or_else(|| {
            LossError::new(format!(
                "{loss}: pair {position} refers to row {row} of {rows}"
            ))
        })?;
        let slot = query.positions.get_mut(item).ok_or_else(|| {
            LossError::new(format!(
                "{loss}: row {row} has {} labels but document {item} was scored",
                query.logits.len()
            ))
        })?;
        if *slot != usize::MAX {
            return Err(LossError::new(format!(
                "{loss}: document {item} of row {row} was scored twice"
            )));
        }
        *slot = position;
        query.logits[item] = f64::from(logits[position]);
    }
    for (row, query) in queries.iter().enumerate() {
        if let Some(item) = query.positions.iter().position(|&p| p == usize::MAX) {
            return Err(LossError::new(format!(
                "{loss}: row {row} has {} labels but document {item} was not scored",
                query.labels.len()
            )));
        }
    }
    Ok(queries)
}

/// Rejects NaN or infinite logits with the pair that produced them.
pub fn check_finite(loss: &str, logits: &[f32]) -> LossResult<()> {
    match logits.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(LossError::new(format!(
            "{loss}: logit {index} is {} (the model produced a non-finite score)",
            logits[index]
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
pub mod testing {
    //! Finite-difference gradient checks shared by the loss tests.

    use crosstrain_plugin_api::{Labels, LossPlugin, PairPlan};

    /// A deterministic pseudo-random stream for test inputs.
    pub struct TestRng(u64);

    impl TestRng {
        /// A stream for this seed.
        pub fn new(seed: u64) -> Self {
            Self(
                seed.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            )
        }

        /// Uniform in [0, 1).
        pub fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Uniform in [low, high).
        pub fn range(&mut self, low: f64, high: f64) -> f64 {
            low + (high - low) * self.uniform()
        }

        /// `n` logits in [-3, 3), rounded to f32.
        pub fn logits(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.range(-3.0, 3.0) as f32).collect()
        }

        /// `n` distinct logits at least 0.1 apart, shuffled: a finite-difference step cannot
        /// reorder them, so sort-based losses (LambdaLoss, RankNet) stay on one smooth piece.
        pub fn separated_logits(&mut self, n: usize) -> Vec<f32> {
            let mut values: Vec<f32> = (0..n)
                .map(|i| (-2.0 + 0.15 * i as f64 + self.range(0.0, 0.04)) as f32)
                .collect();
            for i in (1..n).rev() {
                let j = (self.uniform() * (i + 1) as f64) as usize;
                values.swap(i, j);
            }
            values
        }
    }

    /// Compares the analytic gradient with central differences of the loss. The logits cross
    /// the boundary as f32, so the step is large enough for f32 rounding to stay small.
    pub fn assert_gradient_matches<L: LossPlugin>(
        loss: &L,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) {
        let output = loss
            .compute(plan, logits, num_labels, labels)
            .expect("compute succeeds on the test batch");
        assert!(output.loss.is_finite(), "loss {}", output.loss);
        let step = 1e-2f32;
        for index in 0..logits.len() {
            let mut up = logits.to_vec();
            up[index] += step;
            let mut down = logits.to_vec();
            down[index] -= step;
            let delta_up = up[index] - logits[index];
            let delta_down = logits[index] - down[index];
            let loss_up = loss.compute(plan, &up, num_labels, labels).unwrap().loss;
            let loss_down = loss.compute(plan, &down, num_labels, labels).unwrap().loss;
            let numeric = (loss_up - loss_down) / f64::from(delta_up + delta_down);
            let analytic = output.grad[index];
            assert!(
                (numeric - analytic).abs() <= 2e-3 * (1.0 + analytic.abs()),
                "{}: d loss / d logit[{index}] analytic {analytic} vs numeric {numeric}",
                L::NAME
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_and_their_derivatives() {
        for activation in [Activation::Identity, Activation::Sigmoid, Activation::Tanh] {
            for x in [-3.0, -0.5, 0.0, 0.7, 4.0] {
                let h = 1e-6;
                let numeric = (activation.apply(x + h) - activation.apply(x - h)) / (2.0 * h);
                assert!((numeric - activation.derivative(x)).abs() < 1e-8);
            }
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((softplus(-800.0)).abs() < 1e-300);
        assert_eq!(softplus(800.0), 800.0);
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn pairwise_logistic_matches_the_direct_formula_even_when_exponentials_underflow() {
        let scores = [0.5, -2.0, 3.0, -900.0, -905.0];
        let pairs = PairwiseLogistic::new(&scores, 1.5);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                let x = 1.5 * (scores[i] - scores[j]);
                let (log_p, complement) = pairs.log_sigmoid_and_complement(i, j);
                assert!((log_p - (-softplus(-x))).abs() < 1e-12, "{i} {j}");
                assert!((complement - sigmoid(-x)).abs() < 1e-15, "{i} {j}");
                assert!((pairs.sigmoid(i, j) - sigmoid(x)).abs() < 1e-15, "{i} {j}");
            }
        }
    }

    #[test]
    fn listwise_plan_is_row_major_and_chunks_only_for_positive_sizes() {
        let shape = BatchShape::query_documents(vec![2, 1]);
        let plan = listwise_plan("L", &shape, Some(0)).unwrap();
        assert_eq!(plan.mini_batch_size(), None);
        assert_eq!(
            plan.pairs
                .iter()
                .map(|p| (p.text_a.row, p.text_b.item))
                .collect::<Vec<_>>(),
            vec![(0, 0), (0, 1), (1, 0)]
        );
        assert_eq!(
            listwise_plan("L", &shape, Some(3))
                .unwrap()
                .mini_batch_size(),
            Some(3)
        );
        assert!(listwise_plan("L", &BatchShape::query_documents(vec![2, 0]), None).is_err());
        assert!(listwise_plan("L", &BatchShape::texts(2, 2), None).is_err());
    }
}
