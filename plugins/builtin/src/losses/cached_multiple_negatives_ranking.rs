//! CachedMultipleNegativesRankingLoss: MNRL scored with gradient caching in chunks of
//! `mini_batch_size` pairs (sentence-transformers
//! `cross_encoder/losses/cached_multiple_negatives_ranking.py`). The loss and gradients equal
//! MNRL's; only the memory differs, and the host does the caching for any loss whose plan sets
//! a chunk size.

use crosstrain_plugin_api::{
    BatchShape, DataFormat, Labels, LossError, LossOutput, LossPlugin, LossResult, PairPlan,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::losses::multiple_negatives_ranking::MultipleNegativesRankingConfig;
use crosstrain_plugin_api::helpers::Activation;

/// Config of [`CachedMultipleNegativesRankingLoss`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CachedMultipleNegativesRankingConfig {
    /// In-batch negatives sampled per anchor; see MultipleNegativesRankingLoss.
    #[serde(default = "default_num_negatives")]
    pub num_negatives: Option<u32>,
    /// Multiplies the activated scores; null or 0 means no scaling.
    #[serde(default = "default_scale")]
    pub scale: Option<f64>,
    /// Applied before scaling (default sigmoid); null means none.
    #[serde(default = "default_activation")]
    pub activation_fn: Option<Activation>,
    /// Pairs per forward chunk; peak memory grows with this, not with the batch.
    #[serde(default = "default_mini_batch_size")]
    pub mini_batch_size: u32,
    /// Accepted for compatibility with the reference constructor; the host draws progress.
    #[serde(default)]
    pub show_progress_bar: bool,
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

fn default_mini_batch_size() -> u32 {
    32
}

impl Default for CachedMultipleNegativesRankingConfig {
    fn default() -> Self {
        Self {
            num_negatives: default_num_negatives(),
            scale: default_scale(),
            activation_fn: default_activation(),
            mini_batch_size: default_mini_batch_size(),
            show_progress_bar: false,
        }
    }
}

/// MNRL with memory bounded by `mini_batch_size`.
#[derive(Debug, Clone)]
pub struct CachedMultipleNegativesRankingLoss {
    ranking: MultipleNegativesRankingConfig,
    mini_batch_size: u32,
}

impl LossPlugin for CachedMultipleNegativesRankingLoss {
    type Config = CachedMultipleNegativesRankingConfig;
    const NAME: &'static str = "CachedMultipleNegativesRankingLoss";
    const SUMMARY: &'static str = "MultipleNegativesRankingLoss with gradient caching: large \
         batches in bounded memory, same loss and gradients.";

    fn formats() -> Vec<DataFormat> {
        vec![
            DataFormat::anchor_positive(),
            DataFormat::triplet(),
            DataFormat::n_tuple(),
        ]
    }

    fn from_config(config: Self::Config) -> LossResult<Self> {
        if config.mini_batch_size == 0 {
            return Err(LossError::new(
                "CachedMultipleNegativesRankingLoss: mini_batch_size must be at least 1",
            ));
        }
        let ranking = MultipleNegativesRankingConfig {
            num_negatives: config.num_negatives,
            scale: config.scale,
            activation_fn: config.activation_fn,
        };
        ranking.validate(Self::NAME)?;
        Ok(Self {
            ranking,
            mini_batch_size: config.mini_batch_size,
        })
    }

    fn effective_config(&self) -> serde_json::Value {
        let mut dict = self.ranking.reference_dict();
        dict["mini_batch_size"] = self.mini_batch_size.into();
        dict
    }

    fn plan(&self, shape: &BatchShape, seed: u64) -> LossResult<PairPlan> {
        Ok(self
            .ranking
            .plan(Self::NAME, shape, seed)?
            .with_mini_batch_size(Some(self.mini_batch_size)))
    }

    fn compute(
        &self,
        plan: &PairPlan,
        logits: &[f32],
        num_labels: usize,
        _labels: &Labels,
    ) -> LossResult<LossOutput> {
        self.ranking.compute(Self::NAME, plan, logits, num_labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::multiple_negatives_ranking::MultipleNegativesRankingLoss;
    use crosstrain_plugin_api::build_loss;

    #[test]
    fn same_pairs_and_numbers_as_mnrl_with_a_chunk_size() {
        let cached =
            build_loss::<CachedMultipleNegativesRankingLoss>(r#"{"mini_batch_size": 5}"#).unwrap();
        let plain = build_loss::<MultipleNegativesRankingLoss>("{}").unwrap();
        let shape = BatchShape::texts(6, 2);
        let cached_plan = cached.plan(&shape, 4).unwrap();
        let plain_plan = plain.plan(&shape, 4).unwrap();
        assert_eq!(cached_plan.pairs, plain_plan.pairs);
        assert_eq!(cached_plan.mini_batch_size(), Some(5));
        let logits: Vec<f32> = (0..plain_plan.len())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let a = cached
            .compute(&cached_plan, &logits, 1, &Labels::none())
            .unwrap();
        let b = plain
            .compute(&plain_plan, &logits, 1, &Labels::none())
            .unwrap();
        assert_eq!(a, b);
        assert!(
            build_loss::<CachedMultipleNegativesRankingLoss>(r#"{"mini_batch_size": 0}"#).is_err()
        );
    }
}
