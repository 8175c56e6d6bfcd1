//! MultipleNegativesRankingLoss: each anchor's positive against in-batch negatives (other
//! rows' positives *and* hard negatives) and its own hard negatives, as a softmax
//! cross-entropy (sentence-transformers `cross_encoder/losses/multiple_negatives_ranking.py`).

use crosstrain_plugin_api::rng::SeededRng;
use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossError, LossOutput, LossPlugin, LossResult, PairPlan,
    ScoredPair, TextRef,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crosstrain_plugin_api::helpers::{
    check_finite, check_logits, require_text_columns, softmax, Activation,
};

/// Config of [`MultipleNegativesRankingLoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MultipleNegativesRankingConfig {
    /// In-batch negatives sampled per anchor (without replacement) from the other rows'
    /// positives and hard negatives. Null, or a value not smaller than the pool, takes the
    /// whole pool in a fixed order.
    #[serde(default = "default_num_negatives")]
    pub num_negatives: Option<u32>,
    /// Multiplies the activated scores; null or 0 means no scaling (the reference's "falsy").
    #[serde(default = "default_scale")]
    pub scale: Option<f64>,
    /// Applied before scaling; the reference default is sigmoid (unlike every other loss), so
    /// with scale 10 score gaps are capped at 10. Null means none.
    #[serde(default = "default_activation")]
    pub activation_fn: Option<Activation>,
}

fn default_num_negatives() -> Option<u32> {
    Some(4)
}

fn default_scale() -> Option<f64> {
    Some(10.0)
}

fn default_activation() -> Option<Activation> {
    Some(Activation::Sigmoid)
}

impl Default for MultipleNegativesRankingConfig {
    fn default() -> Self {
        Self {
            num_negatives: default_num_negatives(),
            scale: default_scale(),
            activation_fn: default_activation(),
        }
    }
}

impl MultipleNegativesRankingConfig {
    /// The config as the reference's `get_config_dict` shows it.
    pub fn reference_dict(&self) -> serde_json::Value {
        serde_json::json!({
            "scale": self.scale,
            "num_negatives": self.num_negatives,
            "activation_fn": self.activation_fn.map_or("NoneType", Activation::reference_name),
        })
    }

    /// Checks ranges the schema cannot express.
    pub fn validate(&self, loss: &str) -> LossResult<()> {
        match self.scale {
            Some(scale) if !scale.is_finite() => Err(LossError::new(format!(
                "{loss}: scale must be a finite number, got {scale}"
            ))),
            _ => Ok(()),
        }
    }

    /// The pairs: positives, then `k` blocks of sampled in-batch negatives, then the anchors'
    /// own hard negatives column by column, each block holding one pair per anchor.
    pub fn plan(&self, loss: &str, shape: &BatchShape, seed: u64) -> LossResult<PairPlan> {
        require_text_columns(
            loss,
            shape,
            2,
            usize::MAX,
            "(anchor, positive[, negative_1..negative_n]) columns",
        )?;
        let rows = shape.rows;
        let candidate_columns = shape.num_columns() as u32 - 1;
        // Flat candidate index f = (c − 1)·B + j is column c, row j; an anchor's pool is every
        // candidate of another row.
        let flat_candidate = |flat: u32| TextRef::cell(1 + flat / rows, flat % rows);
        let pool_size = candidate_columns * rows - candidate_columns;
        let mut rng = SeededRng::new(seed);
        let in_batch: Vec<Vec<u32>> = (0..rows)
            .map(|anchor| {
                let pool: Vec<u32> = (0..candidate_columns * rows)
                    .filter(|flat| flat % rows != anchor)
                    .collect();
                match self.num_negatives {
                    Some(count) if count < pool_size => {
                        rng.sample_without_replacement(&pool, count as usize)
                    }
                    _ => pool,
                }
            })
            .collect();
        let sampled = in_batch.first().map_or(0, Vec::len);
        let mut pairs =
            Vec::with_capacity(rows as usize * (1 + sampled + candidate_columns as usize - 1));
        let anchor = |row: u32| TextRef::cell(0, row);
        for row in 0..rows {
            pairs.push(ScoredPair::new(anchor(row), TextRef::cell(1, row)));
        }
        for m in 0..sampled {
            for (row, negatives) in (0..rows).zip(&in_batch) {
                pairs.push(ScoredPair::new(anchor(row), flat_candidate(negatives[m])));
            }
        }
        for column in 2..=candidate_columns {
            for row in 0..rows {
                pairs.push(ScoredPair::new(anchor(row), TextRef::cell(column, row)));
            }
        }
        Ok(PairPlan::new(rows, pairs))
    }

