//! Evaluation during training: the evaluators' data loaded once, and the eval loss and
//! metrics at each evaluation step.

#![allow(unused_imports)]
use super::*;

/// An evaluator with its data loaded.
pub(super) enum LoadedEvaluator {
    Reranking {
        evaluator: RerankingEvaluator,
        samples: Vec<RerankingSample>,
    },
    Pairs {
        kind: EvaluatorKind,
        name: String,
        dataset: Dataset,
        gold: Vec<f64>,
    },
    NanoBeir {
        evaluator: NanoBeirEvaluator,
        /// The recipe's `dataset_id`, for the card.
        dataset_id: String,
        /// `(split, samples)` per dataset.
        datasets: Vec<(String, Vec<RerankingSample>)>,
    },
}

pub(super) fn load_evaluator(config: &EvaluatorConfig) -> Result<LoadedEvaluator, TrainError> {
    let label = match config.kind {
        EvaluatorKind::Reranking => "reranking",
        EvaluatorKind::Classification => "classification",
        EvaluatorKind::Correlation => "correlation",
        EvaluatorKind::Nanobeir => "nanobeir",
    };
    let evaluator_error = |message: String| TrainError::EvaluatorData {
        name: if config.key_name().is_empty() {
            label.to_string()
        } else {
            config.key_name()
        },
        message,
    };
    if config.kind == EvaluatorKind::Nanobeir {
        let evaluator = NanoBeirEvaluator {
            dataset_names: config.nanobeir_datasets(),
            rerank_k: config.rerank_k.unwrap_or(100),
            at_k: config.at_k,
            always_rerank_positives: config.always_rerank_positives,
        };
        let dataset_id = config
            .dataset_id
            .clone()
            .unwrap_or_else(|| super::evaluator_config::DEFAULT_NANOBEIR_ID.to_string());
        let datasets = crate::data::nanobeir::load_nanobeir(
            &dataset_id,
            &evaluator.dataset_names,
            evaluator.rerank_k,
        )
        .map_err(|e| evaluator_error(e.to_string()))?;
        return Ok(LoadedEvaluator::NanoBeir {
            evaluator,
            dataset_id,
            datasets,
        });
    }
    let Some(data) = &config.data else {
        return Err(evaluator_error("`data` is missing".into()));
    };
    match config.kind {
        EvaluatorKind::Reranking => {
            data.check()?;
            let mut samples = Vec::new();
            for file in &data.files {
                samples.extend(
                    read_reranking_samples(file).map_err(|e| evaluator_error(e.to_string()))?,
                );
            }
            if let Some(limit) = data.limit {
                samples.truncate(limit);
            }
            Ok(LoadedEvaluator::Reranking {
                evaluator: RerankingEvaluator {
                    at_k: config.at_k,
                    always_rerank_positives: config.always_rerank_positives,
                    name: config.name.clone(),
                },
                samples,
            })
        }
        kind => {
            let dataset = read_dataset(data)?;
            if dataset.columns.len() < 2 || dataset.columns.iter().any(|c| c.is_list()) {
                return Err(evaluator_error(format!(
                    "{}: needs two text columns and a label, has {}",
                    dataset.origin(),
                    dataset.describe()
                )));
            }
            let gold = match dataset.label.as_ref().map(|l| &l.values) {
                Some(LabelValues::Scalars(values)) => {
                    values.iter().map(|&v| f64::from(v)).collect()
                }
                _ => {
                    return Err(evaluator_error(format!(
                        "{}: needs a label column with one number per row, has {}",
                        dataset.origin(),
                        dataset.describe()
                    )))
                }
            };
            Ok(LoadedEvaluator::Pairs {
                kind,
                name: config.name.clone(),
                dataset,
                gold,
            })
        }
    }
}

