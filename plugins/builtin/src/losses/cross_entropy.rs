//! CrossEntropyLoss: `torch.nn.CrossEntropyLoss` over `num_labels` classes per pair
//! (sentence-transformers `cross_encoder/losses/cross_entropy.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, LabelLayout, Labels, LossError, LossOutput, LossPlugin, LossResult,
    PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crosstrain_plugin_api::helpers::{
    check_finite, check_logits, labels_per_row, log_sum_exp, pairwise_plan, Activation, Reduction,
};

/// Config of [`CrossEntropyLoss`]; keys are the reference constructor's arguments and the
/// `torch.nn.CrossEntropyLoss` keywords it forwards.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrossEntropyConfig {
    /// Applied to the logits before the softmax (reference default: identity).
    #[serde(default)]
    pub activation_fn: Activation,
    /// A weight per class (torch's `weight`); the mean divides by the summed weights of the
    /// rows' classes, as torch does. Null = all 1.
    #[serde(default)]
    pub weight: Option<Vec<f64>>,
    /// Rows with this class id are skipped (torch's `ignore_index`).
    #[serde(default = "default_ignore_index")]
    pub ignore_index: i64,
    /// Label smoothing ε in [0, 1]: targets become (1−ε)·one-hot + ε/C.
    #[serde(default)]
    pub label_smoothing: f64,
    /// `mean` over the rows (default) or `sum`.
    #[serde(default)]
    pub reduction: Reduction,
}

fn default_ignore_index() -> i64 {
    -100
}