    /// `L = mean_i [−z_i,pos + logsumexp_j z_ij]` with `z = scale·act(s)`, each anchor's
    /// candidates being the plan's pairs for that row.
    pub fn compute(
        &self,
        loss_name: &str,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
    ) -> LossResult<LossOutput> {
        check_logits(loss_name, plan, logits, num_labels, Some(1))?;
        check_finite(loss_name, logits)?;
        let rows = plan.rows as usize;
        let mut row_pairs: Vec<Vec<usize>> = vec![Vec::new(); rows];
        let mut positive: Vec<Option<usize>> = vec![None; rows];
        for (index, pair) in plan.pairs.iter().enumerate() {
            let row = pair.text_a.row as usize;
            if row >= rows {
                return Err(LossError::new(format!(
                    "{loss_name}: pair {index} refers to anchor {row} of {rows}"
                )));
            }
            if pair.text_b == TextRef::cell(1, pair.text_a.row) {
                positive[row] = Some(row_pairs[row].len());
            }
            row_pairs[row].push(index);
        }
        let scale = self.scale.filter(|&s| s != 0.0).unwrap_or(1.0);
        let activation = self.activation_fn.unwrap_or(Activation::Identity);
        let mut loss = 0.0;
        let mut grad = vec![0.0; logits.len()];
        for (row, indices) in row_pairs.iter().enumerate() {
            let positive = positive[row].ok_or_else(|| {
                LossError::new(format!("{loss_name}: anchor {row} has no scored positive"))
            })?;
            let z: Vec<f64> = indices
                .iter()
                .map(|&i| scale * activation.apply(f64::from(logits[i])))
                .collect();
            let probabilities = softmax(&z);
            loss += -z[positive] + crosstrain_plugin_api::helpers::log_sum_exp(&z);
            for (j, &i) in indices.iter().enumerate() {
                let d_z = (probabilities[j] - f64::from(u8::from(j == positive))) / rows as f64;
                grad[i] = d_z * scale * activation.derivative(f64::from(logits[i]));
            }
        }
        Ok(LossOutput::new(loss / rows as f64, grad))
    }
}

/// MNRL: softmax cross-entropy of each anchor's positive against its negatives.
#[derive(Debug, Clone)]
pub struct MultipleNegativesRankingLoss {
    config: MultipleNegativesRankingConfig,
}

impl LossPlugin for MultipleNegativesRankingLoss {
    type Config = MultipleNegativesRankingConfig;
    const NAME: &'static str = "MultipleNegativesRankingLoss";
    const SUMMARY: &'static str = "Ranks each anchor's positive above sampled in-batch negatives \
         and its own hard negatives (softmax cross-entropy).";

    fn formats() -> Vec<DataFormat> {
        vec![
            DataFormat::anchor_positive(),
            DataFormat::triplet(),
            DataFormat::n_tuple(),
        ]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        config.validate(Self::NAME)?;
        Ok(Self { config })
    }

    fn effective_config(&self) -> serde_json::Value {
        self.config.reference_dict()
    }