impl LoadedEvaluator {
    /// Every metric key (`eval_...`) this evaluator can log for a model of `num_labels`
    /// outputs, so that a `metric_for_best_model` that would never be logged is refused
    /// before training.
    pub(super) fn metric_keys(&self, num_labels: usize) -> Vec<String> {
        let (name, metrics): (&str, Vec<String>) = match self {
            LoadedEvaluator::Reranking { evaluator, .. } => {
                let k = evaluator.at_k;
                let plain = ["map".to_string(), format!("mrr@{k}"), format!("ndcg@{k}")];
                let base = plain
                    .iter()
                    .map(|m| format!("base_{m}"))
                    .collect::<Vec<_>>();
                (&evaluator.name, plain.into_iter().chain(base).collect())
            }
            LoadedEvaluator::Pairs { kind, name, .. } => {
                let metrics: &[&str] = match kind {
                    EvaluatorKind::Classification if num_labels == 1 => &[
                        "accuracy",
                        "accuracy_threshold",
                        "f1",
                        "f1_threshold",
                        "precision",
                        "recall",
                        "average_precision",
                    ],
                    EvaluatorKind::Classification => &["f1_macro", "f1_micro", "f1_weighted"],
                    _ => &["pearson", "spearman"],
                };
                (name, metrics.iter().map(|m| m.to_string()).collect())
            }
            LoadedEvaluator::NanoBeir {
                evaluator,
                datasets,
                ..
            } => {
                let k = evaluator.at_k;
                let plain = ["map".to_string(), format!("mrr@{k}"), format!("ndcg@{k}")];
                let metrics: Vec<String> = plain
                    .iter()
                    .cloned()
                    .chain(plain.iter().map(|m| format!("base_{m}")))
                    .collect();
                return datasets
                    .iter()
                    .map(|(split, _)| evaluator.dataset_name(split))
                    .chain(std::iter::once(evaluator.name()))
                    .flat_map(|name| metrics.iter().map(move |m| format!("eval_{name}_{m}")))
                    .collect();
            }
        };
        metrics
            .into_iter()
            .map(|metric| {
                if name.is_empty() {
                    format!("eval_{metric}")
                } else {
                    format!("eval_{name}_{metric}")
                }
            })
            .collect()
    }
}

/// Refuses a `metric_for_best_model` that no evaluation of this run logs, naming the ones it
/// does: it would otherwise be ignored in silence (no best checkpoint, `best_metric` null).
pub(super) fn check_best_metric(
    config: &TrainConfig,
    eval_sources: &[sources::EvalSource],
    evaluators: &[LoadedEvaluator],
    num_labels: usize,
) -> Result<(), TrainError> {
    let Some(metric) = &config.metric_for_best_model else {
        return Ok(());
    };
    let key = config::eval_metric_key(metric);
    let logged: Vec<String> = eval_sources
        .iter()
        .map(|source| source.metric_key.clone())
        .chain(evaluators.iter().flat_map(|e| e.metric_keys(num_labels)))
        .collect();
    if logged.contains(&key) {
        return Ok(());
    }
    let message = if logged.is_empty() {
        format!("{metric} is never logged: this run has no `eval` data and no evaluator")
    } else {
        format!(
            "{metric} is never logged; this run logs {}",
            logged.join(", ")
        )
    };
    Err(config::ConfigError::Invalid {
        field: "metric_for_best_model",
        message,
    }
    .into())
}