impl Default for CrossEntropyConfig {
    fn default() -> Self {
        Self {
            activation_fn: Activation::Identity,
            weight: None,
            ignore_index: default_ignore_index(),
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Softmax cross-entropy on `act(logits)` with class-id labels, exactly as torch computes it
/// (weights, `ignore_index`, label smoothing).
#[derive(Debug, Clone)]
pub struct CrossEntropyLoss {
    config: CrossEntropyConfig,
}

impl LossPlugin for CrossEntropyLoss {
    type Config = CrossEntropyConfig;
    const NAME: &'static str = "CrossEntropyLoss";
    const SUMMARY: &'static str = "Softmax cross-entropy over num_labels classes per pair, with \
         integer class labels or class probabilities (soft labels).";
    const NUM_LABELS: u32 = 0;

    fn formats() -> Vec<DataFormat> {
        vec![
            DataFormat::pair_class_label(),
            DataFormat::pair_class_probabilities(),
        ]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        if !(0.0..=1.0).contains(&config.label_smoothing) {
            return Err(LossError::new(format!(
                "CrossEntropyLoss: label_smoothing must be in [0, 1], got {}",
                config.label_smoothing
            )));
        }
        if let Some(weights) = &config.weight {
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                return Err(LossError::new(
                    "CrossEntropyLoss: every class weight must be a finite number ≥ 0",
                ));
            }
        }
        Ok(Self { config })
    }

    /// The reference class has no `get_config_dict` (its card shows only the name). We show
    /// the parameters anyway, since they change the numbers: a documented difference.
    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({
            "activation_fn": self.config.activation_fn.reference_name(),
            "weight": self.config.weight,
            "ignore_index": self.config.ignore_index,
            "label_smoothing": self.config.label_smoothing,
            "reduction": self.config.reduction,
        })
    }

    fn plan(&self, shape: &BatchShape, _seed: u64) -> LossResult<PairPlan> {
        pairwise_plan(Self::NAME, shape)
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) -> LossResult<LossOutput> {
        check_logits(Self::NAME, plan, logits, num_labels, None)?;
        check_finite(Self::NAME, logits)?;
        let classes = num_labels;
        if let Some(weights) = &self.config.weight {
            if weights.len() != classes {
                return Err(LossError::new(format!(
                    "CrossEntropyLoss: {} class weights for a model with {classes} labels",
                    weights.len()
                )));
            }
        }
        let class_weight = |class: usize| self.config.weight.as_ref().map_or(1.0, |w| w[class]);
        if labels.layout == LabelLayout::PerRowList {
            return self.compute_with_probabilities(plan, logits, classes, labels);
        }
        let targets = labels_per_row(Self::NAME, labels, plan.rows as usize)?;
        let epsilon = self.config.label_smoothing;
        let activation = self.config.activation_fn;

        // First pass: class of each pair (None = ignored) and the mean's denominator.
        let mut pair_classes = Vec::with_capacity(plan.len());
        let mut denominator = 0.0;
        for (index, pair) in plan.pairs.iter().enumerate() {
            let label = targets[pair.text_a.row as usize];
            if label.fract() != 0.0 {
                return Err(LossError::new(format!(
                    "CrossEntropyLoss: label of row {} is {label}, expected an integer class id",
                    pair.text_a.row
                )));
            }
            if label as i64 == self.config.ignore_index {
                pair_classes.push(None);
                continue;
            }
            if label < 0.0 || label as usize >= classes {
                return Err(LossError::new(format!(
                    "CrossEntropyLoss: class id {label} of pair {index} is outside 0..{classes}"
                )));
            }
            let class = label as usize;
            denominator += class_weight(class);
            pair_classes.push(Some(class));
        }
        let norm = match self.config.reduction {
            Reduction::Mean => 1.0 / denominator,
            Reduction::Sum => 1.0,
        };

        let mut loss = 0.0;
        let mut grad = vec![0.0; logits.len()];
        for (index, class) in pair_classes.iter().enumerate() {
            let Some(class) = *class else { continue };
            // d loss / d log p_c: the NLL part on the target, the smoothing part on every class.
            let d_log_probs: Vec<f64> = (0..classes)
                .map(|c| {
                    let nll = if c == class {
                        -(1.0 - epsilon) * class_weight(class)
                    } else {
                        0.0
                    };
                    (nll - epsilon / classes as f64 * class_weight(c)) * norm
                })
                .collect();
            let pair = index * classes..(index + 1) * classes;
            loss += through_log_softmax(
                &logits[pair.clone()],
                &d_log_probs,
                activation,
                &mut grad[pair],
            );
        }
        Ok(LossOutput::new(loss, grad))
    }
}

impl CrossEntropyLoss {
    /// Float targets `[B, C]`, as torch treats them: `ℓ_i = −Σ_c w_c·q'_ic·log p_ic` with
    /// `q' = (1−ε)·q + ε/C`; the mean divides by the number of pairs (not by the weights, and
    /// `ignore_index` does not apply), as torch's `cross_entropy` does for probabilities.
    fn compute_with_probabilities(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        classes: usize,
        labels: &Labels,
    ) -> LossResult<LossOutput> {
        let class_weight = |class: usize| self.config.weight.as_ref().map_or(1.0, |w| w[class]);
        let epsilon = self.config.label_smoothing;
        let activation = self.config.activation_fn;
        let norm = match self.config.reduction {
            Reduction::Mean => 1.0 / plan.len().max(1) as f64,
            Reduction::Sum => 1.0,
        };
        let mut loss = 0.0;
        let mut grad = vec![0.0; logits.len()];
        for (index, pair) in plan.pairs.iter().enumerate() {
            let row = pair.text_a.row as usize;
            let target = labels.row(row);
            if target.len() != classes {
                return Err(LossError::new(format!(
                    "CrossEntropyLoss: row {row} has {} class probabilities for {classes} labels",
                    target.len()
                )));
            }
            let d_log_probs: Vec<f64> = (0..classes)
                .map(|c| {
                    let smoothed =
                        (1.0 - epsilon) * f64::from(target[c]) + epsilon / classes as f64;
                    -class_weight(c) * smoothed * norm
                })
                .collect();
            let pair = index * classes..(index + 1) * classes;
            loss += through_log_softmax(
                &logits[pair.clone()],
                &d_log_probs,
                activation,
                &mut grad[pair],
            );
        }
        Ok(LossOutput::new(loss, grad))
    }
}

/// For one pair: with `d_log_probs` = dLoss/d log softmax(act(raw)) (a loss linear in the
/// log-probabilities), returns that loss, `Σ_c d_c · log p_c`, and writes dLoss/d raw into
/// `grad`.
fn through_log_softmax(
    raw: &[f32],
    d_log_probs: &[f64],
    activation: Activation,
    grad: &mut [f64],
) -> f64 {
    let activated: Vec<f64> = raw
        .iter()
        .map(|&s| activation.apply(f64::from(s)))
        .collect();
    let lse = log_sum_exp(&activated);
    let total: f64 = d_log_probs.iter().sum();
    let mut loss = 0.0;
    for (c, (&d, a)) in d_log_probs.iter().zip(&activated).enumerate() {
        let log_prob = a - lse;
        loss += log_prob * d;
        grad[c] = (d - log_prob.exp() * total) * activation.derivative(f64::from(raw[c]));
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};

    #[test]
    fn matches_torch_with_weights_and_label_smoothing() {
        // torch.nn.CrossEntropyLoss(weight=torch.tensor([1., 2., .5]), label_smoothing=0.1)(
        //     torch.tensor([[1., 2., 3.], [0.5, -1., 2.]]), torch.tensor([0, 1]))
        // computed by hand from torch's formula (LossNLL.cpp, cross_entropy_loss_label_smoothing):
        // (1-ε)·Σ w_y·nll / Σ w_y + ε/C · Σ_i Σ_c w_c·(−log p_ic) / Σ w_y.
        let loss = build_loss::<CrossEntropyLoss>(
            r#"{"weight": [1.0, 2.0, 0.5], "label_smoothing": 0.1}"#,
        )
        .unwrap();
        let plan = loss.plan(&BatchShape::texts(2, 2), 0).unwrap();
        let logits = [1.0f32, 2.0, 3.0, 0.5, -1.0, 2.0];
        let output = loss
            .compute(&plan, &logits, 3, &Labels::per_row(vec![0.0, 1.0]))
            .unwrap();
        let w = [1.0, 2.0, 0.5];
        let rows = [[1.0f64, 2.0, 3.0], [0.5, -1.0, 2.0]];
        let targets = [0usize, 1];
        let mut nll = 0.0;
        let mut smooth = 0.0;
        for (row, &target) in rows.iter().zip(&targets) {
            let lse = log_sum_exp(row);
            nll += -w[target] * (row[target] - lse);
            smooth += (0..3).map(|c| -w[c] * (row[c] - lse)).sum::<f64>();
        }
        let denominator = w[0] + w[1];
        let expected = 0.9 * nll / denominator + 0.1 / 3.0 * smooth / denominator;
        assert!(
            (output.loss - expected).abs() < 1e-12,
            "{} vs {expected}",
            output.loss
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(2);
        for config in [
            r#"{}"#,
            r#"{"activation_fn": "tanh"}"#,
            r#"{"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.2}"#,
            r#"{"label_smoothing": 0.1, "reduction": "sum", "ignore_index": 2}"#,
        ] {
            let loss = build_loss::<CrossEntropyLoss>(config).unwrap();
            let plan = loss.plan(&BatchShape::texts(5, 2), 0).unwrap();
            let labels = Labels::per_row(vec![0.0, 2.0, 1.0, 1.0, 0.0]);
            assert_gradient_matches(&loss, &plan, &rng.logits(15), 3, &labels);
        }
    }

    #[test]
    fn rejects_bad_labels_and_configs() {
        let loss = build_loss::<CrossEntropyLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(1, 2), 0).unwrap();
        assert!(loss
            .compute(&plan, &[0.0, 1.0], 2, &Labels::per_row(vec![2.0]))
            .is_err());
        assert!(loss
            .compute(&plan, &[0.0, 1.0], 2, &Labels::per_row(vec![0.5]))
            .is_err());
        assert!(build_loss::<CrossEntropyLoss>(r#"{"label_smoothing": 1.5}"#).is_err());
    }
}