    fn plan(&self, shape: &BatchShape, seed: u64) -> LossResult<PairPlan> {
        self.config.plan(Self::NAME, shape, seed)
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        _labels: &Labels,
    ) -> LossResult<LossOutput> {
        self.config.compute(Self::NAME, plan, logits, num_labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crosstrain_plugin_api::build_loss;
    use crosstrain_plugin_api::testing::{assert_gradient_matches, TestRng};
    use std::collections::HashSet;

    #[test]
    fn samples_distinct_negatives_from_other_rows_including_hard_negatives() {
        let loss = build_loss::<MultipleNegativesRankingLoss>(r#"{"num_negatives": 3}"#).unwrap();
        let plan = loss.plan(&BatchShape::texts(5, 3), 9).unwrap();
        // 5 positives + 3 × 5 sampled + 5 own hard negatives.
        assert_eq!(plan.len(), 25);
        let mut seen_hard_negative_of_other_row = false;
        for row in 0..5u32 {
            let negatives: Vec<TextRef> = plan.pairs[5..20]
                .iter()
                .filter(|p| p.text_a.row == row)
                .map(|p| p.text_b)
                .collect();
            assert_eq!(negatives.len(), 3);
            assert_eq!(
                negatives.iter().collect::<HashSet<_>>().len(),
                3,
                "distinct"
            );
            assert!(
                negatives.iter().all(|n| n.row != row),
                "never the anchor's own"
            );
            seen_hard_negative_of_other_row |= negatives.iter().any(|n| n.column == 2);
        }
        assert!(
            seen_hard_negative_of_other_row
                || plan.pairs[5..20].iter().all(|p| p.text_b.column == 1)
        );
        assert_eq!(
            plan,
            loss.plan(&BatchShape::texts(5, 3), 9).unwrap(),
            "seeded"
        );
    }

    #[test]
    fn takes_the_whole_pool_in_order_when_it_is_not_larger_than_num_negatives() {
        // Pool = C·B − C = 2·3 − 2 = 4 = num_negatives: the reference's `<` makes this
        // deterministic (ascending flat index).
        let loss = build_loss::<MultipleNegativesRankingLoss>(r#"{"num_negatives": 4}"#).unwrap();
        let plan = loss.plan(&BatchShape::texts(3, 3), 1).unwrap();
        let row0: Vec<(u32, u32)> = plan.pairs[3..15]
            .iter()
            .filter(|p| p.text_a.row == 0)
            .map(|p| (p.text_b.column, p.text_b.row))
            .collect();
        assert_eq!(row0, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = TestRng::new(5);
        for config in [
            r#"{}"#,
            r#"{"activation_fn": null, "scale": 1.0, "num_negatives": null}"#,
            r#"{"scale": 0, "activation_fn": "tanh", "num_negatives": 2}"#,
        ] {
            let loss = build_loss::<MultipleNegativesRankingLoss>(config).unwrap();
            let plan = loss.plan(&BatchShape::texts(4, 3), 3).unwrap();
            assert_gradient_matches(&loss, &plan, &rng.logits(plan.len()), 1, &Labels::none());
        }
    }

    #[test]
    fn a_single_row_has_no_in_batch_negative() {
        let loss = build_loss::<MultipleNegativesRankingLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(1, 2), 0).unwrap();
        assert_eq!(plan.len(), 1);
        let output = loss.compute(&plan, &[0.3], 1, &Labels::none()).unwrap();
        assert_eq!(output.loss, 0.0);
    }

    #[test]
    fn surprises_of_the_reference_hold() {
        // LOSSES.md §1.13.2: scale 0 disables scaling (it does not multiply by 0).
        let logits = [0.4f32, -1.0, 2.0, 0.1, 0.7, -0.3];
        let shape = BatchShape::texts(2, 2);
        let compute = |config: &str| {
            let loss = build_loss::<MultipleNegativesRankingLoss>(config).unwrap();
            let plan = loss.plan(&shape, 0).unwrap();
            let n = plan.len();
            loss.compute(&plan, &logits[..n], 1, &Labels::none())
                .unwrap()
                .loss
        };
        assert_eq!(compute(r#"{"scale": 0}"#), compute(r#"{"scale": null}"#));
        assert!(compute(r#"{"scale": 0}"#) != compute(r#"{}"#));
        // The in-batch pool holds the other rows' hard negatives, not only their positives.
        let loss =
            build_loss::<MultipleNegativesRankingLoss>(r#"{"num_negatives": null}"#).unwrap();
        let plan = loss.plan(&BatchShape::texts(3, 3), 0).unwrap();
        let row0: Vec<TextRef> = plan
            .pairs
            .iter()
            .filter(|p| p.text_a.row == 0)
            .map(|p| p.text_b)
            .collect();
        assert!(row0.contains(&TextRef::cell(2, 1)) && row0.contains(&TextRef::cell(2, 2)));
        assert!(
            row0.contains(&TextRef::cell(2, 0)),
            "its own hard negative comes last"
        );
        assert_eq!(*row0.last().unwrap(), TextRef::cell(2, 0));
        // Default sigmoid·10 caps score gaps at 10, so the loss cannot reach 0.
        let loss = build_loss::<MultipleNegativesRankingLoss>("{}").unwrap();
        let plan = loss.plan(&BatchShape::texts(5, 2), 0).unwrap();
        let mut logits = vec![-50.0f32; plan.len()];
        logits[..5].fill(50.0);
        let output = loss.compute(&plan, &logits, 1, &Labels::none()).unwrap();
        let floor = -(1.0 / (1.0 + 4.0 * (-10f64).exp())).ln();
        assert!(
            (output.loss - floor).abs() < 1e-9,
            "{} vs {floor}",
            output.loss
        );
        // activation_fn null is reported as the reference's fullname(None).
        let loss =
            build_loss::<MultipleNegativesRankingLoss>(r#"{"activation_fn": null}"#).unwrap();
        assert_eq!(loss.effective_config()["activation_fn"], "NoneType");
    }
}
