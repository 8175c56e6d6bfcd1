//! MarginMSELoss: the squared error between the student's and the teacher's
//! (positive − negative) margins (sentence-transformers `cross_encoder/losses/margin_mse.py`).

use crosstrain_plugin_api::{
    BatchShape, DataFormat, LabelLayout, Labels, LossError, LossOutput, LossPlugin, LossResult,
    PairPlan, ScoredPair, TextRef,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crosstrain_plugin_api::helpers::{
    check_finite, check_logits, require_text_columns, Activation, Reduction,
};

/// Config of [`MarginMSELoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MarginMseConfig {
    /// Applied to every logit before the margins are taken (reference default: identity).
    #[serde(default)]
    pub activation_fn: Activation,
    /// `mean` over all B·N margins (default) or `sum` (torch's `reduction` keyword).
    #[serde(default)]
    pub reduction: Reduction,
}

/// `m_ik = act(s_i^pos) − act(s_ik^neg)`, `L = mean_{i,k} (m_ik − t_ik)²`, where the teacher
/// margins `t` come as one margin per row (N = 1), N margins, or N + 1 raw teacher scores.
#[derive(Debug, Clone)]
pub struct MarginMSELoss {
    config: MarginMseConfig,
}

const CITATION: &str = r#"@misc{hofstätter2021improving,
    title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
    author={Sebastian Hofstätter and Sophia Althammer and Michael Schröder and Mete Sertkan and Allan Hanbury},
    year={2021},
    eprint={2010.02666},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}"#;

impl MarginMSELoss {
    /// The teacher margins of one row with `negatives` negatives. The reference tests the
    /// `[B, N+1]` (raw scores) layout before `[B, N]` (margins), so with N = 1 a list of two
    /// numbers is read as raw scores.
    fn teacher_margins(labels: &Labels, row: usize, negatives: usize) -> LossResult<Vec<f64>> {
        let values: Vec<f64> = labels.row(row).iter().map(|&v| f64::from(v)).collect();
        match labels.layout {
            LabelLayout::PerRow if negatives == 1 && values.len() == 1 => Ok(values),
            LabelLayout::PerRowList if values.len() == negatives + 1 => Ok(values[1..]
                .iter()
                .map(|negative| values[0] - negative)
                .collect()),
            LabelLayout::PerRowList if values.len() == negatives => Ok(values),
            _ => Err(LossError::new(format!(
                "MarginMSELoss: row {row} has {} label value(s) for {negatives} negative(s); \
                 expected one margin per row (only with 1 negative), {negatives} margins, or \
                 {} teacher scores [positive, negatives..]",
                values.len(),
                negatives + 1
            ))),
        }
    }
}

impl LossPlugin for MarginMSELoss {
    type Config = MarginMseConfig;
    const NAME: &'static str = "MarginMSELoss";
    const SUMMARY: &'static str =
        "Matches the student's positive-minus-negative score margins to a teacher's (distillation).";
    const CITATION: Option<&'static str> = Some(CITATION);

    fn formats() -> Vec<DataFormat> {
        vec![DataFormat::margin_distillation()]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        Ok(Self { config })
    }

    fn effective_config(&self) -> serde_json::Value {
        serde_json::json!({ "activation_fn": self.config.activation_fn.reference_name() })
    }