impl Run<'_> {
    /// Whether there is anything to evaluate: eval-loss data or an evaluator.
    pub(super) fn evaluates(&self) -> bool {
        !self.eval_sources.is_empty() || !self.evaluators.is_empty()
    }

    /// Runs the eval loss and every evaluator in eval mode; also returns each evaluator's
    /// primary metric key.
    pub(super) fn evaluate(&self) -> Result<(BTreeMap<String, f64>, Vec<String>), TrainError> {
        let mut metrics = BTreeMap::new();
        let mut primaries = Vec::new();
        let dropout = self.model.dropout();
        let saved = dropout.snapshot();
        dropout.eval();
        let result = (|| {
            for (set, source) in self.eval_sources.iter().enumerate() {
                let eval = &source.dataset;
                let order: Vec<usize> = (0..eval.len()).collect();
                let mut weighted = 0.0;
                for (index, rows) in order.chunks(self.config.batch_size).enumerate() {
                    // The first set keeps the seeds a one-set run always had.
                    let seed = derive_seed(
                        self.config.seed,
                        EVAL_PLAN,
                        (index + set * order.len()) as u64,
                    );
                    let value = batch_loss(
                        &self.model,
                        &source.loss,
                        eval,
                        rows,
                        seed,
                        self.config.eval_batch_size,
                        self.config
                            .prompts
                            .as_ref()
                            .and_then(|prompts| prompts.for_dataset(&source.name)),
                    )
                    .map_err(|source| TrainError::Step {
                        step: self.state.global_step,
                        source,
                    })?;
                    weighted += value * rows.len() as f64;
                }
                metrics.insert(
                    source.metric_key.clone(),
                    weighted / eval.len().max(1) as f64,
                );
            }
            let configs = &self.config.evaluators;
            for ((evaluator, prompt), config) in self
                .evaluators
                .iter()
                .zip(&self.evaluator_prompts)
                .zip(configs)
            {
                let batch_size = config.batch_size.unwrap_or(self.config.eval_batch_size);
                let prompted = crosstrain_model::PromptedModel {
                    model: &self.model,
                    prompt: prompt.as_deref(),
                };
                let scorer: &dyn PairScorer = match prompt {
                    Some(_) => &prompted,
                    None => &self.model,
                };
                let (name, result) = match evaluator {
                    LoadedEvaluator::Reranking { evaluator, samples } => (
                        evaluator.name.clone(),
                        eval_run::reranking(evaluator, samples, scorer, batch_size),
                    ),
                    LoadedEvaluator::Pairs {
                        kind,
                        name,
                        dataset,
                        gold,
                    } => {
                        let pairs: Vec<(&str, &str)> = (0..dataset.len())
                            .map(|row| {
                                (
                                    dataset.columns[0].text(row, 0).unwrap_or_default(),
                                    dataset.columns[1].text(row, 0).unwrap_or_default(),
                                )
                            })
                            .collect();
                        let result = if *kind == EvaluatorKind::Classification {
                            eval_run::classification(
                                name,
                                &pairs,
                                gold,
                                self.model.num_labels(),
                                &dataset.origin(),
                                scorer,
                                batch_size,
                            )
                        } else {
                            eval_run::correlation(name, &pairs, gold, scorer, batch_size)
                        };
                        (name.clone(), result)
                    }
                    LoadedEvaluator::NanoBeir {
                        evaluator,
                        datasets,
                        ..
                    } => (
                        evaluator.name(),
                        eval_run::nanobeir(evaluator, datasets, scorer, batch_size),
                    ),
                };
                let values = result.map_err(|source| TrainError::Evaluator { name, source })?;
                primaries.push(values.primary_metric.clone());
                for (key, value) in values.values {
                    metrics.insert(format!("eval_{key}"), value);
                }
            }
            Ok((metrics, primaries))
        })();
        dropout.restore(saved);
        result
    }

    pub(super) fn evaluate_and_log(&mut self) -> Result<(), TrainError> {
        if !self.evaluates() {
            return Ok(());
        }
        let (metrics, primaries) = self.evaluate()?;
        if self.state.best_metric_name.is_empty() {
            self.state.best_metric_name = primaries.first().map_or_else(
                || {
                    self.eval_sources
                        .first()
                        .map_or_else(|| "eval_loss".into(), |s| s.metric_key.clone())
                },
                |p| format!("eval_{p}"),
            );
        }
        self.primaries = primaries;
        self.last_metrics = metrics.clone();
        self.log(LogEntry {
            step: self.state.global_step,
            epoch: self.state.epoch_fraction(),
            loss: None,
            loss_components: BTreeMap::new(),
            dataset_losses: BTreeMap::new(),
            learning_rate: None,
            grad_norm: None,
            metrics,
        })
    }
}