    /// N + 1 blocks of B pairs: every query with its positive, then with each negative column.
    fn plan(&self, shape: &BatchShape, _seed: u64) -> LossResult<PairPlan> {
        require_text_columns(
            Self::NAME,
            shape,
            3,
            usize::MAX,
            "(query, positive, negative_1, .., negative_n) columns",
        )?;
        let mut pairs = Vec::with_capacity(shape.rows as usize * (shape.num_columns() - 1));
        for column in 1..shape.num_columns() as u32 {
            for row in 0..shape.rows {
                pairs.push(ScoredPair::new(
                    TextRef::cell(0, row),
                    TextRef::cell(column, row),
                ));
            }
        }
        Ok(PairPlan::new(shape.rows, pairs))
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        labels: &Labels,
    ) -> LossResult<LossOutput> {
        check_logits(Self::NAME, plan, logits, num_labels, Some(1))?;
        check_finite(Self::NAME, logits)?;
        let rows = plan.rows as usize;
        let columns = plan
            .pairs
            .iter()
            .map(|p| p.text_b.column)
            .max()
            .unwrap_or(0) as usize;
        if columns < 2 {
            return Err(LossError::new("MarginMSELoss: the plan scores no negative"));
        }
        let negatives = columns - 1;
        // positions[row][column - 1]: where the pair (query, column) sits in the plan.
        let mut positions = vec![vec![usize::MAX; columns]; rows];
        for (index, pair) in plan.pairs.iter().enumerate() {
            let (row, column) = (pair.text_a.row as usize, pair.text_b.column as usize);
            if row >= rows || column == 0 {
                return Err(LossError::new(format!(
                    "MarginMSELoss: pair {index} does not pair a query with a document column"
                )));
            }
            positions[row][column - 1] = index;
        }
        let count = (rows * negatives) as f64;
        let scale = match self.config.reduction {
            Reduction::Mean => 1.0 / count,
            Reduction::Sum => 1.0,
        };
        let activation = self.config.activation_fn;
        let mut loss = 0.0;
        let mut grad = vec![0.0; logits.len()];
        for (row, row_positions) in positions.iter().enumerate() {
            if let Some(missing) = row_positions.iter().position(|&p| p == usize::MAX) {
                return Err(LossError::new(format!(
                    "MarginMSELoss: row {row} has no score for column {}",
                    missing + 1
                )));
            }
            let targets = Self::teacher_margins(labels, row, negatives)?;
            let positive = f64::from(logits[row_positions[0]]);
            for (k, &target) in targets.iter().enumerate() {
                let negative = f64::from(logits[row_positions[k + 1]]);
                let error = activation.apply(positive) - activation.apply(negative) - target;
                loss += error * error;
                let d_margin = 2.0 * error * scale;
                grad[row_positions[0]] += d_margin * activation.derivative(positive);
                grad[row_positions[k + 1]] -= d_margin * activation.derivative(negative);
            }
        }
        Ok(LossOutput::new(loss * scale, grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};

    #[test]
    fn all_three_label_layouts_give_the_same_loss() {
        let loss = build_loss::<MarginMSELoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(2, 3), 0).unwrap();
        let logits = [1.0f32, 0.5, -0.5, 0.25];
        let raw = Labels::per_row_lists(&[[3.0f32, 1.0], [2.0, 2.5]]);
        let margins = Labels::per_row_lists(&[[2.0f32], [-0.5]]);
        let scalar = Labels::per_row(vec![2.0, -0.5]);
        let expected = ((1.5f64 - 2.0).powi(2) + (0.25f64 + 0.5).powi(2)) / 2.0;
        for labels in [raw, margins, scalar] {
            let output = loss.compute(&plan, &logits, 1, &labels).unwrap();
            assert!((output.loss - expected).abs() < 1e-12);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(4);
        for config in [r#"{}"#, r#"{"activation_fn": "sigmoid"}"#] {
            let loss = build_loss::<MarginMSELoss>(config).unwrap();
            let plan = loss.plan(&BatchShape::texts(3, 4), 0).unwrap();
            let labels =
                Labels::per_row_lists(&[[1.0f32, 0.5, -1.0], [0.0, 2.0, 1.0], [3.0, -3.0, 0.1]]);
            assert_gradient_matches(&loss, &plan, &rng.logits(9), 1, &labels);
        }
    }

    #[test]
    fn a_scalar_margin_needs_exactly_one_negative() {
        let loss = build_loss::<MarginMSELoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(1, 4), 0).unwrap();
        let error = loss
            .compute(&plan, &[0.0, 1.0, 2.0], 1, &Labels::per_row(vec![1.0]))
            .unwrap_err();
        assert!(error.to_string().contains("2 negative"), "{error}");
    }
}
